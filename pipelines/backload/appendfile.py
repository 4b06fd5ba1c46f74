"""The send journals' file: append-only beside the warehouse (mode 0600), its name durable, lines of codes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def clean(value: object) -> str:
    """One field: None as empty; tabs and line ends cannot occur in codes, but never split a line."""
    if value is None:
        return ""
    return str(value).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def open_append(path: Path) -> int:
    """Open (creating) for appending; the folder is fsynced so the file's name survives a crash too, or the
    next run would not find what it holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return fd


def write_all(fd: int, data: bytes, *, sync: bool) -> None:
    """All of `data` (os.write may take part of it), then an fsync when asked."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if sync:
        os.fsync(fd)
