"""The preparation stage: sources -> cleaning -> tokenizer -> token files + manifest + report.

Run as ``python -m lit_llm prepare --config FILE`` or from ``PretrainDataModule.prepare_data``; both read
the config's ``data:`` section. Work streams document by document, so memory stays well below the corpus
size:

1. read and clean every document, writing the survivors to a temporary JSONL file;
2. train the tokenizer on that file (or load ``tokenizer.path``);
3. tokenize it in batches (``encode_batch`` runs on all cores), an EOS token after each document, into one
   uint16/uint32 stream, then cut the stream into train / test / val by position (val last, as nanoGPT does).

The output folder is named by a hash of everything that determines its content (source fingerprints,
cleaning, tokenizer, split), built under a temporary name and renamed into place, so a rerun with the
same config reuses it at once and a killed run never leaves a folder that looks complete.
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from lit_llm.data.cleaning import Cleaner
from lit_llm.io import fsync_tree, publish_mode, write_text_atomic
from lit_llm.data.sources import (
    MIXING, Source, fingerprint, fingerprint_hash, iter_documents, resolve_files, source_format, split_lines,
)
from lit_llm.data.tokenizer import TokenizerSpec, eos_id, load_tokenizer, tokenizer_hash, train_tokenizer
from lit_llm.data.tokens import MANIFEST, read_manifest, token_dtype

FORMAT_VERSION = 2  # 2: text lines end at \n only (not at U+0085 / U+2028 / form feeds)
ENCODE_BATCH = 512  # documents per encode_batch call


def check_utf8(path: Path, encoding_errors: str = "strict") -> None:
    """Refuse text that is not UTF-8, naming the file, the byte offset and the fix (streams; any file size):
    UTF-16 (a byte-order mark, or NUL bytes, which UTF-16 without one has in every other byte of ASCII text and
    binary files have too), and, with ``encoding_errors: strict``, the first invalid UTF-8 byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            if offset == 0 and chunk[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
                raise ValueError(
                    f"{path} is UTF-16 (it starts with the byte-order mark {chunk[:2].hex(' ').upper()}), not UTF-8."
                    f" Convert it: `iconv -f UTF-16 -t UTF-8 {path} > OUT`."
                )
            nul = chunk.find(b"\x00")
            try:
                if encoding_errors == "strict":
                    decoder.decode(chunk)
            except UnicodeDecodeError as e:
                if nul < 0 or e.start < nul:
                    raise ValueError(
                        f"{path} is not valid UTF-8 at byte {offset + e.start} ({e.reason}). Convert it from its real"
                        f" encoding, usually Windows-1252 for text called latin-1 (`iconv -f windows-1252 -t utf-8`), or"
                        f" set encoding_errors: replace on the data config to substitute U+FFFD."
                    ) from e
            if nul >= 0:
                at = offset + nul  # ASCII in UTF-16LE has its NULs at odd offsets, in UTF-16BE at even ones
                raise ValueError(
                    f"{path} holds a NUL byte at byte {at}: it looks like UTF-16 without a byte-order mark, or a"
                    f" binary file, not UTF-8 text. Convert it: `iconv -f UTF-16{'LE' if at % 2 else 'BE'} -t UTF-8"
                    f" {path} > OUT`."
                )
            offset += len(chunk)
        if encoding_errors == "strict":
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path} ends inside a UTF-8 character ({e.reason}); it is cut short or not UTF-8") from e


def token_folder(
    sources: list[Source],
    out_root: Path,
    cleaning: Optional[list[Any]] = None,
    tokenizer: Optional[TokenizerSpec] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 1337,
    encoding_errors: str = "strict",
    data_dir: Optional[str] = None,
    name: Optional[str] = None,
    mixing: str = MIXING[0],
) -> tuple[Path, dict[str, Any]]:
    """Where ``prepare`` with these arguments puts its output, and the inputs that name it (no work done)."""
    if encoding_errors not in ("strict", "replace"):
        raise ValueError(f"encoding_errors must be strict or replace, got {encoding_errors!r}")
    if mixing not in MIXING:
        raise ValueError(f"mixing must be one of {MIXING}, got {mixing!r}")
    tokenizer = tokenizer or TokenizerSpec()
    tok = asdict(tokenizer)
    if tokenizer.path:
        tok["file_sha"] = fingerprint_hash(load_tokenizer(tokenizer.path).to_str())  # a .json or a .ckpt
    key = {  # everything that decides the folder's content
        "version": FORMAT_VERSION, "sources": [fingerprint(s, data_dir) for s in sources],
        "cleaning": list(cleaning or []), "tokenizer": tok, "val_fraction": val_fraction,
        "test_fraction": test_fraction, "seed": seed, "encoding_errors": encoding_errors,
        "mixing": mixing if len(sources) > 1 else None,
    }
    stem = name or Path(sources[0].path or sources[0].hf_name).stem.replace("*", "")
    return Path(out_root) / f"{stem or 'corpus'}-{fingerprint_hash(key)}", key


STALE_TMP_S = 3600  # a temporary folder untouched this long was left by a killed prepare


def _failure_marker(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + ".failed")


def wait_for(out_dir: Path, timeout_s: float = 24 * 3600, poll_s: float = 2.0) -> Path:
    """Wait until another process has finished preparing ``out_dir`` (ranks that must not prepare). If that
    process failed, fail at once with its message instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout_s
    failed = _failure_marker(out_dir)
    since = time.time() - 60  # a marker older than this job is an earlier attempt's, which rank 0 clears
    while read_manifest(out_dir) is None:
        if failed.is_file() and failed.stat().st_mtime >= since:
            raise RuntimeError(f"Local rank 0 failed to prepare {out_dir}: {failed.read_text(encoding='utf-8')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Waited {timeout_s:.0f} s for {out_dir} to be prepared by local rank 0")
        time.sleep(poll_s)
    return out_dir


def sweep_stale(out_root: Path, max_age_s: float = STALE_TMP_S) -> list[Path]:
    """Delete the temporary folders of prepares that were killed: ``*.tmp*`` folders in which nothing changed
    for ``max_age_s`` (a prepare still running keeps writing into its own)."""
    removed = []
    now = time.time()
    for tmp in Path(out_root).glob("*.tmp*"):
        if tmp.is_dir():
            newest = max([p.stat().st_mtime for p in tmp.rglob("*")] + [tmp.stat().st_mtime])
            if now - newest > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
    return removed


def prepare(
    sources: list[Source],
    out_root: Path,
    cleaning: Optional[list[Any]] = None,
    tokenizer: Optional[TokenizerSpec] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 1337,
    encoding_errors: str = "strict",
    data_dir: Optional[str] = None,
    name: Optional[str] = None,
    progress: bool = True,
    mixing: str = MIXING[0],
) -> Path:
    """Build (or reuse) the token folder for this data config and return its path."""
    tokenizer = tokenizer or TokenizerSpec()
    cleaning = list(cleaning or [])
    cleaner = Cleaner(cleaning)  # validates step names and options before any work
    out_dir, key = token_folder(sources, out_root, cleaning, tokenizer, val_fraction, test_fraction, seed,
                                encoding_errors, data_dir, name, mixing)
    if read_manifest(out_dir) is not None:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out_dir.parent)
    failed = _failure_marker(out_dir)
    failed.unlink(missing_ok=True)  # an earlier attempt's failure; this one may succeed
    tmp = None
    try:
        for s in sources:  # text-based files (not parquet, which is binary) are checked before any work
            if s.path is not None:
                files = resolve_files(s, data_dir)
                if source_format(s, files) != "parquet":
                    for f in files:
                        check_utf8(f, encoding_errors)
        tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp", dir=out_dir.parent))
        t0 = time.perf_counter()
        docs = iter_documents(sources, data_dir, seed, encoding_errors, mixing)
        stats = _clean_to_jsonl(docs, cleaner, tmp / "cleaned.jsonl", progress)
        t_clean = time.perf_counter() - t0
        if stats["documents"] == 0:
            removed = ", ".join(f"{r['step']} removed {r['removed']}" for r in cleaner.report() if r["removed"])
            raise ValueError(
                f"The corpus is empty after cleaning: {stats['read']} documents read,"
                f" {removed or 'none with any text in them'}. Loosen those steps or check the sources."
            )
        tok = train_tokenizer(tokenizer, _read_jsonl(tmp / "cleaned.jsonl"), length=stats["documents"])
        tok.save(str(tmp / "tokenizer.json"))
        t_tok = time.perf_counter() - t0 - t_clean
        # a checkpoint's tokenizer that declares another end of text (an imported model's </s>) ends documents with it
        eos = tok.token_to_id(tokenizer.eos_token) if tokenizer.eos_token in tok.get_vocab() else eos_id(tok)
        dtype = token_dtype(tok.get_vocab_size())
        doc_tokens = _tokenize(tok, tmp / "cleaned.jsonl", tmp / "all.bin", dtype, eos, stats["documents"], progress,
                               by_line=tokenizer.kind == "char")
        counts = _split(tmp / "all.bin", tmp, dtype, val_fraction, test_fraction)
        np.save(tmp / "doc_lengths.npy", doc_tokens)  # tokens per document (EOS included), in stream order
        (tmp / "cleaned.jsonl").unlink()
        (tmp / "all.bin").unlink()
        n_tokens = int(doc_tokens.sum())
        report = {
            "documents_read": stats["read"], "documents_kept": stats["documents"], "cleaning": cleaner.report(),
            "duplicates_removed": sum(r["removed"] for r in cleaner.report() if r["step"].startswith("dedup")),
            "tokens": counts, "bytes": stats["bytes"], "bytes_per_token": stats["bytes"] / max(n_tokens, 1),
            "seconds": {"clean": round(t_clean, 2), "tokenizer": round(t_tok, 2),
                        "tokenize_and_write": round(time.perf_counter() - t0 - t_clean - t_tok, 2)},
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        _length_histogram(doc_tokens, tmp / "doc_lengths.png")
        manifest = {
            **key, "dtype": dtype.name, "vocab_size": tok.get_vocab_size(), "num_tokens": counts,
            "tokenizer_hash": tokenizer_hash(tok), "eos_id": eos, "documents": stats["documents"],
            "document_lengths": "doc_lengths.npy", "splits_by": "position in the token stream: train, test, val",
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))  # last: marks the folder complete
        publish_mode(tmp)  # mkdtemp's 0700 would hide the data from the other users of a shared cluster
        fsync_tree(tmp)  # the data is on disk before the rename makes the folder visible
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if read_manifest(out_dir) is None:  # not a concurrent writer that finished first
                raise
    except Exception as e:
        # ranks waiting for this folder (wait_for) fail at once with this message instead of waiting for hours
        write_text_atomic(failed, f"{type(e).__name__}: {e}")
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _clean_to_jsonl(docs: Iterator[str], cleaner: Cleaner, path: Path, progress: bool) -> dict[str, int]:
    read = kept = n_bytes = 0
    with open(path, "w", encoding="utf-8") as f:
        for text in tqdm(docs, desc="clean", unit="doc", disable=not progress, mininterval=1.0):
            read += 1
            text = cleaner(text)
            if text is None or not text.strip():  # blank documents carry nothing to learn
                continue
            kept += 1
            n_bytes += len(text.encode("utf-8"))
            f.write(json.dumps(text, ensure_ascii=False))
            f.write("\n")
    return {"read": read, "documents": kept, "bytes": n_bytes}


def _read_jsonl(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _batches(path: Path, size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in _read_jsonl(path):
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _tokenize(tok, src: Path, dst: Path, dtype, eos: Optional[int], n_docs: int, progress: bool,
              by_line: bool = False) -> np.ndarray:
    """Encode documents in batches (encode_batch uses every core) into one stream; return tokens per document.
    ``by_line`` encodes a document's lines as separate inputs, which gives the same ids for the character
    tokenizer and lets one long document use every core too."""
    lengths = np.zeros(n_docs, dtype=np.int64)
    eos_arr = np.array([] if eos is None else [eos], dtype=dtype)
    i = 0
    with open(dst, "wb") as out, tqdm(total=n_docs, desc="tokenize", unit="doc", disable=not progress,
                                      mininterval=1.0) as bar:
        for batch in _batches(src, ENCODE_BATCH):
            for text in batch if by_line else [None]:
                pieces = split_lines(text, keepends=True) if by_line else batch
                arrays = [np.asarray(e.ids, dtype=dtype) for e in tok.encode_batch(pieces, add_special_tokens=False)]
                docs = [np.concatenate(arrays + [eos_arr])] if by_line else [np.concatenate([a, eos_arr]) for a in arrays]
                for d in docs:
                    d.tofile(out)
                    lengths[i] = len(d)
                    i += 1
            bar.update(len(batch))
    return lengths


def _split(all_path: Path, out: Path, dtype, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Cut the token stream by position: train first, then test, then the last val_fraction as val."""
    n = all_path.stat().st_size // dtype.itemsize
    n_val, n_test = int(n * val_fraction), int(n * test_fraction)
    bounds = {"train": (0, n - n_val - n_test), "test": (n - n_val - n_test, n - n_val), "val": (n - n_val, n)}
    piece = 1 << 22  # copy in 4M-token pieces with plain reads (no mapping), so memory stays flat
    for split, (a, b) in bounds.items():
        with open(out / f"{split}.bin", "wb") as f:
            for start in range(a, b, piece):
                np.fromfile(all_path, dtype=dtype, count=min(piece, b - start), offset=start * dtype.itemsize).tofile(f)
    return {split: b - a for split, (a, b) in bounds.items()}


def _length_histogram(lengths: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(lengths, bins=min(50, max(1, len(np.unique(lengths)))), log=len(lengths) > 100)
    ax.set_xlabel("tokens per document")
    ax.set_ylabel("documents")
    ax.set_title(f"{len(lengths):,} documents, {int(lengths.sum()):,} tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
