"""Compile the Triton kernels for an NVIDIA architecture without a GPU; report their resources.

The interpreter checks what the kernels compute, not whether the GPU compiler accepts them or
how they use registers. This runs Triton's real pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin,
with the ``ptxas`` shipped in the triton wheel) for the launch configurations the backend picks,
and reads registers, spill stack and shared memory from the cubin with ``cuobjdump``.

Usage (on a machine without a GPU the backend refuses to import unless told to compile only)::

    AGHMN_TRITON_COMPILE_ONLY=1 python -m aghmn_fast.backends.triton.compile_check \
        [--arch 90] [--hidden 100 256] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterable, List

import torch
import triton

from . import _common
from .agru import _agru_bwd_kernel, _agru_fwd_kernel
from .window_gru import _segment_sum_kernel, _wgru_bwd_kernel, _wgru_fwd_kernel

__all__ = ["variants", "compile_variant", "main"]

_TYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
               torch.float64: "fp64", torch.int64: "i64"}
# Pointer arguments that hold the state dtype or window indices; every other pointer has the
# input dtype.
_STATE_PTRS = {"gates_ptr", "scr_ptr", "gslot_ptr"}
_INDEX_PTRS = {"win_ptr", "order_ptr", "offsets_ptr"}


def _unwrap(kernel):
    return getattr(kernel, "fn", kernel) if not hasattr(kernel, "arg_names") else kernel


def _signature(kernel, dtype: torch.dtype, consts: Dict) -> Dict[str, str]:
    acc = _common.state_dtype(dtype)
    sig = {}
    for name in _unwrap(kernel).arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            t = torch.int64 if name in _INDEX_PTRS else acc if name in _STATE_PTRS else dtype
            sig[name] = "*" + _TYPE_NAMES[t]
        else:
            sig[name] = "i32"
    return sig


def variants(hidden_sizes: Iterable[int] = (100, 256),
             dtypes: Iterable[torch.dtype] = (torch.float32, torch.bfloat16, torch.float64),
             rows: Iterable[int] = (1, 4, 1024),
             tf32: Iterable[bool] = (False, True)) -> List[Dict]:
    """The distinct kernel compilations the backend's launch heuristic asks for."""
    seen, out = set(), []
    before = _common.allow_tf32()
    try:
        for H in hidden_sizes:
            for dtype in dtypes:
                for allow in tf32:
                    _common.set_allow_tf32(allow)
                    for n in rows:
                        for gates, kernels in ((2, (_agru_fwd_kernel, _agru_bwd_kernel)),
                                               (3, (_wgru_fwd_kernel, _wgru_bwd_kernel))):
                            _, _, consts = _common.launch_constants(n, H, gates, dtype)
                            for kernel in kernels:
                                c = dict(consts)
                                if "REVERSE" in _unwrap(kernel).arg_names:
                                    c["REVERSE"] = True
                                key = (_unwrap(kernel).__name__, str(dtype),
                                       tuple(sorted(c.items())))
                                if key not in seen:
                                    seen.add(key)
                                    out.append(dict(kernel=kernel, dtype=dtype, consts=c))
            for dtype in dtypes:
                C = 3 * H
                c = dict(C=C, BLOCK_S=16, BLOCK_C=min(triton.next_power_of_2(C), 128),
                         num_warps=4)
                out.append(dict(kernel=_segment_sum_kernel, dtype=dtype, consts=c))
    finally:
        _common.set_allow_tf32(before)
    return out


def _cuobjdump() -> str:
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                           "cuobjdump")
    return bundled if os.path.exists(bundled) else (shutil.which("cuobjdump") or "")


def _resources(cubin: bytes) -> Dict[str, int]:
    tool = _cuobjdump()
    if not tool:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        text = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True,
                              text=True, check=False).stdout
    found = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED):(\d+)", text)}
    return {"registers": found.get("reg", -1), "stack_bytes": found.get("stack", -1)}


def compile_variant(variant: Dict, arch: int = 90) -> Dict:
    """Compile one variant for ``sm_<arch>``; return its name, resources and compile time."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel, dtype = _unwrap(variant["kernel"]), variant["dtype"]
    consts = {k: v for k, v in variant["consts"].items() if k != "num_warps"}
    warps = variant["consts"].get("num_warps", 4)
    label = (f"{kernel.__name__} {_TYPE_NAMES[dtype]} warps={warps} "
             + " ".join(f"{k}={v}" for k, v in sorted(consts.items())))
    start = time.perf_counter()
    try:
        src = ASTSource(kernel, _signature(kernel, dtype, consts), constexprs=consts)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": warps})
    except Exception as exc:  # report every failure, keep compiling the rest
        return {"variant": label, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    result = {"variant": label, "ok": True, "seconds": round(time.perf_counter() - start, 2),
              "shared_bytes": int(compiled.metadata.shared)}
    result.update(_resources(compiled.asm["cubin"]))
    return result


def main(argv=None) -> int:
    """Command line: compile every variant, print one line (or a JSON list); exit 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90")
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 256])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 1024])
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    args = parser.parse_args(argv)
    if _common.interpreting():
        parser.error("TRITON_INTERPRET=1 is set: the kernels are interpreted, not compiled")
    results = [compile_variant(v, args.arch) for v in variants(args.hidden, rows=args.rows)]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            state = (f"regs={r.get('registers')} stack={r.get('stack_bytes')}B "
                     f"smem={r['shared_bytes']}B {r['seconds']}s" if r["ok"] else r["error"])
            print(f"{'ok ' if r['ok'] else 'FAIL'} {r['variant']}: {state}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
