"""Token files: one memory-mapped array per split plus a small JSON manifest (written by ``prepare``).

Layout of a token directory::

    tokenizer.json     the tokenizer (HF tokenizers format)
    train.bin ...      raw little-endian uint16 (vocab < 65,536) or uint32 arrays, one per split
    doc_lengths.npy    tokens per document, in stream order (document boundaries)
    report.json, doc_lengths.png   the data report
    manifest.json      written last; its presence marks the directory complete
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


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
    dtype = np.dtype(manifest["dtype"])
    path = out_dir / f"{split}.bin"
    want = manifest["num_tokens"][split] * dtype.itemsize
    have = path.stat().st_size if path.is_file() else None
    if have != want:  # a damaged or hand-edited folder: never train on a truncated or foreign array
        raise ValueError(f"Token folder {out_dir} is damaged: {path.name} has {have} bytes, its manifest says {want};"
                         " delete the folder and prepare again")
    if want == 0:
        return np.zeros(0, dtype=dtype)  # np.memmap refuses empty files
    return np.memmap(path, dtype=dtype, mode="r")
