"""Shared fixtures: the vendored test models, the larger third-party models beside the repo, and
golden-file updating.

The core tests run on the small models in tests/assets/ (see its MANIFEST.tsv), so a clone of the
repository alone passes its suite. Tests that need the larger models of ../shared/models take the
`shared_models` fixture: they skip, naming the path, where that folder is absent, and fail where
TAO_QC_SHARED_MODELS names a folder that does not exist (someone asked for them explicitly).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_MODELS_DEFAULT = REPO.parent / "shared" / "models"

# What `quantize.onnxruntime.cpu: auto` compiles for in every test (and every process a test starts),
# whatever CPU runs the suite: what tao-qc writes (7- or 8-bit weights, goldens, corrections, counters)
# must not depend on the host. `TAO_QC_CPU=avx2 make test` runs the whole suite for another instruction
# set. A test about this machine's own kernels names it: `tao_qc.spec.cpu.this_machine()`.
SUITE_CPU_DEFAULT = "avx512_vnni"
os.environ["TAO_QC_CPU"] = os.environ.get("TAO_QC_CPU") or SUITE_CPU_DEFAULT
SUITE_CPU = os.environ["TAO_QC_CPU"]
# `speed: auto` (the default) keeps classes of units float where timings on this machine say so: the
# suite's models must not depend on timings either, so `auto` means `check` here. Tests of the search
# name their mode, or unset this.
os.environ["TAO_QC_SPEED"] = os.environ.get("TAO_QC_SPEED") or "check"


# Markers follow from the fixtures a test uses (directly or through other fixtures), applied here so
# they cannot drift from what the test costs:
# - `slow`: it needs a fixture that trains a model, calibrates, compiles or runs a third-party model;
# - `e2e`: it reads the one shared end-to-end compile (`mnist_cntk_compiled`), which the quick tier
#   (`make test-quick`: `-m "e2e or not slow"`) keeps.
# A test that is slow for what it does itself (not through a fixture) says so with @pytest.mark.slow.
SLOW_FIXTURES = {
    "shared_models",  # UltraFace, YuNet, FastestDet, PaddleOCR: compiles of real models
    "culprit", "digits_cnn", "mixed_tensorrt", "trained", "fp32_accuracy", "workspace",  # trained CNNs
    "int8_result", "ultraface_int8", "mnist_int8", "lcnet_int8", "full_report", "rtdetr", "decorated",  # compiles
    "assets",  # tests/_runtimes_helpers.build_assets: ResNet-18 exported and quantized, MNIST variants
    "tests/test_placement.py::mnist", "tests/test_placement.py::small_cnn",  # compiled for ONNX Runtime
    "tests/test_upsample_on_uint8.py::feature_pyramid", "tests/test_move_on_uint8.py::shuffle_detector",
    "tests/test_integer_elementwise.py::text_detector",
    "digit_string_recognizer",  # tests/test_ctc_reading.py: a CTC recognizer trained, exported and compiled
}
E2E_FIXTURES = {"mnist_cntk_compiled"}
# xdist (`make test` runs `-n 2 --dist loadgroup`): tests that share a module- or session-scoped fixture
# of this suite run on one worker, so each such fixture is built once; every other test is free to go
# to whichever worker is idle (a file with one slow fixture does not hold its other tests back).
CHEAP_SHARED_FIXTURES = {"update_golden", "shared_models"}


def _shared_fixtures(item) -> list[str]:
    info = getattr(item, "_fixtureinfo", None)
    shared = []
    for name in getattr(info, "names_closure", ()):
        definitions = info.name2fixturedefs.get(name) or ()
        if not definitions or name in CHEAP_SHARED_FIXTURES:
            continue
        definition = definitions[-1]
        if definition.scope != "function" and str(definition.baseid).startswith("tests"):
            shared.append(f"{definition.baseid}::{name}")
    return shared


# First: xdist's worker turns each item's xdist_group marks into its scheduling group in its own
# pytest_collection_modifyitems, and sees only the marks already there. (With pytest 9.2 that step
# is lost whatever the order: pyproject.toml keeps pytest below it.)
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for item in items:
        used = set(getattr(item, "fixturenames", ())) | set(_shared_fixtures(item))
        if used & E2E_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        elif used & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        for fixture in _shared_fixtures(item):
            parent[root(item.nodeid)] = root(fixture)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(root(item.nodeid)))


def pytest_report_header(config):
    from tao_qc.spec.cpu import this_machine

    here = this_machine()
    return f"tao-qc: cpu: auto compiles for {SUITE_CPU} (TAO_QC_CPU); this machine: {here.isa} ({here.model_name})"


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="Rewrite golden/ files from the current output instead of comparing against them.",
    )


@pytest.fixture(scope="session")
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """../shared/models beside the repo (TAO_QC_SHARED_MODELS overrides)."""
    explicit = os.environ.get("TAO_QC_SHARED_MODELS")
    path = Path(explicit) if explicit else SHARED_MODELS_DEFAULT
    if not path.is_dir():
        if explicit:
            pytest.fail(f"TAO_QC_SHARED_MODELS={explicit} is not a folder")
        pytest.skip(f"needs the third-party models in {path}, which is absent (set TAO_QC_SHARED_MODELS to use another folder)")
    return path


@pytest.fixture(scope="session")
def mnist_cntk_compiled(tmp_path_factory):
    """The vendored mnist_cntk compiled as a user would (`tao_qc.driver.compile_model`, default
    target tensorrt, comparison on): INT8, compared with FP32 on 300 held-out labelled digits, pass
    dumps after every change. modelopt declines its GEMV MatMul Times212, so the report has a node
    the spec selected and the backend left in float. Read-only for the tests that share it."""
    import hashlib

    import numpy as np

    from _compile_helpers import MNIST_CNTK, MNIST_INPUT, digits
    from tao_qc.driver import compile_model

    root = tmp_path_factory.mktemp("mnist-cntk-compiled")
    images, labels = digits()
    np.savez(root / "calibration.npz", **{MNIST_INPUT: images[:48]})
    np.savez(root / "held_out.npz", **{MNIST_INPUT: images[100:400]})
    np.save(root / "held_out_labels.npy", labels[100:400])
    spec = {"quantize": {"device": "cpu", "calibration": {"data": str(root / "calibration.npz")},
                         "compare": {"data": str(root / "held_out.npz"), "labels": str(root / "held_out_labels.npy")}}}
    before = hashlib.sha256(MNIST_CNTK.read_bytes()).hexdigest()
    result = compile_model(MNIST_CNTK, spec, results_dir=root / "results", dump="after-change")
    assert hashlib.sha256(MNIST_CNTK.read_bytes()).hexdigest() == before  # the input model is only read
    return result
