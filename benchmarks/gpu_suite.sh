#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with an NVIDIA GPU and no network:
#   1. builds the package in place (C++/CUDA extension) without touching any package index;
#   2. runs every test on the GPU (AGHMN_TRITON_GPU=1: Triton kernels compiled, not
#      interpreted; CUDA tests enabled);
#   3. runs the GPU benchmark table (benchmarks/gpu_bench.py), written to
#      benchmarks/results/gpu/<card>.md and .json.
# Usage: benchmarks/gpu_suite.sh [extra gpu_bench.py arguments, e.g. --no-compile --sweep]
# The interpreter is taken from $PYTHON, else .venv/bin/python, else python3. A log of every
# step goes to <out>/suite.log, <out> = $AGHMN_GPU_OUT or benchmarks/results/gpu. Exit status: non-zero if the build or a test
# failed (the benchmark still runs after failed tests, so that the table is never lost).
set -uo pipefail

cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi
OUT=${AGHMN_GPU_OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
LOG="$OUT/suite.log"
: > "$LOG"

say() { echo "== $*" | tee -a "$LOG"; }

# No network: pip must never reach an index, and builds use the installed torch/setuptools.
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
unset TRITON_INTERPRET

say "machine"
{ nvidia-smi 2>&1 || echo "nvidia-smi not found"; } | tee -a "$LOG"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:
    print("triton unavailable:", exc)
EOF
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no CUDA device visible to torch: nothing to run"
    exit 2
fi

say "build (in place, no network)"
status=0
if ! "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . >>"$LOG" 2>&1; then
    say "pip install -e . failed; trying setup.py build_ext --inplace"
    if ! "$PY" setup.py build_ext --inplace >>"$LOG" 2>&1; then
        say "BUILD FAILED (see $LOG)"
        exit 1
    fi
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
from aghmn_fast import ops
print("backends on cuda:", ops.backends("cuda"))
print("load errors:", ops.backend_errors())
EOF

say "tests on the GPU (AGHMN_TRITON_GPU=1)"
if ! AGHMN_TRITON_GPU=1 "$PY" -m pytest -q -rs tests/ 2>&1 | tee -a "$LOG"; then
    say "TESTS FAILED"
    status=1
fi

say "Triton kernels: offline compile report for this card"
arch=$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(c[0] * 10 + c[1])")
"$PY" -m aghmn_fast.backends.triton.compile_check --arch "$arch" 2>&1 | tee -a "$LOG" || status=1

say "benchmark"
if ! "$PY" benchmarks/gpu_bench.py --out-dir "$OUT" "$@" 2>&1 | tee -a "$LOG"; then
    say "BENCHMARK FAILED"
    status=1
fi
say "benchmark report (aghmn-fast bench: the CPU report's format, under benchmarks/results/<card>/)"
# AGHMN_BENCH_OUT: another results folder; AGHMN_BENCH_ARGS: extra flags, e.g. "--no-compile".
if ! "$PY" -m aghmn_fast.cli bench --device cuda --out-dir "${AGHMN_BENCH_OUT:-benchmarks/results}" \
        --no-readme ${AGHMN_BENCH_ARGS:-} 2>&1 | tee -a "$LOG"; then
    say "BENCHMARK REPORT FAILED (or a backend failed its correctness gate)"
    status=1
fi
say "done (status $status); results in $OUT"
exit $status
