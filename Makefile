# The two commands: `make demo` and `make test`. Each sets up .venv by itself.
# Every requirement is written once, in pyproject.toml; .ci/requirements.py reads it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
REQS   := $(BIN)/python .ci/requirements.py
CORE   := $(wildcard src/rnnfast/*.pyx src/rnnfast/*.pxd src/rnnfast/*.h src/rnnfast/c/*.h src/rnnfast/c/*/*.h) \
          setup.py pyproject.toml
PYTEST_ARGS ?=

PYX := $(shell find src -name '*.pyx' -o -name '*.pxd')
# ruff, cython-lint and mypy cover the whole tree (src/, tests/, bench/, examples/, setup.py)
RUFF_SCOPE := .

.PHONY: demo test test-fast lint lint-src format build bench bench-quick compare compare-quick clean fuzz docs wheel

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(BIN)/python -c "import tomllib" 2>/dev/null || $(PIP) install -q tomli

# build and run-time requirements ([build-system] requires, [project] dependencies)
$(VENV)/.deps: pyproject.toml | $(BIN)/python
	$(REQS) build run > $(VENV)/requirements-deps.txt
	$(PIP) install -q -r $(VENV)/requirements-deps.txt
	touch $@

# the frameworks the tests compare against (extra "test"; torch pinned: the CPU build)
$(VENV)/.deps-test: pyproject.toml $(VENV)/.deps
	$(REQS) test > $(VENV)/requirements-test.txt
	$(PIP) install -q -r $(VENV)/requirements-test.txt
	touch $@

# the linters (extra "lint") and the packaging tools (extras "dist" and "wheel")
$(VENV)/.deps-lint: pyproject.toml $(VENV)/.deps
	$(REQS) lint dist wheel > $(VENV)/requirements-lint.txt
	$(PIP) install -q -r $(VENV)/requirements-lint.txt
	touch $@

# the compiled core, installed editable (rebuilt when a core source changes)
$(VENV)/.built: $(CORE) $(VENV)/.deps
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

demo: build
	$(BIN)/rnnfast demo

# everything, the slow tests included
test: $(VENV)/.deps-test build
	KERAS_BACKEND=torch $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# all but the tests marked slow (about a tenth of them, most of the time)
test-fast: $(VENV)/.deps-test build
	KERAS_BACKEND=torch $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff (lint and format), cython-lint, mypy (its files: [tool.mypy] in pyproject.toml)
lint: $(VENV)/.deps-lint
	$(BIN)/ruff check $(RUFF_SCOPE)
	$(BIN)/ruff format --check $(RUFF_SCOPE)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/cython-lint $(PYX)
	$(BIN)/mypy

# what lint would say on src/ (a report: never fails)
lint-src: $(VENV)/.deps-lint
	-$(BIN)/ruff check --statistics src
	-$(BIN)/ruff check --output-format concise src | sed 's/:[0-9]*:[0-9]*:.*//' | sort | uniq -c | sort -rn
	-$(BIN)/ruff format --check --output-format concise src
	-PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/cython-lint $(PYX)
	-$(BIN)/mypy src/rnnfast

# rewrite what lint checks: formatting and the fixable findings
format: $(VENV)/.deps-lint
	$(BIN)/ruff check --fix --exit-zero $(RUFF_SCOPE)
	$(BIN)/ruff format $(RUFF_SCOPE)

# long fuzzing of every loader (tests/fuzz/README.md): FUZZ_SECONDS in all, findings in build/fuzz-findings
FUZZ_SECONDS ?= 600
fuzz: $(VENV)/.deps-test build
	KERAS_BACKEND=torch $(BIN)/python tests/fuzz/run_fuzz.py --seconds $(FUZZ_SECONDS) --out build/fuzz-findings

# the API reference site (extra "docs")
$(VENV)/.deps-docs: pyproject.toml $(VENV)/.deps
	$(REQS) docs > $(VENV)/requirements-docs.txt
	$(PIP) install -q -r $(VENV)/requirements-docs.txt
	touch $@

docs: $(VENV)/.deps-docs build
	$(BIN)/python -m sphinx -E -b html -W --keep-going -n -q docs build/docs
	@echo "docs: build/docs/index.html"

# a manylinux wheel in wheelhouse/: built, then repaired by auditwheel (the OpenMP runtime
# vendored; .ci/repair_wheel.py says which libgomp and why the tag is what it is)
wheel: $(VENV)/.deps-lint
	rm -rf build/wheel
	$(PIP) wheel -q --no-build-isolation --no-deps -w build/wheel .
	$(BIN)/python .ci/repair_wheel.py build/wheel/rnnfast-*.whl --out wheelhouse

$(VENV)/.deps-bench: $(VENV)/.deps-test
	$(PIP) install -q matplotlib
	touch $@

bench: $(VENV)/.deps-bench build
	$(BIN)/python bench/bench_engine.py

bench-quick: $(VENV)/.deps-bench build
	$(BIN)/python bench/bench_engine.py --quick

# the peers (PyTorch, ONNX Runtime, OpenVINO, TensorFlow + Keras) in their own venv,
# so that TensorFlow's pins never touch the test environment (extra "bench")
BENCH := .venv-bench
$(BENCH)/.deps: pyproject.toml $(CORE)
	@echo "compare: installing the peers into $(BENCH) (extra 'bench': TensorFlow 1.3 GB, PyTorch (CPU)"
	@echo "0.75 GB, OpenVINO 0.2 GB, ONNX Runtime, Keras, matplotlib; about 2.9 GB in all, measured)"
	$(PYTHON) -m venv $(BENCH)
	$(BENCH)/bin/python -m pip install -q --upgrade pip
	$(BENCH)/bin/python -c "import tomllib" 2>/dev/null || $(BENCH)/bin/python -m pip install -q tomli
	$(BENCH)/bin/python .ci/requirements.py build run bench > $(BENCH)/requirements.txt
	$(BENCH)/bin/python -m pip install --progress-bar on -r $(BENCH)/requirements.txt
	$(BENCH)/bin/python -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# COMPARE_ARGS: more options, e.g. COMPARE_ARGS="--model my.keras" (your own file)
COMPARE_ARGS ?=
compare: $(BENCH)/.deps
	$(BENCH)/bin/python bench/compare.py $(COMPARE_ARGS)

compare-quick: $(BENCH)/.deps
	$(BENCH)/bin/python bench/compare.py --quick $(COMPARE_ARGS)

clean:
	rm -rf build dist wheelhouse src/*.egg-info src/rnnfast/*.so src/rnnfast/_kernels.c
