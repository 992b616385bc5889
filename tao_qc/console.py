"""Terminal output: log verbosity and progress bars, both on stderr so stdout stays for results."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

_quiet = False


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"tao-qc: {level}{record.getMessage()}"


class _CurrentStderr(logging.StreamHandler):
    """Writes to `sys.stderr` as it is when a line is logged, not as it was when logging was set up:
    a caller that replaces stderr (a notebook's redirect, a test's capture) and later closes its
    stream would otherwise get `ValueError: I/O operation on closed file` for every later line."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbosity: int) -> None:
    """verbosity: -1 quiet (warnings and errors), 0 normal, 1+ debug."""
    global _quiet
    _quiet = verbosity < 0
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = _CurrentStderr()
    handler.setFormatter(_Format())
    root = logging.getLogger("tao_qc")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator:
    """A progress bar on stderr; `advance(n)` on the yielded object. Silent under -q."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=_quiet,
    )
    with bar:
        task = bar.add_task(description, total=total)

        class _Advance:
            def advance(self, n: int = 1) -> None:
                bar.advance(task, n)

        yield _Advance()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(description, total) as bar:
        for item in items:
            yield item
            bar.advance()
