"""Builds aghmn_runtime._native: the binding (src/native.cpp) and the runtime's C++ sources
(csrc/runtime/*.cpp), which include the stream kernel headers (csrc/stream, csrc/common). Nothing
of PyTorch is compiled or linked.

Where the C++ sources come from: in a checkout of the repository, ``../csrc`` itself (no copy, so
an in-place build follows every edit); in an sdist, the copy ``_vendor/csrc`` that the ``sdist``
command below made of it (git-ignored in the checkout), so that ``pip wheel`` of the sdist works
anywhere. The version is the one of the runtime's header (AGHMN_RUNTIME_VERSION_*), its one source.

``AGHMN_NATIVE=1`` adds ``-march=native`` (off by default so that wheels stay portable; the
kernels choose AVX2 / AVX-512 at run time either way).
"""
import glob
import os
import runpy
import shutil

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT_CSRC = os.path.join(os.path.dirname(HERE), "csrc")
VENDORED_CSRC = os.path.join(HERE, "_vendor", "csrc")
# What the runtime compiles: its own sources and headers, and the kernel headers it includes.
VENDORED_PATTERNS = ("runtime/*.cpp", "runtime/*.h", "stream/*.h", "common/*.h")


def csrc_root() -> str:
    """The checkout's csrc/ when this is a checkout, else the sdist's vendored copy."""
    for root in (CHECKOUT_CSRC, VENDORED_CSRC):
        if os.path.isfile(os.path.join(root, "runtime", "aghmn_runtime.h")):
            return root
    raise SystemExit(f"no runtime sources: neither {CHECKOUT_CSRC} (a checkout of the aghmn_fast "
                     f"repository) nor {VENDORED_CSRC} (an sdist made by `setup.py sdist`) exists")


def version(root: str) -> str:
    """MAJOR.MINOR.PATCH of the runtime's header (AGHMN_RUNTIME_VERSION_*)."""
    parse = runpy.run_path(os.path.join(HERE, "header_version.py"))["header_version"]
    return parse(os.path.join(root, "runtime", "aghmn_runtime.h"))


def relative(paths):
    """setuptools wants source paths relative to this directory."""
    return sorted(os.path.relpath(p, HERE) for p in paths)


def sources(root: str):
    """The module's sources: the binding and the runtime library's .cpp files."""
    found = glob.glob(os.path.join(root, "runtime", "*.cpp"))
    if not found:
        raise SystemExit(f"no runtime sources in {os.path.join(root, 'runtime')}")
    return ["src/native.cpp"] + relative(found)


def headers(root: str):
    """What the sources include: a change there rebuilds the module (build_ext --inplace)."""
    return relative(h for d in ("runtime", "stream", "common")
                    for h in glob.glob(os.path.join(root, d, "*.h")))


class VendoringSdist(sdist):
    """sdist that first copies the C++ sources of the checkout into _vendor/csrc and builds the
    extension from there, so the archive holds every file the wheel build compiles."""

    def run(self):
        if os.path.isdir(CHECKOUT_CSRC):
            shutil.rmtree(VENDORED_CSRC, ignore_errors=True)
            for pattern in VENDORED_PATTERNS:
                for src in glob.glob(os.path.join(CHECKOUT_CSRC, pattern)):
                    dst = os.path.join(VENDORED_CSRC, os.path.relpath(src, CHECKOUT_CSRC))
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copy2(src, dst)
        for ext in self.distribution.ext_modules:
            ext.sources = sources(VENDORED_CSRC)
            ext.depends = headers(VENDORED_CSRC) + ["setup.py"]
            ext.include_dirs = [os.path.join(VENDORED_CSRC, "runtime"), VENDORED_CSRC]
        super().run()


# The flags of the torch extension's build of the same kernel (setup.py at the root: -O3, and
# setuptools' -fwrapv, the compiler's default FMA contraction), so probabilities agree bit for bit.
cxx = ["-O3", "-fvisibility=hidden", "-pthread"]   # -pthread: big rounds run on std::threads
if os.environ.get("AGHMN_NATIVE") == "1":
    cxx.append("-march=native")

ROOT = csrc_root()
setup(
    version=version(ROOT),
    cmdclass={"sdist": VendoringSdist},
    ext_modules=[Pybind11Extension(
        "aghmn_runtime._native",
        sources(ROOT),
        depends=headers(ROOT) + ["setup.py"],   # new flags rebuild too
        # <aghmn_runtime.h> as an embedder includes it; "runtime/...", "stream/..." for the sources
        include_dirs=[os.path.join(ROOT, "runtime"), ROOT],
        cxx_std=17,
        extra_compile_args=cxx,
        extra_link_args=["-s", "-pthread"],   # -s stripped: the wheel stays small
    )],
)
