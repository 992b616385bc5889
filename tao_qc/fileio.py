"""Writing results so that a failed or interrupted run never leaves a file that looks finished."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; results get the permissions any new file would (the umask's).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """A fresh folder beside `final` to write into; moved into place only when the block succeeds.

    An existing `final` is replaced only then, so an interrupted run leaves the previous results
    (or nothing), never a half-written set. Where the OS can swap two paths in one step (Linux),
    the new folder and the previous one trade places atomically: at every moment `final` holds
    either the complete previous results or the complete new ones. Elsewhere the previous folder is
    moved aside first, which leaves a moment (two renames apart) with no folder at `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp creates 0700
    try:
        yield stage
        if not final.exists():
            os.replace(stage, final)
        elif not exchange_paths(stage, final):
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        # After an exchange `stage` holds the previous results; the finally below removes them.
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# What renameat2 answers where the kernel or the file system cannot exchange (old kernels, some
# network and FUSE file systems): fall back, rather than fail a run whose results are ready.
_CANNOT_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap the two existing paths `a` and `b` in one atomic step; False where this OS or file
    system cannot (then nothing was changed).

    Linux's renameat2(RENAME_EXCHANGE), called through ctypes: Python's os module has no binding
    for it, and no library on our dependency list offers one.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2  # glibc 2.28 and later
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _CANNOT_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))
