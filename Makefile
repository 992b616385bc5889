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

.PHONY: setup demo demo-mnist test test-quick test-cpus test-avx2 test-avx2-quick bench bench-peers-setup clean

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

# The whole suite for each instruction set `cpu: auto` can mean (tests/conftest.py: TAO_QC_CPU), on
# whatever CPU runs it: a VNNI machine checks the AVX2 build path and the other way round.
test-cpus: setup
	TAO_QC_CPU=avx2 $(PYTEST)
	TAO_QC_CPU=avx512_vnni $(PYTEST)

# The tests of what ORT's integer kernels compute, on an emulated AVX2 CPU without VNNI (a Zen 2
# EPYC): Debian's qemu-user (apt-get install qemu-user) gives its integers, not its speed.
# $(AVX2_VENV)/bin/python runs .venv's Python under qemu and names itself as sys.executable, so the
# subprocesses a test starts (modelopt's child, the CLI, pytest's workers) are emulated too. The EPYC
# features qemu's TCG does not model are turned off (none changes the integer kernels), which keeps
# qemu from warning about each on every process's stderr. The suite's TAO_QC_CPU default
# (avx512_vnni, tests/conftest.py) is what a real AVX2 CI machine runs: models compiled for VNNI,
# compared through the graph's arithmetic; tests of this machine's kernels compile for avx2 there.
AVX2_TESTS := tests/test_cpu_target.py tests/test_fit_ort_integer_kernels.py tests/test_space_to_depth_stem.py tests/test_placement.py \
              tests/test_upsample_on_uint8.py tests/test_move_on_uint8.py tests/test_integer_elementwise.py
AVX2_CPU := EPYC-Rome,-rdseed,-sha-ni,-rdpid,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,-topoext,-perfctr-core,-clzero,-xsaveerptr,-wbnoinvd,-ibpb,-amd-stibp,-nrip-save,-xsavec,-xsaves
AVX2_VENV := .venv-avx2
AVX2_PYTHON := $(abspath $(AVX2_VENV))/bin/python

$(AVX2_PYTHON): $(STAMP)
	@command -v qemu-x86_64 >/dev/null || { echo "test-avx2 needs qemu-x86_64: apt-get install qemu-user"; exit 2; }
	mkdir -p $(AVX2_VENV)/bin
	cp $(VENV)/pyvenv.cfg $(AVX2_VENV)/pyvenv.cfg
	ln -sfn $(abspath $(VENV))/lib $(AVX2_VENV)/lib
	printf '#!/bin/sh\nexec qemu-x86_64 -cpu $(AVX2_CPU) -0 $(AVX2_PYTHON) $(abspath $(BIN))/python "$$@"\n' > $@
	chmod +x $@

# The integer-kernel tests (about 2 minutes); test-avx2-quick: the whole quick tier (about 20).
test-avx2: $(AVX2_PYTHON)
	$(AVX2_PYTHON) -m pytest -q -m "not slow" $(AVX2_TESTS)

test-avx2-quick: $(AVX2_PYTHON)
	$(AVX2_PYTHON) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m "e2e or not slow"

bench: setup
	$(BIN)/python bench/placement.py
	$(BIN)/python bench/compile_overhead.py

# The peers bench/accuracy.py compares against (NNCF, AMD Quark), in a virtualenv of their own: they
# are bench extras, not tao-qc dependencies, and bring plain onnxruntime, which must not share an
# environment with tao-qc's onnxruntime-gpu. bench/accuracy.py finds .venv-peers by itself.
PEERS_VENV ?= .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.peers-installed
bench-peers-setup: $(PEERS_STAMP)

$(PEERS_STAMP): bench/peers-requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q "$(TORCH)"
	$(PEERS_VENV)/bin/pip install -q -r bench/peers-requirements.txt
	touch $@

clean:
	rm -rf demo-results demo-results-mnist .pytest_cache
