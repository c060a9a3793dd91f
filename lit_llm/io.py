"""Small file helpers shared by the commands and callbacks."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary name beside ``path`` and rename it into place: readers see the old file
    or the whole new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def fsync_path(path: str | Path) -> None:
    """Flush a file, or a folder's entries (so that a rename in it survives a crash), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """Flush every file below ``folder``, and the folders themselves, before a rename publishes it."""
    folder = Path(folder)
    for p in sorted(folder.rglob("*"), reverse=True):  # files before the folders that hold them
        fsync_path(p)
    fsync_path(folder)
