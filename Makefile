# Quick start:  make demo   (set up, then quantize the bundled MNIST example)
#               make test   (set up, then run the test suite; CI runs exactly this)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first, on its own, so that resolving torchao/modelopt never pulls a multi-GB
# CUDA build on a CPU machine. GPU users override: make setup TORCH=torch
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.tao-qc-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/tao-qc compile examples/mnist/model.onnx --spec examples/mnist/q.yaml -o demo-results
	@echo "open demo-results/report.html, or: $(BIN)/tao-qc inspect demo-results"

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/placement.py
	$(BIN)/python bench/compile_overhead.py

clean:
	rm -rf demo-results .pytest_cache
