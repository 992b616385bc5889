"""The architecture as the imports draw it: layers that import only downward, no circles, imports
of tao_qc's own modules at the top of each file, and `import tao_qc` without torch or onnxruntime.

Layers, lowest first (a module may import its own layer and the layers below it):
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"tao_qc": "tao_qc"}
LAYERS = [
    ("tao_qc.errors", "tao_qc.version", "tao_qc.console", "tao_qc.fileio"),
    ("tao_qc.spec",),
    ("tao_qc.ir", "tao_qc.data"),
    ("tao_qc.pipeline",),
    ("tao_qc.runtimes",),
    ("tao_qc.passes",),
    ("tao_qc.frontends",),
    ("tao_qc.evaluate",),
    ("tao_qc.report",),
    ("tao_qc.accuracy", "tao_qc.speed"),
    ("tao_qc.driver",),
    ("tao_qc.commands", "tao_qc.cli", "tao_qc"),
    ("tao_qc.testing", "tao_qc.zoo", "tao_qc.corpus"),  # tests, benchmarks, examples: nothing above imports them
]
# Deferred on purpose: the CLI loads a verb's module only when it runs (`tao-qc --help` stays instant),
# and `tao_qc.ModelQuantizer` pulls in torch only when asked for.
DEFERRED = {"tao_qc.cli", "tao_qc"}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _layer(module: str) -> int:
    best, rank = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank >= 0, f"{module} belongs to no layer: add it to LAYERS"
    return rank


def _imports(modules: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules}
    deferred = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        nested = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for node in ast.walk(fn)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            own = [t for t in targets if t == "tao_qc" or t.startswith("tao_qc.")]
            if not own:
                continue
            if id(node) in nested and name not in DEFERRED:
                deferred.append(f"{name}:{node.lineno}")
            for target in own:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    edges[name].add(target)
                    break
    return edges, deferred


def test_imports_run_downward_only():
    modules = _modules()
    edges, _ = _imports(modules)
    upward = [f"{a} -> {b}" for a, targets in edges.items() for b in targets
              if _layer(b) > _layer(a) and not (a == "tao_qc" and b.startswith("tao_qc."))]
    assert not upward, "imports that run back up: " + ", ".join(sorted(upward))


def test_no_import_circles():
    edges, _ = _imports(_modules())
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            circle = visit(start)
            assert circle is None, "import circle: " + " -> ".join(circle)


def test_own_imports_sit_at_the_top():
    _, deferred = _imports(_modules())
    assert not deferred, "imports of tao_qc's modules inside functions: " + ", ".join(deferred)


def test_few_modules_at_the_top_of_tao_qc():
    top = sorted(p.name for p in (REPO / "tao_qc").glob("*.py"))
    assert len(top) <= 10, top


def test_import_tao_qc_loads_neither_torch_nor_onnxruntime():
    code = "import sys, tao_qc; print(sorted(m for m in ('torch', 'onnxruntime', 'modelopt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
