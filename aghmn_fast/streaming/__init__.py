"""Real-time streaming recognition: one utterance in, its emotion out, many conversations at once.

- :mod:`.recognizer`: the public API, :class:`StreamingRecognizer` (input checks, predictions,
  state files) and :class:`Prediction`;
- :mod:`.store`: :class:`RingStore`, the conversation table and ring store, whose public
  contract the compute paths take;
- :mod:`.engines`: how a push is computed, one named engine per path ("push", "graph", "step",
  "ops"), all with one contract.
"""
from .engines import DEFAULT_ORDER, ENGINES, Engine, GraphEngine, OpsEngine, PushEngine, StepEngine
from .recognizer import STATE_FORMAT, Prediction, StreamingRecognizer
from .store import RingStore

__all__ = ["StreamingRecognizer", "Prediction", "STATE_FORMAT", "RingStore", "Engine", "PushEngine",
           "GraphEngine", "StepEngine", "OpsEngine", "ENGINES", "DEFAULT_ORDER"]
