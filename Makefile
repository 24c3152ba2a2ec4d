# mvu: two commands do everything on a fresh machine.
#   make demo   - build what is needed and run the demo
#   make test   - install everything and run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow check bench synth clean

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

bench: $(STAMP)
	$(BIN)/mvu bench gemm --m 1024 --k 1024 --n 1024 --backend verilator

synth: $(STAMP)
	$(BIN)/mvu synth

clean:
	rm -rf $(VENV) build .pytest_cache
