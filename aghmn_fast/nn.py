"""``torch.nn`` layers built on the fused ops."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import ops

__all__ = ["AGRU"]


class AGRU(nn.Module):
    """Attention GRU layer, a drop-in in the style of :class:`torch.nn.GRU`.

    A GRU whose update gate is replaced by a given attention weight per step (AGHMN, section 5):
    ``r = sigmoid(W_r x + b_ir + U_r h + b_hr)``, ``n = tanh(W x + b_in + r * (U h + b_hn))``,
    ``h' = a * n + (1 - a) * h``. One layer, one or two directions.

    Args:
        input_size: features of ``x`` (D).
        hidden_size: features of the state (H).
        num_layers: must be 1 (one attention-gated layer, as in AGHMN); kept for the signature of
            ``torch.nn.GRU``.
        bias: with ``bias_ih_l0`` and ``bias_hh_l0`` (and their ``_reverse``); without them the
            biases are zero.
        batch_first: if True, ``x`` is [B, T, D], ``attn`` [B, T] and ``output`` batch-major;
            by default (False, as ``torch.nn.GRU``) they are time-major: [T, B, D] and [T, B].
        dropout: must be 0 (``torch.nn.GRU`` applies it between layers, and there is one).
        bidirectional: also run a reverse direction (t = T-1 .. 0); outputs are concatenated
            [forward | reverse] along the features, as in ``torch.nn.GRU``.
        device, dtype: of the parameters, as in ``torch.nn.GRU``.
        backend (keyword only): which implementation of :func:`aghmn_fast.ops.agru` to use ("cpu", "cuda",
            "triton", "reference"), or None for the fastest available for the input's device.

    Parameters (``torch.nn.GRU`` naming, gates stacked ``[r | n]``): ``weight_ih_l0`` [2H, D],
    ``weight_hh_l0`` [2H, H], ``bias_ih_l0`` [2H], ``bias_hh_l0`` [2H], and the same with the
    suffix ``_reverse`` when bidirectional. Initialisation: Xavier-normal weights (each gate's
    [H, in] block separately) and zero biases.

    Variable lengths: give padded steps an attention weight of exactly 0. Such a step leaves
    the state unchanged (``h' = h``), so in the forward direction the state after the last real
    step is carried to the end (``h_n`` is the final state of each sequence), and in the reverse
    direction the padded tail is crossed first with the state still equal to ``h0``, so every
    real step sees exactly the state it would have without padding. Outputs at padded positions
    repeat the neighbouring state and should be masked by the caller.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, backend: Optional[str] = None) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size} "
                             f"and {hidden_size}")
        if num_layers != 1:
            raise ValueError(f"num_layers must be 1 (AGRU is one attention-gated layer), got {num_layers}")
        if dropout != 0:
            raise ValueError(f"dropout must be 0 with one layer, got {dropout}")
        self.num_layers = num_layers
        self.dropout = float(dropout)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.batch_first = batch_first
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.backend = backend
        H = hidden_size
        factory = {"device": device, "dtype": dtype}
        for suffix in self._suffixes():
            self.register_parameter("weight_ih_l0" + suffix, nn.Parameter(torch.empty(2 * H, input_size, **factory)))
            self.register_parameter("weight_hh_l0" + suffix, nn.Parameter(torch.empty(2 * H, H, **factory)))
            if bias:
                self.register_parameter("bias_ih_l0" + suffix, nn.Parameter(torch.empty(2 * H, **factory)))
                self.register_parameter("bias_hh_l0" + suffix, nn.Parameter(torch.empty(2 * H, **factory)))
            else:
                self.register_parameter("bias_ih_l0" + suffix, None)
                self.register_parameter("bias_hh_l0" + suffix, None)
        self.reset_parameters()

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self) -> None:
        """Xavier-normal weights per gate block ([H, in] each, so r and n get the fan of one
        gate), zero biases."""
        with torch.no_grad():
            for suffix in self._suffixes():
                self._reset_direction(suffix)

    def _reset_direction(self, suffix: str) -> None:
        H = self.hidden_size
        for name in ("weight_ih_l0", "weight_hh_l0"):
            for gate in getattr(self, name + suffix).split(H):
                gate.normal_(0.0, math.sqrt(2.0 / (gate.shape[0] + gate.shape[1])))
        if self.bias:
            getattr(self, "bias_ih_l0" + suffix).zero_()
            getattr(self, "bias_hh_l0" + suffix).zero_()

    def forward(self, x: Tensor, attn: Tensor, h0: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Run the layer.

        Args:
            x: [B, T, D] ([T, B, D] if not ``batch_first``).
            attn: attention weights [B, T] ([T, B] if not ``batch_first``); 0 on padded steps.
            h0: initial states [num_directions, B, H]; zeros when None.

        Returns:
            ``(output, h_n)``: output [B, T, num_directions * H] ([T, B, ...] if not
            ``batch_first``), the state after each step (per direction, time-indexed);
            h_n [num_directions, B, H], the state after each direction's last step.
        """
        for name, value in (("x", x), ("attn", attn)):
            if not isinstance(value, Tensor):
                # attn is the layer's update gate: unlike torch.nn.GRU there is no default for it.
                raise TypeError(f"{name} must be a tensor, got {type(value).__name__} (AGRU needs "
                                "attention weights attn, one per step and sequence: [T, B], or "
                                "[B, T] with batch_first=True)")
        if x.dim() != 3:
            raise ValueError(f"x must be 3-D, got shape {tuple(x.shape)}")
        if not self.batch_first:
            x, attn = x.transpose(0, 1), attn.transpose(0, 1)
        B = x.shape[0]
        if h0 is not None and tuple(h0.shape) != (self.num_directions, B, self.hidden_size):
            raise ValueError(f"h0 must have shape {(self.num_directions, B, self.hidden_size)}, "
                             f"got {tuple(h0.shape)}")
        outputs, finals = self._directions(x, attn, h0, self.backend)
        output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        if not self.batch_first:
            output = output.transpose(0, 1)
        return output, torch.stack(finals)

    def _directions(self, x: Tensor, attn: Tensor, h0: Optional[Tensor],
                    backend: Optional[str]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per direction (forward first): outputs [B, T, H] and final states [B, H]."""
        outputs, finals = [], []
        for d, suffix in enumerate(self._suffixes()):
            out, h_n = ops.agru(
                x, attn, getattr(self, "weight_ih_l0" + suffix),
                getattr(self, "weight_hh_l0" + suffix), getattr(self, "bias_ih_l0" + suffix),
                getattr(self, "bias_hh_l0" + suffix), None if h0 is None else h0[d],
                reverse=d == 1, backend=backend)
            outputs.append(out)
            finals.append(h_n)
        return outputs, finals

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s
