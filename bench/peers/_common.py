"""What every peer script shares: its arguments, the data bench/accuracy.py hands it, the task
metric, and the one-line result it hands back.

The peer scripts run in .venv-peers (`make bench-peers-setup`), never in tao-qc's environment: the
peers bring plain `onnxruntime`, which must not meet tao-qc's `onnxruntime-gpu`. They import tao-qc
only for the task metric a spec names (`tao_qc.corpus:text_accuracy`), from the source tree, so that
a peer's accuracy control judges by the very function tao-qc's fallback uses.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

THREADS = 2  # bench/accuracy.py's THREADS: a peer's own inference runs no wider than the bench's


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="the FP32 ONNX model")
    parser.add_argument("--calibration", required=True, help=".npz, one array per model input, samples on axis 0")
    parser.add_argument("--output", required=True, help="where the quantized model goes")
    parser.add_argument("--result", required=True, help="a JSON file: seconds, version, settings, or error")
    parser.add_argument("--mode", default="quantize", help="which of the peer's methods")
    # Accuracy control: the same data, labels, metric and max_drop as tao-qc's `accuracy` section.
    parser.add_argument("--accuracy-data", help=".npz like --calibration")
    parser.add_argument("--labels", help=".npy, one label per sample of --accuracy-data")
    parser.add_argument("--metric", help="module:function(reference, candidate, labels) -> float, higher is better")
    parser.add_argument("--max-drop", type=float, help="absolute drop of the metric allowed against FP32")
    return parser.parse_args()


def samples(path: str | Path) -> list[dict[str, np.ndarray]]:
    """One feed per sample (batch 1): how both peers' docs feed calibration data (NNCF's Dataset
    items, Quark's data reader with batch 1 so that its fine-tuning counts samples right)."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    count = len(next(iter(arrays.values())))
    return [{name: array[i:i + 1] for name, array in arrays.items()} for i in range(count)]


def metric(spec: str) -> Callable[..., float]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def session(model: Any):
    """An ORT CPU session on a path or an in-memory ModelProto, 2 threads like the bench's."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = str(model) if isinstance(model, str | Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def outputs(model: Any, feeds: list[dict[str, np.ndarray]], batch: int = 8) -> dict[str, np.ndarray]:
    """The outputs of a model (a path, a ModelProto or a session already built) over `feeds`
    (batch-1 samples), run `batch` at a time for speed."""
    s = model if hasattr(model, "run") else session(model)
    names = [o.name for o in s.get_outputs()]
    runs = []
    for start in range(0, len(feeds), batch):
        chunk = feeds[start:start + batch]
        runs.append(s.run(names, {k: np.concatenate([f[k] for f in chunk]) for k in chunk[0]}))
    return {n: np.concatenate([r[i] for r in runs]) for i, n in enumerate(names)}


def run(main: Callable[[argparse.Namespace], dict]) -> None:
    """Run a peer and write its result; a failure becomes one line in the result (its traceback
    goes to stderr, which bench/accuracy.py keeps in a log), so the bench can say why and go on."""
    args = arguments(main.__doc__ or "")
    started = time.perf_counter()
    try:
        result = main(args)
        result["seconds"] = round(time.perf_counter() - started, 1)
        if not Path(args.output).is_file():
            raise RuntimeError(f"the peer wrote no model at {args.output}")
    except BaseException as error:  # noqa: BLE001 - any failure of a peer is a row's note, not the bench's end
        traceback.print_exc()
        text = " ".join(str(error).split()) or type(error).__name__
        result = {"error": f"{type(error).__name__}: {text}"[:300], "seconds": round(time.perf_counter() - started, 1)}
    Path(args.result).write_text(json.dumps(result))
    sys.exit(1 if "error" in result else 0)
