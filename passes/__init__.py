"""The ONNX pipeline's passes (installed as `tao_qc.passes`): one concern per module."""
