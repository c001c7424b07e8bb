"""The bf16 stream kernels' gate math (csrc/common/gate_rows_cpu.h): csrc/tests/test_gate_rows.cpp
checks the rational tanh and sigmoid against the exact functions and the whole-row GRU / AGRU
steps on every instruction set (AVX-512 and AVX2 bit for bit equal, all close to the exact
step). Here it is built with the host compiler (plainly and under UBSan) and run."""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "tests" / "test_gate_rows.cpp"
INCLUDE = ROOT / "csrc"


def _build_and_run(extra_flags, binary):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    command = [cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", *extra_flags,
               f"-I{INCLUDE}", str(SOURCE), "-o", str(binary)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, f"build failed:\n{built.stdout}\n{built.stderr}"
    ran = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    checks = int(ran.stdout.split("gate_rows: ")[1].split()[0])
    assert "checks passed" in ran.stdout and checks > 100000  # the loops really ran


def test_gate_rows_host_compiler(tmp_path):
    _build_and_run([], tmp_path / "test_gate_rows")


def test_gate_rows_under_ubsan(tmp_path):
    """No undefined behaviour on any input bit pattern (the rows see NaN, inf and huge values)."""
    _build_and_run(["-fsanitize=undefined", "-fno-sanitize-recover=all"],
                   tmp_path / "test_gate_rows_ubsan")
