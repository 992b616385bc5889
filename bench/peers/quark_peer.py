"""AMD Quark's ONNX quantizer (`quark.onnx.ModelQuantizer`) with AdaQuant, as its docs show it (run
by bench/accuracy.py in .venv-peers).

Why AdaQuant and not AdaRound: Quark's ONNX docs give both under "fast finetune" (one or the other,
never both), and their CNN tutorials on CPU (mobilenetv2_050, per-tensor INT8) measure AdaQuant
ahead (top-1 1.7 -> 52.3 with AdaQuant, 41.4 with AdaRound; FP32 65.4). AdaQuantConfig keeps its
documented defaults (batch 1, learning rate 1e-5, on the CPU) but two: 300 iterations per layer, not
3000 (measured here: about 4 iterations a second on the recognizer's first layer on 2 shared cores,
so 3000 x 47 layers would take hours where tao-qc's whole compile takes minutes; the accuracy notes'
earlier Quark run used 300 as well), and `mem_opt_level=0`, which Quark documents as faster at the
cost of memory (the float model's layer inputs and outputs cached in one pass instead of one
inference per layer; tens of MB per layer here).

The quantization scheme is the one ONNX Runtime's CPU provider runs fastest, which is the target
of these rows: uint8 activations (asymmetric), int8 weights per output channel (U8S8, as ORT's own
quantizer does for CPUs); calibration methods are Quark's spec defaults. With --mode plain the same
without AdaQuant, to show what AdaQuant adds.
"""

from __future__ import annotations

import argparse

from _common import run, samples

ITERATIONS = 300  # per layer; Quark's default is 3000 (the module's docstring says why fewer)


class Reader:
    """Quark's calibration data reader (ONNX Runtime's `get_next` protocol), one sample per call:
    Quark's docs ask for batch 1 so that its fine-tuning counts samples right."""

    def __init__(self, feeds):
        self.feeds = feeds
        self.position = 0

    def get_next(self):
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self):
        self.position = 0


def main(args: argparse.Namespace) -> dict:
    """AMD Quark on an ONNX model"""
    from importlib.metadata import version

    from quark.onnx import AdaQuantConfig, Int8Spec, ModelQuantizer, QConfig, QLayerConfig, QuantGranularity, UInt8Spec

    algorithms = {"adaquant": [AdaQuantConfig(num_iterations=ITERATIONS, mem_opt_level=0)], "plain": []}[args.mode]
    layer = QLayerConfig(activation=UInt8Spec(), weight=Int8Spec(quant_granularity=QuantGranularity.Channel))
    config = QConfig(global_config=layer, algo_config=algorithms)
    feeds = samples(args.calibration)
    ModelQuantizer(config).quantize_model(args.model, args.output, Reader(feeds))
    return {"peer": "AMD Quark", "version": version("amd-quark"),
            "settings": {"mode": args.mode, "activations": "uint8 asymmetric", "weights": "int8 per channel",
                         "calibration_samples": len(feeds),
                         **({"adaquant": {k: getattr(algorithms[0], k) for k in
                                          ("num_iterations", "batch_size", "learning_rate", "mem_opt_level")}}
                            if algorithms else {})}}


if __name__ == "__main__":
    run(main)
