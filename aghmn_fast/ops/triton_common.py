"""Shared pieces of the Triton kernels: gate math, matmul helpers, launch configurations.

Every recurrence kernel runs one program per (batch tile, direction) over the whole time loop,
with the state in registers. The per-step ``h @ W^T`` (and ``dg @ W`` backwards) has variants
chosen per launch by :func:`choose_config`, all compiled from the same kernel source:

* ``resident``: the recurrent weight is loaded once before the time loop, zero-padded to
  HP x HP (HP = H rounded up to a power of two, at least 16);
* streamed (``resident=False``): for weights too large to keep on chip, the state goes through
  a small scratch buffer each step and the weight is read from L2 in ``block_k``-wide slices;
* ``dot``: ``tl.dot`` on tiles of at least 16 rows (tensor cores with TF32 allowed); otherwise
  a broadcast multiply-and-sum, which needs no padding of a small batch to 16 rows and, in
  full fp32, compiles to far fewer spills than Triton's FMA ``tl.dot``.

The defaults were picked from register and spill counts of offline sm_90 compiles
(:mod:`.compile_check`), not from timings: no GPU was available when they were written.
:func:`use_config` forces a configuration, and ``benchmarks/gpu_bench.py --sweep`` times the
alternatives on a real card.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Dict, FrozenSet, Iterator, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

__all__ = ["CompileTargets", "KernelConfig", "choose_config", "use_config", "set_allow_tf32", "allow_tf32",
           "set_poison_outputs", "new_buffer", "launch", "device_guard", "interpreting",
           "padded_hidden"]

_allow_tf32 = os.environ.get("AGHMN_TRITON_TF32", "0") == "1"
_forced: Optional["KernelConfig"] = None
_poison = os.environ.get("AGHMN_TRITON_POISON", "0") == "1"


def set_allow_tf32(enabled: bool) -> None:
    """Allow (True) or forbid (False, the default) TF32 tensor cores in fp32 recurrent matmuls.

    TF32 rounds ``h`` and the weights to 10 mantissa bits before each step's matmul (about 3e-4
    relative error per step); the default keeps full fp32. ``AGHMN_TRITON_TF32=1`` turns it on
    at import time. Only affects float32/float16/bfloat16 inputs on a GPU with ``block_b >= 16``.
    """
    global _allow_tf32
    _allow_tf32 = bool(enabled)


def allow_tf32() -> bool:
    """Whether TF32 is allowed in the recurrent matmuls (see :func:`set_allow_tf32`)."""
    return _allow_tf32


def set_poison_outputs(enabled: bool) -> None:
    """Fill every buffer the kernels allocate with NaN first (True) or leave it uninitialised.

    A debugging aid: an element a kernel forgets to write then shows up as NaN instead of
    stale memory. Off by default; ``AGHMN_TRITON_POISON=1`` turns it on at import time.
    """
    global _poison
    _poison = bool(enabled)


def new_buffer(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output or scratch buffer for a kernel (NaN-filled under :func:`set_poison_outputs`)."""
    if _poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def launch(kernel, grid, *args, **kwargs) -> None:
    """Launch ``kernel`` through ``torch.library.wrap_triton`` (traceable by ``torch.compile``).

    Compiled kernels see fake tensors only through ``wrap_triton``, which records instead of
    running them; interpreted kernels are returned by it unwrapped and would run on the fake
    tensors' missing storage, so under the interpreter a launch with fake inputs (shape
    propagation, ``opcheck``) does nothing, as ``wrap_triton`` would.
    """
    if interpreting():
        from torch._subclasses.fake_tensor import is_fake
        if any(isinstance(a, torch.Tensor) and is_fake(a) for a in args):
            return
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    with device_guard(first.device if first is not None else None):
        wrap_triton(kernel)[grid](*args, **kwargs)


def device_guard(device: Optional[torch.device]):
    """A context that makes ``device`` the current CUDA device (a no-op for other devices).

    Triton launches on the current device and stream, not on the tensors' device: without this
    guard a launch with tensors on ``cuda:1`` while ``cuda:0`` is current would run on the wrong
    GPU (an illegal address, or silently wrong memory).
    """
    if device is not None and device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "runtime"):
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def padded_hidden(H: int) -> int:
    """H rounded up to a power of two of at least 16 (``tl.dot`` needs blocks of 16)."""
    return max(16, triton.next_power_of_2(H))


@dataclasses.dataclass(frozen=True)
class CompileTargets:
    """What :mod:`.compile_check` compiles of one op's Triton kernels (the op folder's
    ``OpSpec.triton_compile`` returns it), so that the check names no op.

    ``recurrences``: the kernels launched with :func:`launch_constants` for ``gates`` gate blocks
    (one compilation per distinct set of constants; a kernel with a ``REVERSE`` argument in each
    direction asked for); ``per_hidden``: its other kernels, each with the function giving its
    constexprs (``num_warps`` among them) at hidden size H, its one launch per H; ``state_ptrs`` /
    ``index_ptrs``: the pointer arguments that hold the state dtype (:func:`state_dtype`) / int64
    indices (every other pointer holds the input dtype).
    """
    gates: int
    recurrences: Tuple[Any, ...]
    per_hidden: Tuple[Tuple[Any, Callable[[int], Dict[str, Any]]], ...] = ()
    state_ptrs: FrozenSet[str] = frozenset()
    index_ptrs: FrozenSet[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """How one recurrence launch is tiled.

    ``block_b``: batch rows (windows) per program. ``resident``: load the recurrent weight once
    before the time loop (else stream it in ``block_k``-wide slices every step through a scratch
    copy of the state). ``dot``: use ``tl.dot`` (needs ``block_b >= 16`` and, when not
    resident, ``block_k >= 16``) instead of a broadcast multiply-and-sum. ``num_warps``: warps
    per program. All sizes are powers of two.
    """
    block_b: int = 16
    resident: bool = True
    block_k: int = 8
    num_warps: int = 4
    dot: bool = False

    def __post_init__(self):
        for name in ("block_b", "block_k", "num_warps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1 or value & (value - 1):
                raise ValueError(f"KernelConfig.{name} must be a positive power of two, "
                                 f"got {value!r}")
        if self.dot and (self.block_b < 16 or (not self.resident and self.block_k < 16)):
            raise ValueError("KernelConfig with dot=True needs block_b >= 16 and, when not "
                             f"resident, block_k >= 16; got {self}")


@contextlib.contextmanager
def use_config(config: KernelConfig) -> Iterator[KernelConfig]:
    """Force ``config`` for every Triton recurrence launched inside the ``with`` block.

    For tests (to reach every kernel variant) and for tuning sweeps; not thread-safe.
    """
    global _forced
    if not isinstance(config, KernelConfig):
        raise TypeError(f"config must be a KernelConfig, got {type(config).__name__}")
    previous, _forced = _forced, config
    try:
        yield config
    finally:
        _forced = previous


_H100_SHARED = 227 * 1024
_shared_cache: dict = {}


def shared_memory_bytes(device: Optional[torch.device]) -> int:
    """Shared memory one program may use on ``device`` (an H100's 227 KiB when unknown)."""
    if device is None or device.type != "cuda":
        return _H100_SHARED
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _shared_cache:
        try:
            from triton.runtime import driver
            props = driver.active.utils.get_device_properties(index)
            _shared_cache[index] = int(props["max_shared_mem"])
        except Exception:  # no answer from the driver: the smallest of recent cards
            _shared_cache[index] = 99 * 1024
    return _shared_cache[index]


def choose_config(rows: int, H: int, gates: int, acc_bytes: int,
                  shared_bytes: int = _H100_SHARED) -> KernelConfig:
    """The launch configuration for ``rows`` sequences of hidden size ``H``.

    ``gates``: square ``H x H`` recurrent blocks per step (2 for AGRU, 3 for the window GRU);
    ``acc_bytes``: 4 (float32 state) or 8 (float64 state); ``shared_bytes``: the device's
    shared memory per program. The choices below were picked from register and spill counts of
    offline sm_90 compiles (ptxas), not from timings.
    """
    if _forced is not None:
        return _forced
    hp = padded_hidden(H)
    pow2 = triton.next_power_of_2(max(rows, 1))
    if interpreting():
        # Programs run one after another on the CPU and each op is vectorised by numpy: few,
        # large tiles are fastest.
        return KernelConfig(block_b=max(16, min(64, pow2)), resident=True, num_warps=4, dot=True)
    if _allow_tf32 and acc_bytes == 4 and rows >= 16:
        # Tensor cores: a resident weight stays in shared memory (64 KiB per gate at H = 128),
        # next to the compiler's own staging buffers.
        resident = gates * hp * hp * 4 + 64 * 1024 <= shared_bytes
        return KernelConfig(block_b=16, resident=resident, block_k=32, num_warps=8, dot=True)
    weight_regs = gates * hp * hp * acc_bytes // 4
    if weight_regs <= 3 * 128 * 128:
        # The weight in registers, spread over all threads: no padding of a small batch to 16
        # rows and no per-step weight traffic.
        block_b = min(pow2, 8 if acc_bytes == 4 and gates == 2 else 4)
        warps = 8 if block_b <= 2 and weight_regs <= 2 * 128 * 128 else 16
        return KernelConfig(block_b=block_b, resident=True, num_warps=warps)
    return KernelConfig(block_b=min(pow2, 8 if acc_bytes == 4 else 4), resident=False,
                        block_k=8, num_warps=16)


def launch_constants(rows: int, H: int, gates: int, dtype: torch.dtype,
                     device: Optional[torch.device] = None):
    """``(config, state dtype, kernel constexprs)`` of a recurrence launch on ``dtype`` inputs."""
    acc = state_dtype(dtype)
    cfg = choose_config(rows, H, gates, acc.itemsize, shared_memory_bytes(device))
    hp = padded_hidden(H)
    precision = "tf32" if _allow_tf32 and acc == torch.float32 and cfg.dot else "ieee"
    consts = dict(H=H, HP=hp, BLOCK_B=cfg.block_b, BK=min(cfg.block_k, hp),
                  RESIDENT=cfg.resident, USE_DOT=cfg.dot, IS_F64=acc == torch.float64,
                  PRECISION=precision, num_warps=cfg.num_warps)
    return cfg, acc, consts


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # Through sigmoid: the interpreter has no libdevice tanh, and one formula keeps the CPU
    # check and the GPU run on the same arithmetic.
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _mm(a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    # a [M, K] @ b [K, N] in a's (fp32/fp64) precision.
    if USE_DOT:
        out = tl.dot(a, b, input_precision=PRECISION)
    else:
        out = tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return out


@triton.jit
def _tile(B, H: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr):
    # This program's rows (int64, so that row * T * H never overflows), columns and masks.
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, HP)
    row_ok = rows < B
    mask = row_ok[:, None] & (cols < H)[None, :]
    return rows.to(tl.int64), cols, row_ok, mask


@triton.jit
def _load_square(w_ptr, H: tl.constexpr, HP: tl.constexpr, TRANSPOSE: tl.constexpr):
    # One H x H gate block of a row-major weight, zero-padded to HP x HP; TRANSPOSE gives the
    # [k, j] = w[j, k] operand of h @ W^T (forward), otherwise the w[j, k] operand of dg @ W.
    kk = tl.arange(0, HP)
    jj = tl.arange(0, HP)
    mask = (kk[:, None] < H) & (jj[None, :] < H)
    if TRANSPOSE:
        w = tl.load(w_ptr + jj[None, :] * H + kk[:, None], mask=mask, other=0.0)
    else:
        w = tl.load(w_ptr + kk[:, None] * H + jj[None, :], mask=mask, other=0.0)
    return w


@triton.jit
def _stream_mm(src_ptr, src_rows, row_ok, w_ptr, H: tl.constexpr, HP: tl.constexpr,
               BLOCK_B: tl.constexpr, BK: tl.constexpr, TRANSPOSE: tl.constexpr,
               USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    # src [BLOCK_B, HP] (rows at int64 offsets src_rows, in the accumulator dtype) times one
    # gate block of w, streaming the contraction dimension in BK-wide slices from memory.
    cols = tl.arange(0, HP)
    acc = tl.zeros([BLOCK_B, HP], dtype=src_ptr.dtype.element_ty)
    for k0 in range(0, HP, BK):
        kk = k0 + tl.arange(0, BK)
        a = tl.load(src_ptr + src_rows[:, None] + kk[None, :],
                    mask=row_ok[:, None] & (kk[None, :] < H), other=0.0)
        wmask = (kk[:, None] < H) & (cols[None, :] < H)
        if TRANSPOSE:
            w = tl.load(w_ptr + cols[None, :] * H + kk[:, None], mask=wmask, other=0.0)
        else:
            w = tl.load(w_ptr + kk[:, None] * H + cols[None, :], mask=wmask, other=0.0)
        acc += _mm(a, w.to(acc.dtype), USE_DOT, PRECISION)
    return acc


def check_dims(name: str, t, ndim: int) -> None:
    """Raise a TypeError/ValueError naming ``name`` unless ``t`` is a tensor with ``ndim`` dims."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def check_tensor(name: str, t, shape, device=None, dtypes=None) -> None:
    """Raise a TypeError/ValueError naming ``name`` unless ``t`` is contiguous, of ``shape``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the recurrent state and of saved gates: float64 stays, the rest is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_device(t: torch.Tensor) -> None:
    """Refuse tensors the kernels cannot reach: CPU tensors run only under the interpreter."""
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpreting():
        return
    raise ValueError(f"the Triton backend runs on CUDA tensors (CPU tensors only under "
                     f"TRITON_INTERPRET=1), got a tensor on {t.device}")
