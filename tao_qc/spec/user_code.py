"""A user's own function named in the spec as `module:function` (an accuracy metric, a detection
decoder): one loader, so every such key finds modules the same way and fails with the same kind of
one-line error."""

from __future__ import annotations

import importlib
import sys
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tao_qc.errors import InputError


def load_user_function(reference: str, key: str, *, search_path: str | Path | None = None,
                       kind: str = "function") -> Callable[..., Any]:
    """The callable `module:function` names (`function` may be a dotted path inside the module).

    The module is looked for in `search_path` (the spec file's folder), then the current folder,
    then PYTHONPATH and the installed packages. Those folders are on sys.path only while it is
    imported: a user's folder must not shadow other modules for the rest of the run. `key` (the
    YAML key or CLI option) and `kind` ("function", "callable") word the one-line errors."""
    form = f"module:{kind}"
    module_name, _, attribute = reference.partition(":") if isinstance(reference, str) else ("", "", "")
    if not module_name or not attribute or ":" in attribute:
        raise InputError(f"{key}: {reference!r} is not of the form {form}, e.g. mypkg.models:build")
    folders = [str(Path(folder)) for folder in (search_path, Path.cwd()) if folder is not None]
    added = [folder for folder in dict.fromkeys(folders) if folder not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = "beside the spec file, in the current folder or on PYTHONPATH" if search_path else \
            "in the current folder or on PYTHONPATH"
        raise InputError(f"{key}: cannot import module '{module_name}' ({exc}); give {form} with the module {where}") from None
    finally:
        for folder in added:
            if folder in sys.path:
                sys.path.remove(folder)
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if target is None:
        public = _callables_of(module)
        there = f" ({kind}s there: {', '.join(public[:8])}{' ...' if len(public) > 8 else ''})" if public else ""
        raise InputError(f"{key}: module '{module_name}' has no {kind} '{attribute}'{there}")
    if not callable(target):
        raise InputError(f"{key}: '{reference}' is not a {kind} (give {form})")
    return target


def _callables_of(module: Any) -> list[str]:
    """The public callables a module offers: its `__all__`, else those of its own package, so that
    names it imported from elsewhere (`Path`, `dataclass`) do not crowd the hint."""
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    package = module.__name__.split(".")[0]
    offered = [n for n in names if callable(getattr(module, n, None))]
    own = [n for n in offered if (getattr(getattr(module, n), "__module__", None) or "").split(".")[0] == package]
    return sorted(own or offered)


@dataclass(frozen=True)
class UserModules:
    """Where this process found the user's own modules, so that another process imports them too.

    A module the spec names may be importable here only through a folder this process has on its
    `sys.path` (the spec's folder, or one a script or notebook added), which a fresh worker does not
    have. `folders`: what a process on this machine puts in front of its `sys.path` (the modules'
    own folders, then this process's path entries); `sources`: each top-level module's file or
    package folder, which travel with a Ray trial setup to machines that cannot read this one's disk.
    Modules of installed packages, and tao-qc's own (`tao_qc.corpus:text_accuracy`), need neither."""

    folders: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def make_importable(self) -> None:
        """Put `folders` in front of this process's sys.path (those it lacks and that exist here)."""
        missing = [folder for folder in self.folders if folder not in sys.path and Path(folder).is_dir()]
        sys.path[:0] = missing


def locate_user_modules(references: Iterable[tuple[str, str]], *, search_path: str | Path | None = None) -> UserModules:
    """The UserModules for `(reference, key)` pairs (`module:function`, the YAML key naming it), each
    imported here as `load_user_function` imports it (so a module that cannot be imported fails
    here, in one line, before any worker starts)."""
    folders: list[str] = []
    sources: list[str] = []
    for reference, key in references:
        load_user_function(reference, key, search_path=search_path)
        top = sys.modules[reference.partition(":")[0].split(".")[0]]
        where = _source_of(top)
        if where is None or _installed(where) or top.__name__ == __name__.split(".")[0]:
            continue
        sources.append(str(where))
        folders.append(str(where.parent))
    own = [entry for entry in sys.path if entry and Path(entry).is_dir() and not _installed(Path(entry))]
    return UserModules(tuple(dict.fromkeys(folders + [str(Path(entry).resolve()) for entry in own])),
                       tuple(dict.fromkeys(sources)))


def _source_of(module: Any) -> Path | None:
    """A top-level module's file, or its package's folder; None for a namespace or built-in module."""
    file = getattr(module, "__file__", None)
    if file is None:
        return None
    path = Path(file).resolve()
    return path.parent if path.name == "__init__.py" else path


def _installed(path: Path) -> bool:
    """Whether `path` lies among the installed packages or the standard library (every worker has them)."""
    roots = {Path(sysconfig.get_paths()[name]).resolve() for name in ("purelib", "platlib", "stdlib", "platstdlib")}
    resolved = path.resolve()
    return any(resolved == root or root in resolved.parents for root in roots)
