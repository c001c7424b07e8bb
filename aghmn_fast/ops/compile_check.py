"""Compile the Triton kernels for an NVIDIA architecture without a GPU; report their resources.

The interpreter checks what the kernels compute, not whether the GPU compiler accepts them or
how they use registers. This runs Triton's real pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin,
with the ``ptxas`` shipped in the triton wheel) for the launch configurations the backend picks,
and reads registers, spill stack and shared memory from the cubin with ``cuobjdump``.

Usage (on a machine without a GPU the backend refuses to import unless told to compile only)::

    AGHMN_TRITON_COMPILE_ONLY=1 python -m aghmn_fast.ops.compile_check \
        [--arch 90] [--subset full|representative] [--jobs N] [--json]

The full matrix (every hidden size of :data:`HIDDEN_SIZES`, dtype, tile size, TF32 setting and
direction of the kernels with a ``REVERSE`` argument, with 16-byte aligned pointers as torch's
allocator gives) is a slow-marked test; the representative subset is the fast CI test. The
kernels are what each op folder declares (``OpSpec.triton_compile``, a
:class:`~aghmn_fast.ops.triton_common.CompileTargets`): nothing here names an op.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import triton

from . import triton_common as _common
from .catalog import specs

__all__ = ["variants", "representative_variants", "compile_variant", "spill_budget", "label",
           "targets", "kernels", "HIDDEN_SIZES", "DTYPES", "ROWS", "main"]

_TYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
               torch.float64: "fp64", torch.int64: "i64"}


def _unwrap(kernel):
    return getattr(kernel, "fn", kernel) if not hasattr(kernel, "arg_names") else kernel


@functools.lru_cache(maxsize=None)
def targets() -> Tuple[_common.CompileTargets, ...]:
    """What every op folder declares for compilation (``OpSpec.triton_compile``), in folder
    order; ops without Triton kernels declare nothing."""
    found = (spec.triton_compile() for spec in specs())
    return tuple(t for t in found if t is not None)


def _kernels_of(target: _common.CompileTargets) -> List:
    return [_unwrap(k) for k in target.recurrences] + [_unwrap(k) for k, _ in target.per_hidden]


@functools.lru_cache(maxsize=None)
def kernels() -> Dict[str, object]:
    """Every declared kernel by its function name (how a worker process finds it)."""
    return {k.__name__: k for target in targets() for k in _kernels_of(target)}


@functools.lru_cache(maxsize=None)
def _target_of(name: str) -> _common.CompileTargets:
    return next(t for t in targets() if name in {k.__name__ for k in _kernels_of(t)})


def _signature(kernel, dtype: torch.dtype, consts: Dict) -> Dict[str, str]:
    acc = _common.state_dtype(dtype)
    target = _target_of(_unwrap(kernel).__name__)
    sig = {}
    for name in _unwrap(kernel).arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            t = (torch.int64 if name in target.index_ptrs
                 else acc if name in target.state_ptrs else dtype)
            sig[name] = "*" + _TYPE_NAMES[t]
        else:
            sig[name] = "i32"
    return sig


#: Hidden sizes the launchers must compile for: the paper's 100, powers of two, and 300 (a
#: padded size past 256, where the weights stop fitting in registers).
HIDDEN_SIZES = (100, 128, 256, 300)
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
#: Row counts that reach every tile size and warp count :func:`_common.choose_config` picks.
ROWS = (1, 2, 4, 1024)

#: Local-memory (stack) bytes a variant may use in full fp32/fp64 precision: a few bytes of
#: loop-invariant values at padded sizes up to 256, a small spill at HP = 512 (H = 300, weights
#: streamed from L2 with 128 registers per thread). TF32 variants (opt-in) are reported only.
SPILL_BUDGET = {256: 64, 512: 256}


def spill_budget(variant: Dict) -> Optional[int]:
    """Stack bytes allowed for ``variant`` (None: no budget, reported only)."""
    consts = variant["consts"]
    if consts.get("PRECISION") == "tf32":
        return None
    return SPILL_BUDGET.get(max(256, consts.get("HP", 16)), 0)


def variants(hidden_sizes: Iterable[int] = HIDDEN_SIZES,
             dtypes: Iterable[torch.dtype] = DTYPES,
             rows: Iterable[int] = ROWS,
             tf32: Iterable[bool] = (False, True),
             reverse: Iterable[bool] = (False, True),
             aligned: Iterable[bool] = (True,)) -> List[Dict]:
    """The distinct kernel compilations the backend's launch heuristic asks for.

    ``reverse``: the compile-time direction of the kernels with a ``REVERSE`` argument (the
    others take their direction as a program id, both in one compilation). ``aligned``: pointer
    arguments 16-byte aligned (what torch's allocator gives, and so what a real launch
    specialises on) and/or without that hint (a view with an odd storage offset).
    """
    seen, out = set(), []
    before = _common.allow_tf32()

    def add(kernel, dtype, c, align):
        key = (_unwrap(kernel).__name__, str(dtype), align, tuple(sorted(c.items())))
        if key not in seen:
            seen.add(key)
            out.append(dict(kernel=kernel, dtype=dtype, consts=c, aligned=align))

    try:
        for H in hidden_sizes:
            for dtype in dtypes:
                for align in aligned:
                    for allow in tf32:
                        _common.set_allow_tf32(allow)
                        for n in rows:
                            for target in targets():
                                _, _, consts = _common.launch_constants(n, H, target.gates, dtype)
                                for kernel in target.recurrences:
                                    if "REVERSE" in _unwrap(kernel).arg_names:
                                        for rev in reverse:
                                            add(kernel, dtype, dict(consts, REVERSE=rev), align)
                                    else:
                                        add(kernel, dtype, dict(consts), align)
                    for target in targets():
                        for kernel, constants in target.per_hidden:
                            add(kernel, dtype, constants(H), align)
    finally:
        _common.set_allow_tf32(before)
    return out


def representative_variants() -> List[Dict]:
    """A subset for the fast CI test and a GPU run with little time: every kernel, both
    directions of a ``REVERSE`` kernel, the smallest and largest tiles, every dtype class, the padded sizes 128 (exact
    power of two) and 300 (streamed weights), and one unaligned set."""
    picked = variants((100, 300), (torch.float32, torch.bfloat16), rows=(1, 1024),
                      tf32=(False,))
    picked += variants((128,), (torch.float16, torch.float64), rows=(4,), tf32=(False,),
                       reverse=(False,))
    picked += variants((100,), (torch.float32,), rows=(1024,), tf32=(True,), reverse=(False,),
                       aligned=(False,))
    return picked


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


def _alignment_attrs(kernel, consts: Dict) -> Dict:
    # What a launch with 16-byte aligned tensors specialises on: tt.divisibility=16 on every
    # pointer argument (triton.runtime.jit; the integer arguments are do_not_specialize).
    names = _unwrap(kernel).arg_names
    return {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
            if n.endswith("_ptr") and n not in consts}


def label(variant: Dict) -> str:
    """One-line name of a variant: kernel, dtype, alignment, warps and constexprs."""
    kernel, dtype = _unwrap(variant["kernel"]), variant["dtype"]
    consts = {k: v for k, v in variant["consts"].items() if k != "num_warps"}
    warps = variant["consts"].get("num_warps", 4)
    align = "align=16" if variant.get("aligned", True) else "align=none"
    return (f"{kernel.__name__} {_TYPE_NAMES[dtype]} {align} warps={warps} "
            + " ".join(f"{k}={v}" for k, v in sorted(consts.items())))


def compile_variant(variant: Dict, arch: int = 90) -> Dict:
    """Compile one variant for ``sm_<arch>``; return its name, resources, compile time and
    whether its stack use is within :func:`spill_budget` (``within_budget``)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel, dtype = _unwrap(variant["kernel"]), variant["dtype"]
    consts = {k: v for k, v in variant["consts"].items() if k != "num_warps"}
    warps = variant["consts"].get("num_warps", 4)
    name = label(variant)
    attrs = _alignment_attrs(kernel, consts) if variant.get("aligned", True) else {}
    start = time.perf_counter()
    try:
        src = ASTSource(kernel, _signature(kernel, dtype, consts), constexprs=consts, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": warps})
    except Exception as exc:  # report every failure, keep compiling the rest
        return {"variant": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    result = {"variant": name, "ok": True, "seconds": round(time.perf_counter() - start, 2),
              "shared_bytes": int(compiled.metadata.shared)}
    result.update(_resources(compiled.asm["cubin"]))
    budget = spill_budget(variant)
    result["spill_budget"] = budget
    result["within_budget"] = budget is None or result.get("stack_bytes", 0) <= budget
    return result


def _compile_all(chosen: List[Dict], arch: int, jobs: int, deadline: float) -> List[Dict]:
    """Compile ``chosen`` (in ``jobs`` processes when > 1); variants not started before
    ``deadline`` (a ``time.perf_counter`` value) are reported as not compiled."""
    results: List[Optional[Dict]] = [None] * len(chosen)
    if jobs > 1:
        import concurrent.futures as cf
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding triton state
        with cf.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_compile_by_index, i, _variant_key(v), arch): i
                       for i, v in enumerate(chosen)}
            for fut in cf.as_completed(futures):
                results[futures[fut]] = fut.result()
    else:
        for i, v in enumerate(chosen):
            if time.perf_counter() > deadline:
                break
            results[i] = compile_variant(v, arch)
    return [r if r is not None else {"variant": label(v), "ok": True, "skipped": "deadline"}
            for r, v in zip(results, chosen)]


def _variant_key(v: Dict) -> Dict:
    # A picklable description (kernel by name) for a worker process.
    return dict(kernel=_unwrap(v["kernel"]).__name__, dtype=v["dtype"], consts=v["consts"],
                aligned=v.get("aligned", True))


def _compile_by_index(index: int, key: Dict, arch: int) -> Dict:
    return compile_variant(dict(key, kernel=kernels()[key["kernel"]]), arch)


def main(argv=None) -> int:
    """Command line: compile the variants, print one line each (or a JSON list); exit 1 when one
    fails to compile or spills past its budget."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90")
    parser.add_argument("--subset", choices=("full", "representative"), default="full",
                        help="every variant the launchers can pick (default), or a "
                             "representative subset (the fast CI test, a short GPU run)")
    parser.add_argument("--hidden", type=int, nargs="+", default=None,
                        help="hidden sizes of the full matrix (default: %s)" % (HIDDEN_SIZES,))
    parser.add_argument("--rows", type=int, nargs="+", default=None,
                        help="row counts of the full matrix (default: %s)" % (ROWS,))
    parser.add_argument("--unaligned", action="store_true",
                        help="full matrix: also compile without the 16-byte pointer alignment")
    parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after which no new variant is started (serial runs); "
                             "the rest are listed as skipped")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    args = parser.parse_args(argv)
    if _common.interpreting():
        parser.error("TRITON_INTERPRET=1 is set: the kernels are interpreted, not compiled")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.subset == "representative":
        chosen = representative_variants()
    else:
        chosen = variants(args.hidden or HIDDEN_SIZES, rows=args.rows or ROWS,
                          aligned=(True, False) if args.unaligned else (True,))
    deadline = time.perf_counter() + (args.deadline if args.deadline else float("inf"))
    results = _compile_all(chosen, args.arch, args.jobs, deadline)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            if r.get("skipped"):
                state = "not compiled (deadline)"
            elif r["ok"]:
                state = (f"regs={r.get('registers')} stack={r.get('stack_bytes')}B "
                         f"(budget {r.get('spill_budget')}) smem={r['shared_bytes']}B "
                         f"{r['seconds']}s")
            else:
                state = r["error"]
            flag = "ok " if r["ok"] and r.get("within_budget", True) else "FAIL"
            print(f"{flag} {r['variant']}: {state}")
    bad = [r for r in results if not r["ok"] or not r.get("within_budget", True)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
