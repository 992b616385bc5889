# Quick start:  make demo   (set up, then quantize the bundled UltraFace face detector; make demo-mnist: MNIST)
#               make test   (set up, then run the whole test suite on 2 workers; CI runs exactly this)
#               make test-quick  (the quick tier: no training, one end-to-end compile; under 3 minutes)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first, on its own, so that resolving torchao/modelopt never pulls a multi-GB
# CUDA build on a CPU machine. GPU users override: make setup TORCH=torch
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.tao-qc-installed

.PHONY: setup demo demo-mnist test test-quick bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/tao-qc compile examples/ultraface/model.onnx --spec examples/ultraface/q.yaml -o demo-results
	@echo "open demo-results/report.html (both models' boxes on the photos), or: $(BIN)/tao-qc inspect demo-results"

demo-mnist: setup
	$(BIN)/tao-qc compile examples/mnist/model.onnx --spec examples/mnist/q.yaml -o demo-results-mnist
	@echo "open demo-results-mnist/report.html, or: $(BIN)/tao-qc inspect demo-results-mnist"

# Two workers; conftest groups tests by module, and the tests of a shared session fixture together.
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

test: setup
	$(PYTEST)

test-quick: setup
	$(PYTEST) -m "e2e or not slow"

bench: setup
	$(BIN)/python bench/placement.py
	$(BIN)/python bench/compile_overhead.py

clean:
	rm -rf demo-results demo-results-mnist .pytest_cache
