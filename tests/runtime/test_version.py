"""One version source: the three AGHMN_RUNTIME_VERSION_* lines of the runtime's header. The
library's aghmn_version(), the CMake-built library's file name (VERSION / SOVERSION), both Python
distributions' setup.py and modules all agree with it."""
import os
import pathlib
import re
import subprocess
import sys

from aghmn_fast._version import HEADER, header_version

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from runtime_common import import_runtime  # noqa: E402


def macros() -> dict:
    text = pathlib.Path(HEADER).read_text()
    return {k: int(v) for k, v in re.findall(r"^#define AGHMN_RUNTIME_VERSION_(\w+) (\d+)$",
                                             text, re.M)}


def test_header_macros_are_the_version():
    m = macros()
    assert header_version() == f"{m['MAJOR']}.{m['MINOR']}.{m['PATCH']}"


def test_library_and_its_file_name_agree(runtime):
    version = header_version()
    assert runtime.lib.aghmn_version().decode().startswith(version + " (model format ")
    # CMake's VERSION / SOVERSION: libaghmn_runtime.so -> .so.MAJOR -> .so.MAJOR.MINOR.PATCH
    real = os.path.realpath(runtime.lib._name)
    if not os.environ.get("AGHMN_RUNTIME_LIB"):
        assert real.endswith(f"libaghmn_runtime.so.{version}"), real


def test_python_distributions_and_modules_agree():
    version = header_version()
    import aghmn_fast
    assert aghmn_fast.__version__ == version
    rt = import_runtime()
    assert rt.__version__ == version and rt._native.version().startswith(version + " ")
    for folder in (ROOT, ROOT / "runtime"):
        done = subprocess.run([sys.executable, "setup.py", "--version"], cwd=folder,
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, AGHMN_SKIP_EXT="1"))
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == version, (folder, done.stdout)
