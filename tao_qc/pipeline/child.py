"""A child Python interpreter over a socket pair, for work that must not share our process
(modelopt.onnx patches onnxruntime.quantization on import; accuracy trials run in parallel).

A fresh `python -m <module> <fd>` rather than multiprocessing's spawn: spawn re-imports the parent's
`__main__`, which re-runs a user's unguarded script (or fails for `python -` and notebooks)."""

from __future__ import annotations

import socket
import subprocess
import sys
from multiprocessing.connection import Connection


def start_child(module: str) -> tuple[subprocess.Popen, Connection]:
    """Start `python -m module FD`; the child reads and writes its end of the pair through
    `multiprocessing.connection.Connection(FD)`. Returns the process and our end."""
    ours, theirs = socket.socketpair()
    process = subprocess.Popen([sys.executable, "-m", module, str(theirs.fileno())],
                               pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
    theirs.close()
    return process, Connection(ours.detach())
