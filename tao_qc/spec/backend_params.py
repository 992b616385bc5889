"""The parameters each backend really accepts, read from the installed library's source.

`backend_kwargs` is checked against these before any heavy work starts. Importing the libraries
to call `inspect.signature` would cost seconds (torch) and, for modelopt.onnx, patch onnxruntime
in-process; parsing their source with `ast` gives the same names without either.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path

# backend -> (module, function or class, leading parameters tao-qc always passes itself)
_SOURCES = {
    "torchao": ("torchao.quantization.quant_api", "quantize_", ("model",)),
    "modelopt.onnx": ("modelopt.onnx.quantization.quantize", "quantize", ("onnx_path",)),
    # ModelOpt's PyTorch path takes a config mapping; its keys are the fields of QuantizeConfig.
    "modelopt.pytorch": ("modelopt.torch.quantization.config", "QuantizeConfig", ()),
}


@lru_cache(maxsize=None)
def backend_parameters(backend: str) -> tuple[str, ...] | None:
    """Accepted keyword names for `backend`, or None when they cannot be known (library missing)."""
    if backend not in _SOURCES:
        return None
    module, name, own = _SOURCES[backend]
    source = _module_file(module)
    if source is None:
        return None
    with open(source, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            names = [a.arg for a in args if a.arg not in own]
            if node.args.kwarg is not None:
                # **kwargs: the keys the body reads from it are accepted too.
                names += sorted(_keys_read_from(node, node.args.kwarg.arg) - set(names))
            return tuple(names)
        if isinstance(node, ast.ClassDef) and node.name == name:
            return tuple(
                stmt.target.id
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            )
    return None


def _module_file(module: str) -> str | None:
    """The source file of `module` without importing it or its parent packages."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level lookup executes nothing
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations or not rest:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder, *rest[:-1], rest[-1] + ".py")
        if candidate.is_file():
            return str(candidate)
    return None


def _keys_read_from(function: ast.FunctionDef, mapping: str) -> set[str]:
    """String keys read as `mapping.get("k")` or `mapping["k"]` inside `function`."""
    keys = set()
    for node in ast.walk(function):
        key = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            if isinstance(node.func.value, ast.Name) and node.func.value.id == mapping and node.args:
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == mapping:
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            keys.add(key.value)
    return keys
