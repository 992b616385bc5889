"""tao-qc: compiler-style post-training quantization for vision models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tao-qc")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from tao_qc.errors import InputError, SpecError, TaoQcError  # noqa: E402
from tao_qc.spec import QuantizeSpec, load_spec  # noqa: E402

__all__ = ["__version__", "InputError", "QuantizeSpec", "SpecError", "TaoQcError", "load_spec"]


def __getattr__(name):
    # ModelQuantizer pulls in torch; keep `import tao_qc` (and `tao-qc --help`) light.
    if name == "ModelQuantizer":
        from tao_qc.frontends.quantizer import ModelQuantizer

        return ModelQuantizer
    raise AttributeError(f"module 'tao_qc' has no attribute {name!r}")
