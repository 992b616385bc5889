"""A trial worker: `python -m tao_qc.accuracy.worker FD` (local executor), or a Ray actor.

The local worker reads the setup path, answers `("ready", fp32 metric value)` once FP32's outputs are
computed, then one `("result", TrialResult)` per `(keep_float, samples)` request until it reads None.
Failures go back as `("error", one line)`; the full traceback goes to the worker's stderr.
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
                traceback.print_exc()
                conn.send(("error", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"))
    except (EOFError, KeyboardInterrupt):
        pass
    except Exception as exc:  # noqa: BLE001 - a setup failure is reported once
        traceback.print_exc()
        try:
            conn.send(("error", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"))
        except OSError:
            pass
    finally:
        conn.close()


def packed(setup: TrialSetup) -> dict[str, Any]:
    """The setup with its files' bytes, for machines that cannot read this one's disk."""
    files = {"calibrated_model": setup.calibrated_model, "reference_model": setup.reference_model, "data": setup.data}
    if setup.labels:
        files["labels"] = setup.labels
    return {"setup": setup, "files": {key: Path(path).read_bytes() for key, path in files.items()}}


def unpacked(bundle: dict[str, Any], folder: Path) -> TrialSetup:
    paths = {}
    for key, data in bundle["files"].items():
        path = folder / f"{key}{Path(getattr(bundle['setup'], key)).suffix}"
        path.write_bytes(data)
        paths[key] = path
    return replace(bundle["setup"], **paths)


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
