import os

# Triton kernels run on CPU tensors under the interpreter; it must be set before triton is imported.
if os.environ.get("AGHMN_TRITON_GPU", "0") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


# The tests run tiny ops where extra threads only oversubscribe a 2-core CI machine.
torch.set_num_threads(int(os.environ.get("AGHMN_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long tests (torch.compile, full-data runs); "
                                       "deselect with -m 'not slow'")
    config.addinivalue_line("markers", "matrix: a variant matrix or compile check (the GPU "
                                       "compilers' matrices, the C++ core's instruction sets, "
                                       "inductor): minutes on 2 cores; not in `make test`, run "
                                       "by `make test-matrix` (and CI)")



@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """The CUDA kernels built for the CPU SIMT emulator (tests/cuda_emulator.py), once a session."""
    from cuda_emulator import build_emulator
    return build_emulator(tmp_path_factory.mktemp("emulator"))


@pytest.fixture
def emulated(emulator):
    """The emulator with its default (H100-like) device properties, restored afterwards."""
    emulator.configure()
    yield emulator
    emulator.configure()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """``model_files(window=4, ...)`` -> ``{"torch": .pt, "runtime": .aghmn}``: one small random
    model as a checkpoint and exported for the native runtime, made once per session per options
    (see ``serving_fixtures.ModelFiles``)."""
    from serving_fixtures import ModelFiles
    return ModelFiles(tmp_path_factory.mktemp("engine-models"))
