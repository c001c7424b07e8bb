# The two commands a newcomer needs: `make demo` and `make test`. Both start from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/meld
DEMO_ARGS ?=

.PHONY: install build test demo bench bench-pytest cmake-check clean

$(VENV)/.deps: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The package in editable mode (once), then the extension built in place; `build` recompiles
# only what changed under csrc/ (ninja).
$(VENV)/.installed: $(VENV)/.deps setup.py
	AGHMN_SKIP_EXT=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.installed

build: install
	$(PY) setup.py -q build_ext --inplace

test: build
	$(PY) -m pytest -q -x tests; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

# Train BiF-AGRU on MELD with the authors' recipe, evaluate on test, then stream a test dialogue.
demo: build
	$(VENV)/bin/aghmn-fast train --data $(DATA) --out runs/demo $(DEMO_ARGS)
	$(VENV)/bin/aghmn-fast demo-stream --checkpoint runs/demo/best.pt --data $(DATA)

# The benchmark report (JSON, Markdown, plots under benchmarks/results/<machine>/, README section).
bench: build
	$(VENV)/bin/aghmn-fast bench --device cpu

# The pytest-benchmark suites of the ops.
bench-pytest: build
	$(PY) -m pytest benchmarks/ --benchmark-only

# Framework-free kernel core (and CUDA with nvcc when present): a compile check, no torch.
cmake-check:
	cmake -S . -B cmake-build -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build cmake-build -j 2
	ctest --test-dir cmake-build --output-on-failure

clean:
	rm -rf build cmake-build aghmn_fast/_C*.so *.egg-info
