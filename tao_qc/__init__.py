"""tao-qc: compiler-style post-training quantization for vision models."""

from tao_qc.errors import InputError, SpecError, TaoQcError
from tao_qc.spec import QuantizeSpec, load_spec
from tao_qc.version import __version__

__all__ = ["__version__", "InputError", "QuantizeSpec", "SpecError", "TaoQcError", "load_spec"]


def __getattr__(name):
    # ModelQuantizer pulls in torch; keep `import tao_qc` (and `tao-qc --help`) light.
    if name == "ModelQuantizer":
        from tao_qc.frontends.quantizer import ModelQuantizer

        return ModelQuantizer
    raise AttributeError(f"module 'tao_qc' has no attribute {name!r}")
