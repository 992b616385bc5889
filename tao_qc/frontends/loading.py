"""Loading a user's PyTorch model: a checkpoint or state_dict plus a model factory, a TorchScript
file, or a `torch.export` program.

Every failure is a one-line `InputError` naming the file or flag and the forms that are valid.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tao_qc.errors import InputError
from tao_qc.spec.user_code import load_user_function

log = logging.getLogger("tao_qc.frontends")

VALID_MODEL_FORMS = (
    "a checkpoint or state_dict saved with torch.save (with --model-factory module:callable), "
    "a TorchScript file (torch.jit.save), or a torch.export program (.pt2)"
)
FACTORY_FORM = "module:callable, e.g. tao_qc.zoo:SmallResidualCNN or mypkg.models:build"
# Keys under which training scripts commonly nest the weights in a checkpoint dict.
_STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model")


def import_factory(factory: str | Callable[..., Any]) -> Callable[..., Any]:
    """The callable named by `module:callable` (a callable is returned as is)."""
    if callable(factory):
        return factory
    return load_user_function(factory, "--model-factory", kind="callable")


def parse_factory_kwargs(text: str | None) -> dict[str, Any]:
    """`--factory-kwargs '{"num_classes": 10}'` as a dict."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--factory-kwargs: not valid JSON ({exc.msg} at column {exc.colno}); give e.g. '{{\"num_classes\": 10}}'") from None
    if not isinstance(value, dict):
        raise InputError(f"--factory-kwargs: expected a JSON object, got {type(value).__name__}")
    return value


def build_model(factory: str | Callable[..., Any], factory_kwargs: Mapping[str, Any] | None = None):
    """A fresh model from the factory, in eval mode."""
    from torch import nn

    function = import_factory(factory)
    name = factory if isinstance(factory, str) else getattr(factory, "__qualname__", repr(factory))
    try:
        model = function(**dict(factory_kwargs or {}))
    except TypeError as exc:
        try:
            signature = str(inspect.signature(function))
        except (TypeError, ValueError):
            signature = "(...)"
        raise InputError(f"--model-factory: calling {name}{signature} failed: {exc} (check --factory-kwargs)") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"--model-factory: {name} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def _name_list(names: list[str], shown: int = 4) -> str:
    head = ", ".join(names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "")


def load_state_dict_checked(model, state_dict: Mapping[str, Any], source: str, *, assign: bool = False) -> None:
    """`model.load_state_dict` with a one-line error naming missing and unexpected keys."""
    expected = set(model.state_dict())
    given = set(state_dict)
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_name_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_name_list(unexpected)}")
        raise InputError(f"{source} does not fit the model from the factory ({type(model).__name__}): {'; '.join(parts)}")
    try:
        model.load_state_dict(state_dict, assign=assign)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).splitlines()[0])
        raise InputError(f"{source} does not fit the model from the factory ({type(model).__name__}): {first.rstrip('.')}") from None


def _zip_members(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def file_kind(path: Path) -> str:
    """`torchscript`, `exported_program`, or `pickle` (a torch.save file), judged by content."""
    members = _zip_members(path)
    if any(m.endswith("serialized_exported_program.json") or "/models/" in m and m.endswith(".json") for m in members):
        return "exported_program"
    if any(m.split("/", 1)[-1].startswith("code/") or m.endswith("/constants.pkl") for m in members):
        return "torchscript"
    return "pickle"


def torch_load(path: str | Path, *, what: str = "model") -> Any:
    """`torch.load` with a one-line error for files that are not PyTorch checkpoints.

    Plain tensors and containers load with `weights_only=True`; artifacts that pickle other objects
    (torchao tensor subclasses, ModelOpt state, a whole pickled module) need the full unpickler, which
    runs code from the file: that is what the user asked for by handing us their own checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: {path} does not exist" if not path.exists() else f"{what}: {path} is a folder, not a file")
    if not _looks_like_torch_save(path):
        raise InputError(f"{what}: {path} is not a PyTorch checkpoint (valid: {VALID_MODEL_FORMS})")
    errors = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, AttributeError, ImportError, TypeError)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except errors:
        log.debug("%s: not loadable with weights_only=True; loading it with the full unpickler", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except errors as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"{what}: {path} is not a loadable PyTorch checkpoint ({type(exc).__name__}: {detail})") from None


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive with a data.pkl (or, before 1.6, a pickle: protocol byte 0x80)."""
    members = _zip_members(path)
    if members:
        return any(m.endswith("data.pkl") for m in members)
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def extract_state_dict(obj: Any, source: str) -> dict[str, Any] | None:
    """The state_dict inside a loaded checkpoint (a bare one, or nested under a common key)."""
    import torch

    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), Mapping):
                return extract_state_dict(obj[key], source)
        keys = ", ".join(map(str, list(obj)[:6]))
        raise InputError(
            f"{source}: a dict without tensors at the top or under {', '.join(_STATE_DICT_KEYS)} (its keys: {keys}); "
            f"valid: {VALID_MODEL_FORMS}"
        )
    return None


def load_pytorch_model(
    path: str | Path,
    factory: str | Callable[..., Any] | None = None,
    factory_kwargs: Mapping[str, Any] | None = None,
):
    """A float `nn.Module` in eval mode from any of the valid forms (see VALID_MODEL_FORMS).

    A ModelOpt artifact (`quantized_model_modelopt.pth`) is restored with its quantizers; for a
    torchao artifact use `tao_qc.frontends.quantizer.load_quantized` (it needs the backend name).
    """
    import torch
    from torch import nn

    path = Path(path)
    if not path.is_file():
        raise InputError(f"model: {path} does not exist" if not path.exists() else f"model: {path} is a folder, not a model file")
    kind = file_kind(path)
    if kind == "torchscript":
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as exc:
            raise InputError(f"model: {path} looks like TorchScript but does not load: {str(exc).splitlines()[0]}") from None
    if kind == "exported_program":
        try:
            return torch.export.load(str(path)).module()
        except Exception as exc:  # noqa: BLE001 - torch.export raises many types for a bad archive
            raise InputError(f"model: {path} looks like a torch.export program but does not load: {type(exc).__name__}: {exc}") from None

    obj = torch_load(path)
    if isinstance(obj, nn.Module):
        return obj.eval()
    if isinstance(obj, Mapping) and "modelopt_state" in obj:
        if factory is None:
            raise InputError(f"model: {path} is a ModelOpt artifact; it needs --model-factory {FACTORY_FORM}")
        return restore_modelopt_artifact(build_model(factory, factory_kwargs), obj, str(path))
    state_dict = extract_state_dict(obj, f"model: {path}")
    if state_dict is None:
        raise InputError(f"model: {path} holds a {type(obj).__name__}, not a model (valid: {VALID_MODEL_FORMS})")
    if factory is None:
        raise InputError(f"model: {path} is a state_dict; name the architecture with --model-factory {FACTORY_FORM}")
    model = build_model(factory, factory_kwargs)
    subclassed = any(type(v) is not torch.Tensor and not isinstance(v, nn.Parameter) for v in state_dict.values())
    load_state_dict_checked(model, state_dict, f"model: {path}", assign=subclassed)
    return model.eval()


# ModelOpt's artifacts: restored here, where every model file is loaded (modelopt_backend saves them).
_modelopt_log = logging.getLogger("tao_qc.frontends.modelopt")


@contextlib.contextmanager
def _quiet_stdout():
    """ModelOpt prints progress ("Inserted 12 quantizers") to stdout, which belongs to our results
    (`--json`); send it to the debug log instead."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                _modelopt_log.debug("modelopt: %s", line.strip())


def restore_modelopt_artifact(model, artifact: dict[str, Any], source: str):
    """Rebuild the quantizers from ModelOpt's state, then load the weights and calibrated ranges."""
    import modelopt.torch.opt as mto

    if not isinstance(artifact, dict) or "modelopt_state" not in artifact or "model_state_dict" not in artifact:
        raise InputError(f"{source}: not a modelopt.pytorch artifact (expected a dict with model_state_dict and modelopt_state)")
    try:
        with _quiet_stdout():
            model = mto.restore_from_modelopt_state(model, artifact["modelopt_state"])
    except Exception as exc:  # noqa: BLE001 - ModelOpt raises assorted types for a state that does not fit
        raise InputError(f"{source}: ModelOpt state does not fit the model from the factory: {type(exc).__name__}: {exc}") from None
    load_state_dict_checked(model, artifact["model_state_dict"], source)
    return model.eval()
