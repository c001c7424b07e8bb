"""The CUDA kernels on the CPU SIMT emulator, and the registered CUDA ops, as test executors.

``EmulatedOps`` runs the very CUDA sources (csrc/<op>/<op>_kernels.cu and their launchers)
compiled with the host C++ compiler for the SIMT emulator (csrc/tests/simt_emulator.h), called
through ctypes: the four raw ops of docs/OPS.md on CPU tensors. Output buffers start as NaN inside
NaN guard zones that must stay untouched; inputs are surrounded by NaN so out-of-bounds reads
show. ``DeviceOps`` calls the registered ops on the current CUDA device (CPU tensors in and out).
The pytest fixtures ``emulator`` / ``emulated`` (tests/conftest.py) build and configure it.
"""
from __future__ import annotations

import ctypes
import math
import pathlib
import shutil
import subprocess

import pytest
import torch

from aghmn_fast import ops

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOT_SUPPORTED = 801  # cudaErrorNotSupported

_GUARD = 64
_CODES = {torch.float32: 0, torch.float64: 1}


class _Arena:
    """Tensors with guard zones on both sides: NaN for floats, 0 for int64 indices."""

    def __init__(self):
        self.blocks = []

    def put(self, t: torch.Tensor, output: bool = False) -> torch.Tensor:
        fill = 0 if t.dtype == torch.int64 else math.nan
        flat = torch.full((t.numel() + 2 * _GUARD,), fill, dtype=t.dtype)
        view = flat[_GUARD:_GUARD + t.numel()].view(t.shape)
        if not output:
            view.copy_(t)
        self.blocks.append((flat, None if output else t.clone()))
        return view

    def check(self):
        for flat, original in self.blocks:
            for zone in (flat[:_GUARD], flat[-_GUARD:]):
                intact = (zone == 0).all() if flat.dtype == torch.int64 else zone.isnan().all()
                assert intact, "a kernel wrote outside its buffer"
            if original is not None:
                inner = flat[_GUARD:_GUARD + original.numel()].view(original.shape)
                assert torch.equal(inner, original), "a kernel wrote into an input"


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr())


class EmulatedOps:
    """The four ops on the CPU SIMT emulator (CPU tensors in and out)."""

    DEFAULTS = dict(sm_count=132, smem_optin=232448, smem_per_sm=233472, order=0, seed=0)

    def __init__(self, lib):
        self.lib = lib
        vp, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.emu_configure.argtypes = [i32, i32, i32, i32, ctypes.c_uint64]
        lib.emu_take_message.restype = ctypes.c_char_p
        lib.emu_launch_record.argtypes = [i32, ctypes.POINTER(i64)]
        lib.emu_agru_forward.argtypes = [i32] + [vp] * 7 + [i64] * 3 + [i32]
        lib.emu_agru_backward.argtypes = [i32] + [vp] * 10 + [i64] * 3 + [i32]
        lib.emu_window_gru_forward.argtypes = [i32] + [vp] * 7 + [i64] * 5
        lib.emu_window_gru_backward_workspace_bytes.argtypes = [i32] + [i64] * 5
        lib.emu_window_gru_backward_workspace_bytes.restype = i64
        lib.emu_window_gru_backward.argtypes = [i32] + [vp] * 9 + [i64] * 6
        self.configure()

    def configure(self, **settings):
        """Emulated device properties and thread order; unnamed ones take DEFAULTS."""
        s = {**self.DEFAULTS, **settings}
        self.lib.emu_configure(s["sm_count"], s["smem_optin"], s["smem_per_sm"], s["order"],
                               s["seed"])
        self.lib.emu_clear_launches()

    def launches(self):
        """(grid, block, dynamic shared bytes) of each launch since configure()."""
        rec = (ctypes.c_int64 * 7)()
        out = []
        for i in range(self.lib.emu_launch_count()):
            self.lib.emu_launch_record(i, rec)
            out.append((tuple(rec[0:3]), tuple(rec[3:6]), rec[6]))
        return out

    def _finish(self, rc, arena):
        message = self.lib.emu_take_message().decode()
        if rc == NOT_SUPPORTED:
            raise NotImplementedError(f"unsupported size ({message})")
        assert rc == 0, f"launcher returned {rc}: {message}"
        assert message == "", message
        arena.check()

    def agru_forward(self, xproj, attn, weight_hh, bias_hh, h0, reverse):
        B, T, H2 = xproj.shape
        H, a = H2 // 2, _Arena()
        ins = [a.put(t) for t in (xproj, attn, weight_hh, bias_hh, h0)]
        out = a.put(xproj.new_empty(B, T, H), output=True)
        gates = a.put(xproj.new_empty(B, T, 3 * H), output=True)
        rc = self.lib.emu_agru_forward(_CODES[xproj.dtype], *map(_ptr, ins + [out, gates]),
                                       B, T, H, int(reverse))
        self._finish(rc, a)
        return out.clone(), gates.clone()

    def agru_backward(self, grad_output, attn, weight_hh, h0, output, gates, reverse):
        B, T, H = grad_output.shape
        a = _Arena()
        ins = [a.put(t) for t in (grad_output, attn, weight_hh, h0, output, gates)]
        outs = [a.put(grad_output.new_empty(s), output=True)
                for s in ((B, T, 2 * H), (B, T), (B, T, 2 * H), (B, H))]
        rc = self.lib.emu_agru_backward(_CODES[grad_output.dtype], *map(_ptr, ins + outs),
                                        B, T, H, int(reverse))
        self._finish(rc, a)
        return tuple(o.clone() for o in outs)

    def window_gru_forward(self, proj, pad_proj, weight_hh, bias_hh, windows):
        D, N, H3 = proj.shape
        (Q, K), H, a = windows.shape, H3 // 3, _Arena()
        ins = [a.put(t) for t in (proj, pad_proj, weight_hh, bias_hh, windows)]
        out = a.put(proj.new_empty(D, Q, K, H), output=True)
        gates = a.put(proj.new_empty(D, Q, K, 4 * H), output=True)
        rc = self.lib.emu_window_gru_forward(_CODES[proj.dtype], *map(_ptr, ins + [out, gates]),
                                             D, N, Q, K, H)
        self._finish(rc, a)
        return out.clone(), gates.clone()

    def window_gru_backward(self, grad_output, weight_hh, windows, output, gates,
                            num_utterances):
        D, Q, K, H = grad_output.shape
        N, code, a = num_utterances, _CODES[grad_output.dtype], _Arena()
        ins = [a.put(t) for t in (grad_output, weight_hh, windows, output, gates)]
        outs = [a.put(grad_output.new_empty(s), output=True)
                for s in ((D, N, 3 * H), (D, 3 * H), (D, Q, K, 3 * H))]
        size = self.lib.emu_window_gru_backward_workspace_bytes(code, D, N, Q, K, H)
        assert size > 0
        workspace = torch.full((size,), 0xAB, dtype=torch.uint8)  # content must not matter
        rc = self.lib.emu_window_gru_backward(code, *map(_ptr, ins + outs), _ptr(workspace),
                                              size, D, N, Q, K, H)
        self._finish(rc, a)
        return tuple(o.clone() for o in outs)


class DeviceOps:
    """The registered CUDA ops (CPU tensors in and out; computed on the current CUDA device)."""

    def __getattr__(self, name):
        op = getattr(torch.ops.aghmn_fast, name)

        def call(*args):
            moved = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
            return tuple(r.cpu() for r in op(*moved))
        return call


def build_emulator(directory: pathlib.Path) -> EmulatedOps:
    """Compile csrc/tests/emulated_kernels.cpp into ``directory`` and load it (skips the test
    when no host C++ compiler exists)."""
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler to build the CUDA kernels for the SIMT emulator")
    lib = directory / "aghmn_cuda_emulated.so"
    built = subprocess.run(
        [cxx, "-std=c++20", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
         "-Wno-unknown-pragmas", f"-I{ROOT / 'csrc'}",
         str(ROOT / "csrc" / "tests" / "emulated_kernels.cpp"), "-o", str(lib)],
        capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    return EmulatedOps(ctypes.CDLL(str(lib)))


def require_cuda() -> None:
    """Skip without a CUDA device; fail when one exists but the cuda backend did not load."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if "cuda" not in ops.backends("cuda"):
        pytest.fail(f"a CUDA device is present but the cuda backend is not: "
                    f"{ops.backend_errors().get('cuda')}")
