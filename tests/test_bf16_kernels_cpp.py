"""The bf16 stream kernels' own C++: csrc/tests/test_gate_rows.cpp checks their gate math
(csrc/common/gate_rows_cpu.h: the rational tanh and sigmoid against the exact functions, the
whole-row GRU / AGRU steps on every instruction set, AVX-512 and AVX2 bit for bit equal);
csrc/tests/test_bf16_gemm.cpp their GEMM (csrc/common/bf16_cpu.h: vdpbf16ps, the split pair
words and the float copy all equal to the written-out sum). Here each is built with the host
compiler (plainly and under UBSan) and run."""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
INCLUDE = ROOT / "csrc"
# source -> (the line's prefix, the fewest checks that show its loops ran)
TESTS = {"test_gate_rows": ("gate_rows: ", 100000), "test_bf16_gemm": ("bf16_gemm: ", 160)}


def _build_and_run(name, extra_flags, binary):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    command = [cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", *extra_flags,
               f"-I{INCLUDE}", str(ROOT / "csrc" / "tests" / f"{name}.cpp"), "-o", str(binary)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, f"build failed:\n{built.stdout}\n{built.stderr}"
    ran = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    prefix, fewest = TESTS[name]
    checks = int(ran.stdout.split(prefix)[1].split()[0])
    assert "checks passed" in ran.stdout and checks >= fewest  # the loops really ran


@pytest.mark.parametrize("name", sorted(TESTS))
def test_host_compiler(tmp_path, name):
    _build_and_run(name, [], tmp_path / name)


@pytest.mark.parametrize("name", sorted(TESTS))
def test_under_ubsan(tmp_path, name):
    """No undefined behaviour on any input bit pattern (the rows see NaN, inf and huge values)."""
    _build_and_run(name, ["-fsanitize=undefined", "-fno-sanitize-recover=all"],
                   tmp_path / f"{name}_ubsan")
