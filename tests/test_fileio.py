"""Results folders are replaced as a whole: never half-written, and never missing while it happens."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tao_qc import fileio
from tao_qc.fileio import staged_dir

# Runs the swap in a child process with an audit hook that lists the results folder before every
# audited operation (a rename, an rmtree, a ctypes call, an open...) and once at the end: every
# intermediate state the file system passes through is seen, deterministically. In a child because
# an audit hook cannot be removed once added.
_WATCH_THE_SWAP = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from tao_qc.fileio import staged_dir

    final = Path(sys.argv[1])
    states, watching, inside = [], False, False

    def listing():
        try:
            return sorted(os.listdir(final))
        except FileNotFoundError:
            return None

    def hook(event, args):
        global inside
        if watching and not inside:
            inside = True
            try:
                states.append([event, listing()])
            finally:
                inside = False

    sys.addaudithook(hook)
    with staged_dir(final) as stage:
        (stage / "model.int8.onnx").write_bytes(b"new model")
        (stage / "report.json").write_text("{}")
        watching = True
    watching = False
    states.append(["end", listing()])
    print(json.dumps(states))
    """
)


def test_replacing_results_leaves_no_moment_without_a_complete_folder(tmp_path):
    final = tmp_path / "results"
    final.mkdir()
    (final / "old-model.int8.onnx").write_bytes(b"old model")
    (final / "report.json").write_text("{}")
    child = subprocess.run([sys.executable, "-c", _WATCH_THE_SWAP, str(final)], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    states = json.loads(child.stdout)
    old, new = ["old-model.int8.onnx", "report.json"], ["model.int8.onnx", "report.json"]
    assert len(states) > 2  # the hook saw the swap's operations, not just the end
    gaps = [event for event, listing in states if listing not in (old, new)]
    assert not gaps, f"results folder missing or mixed before: {gaps}"
    assert states[-1] == ["end", new]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no staging or previous folder left


def test_where_the_os_cannot_exchange_the_previous_results_are_still_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "exchange_paths", lambda a, b: False)
    final = tmp_path / "results"
    final.mkdir()
    (final / "stale.txt").write_text("old")
    with staged_dir(final) as stage:
        (stage / "report.json").write_text("{}")
    assert sorted(p.name for p in final.iterdir()) == ["report.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_a_failing_block_keeps_the_previous_results_and_leaves_no_stage(tmp_path):
    final = tmp_path / "results"
    final.mkdir()
    (final / "report.json").write_text("previous")
    with pytest.raises(RuntimeError, match="half way"):
        with staged_dir(final) as stage:
            (stage / "report.json").write_text("half")
            raise RuntimeError("half way")
    assert (final / "report.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_exchange_swaps_two_folders_and_reports_a_missing_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from-a").write_text("")
    if not fileio.exchange_paths(a, b):
        pytest.skip("this OS or file system cannot exchange two paths atomically (the fallback is tested above)")
    assert [p.name for p in b.iterdir()] == ["from-a"] and not list(a.iterdir())
    with pytest.raises(FileNotFoundError):
        fileio.exchange_paths(a, tmp_path / "missing")
