"""Smoke test of an installed aghmn_fast (run from outside the repository by wheel_smoke.sh)."""
import os
import subprocess

import torch

import aghmn_fast
from aghmn_fast import reference

here = os.path.dirname(os.path.abspath(aghmn_fast.__file__))
assert "site-packages" in here, f"aghmn_fast imported from {here}, not from the installed wheel"
names = aghmn_fast.backends()
assert "cpu" in names and "reference" in names, f"backends() = {names}: the extension did not load"

torch.manual_seed(0)
B, T, D, H = 2, 5, 3, 4
x, attn = torch.randn(B, T, D), torch.rand(B, T)
w_ih, w_hh = torch.randn(2 * H, D) * 0.3, torch.randn(2 * H, H) * 0.3
b_ih, b_hh = torch.randn(2 * H) * 0.1, torch.randn(2 * H) * 0.1
out, h_n = aghmn_fast.agru(x, attn, w_ih, w_hh, b_ih, b_hh, backend="cpu")
r_out, r_h_n = reference.agru(x, attn, w_ih, w_hh, b_ih, b_hh)
torch.testing.assert_close(out, r_out, rtol=1e-5, atol=1e-6)
torch.testing.assert_close(h_n, r_h_n, rtol=1e-5, atol=1e-6)

gru = torch.nn.GRU(H, H, bidirectional=True)
utterances = torch.randn(7, H)
windows = torch.tensor([[-1, -1, 0], [0, 1, 2], [3, 4, 5]])
weights = [w.detach() for w in gru._flat_weights]
mem = aghmn_fast.memory_bank(utterances, windows, weights, backend="cpu")
r_mem = reference.memory_bank(utterances, windows, weights)
torch.testing.assert_close(mem, r_mem, rtol=1e-5, atol=1e-6)

layer = aghmn_fast.nn.AGRU(D, H, bidirectional=True)
layer_out, _ = layer(x.transpose(0, 1), attn.t())
assert layer_out.shape == (T, B, 2 * H)

help_text = subprocess.run(["aghmn-fast", "--help"], check=True, capture_output=True, text=True).stdout
assert "train" in help_text and "stream" in help_text, help_text
print(f"smoke: aghmn_fast {aghmn_fast.__version__} from {here}: backends {names}; agru, "
      "memory_bank and nn.AGRU agree with the reference; aghmn-fast --help works")
