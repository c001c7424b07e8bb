"""Smoke test of an installed aghmn_runtime (run from outside the repository by
runtime_wheel_smoke.sh): a model file loads, pushes answer, state round-trips (file and bytes),
the module's version is the installed distribution's, torch is absent."""
import importlib.metadata
import importlib.util
import os
import sys
import tempfile

import numpy as np

import aghmn_runtime

here = os.path.dirname(os.path.abspath(aghmn_runtime.__file__))
assert "site-packages" in here, f"aghmn_runtime imported from {here}, not from the installed wheel"
assert importlib.util.find_spec("torch") is None, "torch is installed in the runtime's venv"

rec = aghmn_runtime.StreamingRecognizer(sys.argv[1])
p = rec.push("c1", "Hi there! How are you?")
assert p.index == 0 and p.label in rec.labels and abs(sum(p.probabilities.values()) - 1) < 1e-5
preds = rec.push_many([("c1", "Great, thanks."), ("c2", "What?!"), ("c1", "Oh no.")])
assert [q.index for q in preds] == [1, 0, 2]
probs, indices = rec.push_many_arrays(np.array(["c2", "c3"]), ["Sure.", "Hello"])
assert probs.shape == (2, len(rec.labels)) and probs.dtype == np.float32
assert indices.tolist() == [1, 0]
with tempfile.TemporaryDirectory() as tmp:
    rec.save_state(os.path.join(tmp, "s.state"))
    again = aghmn_runtime.StreamingRecognizer(sys.argv[1])
    again.load_state(os.path.join(tmp, "s.state"))
    assert sorted(again.conversations()) == ["c1", "c2", "c3"]
    assert again.push("c1", "Bye.").probabilities == rec.push("c1", "Bye.").probabilities
state = rec.save_state_bytes()
from_bytes = aghmn_runtime.StreamingRecognizer(sys.argv[1])
from_bytes.load_state_bytes(state)
assert from_bytes.push("c2", "Ok.").probabilities == rec.push("c2", "Ok.").probabilities
installed = importlib.metadata.version("aghmn-fast-runtime")
assert aghmn_runtime.__version__ == installed, (aghmn_runtime.__version__, installed)
try:
    rec.push("c1", "   ")
except ValueError:
    pass
else:
    raise AssertionError("empty text was accepted")
assert aghmn_runtime.normalize("Café, NAÏVE!") == "cafe naive !"
assert "torch" not in sys.modules, "torch was imported"
print(f"runtime smoke ok: {aghmn_runtime.__file__}")
