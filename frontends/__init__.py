"""PyTorch frontends (installed as `tao_qc.frontends`): in-framework PTQ and lowering to ONNX."""
