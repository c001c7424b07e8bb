"""Builds aghmn_runtime._native: the binding (src/native.cpp) and the runtime's C++ sources
(../csrc/runtime/*.cpp), which include the stream kernel headers (../csrc/stream, ../csrc/common)
of the same repository. Nothing of PyTorch is compiled or linked.

``AGHMN_NATIVE=1`` adds ``-march=native`` (off by default so that wheels stay portable; the
kernels choose AVX2 / AVX-512 at run time either way).
"""
import glob
import os

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")


def runtime_sources():
    """The runtime library's sources; a missing csrc/runtime is a clear error, not an empty
    module (this package is built from a checkout of the repository)."""
    sources = sorted(glob.glob(os.path.join(CSRC, "runtime", "*.cpp")))
    if not sources:
        raise SystemExit(f"no runtime sources in {os.path.join(CSRC, 'runtime')}: build "
                         "aghmn-fast-runtime from a checkout of the aghmn_fast repository")
    # setuptools wants source paths relative to this directory.
    return [os.path.relpath(s, HERE) for s in sources]


# The flags of the torch extension's build of the same kernel (setup.py at the root: -O3, and
# setuptools' -fwrapv, the compiler's default FMA contraction), so probabilities agree bit for bit.
cxx = ["-O3", "-fvisibility=hidden", "-pthread"]   # -pthread: big rounds run on std::threads
if os.environ.get("AGHMN_NATIVE") == "1":
    cxx.append("-march=native")

def headers():
    """What the sources include: a change there rebuilds the module (build_ext --inplace)."""
    found = [glob.glob(os.path.join(CSRC, d, "*.h")) for d in ("runtime", "stream", "common")]
    return sorted(os.path.relpath(h, HERE) for group in found for h in group)


setup(ext_modules=[Pybind11Extension(
    "aghmn_runtime._native",
    ["src/native.cpp"] + runtime_sources(),
    depends=headers() + ["setup.py"],   # new flags rebuild too
    include_dirs=[CSRC],
    cxx_std=17,
    extra_compile_args=cxx,
    extra_link_args=["-s", "-pthread"],   # -s stripped: the wheel stays small
)])
