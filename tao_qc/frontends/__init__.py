"""PyTorch frontends: load a user's model, quantize it in-framework (torchao, modelopt.pytorch),
restore the artifacts, and lower a model to ONNX for the pass pipeline.

Import the submodules directly (`tao_qc.frontends.quantizer`, `tao_qc.frontends.loading`, ...):
each pulls in torch, and the backends pull in their libraries only when used.
"""
