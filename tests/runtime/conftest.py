import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from runtime_lib import Runtime, build_runtime  # noqa: E402


@pytest.fixture(scope="session")
def runtime(tmp_path_factory) -> Runtime:
    """The C API of libaghmn_runtime.so ($AGHMN_RUNTIME_LIB, else built once with CMake)."""
    return Runtime(build_runtime(tmp_path_factory.mktemp("runtime-build")))
