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
