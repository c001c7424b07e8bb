#!/usr/bin/env bash
# The runtime wheel as a user installs it: build aghmn-fast-runtime (runtime/), check its size
# (<= 2 MB), install it with its one dependency (numpy) into a fresh venv outside the
# repository, check torch is not installed there, and run .ci/runtime_smoke.py there on a tiny
# model exported by this checkout. Then the torch-free server: the same wheel with its [serve]
# extra (aghmn-serve), still no torch, the venv's site-packages at most 150 MB (numpy
# included), and .ci/serve_smoke.py (aghmn-serve serves the tiny model, refuses the checkpoint).
# With --ray, then the torch-free Ray install: the [ray] extra, still no torch, and
# .ci/ray_smoke.py (aghmn-serve --ray; its replica maps no torch; SIGTERM exits 0; needs
# redis-server, which .ci/run installs).
# The wheel is built as a user gets it: from the sdist (which vendors the C++ sources) alone, in a
# folder outside the checkout; sdist and wheel must hold every package of runtime/aghmn_runtime/.
# With auditwheel importable by PYTHON, it also prints the platform tag the wheel can claim.
# Usage: .ci/runtime_wheel_smoke.sh [PYTHON of the development venv, default .venv/bin/python] [--ray]
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${1:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"   # absolute, the venv's link kept
RAY=${2:-}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd runtime && "$PY" setup.py -q sdist -d "$WORK/sdist" >/dev/null)
SDIST=$(ls "$WORK"/sdist/aghmn_fast_runtime-*.tar.gz)
echo "built $(basename "$SDIST"): $(stat -c %s "$SDIST") bytes"
# The wheel from the sdist alone: pip unpacks it under TMPDIR, where no checkout is around.
mkdir -p "$WORK/elsewhere/tmp"
cp "$SDIST" "$WORK/elsewhere/"
(cd "$WORK/elsewhere" && TMPDIR="$WORK/elsewhere/tmp" "$PY" -m pip wheel -q --no-build-isolation \
    --no-deps -w "$WORK/dist" "$WORK/elsewhere/$(basename "$SDIST")")
WHEEL=$(ls "$WORK"/dist/aghmn_fast_runtime-*.whl)
SIZE=$(stat -c %s "$WHEEL")
echo "built $(basename "$WHEEL") from the sdist: $SIZE bytes"
[ "$SIZE" -le 2097152 ] || { echo "the runtime wheel is over 2 MB"; exit 1; }
tar tzf "$SDIST" > "$WORK/sdist.txt"
"$PY" -m zipfile -l "$WHEEL" > "$WORK/wheel.txt"
for init in $(cd runtime && find aghmn_runtime -name __init__.py); do
    grep -qx "aghmn_fast_runtime-[^/]*/$init" "$WORK/sdist.txt" || { echo "sdist lacks $init"; exit 1; }
    grep -q "^$init " "$WORK/wheel.txt" || { echo "wheel lacks $init"; exit 1; }
done
if "$PY" -c "import auditwheel" 2>/dev/null; then
    "$PY" -m auditwheel show "$WHEEL" | tr '\n' ' ' | grep -o 'platform tag: "[^"]*"' || true
fi
"$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import runtime_common as c; \
c.export(c.tiny_checkpoint(sys.argv[1]), sys.argv[2])" "$WORK/tiny.pt" "$WORK/tiny.aghmn"
unset PYTHONPATH   # the fresh venv imports what it installed, never this checkout
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$WHEEL"
if "$WORK/venv/bin/python" -m pip show torch >/dev/null 2>&1; then
    echo "torch was installed with the runtime wheel"; exit 1
fi
cp .ci/runtime_smoke.py "$WORK/runtime_smoke.py"
cd "$WORK"
"$WORK/venv/bin/python" runtime_smoke.py "$WORK/tiny.aghmn"
"$WORK/venv/bin/python" -m pip install -q "$WHEEL[serve]"
if "$WORK/venv/bin/python" -m pip show torch >/dev/null 2>&1; then
    echo "torch was installed with aghmn-fast-runtime[serve]"; exit 1
fi
SITE=$("$WORK/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
SITE_BYTES=$(du -sb "$SITE" | cut -f1)
echo "aghmn-fast-runtime[serve]: site-packages $SITE_BYTES bytes ($((SITE_BYTES / 1000000)) MB)"
[ "$SITE_BYTES" -le 150000000 ] || { echo "the torch-free server install is over 150 MB"; exit 1; }
cp "$REPO/.ci/serve_smoke.py" "$WORK/serve_smoke.py"
"$WORK/venv/bin/python" serve_smoke.py "$WORK/tiny.aghmn" "$WORK/tiny.pt"
[ "$RAY" = "--ray" ] || exit 0
"$WORK/venv/bin/python" -m pip install -q "$WHEEL[ray]"
if "$WORK/venv/bin/python" -m pip show torch >/dev/null 2>&1; then
    echo "torch was installed with aghmn-fast-runtime[ray]"; exit 1
fi
cp "$REPO/.ci/ray_smoke.py" "$WORK/ray_smoke.py"
"$WORK/venv/bin/python" ray_smoke.py "$WORK/tiny.aghmn"
