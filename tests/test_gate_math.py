"""The shared per-unit gate math (csrc/common/gate_math.h) on the CPU.

The CPU and CUDA kernels call the same header; csrc/tests/test_gate_math.cpp checks its forward
formulas and its backward against finite differences in float and double, and the vectorisable
float activations at their extremes. Here it is built with the host compiler (plainly and under
UBSan) and, when nvcc is present, as CUDA host code (where the helpers are __host__
__device__), and run.
"""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "tests" / "test_gate_math.cpp"
INCLUDE = ROOT / "csrc"


def _build_and_run(command, binary):
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, f"build failed:\n{built.stdout}\n{built.stderr}"
    ran = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "checks passed" in ran.stdout
    checks = int(ran.stdout.split("gate_math: ")[1].split()[0])
    assert checks > 50000  # 2,000 random units x ~30 checks each: the loop really ran


def test_gate_math_host_compiler(tmp_path):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    binary = tmp_path / "test_gate_math"
    _build_and_run([cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}",
                    str(SOURCE), "-o", str(binary)], binary)


def test_gate_math_under_ubsan(tmp_path):
    """No undefined behaviour (the activations' extremes: exp_vec once overflowed int there)."""
    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no GCC or Clang for -fsanitize=undefined")
    ubsan = ["-fsanitize=undefined", "-fno-sanitize-recover=all"]
    empty = tmp_path / "empty.cpp"
    empty.write_text("int main() { return 0; }\n")
    probe = subprocess.run([cxx, *ubsan, str(empty), "-o", str(tmp_path / "empty")],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode:
        pytest.skip(f"{cxx} cannot link UBSan here: {probe.stderr.strip()[-300:]}")
    binary = tmp_path / "test_gate_math_ubsan"
    _build_and_run([cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", *ubsan,
                    f"-I{INCLUDE}", str(SOURCE), "-o", str(binary)], binary)


def test_gate_math_as_cuda_host_code(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: the header is checked as CUDA code where a toolkit exists")
    binary = tmp_path / "test_gate_math_cuda"
    _build_and_run([nvcc, "-std=c++17", "-O2", "-Werror=all-warnings", "-x", "cu",
                    f"-I{INCLUDE}", str(SOURCE), "-o", str(binary)], binary)
