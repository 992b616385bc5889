"""`module:function` from the spec (metrics, decoders): one loader for every key."""

from __future__ import annotations

import sys

import pytest

from tao_qc.accuracy.metrics import load_user_metric
from tao_qc.errors import InputError
from tao_qc.evaluate.detection import load_decoder
from tao_qc.spec.user_code import load_user_function


def test_a_module_beside_the_spec_is_found_and_leaves_sys_path_as_it_was(tmp_path, monkeypatch):
    beside_spec, elsewhere = tmp_path / "project", tmp_path / "run-here"
    beside_spec.mkdir(), elsewhere.mkdir()
    (beside_spec / "my_metrics_for_loader_test.py").write_text(
        "class Scores:\n    @staticmethod\n    def accuracy(reference, candidate, labels):\n        return 0.5\n")
    monkeypatch.chdir(elsewhere)
    before = list(sys.path)
    metric = load_user_metric("my_metrics_for_loader_test:Scores.accuracy", search_path=beside_spec)
    assert metric({}, {}, None) == 0.5
    assert sys.path == before  # the spec's folder does not shadow other modules for the rest of the run


def test_a_decoder_in_the_current_folder_is_found_by_the_same_loader(tmp_path, monkeypatch):
    (tmp_path / "my_decoder_for_loader_test.py").write_text("def decode(outputs, inputs):\n    return []\n")
    monkeypatch.chdir(tmp_path)
    assert load_decoder("my_decoder_for_loader_test:decode")({}, {}) == []


def test_what_cannot_be_loaded_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(InputError) as missing:
        load_user_function("no_such_module_anywhere:f", "quantize.accuracy.metric", search_path=tmp_path)
    message = str(missing.value)
    assert message.startswith("quantize.accuracy.metric: cannot import module 'no_such_module_anywhere'")
    assert "beside the spec file" in message and "\n" not in message
    with pytest.raises(InputError, match=r"^quantize.compare.decoder: module 'json' has no function 'nothing' "
                                         r"\(functions there: .*dumps.*\)$"):
        load_user_function("json:nothing", "quantize.compare.decoder")
    with pytest.raises(InputError, match=r"^quantize.accuracy.metric: 'json.dumps' is not of the form module:function"):
        load_user_function("json.dumps", "quantize.accuracy.metric")
    with pytest.raises(InputError, match=r"^--model-factory: 'json:decoder' is not a callable \(give module:callable\)$"):
        load_user_function("json:decoder", "--model-factory", kind="callable")


def test_user_modules_travel_to_a_machine_that_cannot_read_this_ones_disk(tmp_path, monkeypatch):
    """A module file and a package, found here only through a folder on this process's sys.path, are
    packed with a trial setup (as for Ray's nodes) and import there from the copies alone."""
    import shutil

    from tao_qc.accuracy.trials import TrialSetup
    from tao_qc.accuracy.worker import packed, unpacked
    from tao_qc.spec import load_spec
    from tao_qc.spec.user_code import locate_user_modules

    project = tmp_path / "project"
    package = project / "travelling_pkg"
    package.mkdir(parents=True)
    (project / "travelling_metric.py").write_text("def score(reference, candidate, labels):\n    return 0.25\n")
    (package / "__init__.py").write_text("")
    (package / "boxes.py").write_text("def decode(outputs, inputs):\n    return 'decoded'\n")
    monkeypatch.syspath_prepend(str(project))
    modules = locate_user_modules([("travelling_metric:score", "quantize.accuracy.metric"),
                                   ("travelling_pkg.boxes:decode", "quantize.compare.decoder")])
    assert set(modules.sources) == {str(project.resolve() / "travelling_metric.py"), str(package.resolve())}
    assert str(project.resolve()) in modules.folders
    for name in ("calibrated_model", "reference_model", "data"):
        (tmp_path / f"{name}.bin").write_bytes(b"-")
    setup = TrialSetup(tmp_path / "calibrated_model.bin", {}, load_spec({}), tmp_path / "reference_model.bin",
                       tmp_path / "data.bin", 1, user_modules=modules)
    bundle = packed(setup)

    shutil.rmtree(project)  # the other machine has none of this one's folders
    for name in ("travelling_metric", "travelling_pkg", "travelling_pkg.boxes"):
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(project)])
    node = tmp_path / "node"
    node.mkdir()
    unpacked(bundle, node).user_modules.make_importable()
    assert load_user_function("travelling_metric:score", "quantize.accuracy.metric")(None, None, None) == 0.25
    assert load_user_function("travelling_pkg.boxes:decode", "quantize.compare.decoder")(None, None) == "decoded"


def test_tao_qcs_own_functions_do_not_travel():
    from tao_qc.spec.user_code import locate_user_modules

    modules = locate_user_modules([("tao_qc.corpus:text_accuracy", "quantize.accuracy.metric")])
    assert modules.sources == ()
