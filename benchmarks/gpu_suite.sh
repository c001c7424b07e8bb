#!/usr/bin/env bash
# The whole GPU check in one call of at most ~8 minutes (benchmarks/gpu_suite.py does the work):
# env card, build, GPU tests, Triton compile report, correctness of every op in fp32/bf16/fp16,
# timing table, streaming, plots. Every stage runs and reports even if another failed; results go
# to benchmarks/results/<gpu>/ as they come and are mirrored to $OUT when set. No network: pip
# never reaches an index. The last lines printed are the summary table (stage, status, seconds).
#
# Usage: benchmarks/gpu_suite.sh [--budget SECONDS] [--stages env,build,...] [--name DIR] [--dry-run]
# (--dry-run: the stages' worst-case timeouts on this machine and the pytest passes; runs nothing)
# The interpreter is $PYTHON, else .venv/bin/python, else python3.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
exec "$PY" benchmarks/gpu_suite.py "$@"
