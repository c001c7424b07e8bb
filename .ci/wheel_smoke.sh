#!/usr/bin/env bash
# The install a user does, checked on every submission: build the wheel with the development
# environment's torch, install it (and the dependencies it declares) into a fresh venv outside
# the repository, and run .ci/smoke.py there, away from the source tree.
# Usage: .ci/wheel_smoke.sh [PYTHON of the development venv, default .venv/bin/python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/dist" .
WHEEL=$(ls "$WORK"/dist/aghmn_fast-*.whl)
echo "built $(basename "$WHEEL")"
TORCH=$(grep -E '^torch==' constraints.txt)
python3 -m venv "$WORK/venv"
# torch first, at the version the wheel was built against; then the wheel brings the rest.
"$WORK/venv/bin/python" -m pip install -q "$TORCH"
"$WORK/venv/bin/python" -m pip install -q "$WHEEL"
cp .ci/smoke.py "$WORK/smoke.py"
cd "$WORK"
PATH="$WORK/venv/bin:$PATH" "$WORK/venv/bin/python" smoke.py
