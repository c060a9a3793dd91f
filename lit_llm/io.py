"""Small file helpers shared by the commands and callbacks."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lit_llm.errors import StorageError

# the write errors that are the disk's or the folder's, not the program's
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                  errno.EPERM: "the operation is not permitted"}


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed to ``path`` when the block succeeds and removed if it
    fails, so that readers see the old file or the whole new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (hex), read in blocks: the checksum of shard and chunk records."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


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


def storage_error(error: OSError, path: str | Path, kept: str) -> StorageError:
    """A ``StorageError`` naming the path, what the disk said and ``kept`` (what is still whole), for an OSError
    whose errno is the disk's (``STORAGE_ERRNOS``)."""
    return StorageError(f"could not write {path}: {STORAGE_ERRNOS[error.errno]}; {kept}")


def check_writable(folder: str | Path, what: str) -> None:
    """Write a probe file in ``folder``, or in its nearest existing parent when it does not exist yet (nothing is
    created), before any long work: a read-only or full disk, or a path inside a file, is one error naming
    ``what`` (the option that chose the folder), not a failure at the first save."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError(f"{what} {folder} is inside a file, not a folder ({existing}); choose another path")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".lit_llm-probe-"):
            pass
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise StorageError(f"{what} {folder} is not writable ({STORAGE_ERRNOS[e.errno]}); choose a folder you"
                               " can write to") from None
        raise


def publish_mode(folder: str | Path) -> None:
    """Give a folder made by ``tempfile.mkdtemp`` (mode 0700) the mode a plain ``mkdir`` would (0777 less the
    umask), before it is renamed into place: others may read what export and prepare publish."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
