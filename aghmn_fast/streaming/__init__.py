"""Real-time streaming recognition: one utterance in, its emotion out, many conversations at once.

- :mod:`.recognizer`: the public API, :class:`StreamingRecognizer` (conversation table, ring
  store, state files) and :class:`Prediction`;
- :mod:`.engines`: how a push is computed, one named engine per path ("push", "graph", "step",
  "ops"), all with one contract;
- :mod:`.ensemble`: :class:`EnsembleRecognizer`, several checkpoints' probabilities averaged
  (opt-in; ``StreamingRecognizer.from_checkpoint([a, b, ...])``).
"""
from .engines import DEFAULT_ORDER, ENGINES, Engine, GraphEngine, OpsEngine, PushEngine, StepEngine
from .recognizer import STATE_FORMAT, Prediction, StreamingRecognizer
from .ensemble import EnsembleRecognizer

__all__ = ["StreamingRecognizer", "EnsembleRecognizer", "Prediction", "STATE_FORMAT", "Engine", "PushEngine",
           "GraphEngine", "StepEngine", "OpsEngine", "ENGINES", "DEFAULT_ORDER"]
