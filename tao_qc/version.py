"""tao-qc's version, as installed (the modules that stamp it import it from here, not from the package root)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tao-qc")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
