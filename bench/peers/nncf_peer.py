"""OpenVINO NNCF on the ONNX model, as its docs show it (run by bench/accuracy.py in .venv-peers).

--mode quantize: `nncf.quantize(model, calibration_dataset)` with every default (preset, subset
size, fast bias correction): what a user gets first.
--mode accuracy-control: `nncf.quantize_with_accuracy_control` with the task metric, data, labels
and absolute max_drop that tao-qc's fallback gets; NNCF reverts quantizer groups to float until the
drop is met. Its validation function returns per-sample values too, so NNCF ranks by the task metric
(its "metric mode") rather than by output distance, as tao-qc's search does.
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import metric, outputs, run, samples, session


def main(args: argparse.Namespace) -> dict:
    """NNCF on an ONNX model"""
    import nncf
    import onnx

    model = onnx.load(args.model)
    # Items are feed dicts {input name: array}, what NNCF's ONNX backend runs as they are.
    calibration_feeds = samples(args.calibration)
    calibration = nncf.Dataset(calibration_feeds)
    settings: dict = {"api": "nncf.quantize", "preset": "default", "calibration_samples": len(calibration_feeds)}
    if args.mode == "quantize":
        quantized = nncf.quantize(model, calibration)
    elif args.mode == "accuracy-control":
        feeds = samples(args.accuracy_data)
        labels = np.load(args.labels, allow_pickle=False)
        reference = outputs(model, feeds)
        score = metric(args.metric)
        # NNCF's metric mode calls the validation function once per item with the same ModelProto
        # while it ranks: one ORT session per model, not per call.
        built: dict = {"model": None, "session": None}

        def validate(candidate: onnx.ModelProto, items) -> tuple[float, list[float]]:
            """The task metric over the items NNCF asks for (all, or its ranking subset), and per item."""
            if built["model"] is not candidate:
                built.update(model=candidate, session=session(candidate))
            items = list(items)
            index = np.array([i for _, i in items])
            got = outputs(built["session"], [feed for feed, _ in items])
            ref = {k: v[index] for k, v in reference.items()}
            overall = float(score(ref, got, labels[index]))
            each = [float(score({k: v[j:j + 1] for k, v in ref.items()}, {k: v[j:j + 1] for k, v in got.items()},
                                labels[index[j]:index[j] + 1])) for j in range(len(items))]
            return overall, each

        # Items carry their index so the validation function finds their labels and FP32 outputs;
        # NNCF's own inference on validation items gets the feed alone.
        validation = nncf.Dataset([(feed, i) for i, feed in enumerate(feeds)], lambda item: item[0])
        quantized = nncf.quantize_with_accuracy_control(model, calibration, validation, validate,
                                                        max_drop=args.max_drop, drop_type=nncf.DropType.ABSOLUTE)
        settings.update(api="nncf.quantize_with_accuracy_control", metric=args.metric, max_drop=args.max_drop,
                        accuracy_samples=len(feeds))
    else:
        raise ValueError(f"unknown mode {args.mode!r}")
    onnx.save(quantized, args.output)
    return {"peer": "NNCF", "version": nncf.__version__, "settings": settings}


if __name__ == "__main__":
    run(main)
