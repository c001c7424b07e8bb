"""The CUDA kernels on the CPU SIMT emulator, and the registered CUDA ops, as test executors.

``EmulatedOps`` runs the very CUDA sources (csrc/<op>/<op>_kernels.cu and their launchers)
compiled with the host C++ compiler for the SIMT emulator (csrc/tests/simt_emulator.h), called
through ctypes: every op folder's raw ops of docs/OPS.md on CPU tensors. Each op's entry points
are in its csrc/<op>/<op>_emulated.cpp, all with the one C ABI of csrc/tests/emulated_abi.h, so
nothing here names an op: outputs are allocated with the op folder's ``OpSpec.output_shapes``.
Output buffers start as NaN inside NaN guard zones that must stay untouched; inputs are
surrounded by NaN so out-of-bounds reads show. ``DeviceOps`` calls the registered ops on the
current CUDA device (CPU tensors in and out). The pytest fixtures ``emulator`` / ``emulated``
(tests/conftest.py) build and configure it.
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
from aghmn_fast.ops.catalog import specs

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


def _output_shapes():
    """Raw op name -> its output shapes from its arguments, for every op folder."""
    return {name: fn for spec in specs() for name, fn in spec.output_shapes.items()}


class EmulatedOps:
    """Every op folder's raw ops on the CPU SIMT emulator (CPU tensors in and out):
    ``emulated.<raw op>(*args)`` calls its entry point ``emu_<raw op>``."""

    DEFAULTS = dict(sm_count=132, smem_optin=232448, smem_per_sm=233472, order=0, seed=0)

    def __init__(self, lib):
        self.lib = lib
        i64, i32 = ctypes.c_int64, ctypes.c_int
        lib.emu_configure.argtypes = [i32, i32, i32, i32, ctypes.c_uint64]
        lib.emu_take_message.restype = ctypes.c_char_p
        lib.emu_launch_record.argtypes = [i32, ctypes.POINTER(i64)]
        self.max_dims = lib.emu_max_dims()
        self.output_shapes = _output_shapes()
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

    def __getattr__(self, name):
        if name not in self.__dict__.get("output_shapes", {}):
            raise AttributeError(name)
        try:
            entry = getattr(self.lib, "emu_" + name)
        except AttributeError:
            raise AttributeError(f"the raw op {name} has no emulated entry point emu_{name} "
                                 f"(csrc/<op>/<op>_emulated.cpp)") from None
        entry.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                          ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64)]
        return lambda *args: self._call(name, entry, args)

    def _call(self, name, entry, args):
        """The raw op ``name`` on the emulator (the ABI of csrc/tests/emulated_abi.h)."""
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if any(a is None for a in args):
            raise TypeError(f"{name}: the emulator harness takes no None arguments")
        scalars = [int(a) for a in args if not isinstance(a, torch.Tensor)]
        like = next(t for t in tensors if t.is_floating_point())
        a = _Arena()
        ins = [a.put(t) for t in tensors]
        outs = [a.put(like.new_empty(s), output=True) for s in self.output_shapes[name](*args)]
        buffers = ins + outs
        data = (ctypes.c_void_p * len(buffers))(*(t.data_ptr() for t in buffers))
        shapes = (ctypes.c_int64 * (self.max_dims * len(buffers)))()
        for i, t in enumerate(buffers):
            assert t.dim() <= self.max_dims, f"{name}: a tensor of {t.dim()} dims"
            shapes[i * self.max_dims:i * self.max_dims + t.dim()] = list(t.shape)
        values = (ctypes.c_int64 * max(1, len(scalars)))(*scalars)
        rc = entry(_CODES[like.dtype], data, shapes, values)
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


def emulator_sources(root: pathlib.Path = ROOT):
    """The sources of the emulator library: csrc/tests/emulated_kernels.cpp (what no op owns)
    and every op's csrc/<op>/<op>_emulated.cpp."""
    csrc = root / "csrc"
    return [csrc / "tests" / "emulated_kernels.cpp", *sorted(csrc.glob("*/*_emulated.cpp"))]


def build_emulator(directory: pathlib.Path) -> EmulatedOps:
    """Compile :func:`emulator_sources` into one library in ``directory`` and load it (skips the
    test when no host C++ compiler exists)."""
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler to build the CUDA kernels for the SIMT emulator")
    lib = directory / "aghmn_cuda_emulated.so"
    built = subprocess.run(
        [cxx, "-std=c++20", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
         "-Wno-unknown-pragmas", f"-I{ROOT / 'csrc'}", *map(str, emulator_sources()),
         "-o", str(lib)],
        capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    return EmulatedOps(ctypes.CDLL(str(lib)))


def require_cuda() -> None:
    """Skip without a CUDA device; fail when one exists but the cuda backend did not load."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if "cuda" not in ops.backends("cuda"):
        pytest.fail(f"a CUDA device is present but the cuda backend is not: "
                    f"{ops.backend_errors().get('cuda')}")
