"""A trial worker: `python -m tao_qc.accuracy.worker FD` (local executor), or a Ray actor.

The local worker reads the setup path, answers `("ready", fp32 metric value)` once FP32's outputs are
computed, then one `("result", TrialResult)` per `(keep_float, samples)` request until it reads None.
Failures go back as one line: `("input-error", line)` for what the user gave (a metric or decoder that
cannot be imported or fails: the parent raises it as the InputError it is), `("error", line)` for
anything else, whose full traceback also goes to the worker's stderr.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from tao_qc.accuracy.trials import TrialRunner, TrialSetup
from tao_qc.errors import InputError


def _main(fd: int) -> None:
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    os.dup2(2, 1)  # stdout belongs to the parent's results (--json)
    try:
        runner = TrialRunner(TrialSetup.load(conn.recv()))
        conn.send(("ready", runner.fp32_value))
        while True:
            request = conn.recv()
            if request is None:
                break
            keep, samples = request
            try:
                conn.send(("result", runner.run(keep, samples)))
            except Exception as exc:  # noqa: BLE001 - one trial's failure goes back as one line
                conn.send(failure(exc))
    except (EOFError, KeyboardInterrupt):
        pass
    except Exception as exc:  # noqa: BLE001 - a setup failure is reported once
        try:
            conn.send(failure(exc))
        except OSError:
            pass
    finally:
        conn.close()


def failure(exc: Exception) -> tuple[str, str]:
    """The message a failure goes back as: the user's errors as their one line, anything else as its
    type and first line (its traceback to this worker's stderr)."""
    text = str(exc).strip()
    if isinstance(exc, InputError):
        return "input-error", text
    traceback.print_exc()
    return "error", f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def packed(setup: TrialSetup) -> dict[str, Any]:
    """The setup with its files' bytes, for machines that cannot read this one's disk: the models, the
    data, and the user's own modules (each top-level module's file, or its package's files).

    The modules travel here rather than as Ray's `runtime_env={"py_modules": ...}`: Ray uploads local
    paths only for a whole job (`ray.init`), and the compile may join a Ray runtime the user started."""
    files = {"calibrated_model": setup.calibrated_model, "reference_model": setup.reference_model, "data": setup.data}
    if setup.labels:
        files["labels"] = setup.labels
    modules: dict[str, bytes] = {}
    for source in (setup.user_modules.sources if setup.user_modules else ()):
        root = Path(source)
        members = [root] if root.is_file() else [f for f in sorted(root.rglob("*"))
                                                  if f.is_file() and "__pycache__" not in f.parts]
        for member in members:
            modules[str(member.relative_to(root.parent))] = member.read_bytes()
    return {"setup": setup, "files": {key: Path(path).read_bytes() for key, path in files.items()}, "modules": modules}


def unpacked(bundle: dict[str, Any], folder: Path) -> TrialSetup:
    """The setup with its files written under `folder`, and the user's modules importable from there."""
    paths = {}
    for key, data in bundle["files"].items():
        path = folder / f"{key}{Path(getattr(bundle['setup'], key)).suffix}"
        path.write_bytes(data)
        paths[key] = path
    modules = folder / "user-modules"
    for relative, data in bundle.get("modules", {}).items():
        path = modules / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    setup = bundle["setup"]
    if setup.user_modules is not None and bundle.get("modules"):
        setup = replace(setup, user_modules=replace(setup.user_modules,
                                                    folders=(str(modules), *setup.user_modules.folders)))
    return replace(setup, **paths)


def ray_actor_class(ray: Any) -> Any:
    """The Ray actor that holds one `TrialRunner` (defined on demand: Ray is an optional extra)."""

    @ray.remote(num_cpus=1)
    class TrialActor:
        def __init__(self, bundle: dict[str, Any]):
            self.folder = tempfile.mkdtemp(prefix="tao-qc-ray-trial-")
            self.runner = TrialRunner(unpacked(bundle, Path(self.folder)))

        def fp32_value(self) -> float:
            return self.runner.fp32_value

        def run(self, keep: dict[str, str], samples: list[int] | None) -> Any:
            return self.runner.run(keep, samples)

    return TrialActor


if __name__ == "__main__":
    _main(int(sys.argv[1]))
