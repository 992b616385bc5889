"""Real graphs shared by test_textform and test_inspect: zoo exports and modelopt Q/DQ graphs.

modelopt.onnx patches onnxruntime.quantization when imported, so the quantized graphs are made in a
child process; the paths are cached for the session so both test modules reuse one build.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tao_qc.testing import zoo

_BUILT: dict[str, Path] = {}

_QUANTIZE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from modelopt.onnx.quantization import quantize

    source, folder = sys.argv[1], sys.argv[2]
    data = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    for mode in ("int8", "fp8"):
        quantize(source, quantize_mode=mode, calibration_data=data, calibration_eps=["cpu"],
                 high_precision_dtype="fp32", output_path=f"{folder}/small_cnn.{mode}.onnx")
    """
)


def small_cnn_models(tmp_path_factory) -> dict[str, Path]:
    """{"float", "int8", "fp8"} -> small_cnn exported, and quantized by modelopt (random calibration)."""
    if not _BUILT:
        folder = tmp_path_factory.mktemp("small_cnn")
        source = zoo.export_zoo("small_cnn", folder / "small_cnn.onnx")
        run = subprocess.run(
            [sys.executable, "-c", _QUANTIZE, str(source), str(folder)], capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr[-3000:]
        _BUILT.update(float=source, int8=folder / "small_cnn.int8.onnx", fp8=folder / "small_cnn.fp8.onnx")
    return dict(_BUILT)
