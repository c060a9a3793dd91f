"""Token files: one memory-mapped array per split plus a small JSON manifest, written atomically.

Layout of a token directory::

    tokenizer.json   the tokenizer (HF tokenizers format)
    train.bin ...    raw little-endian uint16 (vocab < 65,536) or uint32 arrays, one per split
    manifest.json    written last; its presence marks the directory complete

The whole directory is built under a temporary name and renamed into place, so a killed run never
leaves a directory that looks valid.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


def write_token_dir(
    out_dir: Path, tokenizer: Tokenizer, splits: dict[str, list[int]], manifest: dict[str, Any]
) -> None:
    """Write ``splits`` (name -> token ids) and the tokenizer to ``out_dir`` atomically."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.get_vocab_size())
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp", dir=out_dir.parent))
    try:
        tokenizer.save(str(tmp / "tokenizer.json"))
        counts = {}
        for name, ids in splits.items():
            arr = np.asarray(ids, dtype=dtype)
            arr.tofile(tmp / f"{name}.bin")
            counts[name] = int(arr.size)
        manifest = {**manifest, "dtype": dtype.name, "vocab_size": tokenizer.get_vocab_size(), "num_tokens": counts}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not (out_dir / MANIFEST).is_file():  # not a concurrent writer that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def open_split(out_dir: Path, split: str) -> np.memmap:
    """Memory-map one split read-only."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"{out_dir} has no {MANIFEST}; run prepare_data first")
    if split not in manifest["num_tokens"]:
        raise KeyError(f"{out_dir} has no split {split!r}; it has {sorted(manifest['num_tokens'])}")
    if manifest["num_tokens"][split] == 0:
        return np.zeros(0, dtype=manifest["dtype"])  # np.memmap refuses empty files
    return np.memmap(out_dir / f"{split}.bin", dtype=manifest["dtype"], mode="r")
