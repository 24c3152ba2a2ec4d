# mvu: two commands do everything on a fresh machine.
#   make demo   - build what is needed and run the demo
#   make test   - install everything and run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

TRITON := .venv-triton

.PHONY: demo test test-slow check lint bench bench-serving synth clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mvu demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

check: test test-slow

# The layers contract (docs/architecture.md) and pyflakes with one import order; tests/test_layers.py also runs the former.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check hdl sim host models tests

bench: $(STAMP)
	$(BIN)/mvu bench gemm --m 1024 --k 1024 --n 1024 --backend verilator

# NVIDIA PyTriton (a real Triton server, CPU here) as the serving baseline. It pins numpy < 2, so it
# gets a venv of its own with mvu installed without its dependencies.
$(TRITON)/.installed: pyproject.toml
	@test -x $(TRITON)/bin/python || $(PYTHON) -m venv $(TRITON)
	$(TRITON)/bin/pip install --quiet --upgrade pip
	$(TRITON)/bin/pip install --quiet nvidia-pytriton 'numpy<2' numba pillow onnx onnxruntime
	$(TRITON)/bin/pip install --quiet --no-deps -e .
	@touch $@

# p50/p99 latency and throughput at 1, 4 and 16 clients, mvu serve beside Triton, JSON under build/.
bench-serving: $(STAMP) $(TRITON)/.installed
	@mkdir -p build
	$(BIN)/mvu compile toy -o build/toy.mvu
	$(BIN)/mvu compile efficientnet-lite0 -o build/lite0.mvu
	MVU_TRITON_PYTHON=$(TRITON)/bin/python $(BIN)/mvu bench serving build/toy.mvu --triton --requests 300 \
		--output build/bench-serving-toy.json
	MVU_TRITON_PYTHON=$(TRITON)/bin/python $(BIN)/mvu bench serving build/lite0.mvu --triton --requests 200 \
		--output build/bench-serving-lite0.json

synth: $(STAMP)
	$(BIN)/mvu synth

clean:
	rm -rf $(VENV) $(TRITON) build .pytest_cache
