"""One pattern matcher for PyTorch modules and ONNX nodes.

A spec pattern is a shell-style wildcard (`*`, `?`, whole-string match, case-sensitive), tried first
against a unit's qualified name, then against its type. The same pattern means the same thing in both
worlds: an ONNX node exported from `backbone.conv1` answers to that module name as well as to its own
node name, and a PyTorch class name (`Conv2d`, `Linear`) selects the ONNX op types exported from it.

`decide` returns, for every unit, the dtypes it gets and the rule that set each, so reports and pass
dumps can say why a node was or was not quantized.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from tao_qc.spec import LayerEntry

log = logging.getLogger("tao_qc.patterns")

# Types the spec's empty `layers` list quantizes on every backend.
COMPUTE_TYPES = frozenset({"Conv1d", "Conv2d", "Conv3d", "Linear", "Conv", "Gemm", "MatMul"})

# PyTorch class <-> ONNX op types exported from it, so one spec drives both paths.
_TYPE_FAMILIES = {
    "Conv1d": ("Conv",),
    "Conv2d": ("Conv",),
    "Conv3d": ("Conv",),
    "Linear": ("Gemm", "MatMul"),
    "Conv": ("Conv1d", "Conv2d", "Conv3d"),
    "Gemm": ("Linear",),
    "MatMul": ("Linear",),
}


@dataclass(frozen=True)
class Unit:
    """Something a pattern can select: a PyTorch module or an ONNX node."""

    name: str
    type: str
    # Other names the unit answers to (an ONNX node's originating module path).
    name_aliases: tuple[str, ...] = ()
    # Other types it answers to; None means its type's family (Conv2d <-> Conv, Linear <-> Gemm/MatMul).
    type_aliases: tuple[str, ...] | None = None

    @property
    def types(self) -> tuple[str, ...]:
        aliases = _TYPE_FAMILIES.get(self.type, ()) if self.type_aliases is None else self.type_aliases
        return (self.type, *aliases)

    def matched_by(self, pattern: str) -> str | None:
        """How `pattern` selects this unit ("name", "module name", "type"), or None."""
        if fnmatchcase(self.name, pattern):
            return "name"
        if any(fnmatchcase(alias, pattern) for alias in self.name_aliases):
            return "module name"
        if any(fnmatchcase(kind, pattern) for kind in self.types):
            return "type"
        return None


@dataclass(frozen=True)
class Decision:
    """What happens to one unit, and which rule decided each part."""

    unit: Unit
    weights: str = "native"
    activations: str = "native"
    weights_rule: str = "not selected by any layers entry"
    activations_rule: str = "not selected by any layers entry"
    skipped_by: str | None = None

    @property
    def quantized(self) -> bool:
        return self.weights != "native" or self.activations != "native"

    @property
    def reason(self) -> str:
        if self.skipped_by:
            return f"kept in float: {self.skipped_by}"
        if not self.quantized:
            return f"kept in float: {self.weights_rule}"
        if self.weights_rule == self.activations_rule:
            return f"weights {self.weights}, activations {self.activations}: {self.weights_rule}"
        return (
            f"weights {self.weights} ({self.weights_rule}), "
            f"activations {self.activations} ({self.activations_rule})"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.unit.name,
            "type": self.unit.type,
            "quantized": self.quantized,
            "weights": self.weights,
            "activations": self.activations,
            "weights_rule": self.weights_rule,
            "activations_rule": self.activations_rule,
            "skipped_by": self.skipped_by,
        }


@dataclass
class MatchResult:
    decisions: list[Decision]
    # Patterns (as "layers[i] 'pattern'" / "skip_names[i] 'pattern'") that selected nothing at all,
    # and those that selected only units of types that cannot be quantized (a Relu, an Add, ...).
    unmatched: list[str] = field(default_factory=list)
    only_other_types: list[str] = field(default_factory=list)

    @property
    def quantized(self) -> list[Decision]:
        return [d for d in self.decisions if d.quantized]

    def by_name(self) -> dict[str, Decision]:
        return {d.unit.name: d for d in self.decisions}


def decide(
    units: Sequence[Unit],
    layers: Sequence[LayerEntry],
    skip_names: Sequence[str],
    *,
    static: bool,
    quantizable_types: Iterable[str] = COMPUTE_TYPES,
    warn: bool = True,
) -> MatchResult:
    """Apply the spec's `layers` and `skip_names` to `units`.

    Rules (SPEC.md): later entries override earlier ones for the fields they set; a unit selected by
    any entry is quantized, with int8 for a field no entry set (activations only for `static`
    PTQ); only dtype `native` or `skip_names` keeps it in float; an empty `layers` list quantizes the
    usual compute layers. Only units whose type is in `quantizable_types` can be quantized; the
    others are matched only to find patterns that select nothing.
    """
    quantizable = frozenset(quantizable_types)
    default_activation = "int8" if static else "native"
    layer_hits = [0] * len(layers)
    skip_hits = [0] * len(skip_names)
    other_layer_hits = [0] * len(layers)
    other_skip_hits = [0] * len(skip_names)
    decisions = []
    for unit in units:
        if unit.type not in quantizable:
            for index, entry in enumerate(layers):
                other_layer_hits[index] += unit.matched_by(entry.module_name) is not None
            for index, pattern in enumerate(skip_names):
                other_skip_hits[index] += unit.matched_by(pattern) is not None
            continue
        decision = _decide_one(unit, layers, layer_hits, default_activation)
        for index, pattern in enumerate(skip_names):
            how = unit.matched_by(pattern)
            if how is not None:
                skip_hits[index] += 1
                if decision.skipped_by is None:
                    rule = f"skip_names[{index}] '{pattern}' (by {how})"
                    decision = Decision(unit, "native", "native", rule, rule, skipped_by=rule)
        decisions.append(decision)

    labels = [f"layers[{i}] '{e.module_name}'" for i, e in enumerate(layers)]
    labels += [f"skip_names[{i}] '{p}'" for i, p in enumerate(skip_names)]
    hits, other_hits = layer_hits + skip_hits, other_layer_hits + other_skip_hits
    unmatched = [label for label, h, o in zip(labels, hits, other_hits) if not h and not o]
    only_other = [label for label, h, o in zip(labels, hits, other_hits) if not h and o]
    if warn:
        for item in unmatched:
            log.warning("pattern %s matches nothing", item)
        for item in only_other:
            log.warning(
                "pattern %s matches only layers that cannot be quantized (valid types: %s)",
                item,
                ", ".join(sorted(quantizable)),
            )
    return MatchResult(decisions, unmatched, only_other)


def _decide_one(unit: Unit, layers: Sequence[LayerEntry], hits: list[int], default_activation: str) -> Decision:
    if not layers:
        rule = "default: layers is empty, so every compute layer is quantized"
        return Decision(unit, "int8", default_activation, rule, rule)
    weights = activations = None
    weights_rule = activations_rule = None
    selected_by = None
    for index, entry in enumerate(layers):
        how = unit.matched_by(entry.module_name)
        if how is None:
            continue
        hits[index] += 1
        rule = f"layers[{index}] '{entry.module_name}' (by {how})"
        selected_by = rule
        if entry.weights is not None:
            weights, weights_rule = entry.weights.dtype, rule
        if entry.activations is not None:
            activations, activations_rule = entry.activations.dtype, rule
    if selected_by is None:
        rule = "not selected by any layers entry"
        return Decision(unit, "native", "native", rule, rule)
    if weights is None:
        weights, weights_rule = "int8", f"{selected_by}, int8 by default"
    if activations is None:
        activations, activations_rule = default_activation, f"{selected_by}, {default_activation} by default"
    return Decision(unit, weights, activations, weights_rule, activations_rule)


def module_path_from_onnx_name(node_name: str) -> str | None:
    """The PyTorch module path an exported ONNX node came from, or None.

    `torch.onnx.export` names nodes by scope: `/backbone/layer1/layer1.0/conv1/Conv`. A scope
    segment repeats its parent's name for container children (`layer1` then `layer1.0`), so a
    segment that extends the previous one replaces it rather than nesting under it.
    """
    if not node_name.startswith("/"):
        return None
    segments = [s for s in node_name.split("/")[1:-1] if s]
    parts: list[str] = []
    for segment in segments:
        if parts and segment.startswith(parts[-1] + "."):
            parts[-1] = segment
        else:
            parts.append(segment)
    return ".".join(parts) or None


def onnx_unit(node_name: str, op_type: str, weight_name: str | None = None, *, has_weight: bool = True) -> Unit:
    """A unit for one ONNX node.

    The exporter's scope name can lose a module's parents (a module reached through a ModuleDict, or
    whose parent's forward never ran, is named by its last atom), but its weight initializer keeps
    the full state_dict key (`heads.cls.weight`), so that name is a second source of the module path.
    A Gemm/MatMul without a constant weight (attention's Q x K) came from no `Linear` module, so it
    does not answer to `Linear`.
    """
    scope, from_weight = module_path_from_onnx_name(node_name), _module_from_weight(weight_name)
    # Where both exist and differ, the scope lost the module's parents (`/conv1/Conv` for
    # `inner.conv1`): only the weight's path is true.
    aliases = [from_weight] if from_weight else [scope] if scope else []
    type_aliases = None if has_weight or op_type not in ("Gemm", "MatMul") else ()
    return Unit(node_name, op_type, tuple(aliases), type_aliases)


def onnx_units(model) -> list[Unit]:
    """Units for every node of an `onnx.ModelProto` or `onnx_ir.Model` main graph, in graph order."""
    nodes, constant_roots = _graph_view(model)
    units = []
    for name, op_type, inputs in nodes:
        weight = inputs[1] if len(inputs) > 1 and inputs[1] else None
        root = constant_roots.get(weight) if weight else None
        units.append(onnx_unit(name, op_type, root if isinstance(root, str) else None, has_weight=root is not None))
    return units


def _module_from_weight(name: str | None) -> str | None:
    if name and name.endswith(".weight") and not name.startswith("onnx::"):
        return name[: -len(".weight")] or None
    return None


def _graph_view(model) -> tuple[list[tuple[str, str, list[str]]], dict[str, str | bool]]:
    """(name, op type, input names) per node, and for each constant value the name of the
    initializer it derives from (True for a constant with no single initializer root).

    A value is constant when it is an initializer or every input of its producer is constant
    (Transpose/Cast/DequantizeLinear of a weight stay the weight).
    """
    graph = model.graph
    if hasattr(graph, "initializer"):  # onnx.ModelProto
        initializers = [init.name for init in graph.initializer]
        nodes = [(n.name, n.op_type, list(n.input), list(n.output)) for n in graph.node]
    else:  # onnx_ir.Model
        initializers = list(graph.initializers)
        nodes = [
            (n.name or "", n.op_type, [v.name if v is not None else "" for v in n.inputs], [v.name for v in n.outputs])
            for n in graph
        ]
    roots: dict[str, str | bool] = {name: name for name in initializers}
    for _name, op_type, inputs, outputs in nodes:
        present = [i for i in inputs if i]
        if op_type == "Constant" or (present and all(i in roots for i in present)):
            named = [roots[i] for i in present if isinstance(roots[i], str)]
            root: str | bool = named[0] if named else True
            for output in outputs:
                roots[output] = root
    return [(name, op_type, inputs) for name, op_type, inputs, _ in nodes], roots
