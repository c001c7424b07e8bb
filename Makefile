# The two commands a newcomer needs: `make demo` and `make test`. Both start from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# MELD: DATA=DIR, else $AGHMN_DATA, else ../shared/data/meld (a data folder beside the checkout).
DATA ?= $(or $(AGHMN_DATA),../shared/data/meld)
DEMO_ARGS ?=

.PHONY: install build test test-matrix demo bench bench-pytest wheel-smoke cmake-check lint runtime-check clean runtime-build runtime-wheel-smoke runtime-ray-smoke

# The environment: torch and triton at the versions in constraints.txt (a CPU machine), the
# server's distribution aghmn-fast-runtime (runtime/: the serving code, torch-free) with its serve
# and ray extras, then the package in editable mode with its test extras, as the README's install
# lines do (runtime first: aghmn-fast's [serve] and [ray] are aghmn-fast-runtime's, built from
# this checkout, not fetched); the extension is then built in place by `build` (incremental,
# ninja) rather than once more by pip.
$(VENV)/.installed: pyproject.toml setup.py constraints.txt runtime/pyproject.toml runtime/setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch "setuptools>=64" wheel ninja "pybind11>=2.12"
	$(PY) -m pip install -q -c constraints.txt --no-build-isolation -e "./runtime[serve,ray]"
	AGHMN_SKIP_EXT=1 $(PY) -m pip install -q -c constraints.txt --no-build-isolation -e ".[test]"
	touch $@

install: $(VENV)/.installed

build: install
	$(PY) setup.py -q build_ext --inplace

# The README's test command: every test but the full variant matrices (pytest exit 5, nothing
# collected, is a pass). test-matrix: those matrices (minutes each); CI runs both.
PYTEST = AGHMN_DATA=$(DATA) $(PY) -m pytest -q -x tests -m
PASS_IF_NONE = rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test: build
	$(PYTEST) "not matrix"; $(PASS_IF_NONE)

test-matrix: build
	$(PYTEST) matrix; $(PASS_IF_NONE)

# Train BiF-AGRU on MELD with the authors' recipe (default wordllama 256-d word vectors;
# DEMO_ARGS="--embeddings glove" for the paper-faithful GloVe 50-d model), evaluate on test, then
# stream a test dialogue.
demo: build
	$(VENV)/bin/aghmn-fast train --data $(DATA) --out runs/demo --overwrite $(DEMO_ARGS)
	$(VENV)/bin/aghmn-fast demo-stream --checkpoint runs/demo/best.pt --data $(DATA)

# The benchmark report (JSON first, Markdown, plots) in a new folder aghmn-bench-<date>-<time>/;
# `python benchmarks/refresh_readme.py DIR/<machine>/bench.json` then refreshes the README section.
bench: build
	$(VENV)/bin/aghmn-fast bench --device cpu --data $(DATA)

# The pytest-benchmark suites of the ops.
bench-pytest: build
	$(PY) -m pytest benchmarks/ --benchmark-only

# The install a user does: build the wheel, install it with its dependencies into a fresh venv
# outside the repository, and run the smoke script there.
wheel-smoke: build
	.ci/wheel_smoke.sh $(PY)

# The torch-free runtime's Python module (aghmn_runtime) built in place in runtime/, and its wheel
# (aghmn-fast-runtime) installed into a fresh venv and smoke-tested there, torch absent (with its
# [serve] extra: aghmn-serve, and the venv's size).
runtime-build: install
	cd runtime && $(abspath $(PY)) setup.py -q build_ext --inplace

runtime-wheel-smoke: build
	.ci/runtime_wheel_smoke.sh $(PY)

# The same, then the torch-free Ray install: the [ray] extra in that venv, aghmn-serve --ray there.
runtime-ray-smoke: build
	.ci/runtime_wheel_smoke.sh $(PY) --ray

# Framework-free kernel core (and CUDA with nvcc when present): a compile check, no torch.
cmake-check:
	cmake -S . -B cmake-build -DCMAKE_BUILD_TYPE=Release -DAGHMN_WERROR=ON >/dev/null
	cmake --build cmake-build -j 2
	ctest --test-dir cmake-build --output-on-failure

# The linter (ruff, configured in pyproject.toml, version pinned in constraints.txt): a check,
# never a rewrite (no --fix, no format).
$(VENV)/bin/ruff: $(VENV)/.installed constraints.txt
	$(PY) -m pip install -q -c constraints.txt ruff
	touch $@

lint: $(VENV)/bin/ruff
	$(VENV)/bin/ruff check .

# The native runtime (docs/RUNTIME.md) under AddressSanitizer + UBSan: the committed golden model
# files (csrc/runtime/tests/golden/) against their expected probabilities, the example C program
# on one and the fuzz test of 10,000 mutated files of each (ctest); and the gate math's unit
# test (exp_vec's extremes) under UBSan. No exported model of its own: no torch needed.
RUNTIME_BUILD ?= cmake-build-runtime
runtime-check:
	cmake -S . -B $(RUNTIME_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAGHMN_SANITIZE=ON >/dev/null
	cmake --build $(RUNTIME_BUILD) -j 2 --target aghmn_classify fuzz_model golden_test test_gate_math
	ctest --test-dir $(RUNTIME_BUILD) -R '^(runtime_|test_gate_math$$)' --output-on-failure

# The runtime as a C/C++ package (docs/RUNTIME.md), with GCC and with Clang, -Wall -Wextra
# -Werror: the library, the example and the kernel core's tests build warning-free; the shared
# library exports the C API only; `cmake --install` into a temporary prefix, moved, serves a
# consumer project (find_package) and a pkg-config build of the example, which classify a dialogue
# with the committed golden BiGRU model (no torch needed).
.PHONY: runtime-package-check
PACKAGE_BUILD ?= cmake-build-package
runtime-package-check:
	mkdir -p $(PACKAGE_BUILD)
	for cc in gcc:g++ clang:clang++; do \
		cmake -S . -B $(PACKAGE_BUILD)/$${cc%%:*} -DCMAKE_BUILD_TYPE=Release -DAGHMN_WERROR=ON \
			-DCMAKE_C_COMPILER=$${cc%%:*} -DCMAKE_CXX_COMPILER=$${cc##*:} \
			>/dev/null && \
		cmake --build $(PACKAGE_BUILD)/$${cc%%:*} -j 2 && \
		ctest --test-dir $(PACKAGE_BUILD)/$${cc%%:*} -E '^runtime_fuzz_model' --output-on-failure \
		|| exit 1; \
	done

clean:
	rm -rf build cmake-build cmake-build-runtime $(PACKAGE_BUILD) aghmn_fast/_C*.so *.egg-info runtime/build runtime/_vendor runtime/*.egg-info runtime/aghmn_runtime/_native*.so
