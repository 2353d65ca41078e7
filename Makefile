# The two commands: `make demo` and `make test`. Each sets up .venv by itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
CORE   := $(wildcard src/rnnfast/*.pyx src/rnnfast/*.pxd src/rnnfast/*.h) setup.py pyproject.toml
PYTEST_ARGS ?=

.PHONY: demo test build bench bench-quick compare compare-quick clean fuzz docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# run-time and build dependencies
$(VENV)/.deps: pyproject.toml | $(BIN)/python
	$(PIP) install -q "setuptools>=64" wheel "Cython>=3.0" "numpy>=1.22" "scipy>=1.11" "threadpoolctl>=3.1" "h5py>=3"
	touch $@

# the frameworks the tests compare against (torch pinned: the CPU build)
$(VENV)/.deps-test: pyproject.toml $(VENV)/.deps
	$(PIP) install -q "pytest>=7" "torch==2.13.0" "keras>=3" "h5py>=3" "safetensors>=0.4" "hypothesis>=6"
	touch $@

# the compiled core, installed editable (rebuilt when a core source changes)
$(VENV)/.built: $(CORE) $(VENV)/.deps
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

demo: build
	$(BIN)/rnnfast demo

test: $(VENV)/.deps-test build
	KERAS_BACKEND=torch $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# long fuzzing of every loader (tests/fuzz/README.md): FUZZ_SECONDS in all, findings in build/fuzz-findings
FUZZ_SECONDS ?= 600
fuzz: $(VENV)/.deps-test build
	KERAS_BACKEND=torch $(BIN)/python tests/fuzz/run_fuzz.py --seconds $(FUZZ_SECONDS) --out build/fuzz-findings

# the API reference (Sphinx: the docstrings and docs/) in build/docs; warnings and broken
# references are errors
$(VENV)/.deps-docs: pyproject.toml $(VENV)/.deps
	$(PIP) install -q "sphinx>=7" "numpydoc>=1.6" "myst-parser>=2"
	touch $@

docs: $(VENV)/.deps-docs build
	$(BIN)/python -m sphinx -E -b html -W --keep-going -n -q docs build/docs
	@echo "docs: build/docs/index.html"

$(VENV)/.deps-bench: $(VENV)/.deps-test
	$(PIP) install -q matplotlib
	touch $@

bench: $(VENV)/.deps-bench build
	$(BIN)/python bench/bench_engine.py

bench-quick: $(VENV)/.deps-bench build
	$(BIN)/python bench/bench_engine.py --quick

# the peers (PyTorch, ONNX Runtime, OpenVINO, TensorFlow + Keras) in their own venv,
# so that TensorFlow's pins never touch the test environment
BENCH := .venv-bench
$(BENCH)/.deps: pyproject.toml $(CORE)
	$(PYTHON) -m venv $(BENCH)
	$(BENCH)/bin/python -m pip install -q --upgrade pip
	$(BENCH)/bin/python -m pip install -q "setuptools>=64" wheel "Cython>=3.0" numpy scipy threadpoolctl h5py \
		"torch==2.13.0" onnx onnxruntime openvino tensorflow-cpu keras matplotlib
	$(BENCH)/bin/python -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

compare: $(BENCH)/.deps
	$(BENCH)/bin/python bench/compare.py

compare-quick: $(BENCH)/.deps
	$(BENCH)/bin/python bench/compare.py --quick

clean:
	rm -rf build src/*.egg-info src/rnnfast/*.so src/rnnfast/_kernels.c
