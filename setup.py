"""The one C++/CUDA extension of aghmn_fast, ``aghmn_fast._C`` (metadata: pyproject.toml).

Install with ``pip install --no-build-isolation -e .`` after torch: the extension is compiled
against the torch of the environment, so pip must not build it in an isolated one.
The sources are organised by op (``csrc/library.cpp`` holds every schema; ``csrc/<op>/`` the kernels
and bindings; ``csrc/common/`` the shared headers; ``csrc/tests/`` and ``csrc/runtime/`` are not part of the
extension).
C++ sources (``*.cpp``) are always built; CUDA sources (``*.cu``) only when the
installed torch has CUDA and a CUDA toolkit is found (set ``AGHMN_NO_CUDA=1`` to skip them).
``AGHMN_SKIP_EXT=1`` installs without building the extension. ``AGHMN_NATIVE=1`` adds
``-march=native`` (off by default so that wheels stay portable).
"""
import glob
import os
import runpy

from setuptools import setup


def cuda_arches():
    """The names of aghmn_fast/ops/cuda_arches.py (the GPU architectures), read without importing
    the package, which needs this build."""
    return runpy.run_path(os.path.join("aghmn_fast", "ops", "cuda_arches.py"))


def extension_sources(ext):
    """The extension's ``*.<ext>`` sources under csrc/: not the core's tests, not the torch-free
    native runtime (``csrc/runtime/``, its own library and wheel, with a fuzzer's ``main``), not
    the ops' SIMT-emulator builds ``*_emulated.cpp``, which only the tests compile."""
    outside = tuple(os.path.join("csrc", folder, "") for folder in ("tests", "runtime"))
    return sorted(path for path in glob.glob(f"csrc/**/*.{ext}", recursive=True)
                  if not path.startswith(outside) and not path.endswith("_emulated.cpp"))


def extensions():
    try:
        import torch
    except ImportError:
        raise SystemExit("aghmn_fast compiles its extension against the installed torch: install "
                         "torch first (e.g. `pip install torch`), then `pip install "
                         "--no-build-isolation .`") from None
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    # The C++ standard is torch's choice (C++20 from 2.13). -fopenmp: at::parallel_for is a header
    # template that runs serially unless the translation unit is built with OpenMP.
    cxx = ["-O3", "-fvisibility=hidden", "-fopenmp"]
    link = ["-fopenmp"]
    if os.environ.get("AGHMN_NATIVE", "0") == "1":
        cxx.append("-march=native")
    include_dirs = [os.path.abspath("csrc")]  # includes read "common/gate_math.h", "agru/..."
    cpu_sources = extension_sources("cpp")
    cuda_sources = extension_sources("cu")
    with_cuda = (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and bool(cuda_sources)
        and os.environ.get("AGHMN_NO_CUDA", "0") != "1"
    )
    if with_cuda:
        # no --use_fast_math: its tanh.approx (rel. error ~5e-4) would break the fp32 tolerances
        # --threads=0: the targets compiled in parallel; the architectures (SASS, and PTX that
        # newer GPUs JIT-compile) are the one list of aghmn_fast/ops/cuda_arches.py
        nvcc = ["-O3", "-lineinfo", "--threads=0", *cuda_arches()["gencode_flags"]()]
        return [CUDAExtension("aghmn_fast._C", cpu_sources + cuda_sources,
                              include_dirs=include_dirs,
                              define_macros=[("AGHMN_WITH_CUDA", "1")],
                              extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                              extra_link_args=link)]
    return [CppExtension("aghmn_fast._C", cpu_sources, include_dirs=include_dirs,
                         extra_compile_args={"cxx": cxx}, extra_link_args=link)]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension
    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


# AGHMN_SKIP_EXT=1: install the Python package only (the Makefile then builds the extension
# in place once, incrementally, instead of pip compiling it again in a temporary directory).
# The version: the runtime header's AGHMN_RUNTIME_VERSION_* (docs/RUNTIME.md, "Versions and ABI").
HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = runpy.run_path(os.path.join(HERE, "runtime", "header_version.py"))["header_version"](
    os.path.join(HERE, "csrc", "runtime", "aghmn_runtime.h"))
setup(version=VERSION, **({} if os.environ.get("AGHMN_SKIP_EXT", "0") == "1"
                          else {"ext_modules": extensions(), "cmdclass": cmdclass()}))
