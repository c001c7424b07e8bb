"""Real-time streaming recognition: one utterance in, its emotion out, many conversations at once.

- :mod:`.recognizer`: the public API, :class:`StreamingRecognizer` (input checks, predictions,
  state files) and :class:`Prediction`;
- :mod:`.store`: :class:`RingStore`, the conversation table and ring store, whose public
  contract the compute modes take;
- :mod:`.modes`: how a push is computed, one named mode each ("push", "graph", "step", "ops"),
  all with one contract.
- :mod:`.ensemble`: :class:`EnsembleRecognizer`, several checkpoints' probabilities averaged
  (opt-in; ``recognizer_from_checkpoints([a, b, ...])``).
"""
from .modes import DEFAULT_ORDER, MODES, GraphMode, Mode, OpsMode, PushMode, StepMode
from .recognizer import STATE_FORMAT, Prediction, StreamingRecognizer
from .ensemble import EnsembleRecognizer, recognizer_from_checkpoints
from .store import RingStore

__all__ = ["StreamingRecognizer", "EnsembleRecognizer", "recognizer_from_checkpoints",
           "Prediction", "STATE_FORMAT", "RingStore", "Mode", "PushMode",
           "GraphMode", "StepMode", "OpsMode", "MODES", "DEFAULT_ORDER"]
