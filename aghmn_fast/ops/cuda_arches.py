"""The GPU code the CUDA kernels are built with: the one list that setup.py (nvcc's ``-gencode``
flags), CMakeLists.txt (``CMAKE_CUDA_ARCHITECTURES``) and :mod:`aghmn_fast.ops.extension` (which
GPUs can run the build) read.

Plain literals and no imports: setup.py runs this file on its own (the package cannot be
imported before it is built) and CMake reads the two assignments with a regular expression, so
keep each on one line. SASS for sm_XY runs on compute capability X.Y' with Y' >= Y of the same
major X; PTX for compute_XY is compiled by the driver for any capability >= X.Y (newer GPUs:
forward compatibility).
"""
SASS_ARCHES = ((8, 0), (9, 0))
PTX_ARCH = (9, 0)


def gencode_flags():
    """nvcc's ``-gencode`` flags: SASS for every architecture of ``SASS_ARCHES``, PTX for
    ``PTX_ARCH``."""
    flags = [f"-gencode=arch=compute_{a}{b},code=sm_{a}{b}" for a, b in SASS_ARCHES]
    a, b = PTX_ARCH
    return flags + [f"-gencode=arch=compute_{a}{b},code=compute_{a}{b}"]
