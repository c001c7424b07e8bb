"""Compile check of the CUDA sources with nvcc (no GPU needed).

The kernels (csrc/<op>/<op>_kernels.cu) are compiled with the architectures of setup.py's nvcc
flags (SASS for sm_80 and sm_90, PTX for compute_90) and the flags of the CUDA block of
CMakeLists.txt (`make cmake-check`): warnings are errors, and ptxas reports each kernel's
registers, stack frame and spills, which must all be free of local memory; the object must
embed the PTX (forward compatibility). The bindings (csrc/<op>/<op>_cuda.cu, torch headers) are
compile-checked too, and the CUDA backend's capability table must match the built
architectures.
"""
import pathlib
import re
import runpy
import shutil
import subprocess

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
INCLUDE = CSRC  # includes read "common/...", "agru/...", as setup.py and CMakeLists.txt give them
ARCHS = ("80", "90")  # SASS


def _arches():
    """The names of aghmn_fast/ops/cuda_arches.py, the one list of GPU architectures."""
    return runpy.run_path(str(ROOT / "aghmn_fast" / "ops" / "cuda_arches.py"))


def _gencode():
    return _arches()["gencode_flags"]()


def _planned_build(monkeypatch, *, torch_cuda, env=()):
    """What setup.py would build, by running it with setuptools' ``setup`` and torch's extension
    classes replaced by recorders: ``None`` when it builds no extension, else (kind, name,
    sources, keyword arguments), kind "cuda" or "cpp". ``torch_cuda``: the CUDA version the
    installed torch reports (None: a CPU build of torch); with one, a toolkit is found."""
    import setuptools
    from torch.utils import cpp_extension
    for name in ("AGHMN_NO_CUDA", "AGHMN_NATIVE", "AGHMN_SKIP_EXT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env:
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/cuda-toolkit" if torch_cuda else None)
    monkeypatch.setattr(cpp_extension, "CUDAExtension",
                        lambda name, sources, **kw: ("cuda", name, sources, kw))
    monkeypatch.setattr(cpp_extension, "CppExtension",
                        lambda name, sources, **kw: ("cpp", name, sources, kw))
    calls = []
    monkeypatch.setattr(setuptools, "setup", lambda **kw: calls.append(kw))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    (kwargs,) = calls
    if "ext_modules" not in kwargs:
        return None
    (extension,) = kwargs["ext_modules"]
    assert "build_ext" in kwargs["cmdclass"]
    return extension


def test_setup_cmake_and_the_backend_read_one_architecture_list(monkeypatch):
    flags = _gencode()
    sass = sorted(re.findall(r"code=sm_(\d+)", " ".join(flags)))
    ptx = re.findall(r"code=compute_(\d+)", " ".join(flags))
    assert sass == sorted(ARCHS) and ptx == ["90"], flags
    # setup.py passes nvcc exactly the list's -gencode flags, and no other architecture
    kind, _, _, kwargs = _planned_build(monkeypatch, torch_cuda="12.8")
    nvcc = kwargs["extra_compile_args"]["nvcc"]
    assert kind == "cuda" and [f for f in nvcc if "arch" in f or "code" in f] == flags, nvcc
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "aghmn_fast/ops/cuda_arches.py" in cmake and not re.search(r"\b[89]0-real\b", cmake)
    from aghmn_fast.ops import extension
    assert extension.SASS_ARCHES == _arches()["SASS_ARCHES"]
    assert extension.PTX_ARCH == _arches()["PTX_ARCH"]


def _under(folder, ext):
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob(f"*.{ext}"))


def test_a_cuda_torch_builds_every_kernel_with_the_cuda_flags(monkeypatch):
    """With a CUDA build of torch and a toolkit: one CUDAExtension of every op folder's C++ and
    CUDA sources (none of the torch-free runtime, whose fuzzer has a ``main``, the ctest sources
    or the ops' SIMT-emulator builds), AGHMN_WITH_CUDA defined, and nvcc without
    --use_fast_math (its tanh.approx breaks the fp32 tolerances)."""
    kind, name, sources, kwargs = _planned_build(monkeypatch, torch_cuda="12.8")
    assert (kind, name) == ("cuda", "aghmn_fast._C")
    left_out = set(_under("csrc/runtime", "cpp") + _under("csrc/tests", "cpp")
                   + [p for p in _under("csrc", "cpp") if p.endswith("_emulated.cpp")])
    assert left_out and not left_out & set(sources)
    assert sorted(sources) == sorted(set(_under("csrc", "cpp") + _under("csrc", "cu")) - left_out)
    assert {"csrc/library.cpp", "csrc/agru/agru_ops.cpp", *(f"csrc/{b}" for b in BINDINGS)} <= set(sources)
    assert ("AGHMN_WITH_CUDA", "1") in kwargs["define_macros"]
    nvcc = kwargs["extra_compile_args"]["nvcc"]
    assert "-O3" in nvcc and not [f for f in nvcc if "fast_math" in f], nvcc
    assert "-fopenmp" in kwargs["extra_compile_args"]["cxx"] and "-fopenmp" in kwargs["extra_link_args"]


@pytest.mark.parametrize("torch_cuda,env", [(None, ()), ("12.8", (("AGHMN_NO_CUDA", "1"),))],
                         ids=["cpu-torch", "AGHMN_NO_CUDA"])
def test_without_cuda_only_the_cpp_sources_are_built(monkeypatch, torch_cuda, env):
    kind, name, sources, kwargs = _planned_build(monkeypatch, torch_cuda=torch_cuda, env=env)
    assert (kind, name) == ("cpp", "aghmn_fast._C")
    assert "csrc/library.cpp" in sources and all(path.endswith(".cpp") for path in sources)
    assert "nvcc" not in kwargs["extra_compile_args"]
    assert not [m for m in kwargs.get("define_macros", []) if m[0] == "AGHMN_WITH_CUDA"]
    assert "-march=native" not in kwargs["extra_compile_args"]["cxx"]  # portable by default


def test_build_options_native_and_skip(monkeypatch):
    _, _, _, kwargs = _planned_build(monkeypatch, torch_cuda=None, env=(("AGHMN_NATIVE", "1"),))
    assert "-march=native" in kwargs["extra_compile_args"]["cxx"]
    assert _planned_build(monkeypatch, torch_cuda=None, env=(("AGHMN_SKIP_EXT", "1"),)) is None


@pytest.mark.skipif(shutil.which("cmake") is None, reason="no cmake")
def test_cmake_reads_the_architecture_list(tmp_path):
    """CMake's parse of cuda_arches.py: SASS-only architectures "-real", SASS+PTX plain."""
    done = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "aghmn_fast CUDA architectures: 80-real;90" in done.stdout


# Mirrors the CUDA block of CMakeLists.txt.
FLAGS = ["-std=c++17", "-O3", "-lineinfo", "-Werror=all-warnings",
         "-Xptxas=-v,--warn-on-spills,--warn-on-local-memory-usage"]
# Kernel entry points per file and architecture: (2 dtypes x 2 tile configurations x weights in
# shared or global memory + the register-resident variants) x (forward, backward), plus the
# window GRU's gather kernels. Register variants (recurrence.cuh, kRegisterSlices): the AGRU in
# float for H <= 64 and H <= 128 and in double for H <= 64; the window GRU in float for H <= 64.
EXPECTED_ENTRIES = {"agru/agru_kernels.cu": 16 + 3 * 2, "window_gru/window_gru_kernels.cu": 22 + 2}
# The torch bindings, one per op with CUDA kernels.
BINDINGS = ("agru/agru_cuda.cu", "window_gru/window_gru_cuda.cu")

_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def _nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA sources are compile-checked where a toolkit exists")
    return nvcc


def parse_ptxas(log):
    """{(kernel, arch): (registers, stack bytes, spill stores, spill loads)} from ptxas -v."""
    report, current, frame = {}, None, None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current, frame = (m.group(1), m.group(2)), None
        elif (m := _FRAME.search(line)) and current:
            frame = tuple(int(g) for g in m.groups())
        elif (m := _REGS.search(line)) and current and frame:
            report[current] = (int(m.group(1)),) + frame
            current = None
    return report


def _cuobjdump(nvcc):
    """cuobjdump next to nvcc, on the PATH, or the one bundled with triton (None if none)."""
    found = shutil.which("cuobjdump", path=str(pathlib.Path(nvcc).parent)) or shutil.which(
        "cuobjdump")
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    bundled = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else None


def test_parse_ptxas_reads_a_report():
    log = ("ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'\n"
           "ptxas info    : Function properties for _Z1kPf\n"
           "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 40 registers, used 1 barriers\n")
    assert parse_ptxas(log) == {("_Z1kPf", "sm_90"): (40, 8, 4, 12)}


@pytest.fixture(scope="module")
def ptxas_reports(tmp_path_factory):
    """{file: (nvcc return code, log, object path)} of each kernel file, compiled once for the
    module (both files at once: the machine has two cores)."""
    nvcc = _nvcc()
    arch = _gencode()
    out = tmp_path_factory.mktemp("kernels")
    jobs = {}
    for name in EXPECTED_ENTRIES:
        obj = out / (pathlib.Path(name).name + ".o")
        cmd = [nvcc, *FLAGS, *arch, f"-I{INCLUDE}", "-c", str(CSRC / name), "-o", str(obj)]
        jobs[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True), obj)
    reports = {}
    for name, (job, obj) in jobs.items():
        log, _ = job.communicate(timeout=300)
        reports[name] = (job.returncode, log, obj)
    return reports


@pytest.mark.matrix
def test_kernels_compile_for_sm80_sm90_without_spills(ptxas_reports):
    nvcc = _nvcc()
    for name, (returncode, log, obj) in ptxas_reports.items():
        assert returncode == 0, f"nvcc failed on {name}:\n{log}"
        report = parse_ptxas(log)
        for sm in ARCHS:
            entries = {k: v for k, v in report.items() if k[1] == f"sm_{sm}"}
            assert len(entries) == EXPECTED_ENTRIES[name], (name, sm, sorted(entries))
        for (kernel, sm), (regs, stack, stores, loads) in sorted(report.items()):
            print(f"{name} {sm} regs={regs} stack={stack} spill={stores}/{loads} {kernel}")
            assert (stack, stores, loads) == (0, 0, 0), f"{kernel} ({sm}) uses local memory"
        cuobjdump = _cuobjdump(nvcc)
        if cuobjdump:
            listed = subprocess.run([cuobjdump, "--list-ptx", str(obj)],
                                    capture_output=True, text=True, timeout=60).stdout
            assert "sm_90" in listed, f"{name}: no compute_90 PTX embedded:\n{listed}"


# The register-resident variants (WeightsIn::kRegisters = 2 in the mangled name), forward and
# backward: AGRU float slices 16 and 32 and double slice 16; window GRU float slice 16.
REGISTER_ENTRIES = {"agru/agru_kernels.cu": 6, "window_gru/window_gru_kernels.cu": 2}
_REGISTER_KERNEL = re.compile(r"9WeightsInE2ELi(\d+)E")


@pytest.mark.matrix
def test_register_kernels_hold_weight_hh_without_spills(ptxas_reports):
    """Every register-resident kernel keeps its weight slice in registers: no stack frame, no
    spills, and at most the 128 registers a thread of its 512-thread CTA may have (65,536 per
    SM), on sm_80 and sm_90."""
    for name, (returncode, log, _) in ptxas_reports.items():
        assert returncode == 0, f"nvcc failed on {name}:\n{log}"
        found = {k: v for k, v in parse_ptxas(log).items() if _REGISTER_KERNEL.search(k[0])}
        for sm in ARCHS:
            assert sum(k[1] == f"sm_{sm}" for k in found) == REGISTER_ENTRIES[name], (name, sm)
        for (kernel, sm), (regs, stack, stores, loads) in sorted(found.items()):
            slice_len = _REGISTER_KERNEL.search(kernel).group(1)
            print(f"{name} {sm} slice={slice_len} regs={regs} spill={stores}/{loads} {kernel}")
            assert (stack, stores, loads) == (0, 0, 0), f"{kernel} ({sm}) spills"
            assert regs <= 65536 // 512, f"{kernel} ({sm}): {regs} registers"


@pytest.mark.matrix
@pytest.mark.parametrize("binding", BINDINGS)
def test_binding_compiles_against_torch_headers(tmp_path, binding):
    """A CUDA binding with the installed torch's headers (~30 s): here, where torch has no CUDA,
    the only check the binding gets before a CUDA-enabled build compiles it for real."""
    nvcc = _nvcc()
    from torch.utils.cpp_extension import include_paths
    includes = [f"-I{p}" for p in include_paths()]
    if not (pathlib.Path(include_paths()[0]) / "c10" / "cuda" / "CUDAGuard.h").exists():
        pytest.skip("the installed torch ships no c10/cuda headers")
    # torch's headers need C++20 (as torch's own extension build uses); without a CUDA build of
    # torch its generated cuda_cmake_macros.h is missing, which only sets export macros.
    cmd = [nvcc, "-std=c++20", "-O0", "-Werror=all-warnings", "-gencode=arch=compute_90,code=sm_90",
           "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", f"-I{INCLUDE}", *includes, "-c",
           str(CSRC / binding), "-o", str(tmp_path / "binding.o")]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    assert torch.__version__  # the headers checked are this torch's
