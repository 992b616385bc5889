"""Runtime adapters (installed as `tao_qc.runtimes`): ONNX Runtime and TensorRT engines."""
