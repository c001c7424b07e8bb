"""Real-time streaming recognition: one utterance in, its emotion out, many conversations at once.

- :mod:`.recognizer`: the public API, :class:`StreamingRecognizer` (conversation table, ring
  store, state files) and :class:`Prediction`;
- :mod:`.engines`: how a push is computed, one named engine per path ("push", "graph", "step",
  "ops"), all with one contract.
"""
from .engines import DEFAULT_ORDER, ENGINES, Engine, GraphEngine, OpsEngine, PushEngine, StepEngine
from .recognizer import STATE_FORMAT, Prediction, StreamingRecognizer

__all__ = ["StreamingRecognizer", "Prediction", "STATE_FORMAT", "Engine", "PushEngine",
           "GraphEngine", "StepEngine", "OpsEngine", "ENGINES", "DEFAULT_ORDER"]
