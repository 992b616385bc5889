"""Input shapes for models with dynamic dimensions: from the data they run, or from the user.

Exported detectors and recognizers leave batch, height and width open (`x: float32[?,3,?,?]`).
Whatever runs such a model (comparison, latency, TensorRT optimization profiles) takes the shapes of
the data it runs; where there is no data, `--input-shapes name:1x3x640x640[,name2:...]` (trtexec's and
polygraphy's convention, the batch first) says them. Data whose shape the model rejects (a DBNet
height that is not a multiple of 32) is a one-line error naming the input, the shape and, where a
few probe runs can tell, the multiple the model needs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tao_qc.errors import InputError

Shapes = dict[str, tuple[int, ...]]

_ENTRY = re.compile(r"^(?P<name>.+):(?P<dims>\d+(?:x\d+)*)$")


def parse_input_shapes(text: str | None, key: str = "--input-shapes") -> Shapes:
    """`name:1x3x640x640,name2:1x10` -> `{name: (1, 3, 640, 640), ...}`; an input name may hold ':'
    (the last one separates the dims)."""
    if not text:
        return {}
    shapes: Shapes = {}
    for part in (p.strip() for p in text.split(",")):
        match = _ENTRY.match(part)
        if not match:
            raise InputError(f"{key}: {part!r} is not NAME:DIMS (e.g. x:1x3x640x640; several separated by commas)")
        dims = tuple(int(d) for d in match["dims"].split("x"))
        if any(d < 1 for d in dims):
            raise InputError(f"{key}: {part!r} has a dimension below 1")
        if match["name"] in shapes:
            raise InputError(f"{key}: input {match['name']!r} is given twice")
        shapes[match["name"]] = dims
    return shapes


def shapes_of(feeds: Mapping[str, np.ndarray]) -> Shapes:
    return {name: tuple(int(d) for d in array.shape) for name, array in feeds.items()}


def resolve_shape(info: Any, shapes: Mapping[str, Sequence[int]] | None, key: str = "--input-shapes") -> tuple[int, ...]:
    """The full shape of input `info` (a `tao_qc.data.InputInfo`): the model's fixed dimensions, the
    given shape's where the model's are dynamic. The batch dimension is the given one (or 1)."""
    given = tuple((shapes or {}).get(info.name, ()))
    model_dims = list(info.shape)
    if given:
        if len(given) != len(model_dims):
            raise InputError(f"{key}: {info.name} has {len(given)} dimensions ({'x'.join(map(str, given))}) but the "
                             f"model's input {info.describe()} has {len(model_dims)}")
        clashes = [axis for axis, (want, got) in enumerate(zip(model_dims, given))
                   if axis > 0 and isinstance(want, int) and want > 0 and want != got]
        if clashes:
            raise InputError(f"{key}: {info.name} {'x'.join(map(str, given))} does not fit the model's input "
                             f"{info.describe()} (axis {', '.join(map(str, clashes))})")
        return given
    dynamic = [axis for axis, d in enumerate(model_dims) if axis > 0 and not (isinstance(d, int) and d > 0)]
    if dynamic:
        example = "x".join(str(d) if isinstance(d, int) and d > 0 else ("1" if axis == 0 else "N")
                           for axis, d in enumerate(model_dims))
        raise InputError(f"input {info.describe()} has dynamic dimensions besides the batch (axis "
                         f"{', '.join(map(str, dynamic))}): give data, or {key} {info.name}:{example} with the sizes")
    first = model_dims[0] if model_dims else 1
    return (first if isinstance(first, int) and first > 0 else 1, *(int(d) for d in model_dims[1:]))


def explain_rejected_shape(run: Callable[[dict[str, np.ndarray]], Any], feeds: Mapping[str, np.ndarray],
                           dynamic_axes: Mapping[str, Sequence[int]], error: BaseException, where: str) -> InputError:
    """A one-line error for data the model fails on: the input, its shape, the runtime's reason, and,
    when every size that is a multiple of 8, 16, 32 or 64 runs (two probed per multiple: the data's
    sizes rounded up, and one step more), the smallest such multiple. Probes run only after a failure."""
    shown = ", ".join(f"{name} {array.dtype.name}{list(array.shape)}" for name, array in feeds.items())
    axes = {name: [a for a in dynamic_axes.get(name, ()) if a > 0] for name in feeds}
    hint = ""
    if any(axes.values()):
        for multiple in (8, 16, 32, 64):
            if _runs_at_multiples_of(run, feeds, axes, multiple):
                where_axes = "; ".join(f"{name} axis {', '.join(map(str, a))}" for name, a in axes.items() if a)
                hint = f"; it runs when the open sizes ({where_axes}) are multiples of {multiple}"
                break
    return InputError(f"{where}: the model fails on {shown} ({runtime_reason(error)}){hint}")


def _runs_at_multiples_of(run: Callable[[dict[str, np.ndarray]], Any], feeds: Mapping[str, np.ndarray],
                          axes: Mapping[str, Sequence[int]], multiple: int) -> bool:
    for extra in (0, multiple):
        probe = {}
        for name, array in feeds.items():
            shape = [(-(-size // multiple) * multiple + extra) if axis in axes[name] else size
                     for axis, size in enumerate(array.shape)]
            probe[name] = np.zeros(shape, dtype=array.dtype)
        try:
            run(probe)
        except Exception:  # noqa: BLE001 - any failure means: not this multiple
            return False
    return True


_ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")
_ORT_CHECK = re.compile(r"was false\.\s*([^\n]*?)(?:\s*Validate usage|$)")
_ORT_STATUS = re.compile(r"Status Message:\s*([^\n]*)")


def runtime_reason(error: BaseException) -> str:
    """The useful part of a runtime's failure message: ONNX Runtime's node and status, without the
    source paths of its C++ files."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    node, status = _ORT_NODE.search(text), _ORT_CHECK.search(text) or _ORT_STATUS.search(text)
    if node and status:
        return f"ONNX Runtime, {node[1]} node '{node[2]}': {status[1].strip()[:160]}"
    return text.splitlines()[0][:200]


def dynamic_axes(inputs: Sequence[Any]) -> dict[str, list[int]]:
    """Per input (`InputInfo`), the axes the model leaves open."""
    return {info.name: [axis for axis, d in enumerate(info.shape) if not (isinstance(d, int) and d > 0)]
            for info in inputs}
