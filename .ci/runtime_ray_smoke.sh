#!/usr/bin/env bash
# The torch-free Ray install as a user does it: the runtime wheel with its [ray] extra in a fresh
# venv outside the repository (no torch installed), and .ci/ray_smoke.py there: aghmn-serve --ray
# serves a tiny model exported by this checkout, its replica never maps torch, SIGTERM exits 0.
# Needs redis-server (.ci/run installs it). Usage: .ci/runtime_ray_smoke.sh [PYTHON of the
# development venv, default .venv/bin/python]
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${1:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/dist" ./runtime
WHEEL=$(ls "$WORK"/dist/aghmn_fast_runtime-*.whl)
"$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import runtime_common as c; \
c.export(c.tiny_checkpoint(sys.argv[1]), sys.argv[2])" "$WORK/tiny.pt" "$WORK/tiny.aghmn"
unset PYTHONPATH   # the fresh venv imports what it installed, never this checkout
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$WHEEL[ray]"
if "$WORK/venv/bin/python" -m pip show torch >/dev/null 2>&1; then
    echo "torch was installed with aghmn-fast-runtime[ray]"; exit 1
fi
cp "$REPO/.ci/ray_smoke.py" "$WORK/ray_smoke.py"
cd "$WORK"
"$WORK/venv/bin/python" ray_smoke.py "$WORK/tiny.aghmn"
