"""The preparation stage: sources -> cleaning -> tokenizer -> token files + manifest + report.

Run as ``python -m lit_llm prepare --config FILE`` or from ``PretrainDataModule.prepare_data``; both read
the config's ``data:`` section. Work streams document by document, so memory stays well below the corpus
size:

1. read and clean every document, writing the survivors to a temporary JSONL file;
2. train the tokenizer on that file (or load ``tokenizer.path``);
3. tokenize it in batches (``encode_batch_fast`` runs on all cores), an EOS token after each document, into one
   uint16/uint32 stream, then cut the stream into train / test / val by position (val last, as nanoGPT does).

That is the one-process path (``workers=1``, the default). ``workers`` > 1 (0: every core) runs steps 1 and 3
over shards of ``shard_docs`` documents in that many processes (``lit_llm.data.shards``, on datatrove), with
the global deduplication and the tokenizer training between them, and writes the same bytes; docs/data.md.

The output folder is named by a hash of everything that determines its content (source fingerprints,
cleaning, tokenizer, split), built under a temporary name and renamed into place, so a rerun with the
same config reuses it at once and a killed run never leaves a folder that looks complete.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib.util
import itertools
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
from filelock import FileLock, Timeout
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from lit_llm.data.cleaning import Cleaner
from lit_llm.data.sources import (
    MIXING,
    Source,
    fingerprint,
    fingerprint_hash,
    iter_documents,
    resolve_files,
    source_format,
    split_lines,
)
from lit_llm.data.tokenizer import TokenizerSpec, eos_id, load_tokenizer, tokenizer_hash, train_tokenizer
from lit_llm.data.tokens import MANIFEST, read_manifest, token_dtype
from lit_llm.io import fsync_tree, publish_mode, write_text_atomic

FORMAT_VERSION = 2  # 2: text lines end at \n only (not at U+0085 / U+2028 / form feeds)
ENCODE_BATCH = 512  # documents per encode_batch call
SHARD_DOCS = 20_000  # documents per shard of the parallel path (workers != 1)


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
STALE_SHARDS_S = 14 * 86400  # a parallel prepare's work folder is kept for a resume this long after its last write


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


def sweep_stale(out_root: Path, max_age_s: float = STALE_TMP_S, shards_age_s: float = STALE_SHARDS_S,
                keep: Optional[Path] = None) -> list[Path]:
    """Delete what killed prepares left: ``*.tmp*`` folders in which nothing changed for ``max_age_s`` (a prepare
    still running keeps writing into its own), and parallel work folders (``*.shards<N>``) whose token folder was
    published (their removal failed) or in which nothing changed for ``shards_age_s`` (a killed run's shards are
    kept that long for a rerun to resume from), unless a prepare holds its lock; never ``keep`` (the caller's
    own work folder, which it is about to resume from)."""
    removed = []
    now = time.time()

    def untouched(folder: Path) -> float:
        """Seconds since anything in ``folder`` changed (files that vanish meanwhile, renamed by a live writer,
        count as changed now)."""
        newest = folder.stat().st_mtime
        for p in folder.rglob("*"):
            try:
                newest = max(newest, p.stat().st_mtime)
            except FileNotFoundError:
                return 0.0
        return now - newest

    for folder in Path(out_root).glob("*.tmp*"):
        if folder.is_dir() and untouched(folder) > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    for folder in Path(out_root).glob("*.shards*"):
        m = re.fullmatch(r"(.+)\.shards\d+", folder.name)
        if m is None or folder == keep or not folder.is_dir():
            continue
        published = read_manifest(folder.with_name(m.group(1))) is not None
        if published or untouched(folder) > shards_age_s:
            try:  # a prepare of that config that holds its lock is using the folder
                with FileLock(f"{folder}.lock", timeout=0):
                    shutil.rmtree(folder, ignore_errors=True)
            except Timeout:
                continue
            removed.append(folder)
    return removed


def resolve_workers(workers: int) -> int:
    """The number of processes ``workers`` asks for: itself, or every core this process may use for 0."""
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"data.workers must be 1 (one process), N > 1 (N processes) or 0 (every core), got {workers!r}")
    if workers == 0:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return workers


def check_shard_docs(shard_docs: int) -> None:
    if not isinstance(shard_docs, int) or shard_docs < 1:
        raise ValueError(f"data.shard_docs (documents per shard of the parallel prepare) must be a positive integer,"
                         f" got {shard_docs!r}")


STAGES = ("read", "clean", "dedup", "tokenize", "split")  # the parallel path's stages that run alone (data.shards)


def check_dedup_memory(memory_mb: Optional[float]) -> None:
    if memory_mb is not None and not (isinstance(memory_mb, (int, float)) and not isinstance(memory_mb, bool)
                                      and 0 < memory_mb < float("inf")):
        raise ValueError(f"data.dedup_memory_mb (MiB of page cache for the deduplication keys on disk) must be a"
                         f" positive number, or null to keep them in memory; got {memory_mb!r}")


def shard_folder(out_dir: Path, shard_docs: int) -> Path:
    """Where the parallel path keeps its shards while it runs, beside ``out_dir``: named by it (so by the content
    hash) and by ``shard_docs`` (which decides the shards), so a rerun of the same config finds the shards a
    killed run finished. Removed once the token folder is published."""
    return out_dir.with_name(f"{out_dir.name}.shards{shard_docs}")


@dataclass
class Built:
    """What a build (one process, or shards) leaves for the report and manifest, beside the split files
    (train/test/val.bin) it wrote into the temporary folder."""

    tokenizer: Tokenizer
    eos: Optional[int]
    documents_read: int
    documents_kept: int
    text_bytes: int  # UTF-8 bytes of the kept documents
    doc_tokens: np.ndarray  # tokens per document (EOS included), in stream order
    counts: dict[str, int]  # tokens per split
    seconds: dict[str, float]  # wall time per stage


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
    workers: int = 1,
    shard_docs: int = SHARD_DOCS,
    dedup_memory_mb: Optional[float] = None,
    stage: Optional[str] = None,
    task: int = 0,
    tasks: int = 1,
) -> Path:
    """Build (or reuse) the token folder for this data config and return its path.

    ``workers`` = 1 runs in this process; N > 1 (0: every core) cleans and tokenizes shards of ``shard_docs``
    documents in N processes and resumes a killed run from the shards it finished. Neither changes a byte of
    the output, so neither is part of the folder's name. Nor is ``dedup_memory_mb``: with it the deduplication
    steps keep what they saw on disk, in that much page cache (``workers`` = 1), or sort their keys in buckets of
    at most that size (the parallel path), and decide the same.

    ``stage`` runs one stage of the parallel path alone and returns its work folder: ``dedup`` (with the
    tokenizer), ``clean`` / ``tokenize`` / ``split`` for shards part ``task`` of ``tasks`` (a SLURM array task's
    share), or ``read``: part ``task`` of the file groups where the source is read in groups (``shards.read_plan``),
    else the whole read in task 0.
    ``merge`` runs the parallel path to the end, finding done what the stages did, whatever ``workers`` is."""
    tokenizer = tokenizer or TokenizerSpec()
    cleaning = list(cleaning or [])
    cleaner = Cleaner(cleaning)  # validates step names and options before any work
    n_workers = resolve_workers(workers)
    check_shard_docs(shard_docs)
    check_dedup_memory(dedup_memory_mb)
    if stage not in (None, "merge", *STAGES):
        raise ValueError(f"stage {stage!r}: one of {', '.join(STAGES)}, merge (or none: the whole prepare)")
    sharded = n_workers > 1 or stage is not None
    build_sharded = _sharded_builder() if sharded else None  # a missing engine fails before any work
    out_dir, key = token_folder(sources, out_root, cleaning, tokenizer, val_fraction, test_fraction, seed,
                                encoding_errors, data_dir, name, mixing)
    if read_manifest(out_dir) is not None:
        return out_dir
    if stage in STAGES:
        return _run_stage(stage, sources, data_dir, seed, encoding_errors, mixing, cleaning, cleaner, tokenizer,
                          progress, shard_folder(out_dir, shard_docs), n_workers, shard_docs, dedup_memory_mb, task,
                          tasks, val_fraction, test_fraction)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        if build_sharded is not None:  # one parallel prepare per work folder: another waits, then reuses
            held.enter_context(FileLock(f"{shard_folder(out_dir, shard_docs)}.lock"))
            if read_manifest(out_dir) is not None:  # published by the prepare it waited for
                return out_dir
        sweep_stale(out_dir.parent, keep=shard_folder(out_dir, shard_docs))
        failed = _failure_marker(out_dir)
        failed.unlink(missing_ok=True)  # an earlier attempt's failure; this one may succeed
        tmp = None
        try:
            if build_sharded is None or not (shard_folder(out_dir, shard_docs) / "spool.json").is_file():
                check_text_sources(sources, data_dir, encoding_errors)  # (a finished read checked them already)
            tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp", dir=out_dir.parent))
            docs = iter_documents(sources, data_dir, seed, encoding_errors, mixing)
            if build_sharded is None:
                built = _build_in_process(docs, cleaner, tokenizer, tmp, val_fraction, test_fraction, progress,
                                          dedup_memory_mb)
            else:
                from lit_llm.data.shards import read_plan

                built = build_sharded(docs, cleaning, cleaner, tokenizer, tmp, val_fraction, test_fraction, progress,
                                      work=shard_folder(out_dir, shard_docs), workers=n_workers, shard_docs=shard_docs,
                                      dedup_memory_mb=dedup_memory_mb,
                                      plan=read_plan(sources, data_dir, encoding_errors))
            built.tokenizer.save(str(tmp / "tokenizer.json"))
            np.save(tmp / "doc_lengths.npy", built.doc_tokens)  # tokens per document (EOS included), in stream order
            n_tokens = int(built.doc_tokens.sum())
            report = {
                "documents_read": built.documents_read, "documents_kept": built.documents_kept,
                "cleaning": cleaner.report(),
                "duplicates_removed": sum(r["removed"] for r in cleaner.report() if r["step"].startswith("dedup")),
                "tokens": built.counts, "bytes": built.text_bytes, "bytes_per_token": built.text_bytes / max(n_tokens, 1),
                "workers": n_workers, "seconds": {k: round(v, 2) for k, v in built.seconds.items()},
            }
            (tmp / "report.json").write_text(json.dumps(report, indent=2))
            _length_histogram(built.doc_tokens, tmp / "doc_lengths.png")
            tok = built.tokenizer
            manifest = {
                **key, "dtype": token_dtype(tok.get_vocab_size()).name, "vocab_size": tok.get_vocab_size(),
                "num_tokens": built.counts, "tokenizer_hash": tokenizer_hash(tok), "eos_id": built.eos,
                "documents": built.documents_kept, "document_lengths": "doc_lengths.npy",
                "splits_by": "position in the token stream: train, test, val",
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))  # last: marks the folder complete
            publish_mode(tmp)  # mkdtemp's 0700 would hide the data from the other users of a shared cluster
            fsync_tree(tmp)  # the data is on disk before the rename makes the folder visible
            try:
                os.replace(tmp, out_dir)
            except OSError:
                if read_manifest(out_dir) is None:  # not a concurrent writer that finished first
                    raise
            if build_sharded is not None:  # published: the shards have served their purpose
                shutil.rmtree(shard_folder(out_dir, shard_docs), ignore_errors=True)
        except Exception as e:
            # ranks waiting for this folder (wait_for) fail at once with this message instead of waiting for hours
            write_text_atomic(failed, f"{type(e).__name__}: {e}")
            raise
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def check_text_sources(sources: list[Source], data_dir: Optional[str], encoding_errors: str) -> None:
    """Check the text-based files (not parquet, which is binary) of the sources before any work."""
    for s in sources:
        if s.path is not None:
            files = resolve_files(s, data_dir)
            if source_format(s, files) != "parquet":
                for f in files:
                    check_utf8(f, encoding_errors)


def _run_stage(stage: str, sources: list[Source], data_dir: Optional[str], seed: int, encoding_errors: str,
               mixing: str, cleaning: list[Any], cleaner: Cleaner, spec: TokenizerSpec, progress: bool, work: Path,
               workers: int, shard_docs: int, dedup_memory_mb: Optional[float], task: int, tasks: int,
               val_fraction: float, test_fraction: float) -> Path:
    """One stage of the parallel path, alone, in ``work`` (``prepare``'s ``stage``); returns ``work``."""
    from lit_llm.data.shards import ShardedPrepare

    stages = ShardedPrepare(cleaning, cleaner, spec, progress, work=work, workers=workers, shard_docs=shard_docs,
                            dedup_memory_mb=dedup_memory_mb)
    if stage == "read":
        from lit_llm.data.shards import part, read_plan

        plan = read_plan(sources, data_dir, encoding_errors)
        if plan is None:
            check_text_sources(sources, data_dir, encoding_errors)
        elif plan["source"]["format"] != "parquet":  # each task checks the files it reads, not the whole corpus
            for group in part(len(plan["groups"]), task, tasks):
                for f in plan["groups"][group]:
                    check_utf8(Path(f), encoding_errors)
        stages.read(iter_documents(sources, data_dir, seed, encoding_errors, mixing), plan, task, tasks)
    elif stage == "clean":
        stages.clean(task, tasks)
    elif stage == "dedup":
        stages.tokenizer()  # deduplication first, then the tokenizer on what it kept
    elif stage == "tokenize":
        stages.tokenize(task, tasks)
    else:
        stages.split(val_fraction, test_fraction, task, tasks)
    return work


def _sharded_builder() -> Callable[..., Built]:
    """The parallel path's entry point, imported only when asked for: datatrove is an optional dependency."""
    if importlib.util.find_spec("datatrove") is None:
        raise ImportError("data.workers other than 1 runs the parallel prepare on datatrove, which is not installed:"
                          " pip install 'lit_llm[data]', or set data.workers: 1")
    from lit_llm.data.shards import build_sharded

    return build_sharded


def _build_in_process(docs: Iterator[str], cleaner: Cleaner, spec: TokenizerSpec, tmp: Path, val_fraction: float,
                      test_fraction: float, progress: bool, dedup_memory_mb: Optional[float] = None) -> Built:
    """The one-process path: clean into a JSONL file, train the tokenizer on it, tokenize it into one stream and
    cut that into the split files."""
    t0 = time.perf_counter()
    cleaned = tmp / "cleaned.jsonl"
    cleaner.spill(tmp / "seen", dedup_memory_mb)
    try:
        stats = _clean_to_jsonl(docs, cleaner, cleaned, progress)
    finally:
        cleaner.close()  # the keys on disk are scratch, not part of the token folder
        shutil.rmtree(tmp / "seen", ignore_errors=True)
    t_clean = time.perf_counter() - t0
    refuse_empty(stats["read"], stats["documents"], cleaner)
    tok = train_tokenizer(spec, _read_jsonl(cleaned), length=stats["documents"])
    t_tok = time.perf_counter() - t0 - t_clean
    eos = end_of_document(tok, spec)
    dtype = token_dtype(tok.get_vocab_size())
    doc_tokens = _tokenize(tok, _read_jsonl(cleaned), tmp / "all.bin", dtype, eos, stats["documents"], progress,
                           by_line=spec.kind == "char")
    counts = _split([tmp / "all.bin"], tmp, dtype, val_fraction, test_fraction)
    cleaned.unlink()
    (tmp / "all.bin").unlink()
    return Built(tok, eos, stats["read"], stats["documents"], stats["bytes"], doc_tokens, counts,
                 {"clean": t_clean, "tokenizer": t_tok, "tokenize_and_write": time.perf_counter() - t0 - t_clean - t_tok})


def refuse_empty(read: int, kept: int, cleaner: Cleaner) -> None:
    """Stop, naming the steps that removed documents, when cleaning kept none (nothing to train a tokenizer on)."""
    if kept == 0:
        removed = ", ".join(f"{r['step']} removed {r['removed']}" for r in cleaner.report() if r["removed"])
        raise ValueError(
            f"The corpus is empty after cleaning: {read} documents read,"
            f" {removed or 'none with any text in them'}. Loosen those steps or check the sources."
        )


def end_of_document(tok: Tokenizer, spec: TokenizerSpec) -> Optional[int]:
    """The id written after every document: the spec's ``eos_token`` if the vocabulary has it, else the end of
    text a checkpoint's tokenizer declares (an imported model's ``</s>``), else None."""
    return tok.token_to_id(spec.eos_token) if spec.eos_token in tok.get_vocab() else eos_id(tok)


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


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _tokenize(tok, texts: Iterable[str], dst: Path, dtype, eos: Optional[int], n_docs: int, progress: bool,
              by_line: bool = False) -> np.ndarray:
    """Encode ``n_docs`` documents in batches (encode_batch_fast uses every core) into one stream; return tokens per
    document. ``by_line`` encodes a document's lines as separate inputs, which gives the same ids for the
    character tokenizer and lets one long document use every core too. Both paths tokenize through here, so
    they write the same bytes."""
    lengths = np.zeros(n_docs, dtype=np.int64)
    tail = [] if eos is None else [eos]
    i = 0
    with open(dst, "wb") as out, tqdm(total=n_docs, desc="tokenize", unit="doc", disable=not progress,
                                      mininterval=1.0) as bar:
        for batch in _batches(texts, ENCODE_BATCH):
            for text in batch if by_line else [None]:
                pieces = split_lines(text, keepends=True) if by_line else batch
                # encode_batch_fast: the same ids as encode_batch, without the character offsets nobody reads here
                encodings = tok.encode_batch_fast(pieces, add_special_tokens=False)
                # .ids builds a new list at each access: read each once, then one array and one write per batch
                # (an array and a write per document took twice as long, 0.02 s/MB, on 4.6 KB documents)
                ids = [e.ids for e in encodings]
                if by_line:  # one document: its lines' ids, then the tail
                    n = [sum(len(d) for d in ids) + len(tail)]
                    docs = itertools.chain(itertools.chain.from_iterable(ids), tail)
                else:
                    for d in ids:
                        d.extend(tail)
                    n = [len(d) for d in ids]
                    docs = itertools.chain.from_iterable(ids)
                lengths[i : i + len(n)] = n
                i += len(n)
                np.fromiter(docs, dtype=dtype, count=sum(n)).tofile(out)
            bar.update(len(batch))
    return lengths


def split_bounds(n: int, val_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    """Where each split lies in a token stream of ``n`` tokens: train first, then test, then the last
    ``val_fraction`` as val."""
    n_val, n_test = int(n * val_fraction), int(n * test_fraction)
    return {"train": (0, n - n_val - n_test), "test": (n - n_val - n_test, n - n_val), "val": (n - n_val, n)}


def scatter_tokens(source: Path, dtype, count: int, at: int, bounds: dict[str, tuple[int, int]],
                   write: Callable[[str, np.ndarray, int], None]) -> None:
    """Hand each split its part of the ``count`` tokens in ``source``, which sit at position ``at`` of the stream:
    ``write(split, tokens, position in the split)``. Read in 4M-token pieces with plain reads (no mapping), so
    memory stays flat. Both paths cut their splits through here."""
    piece = 1 << 22
    for start in range(0, count, piece):
        tokens = np.fromfile(source, dtype=dtype, count=min(piece, count - start), offset=start * dtype.itemsize)
        first = at + start
        for split, (a, b) in bounds.items():
            lo, hi = max(a, first), min(b, first + len(tokens))
            if lo < hi:
                write(split, tokens[lo - first : hi - first], lo - a)


def _split(parts: list[Path], out: Path, dtype, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Cut the token stream, the concatenation of the ``parts`` files, by position (``split_bounds``)."""
    sizes = [p.stat().st_size // dtype.itemsize for p in parts]
    bounds = split_bounds(sum(sizes), val_fraction, test_fraction)
    files = {split: open(out / f"{split}.bin", "wb") for split in bounds}
    try:
        at = 0  # position of the current part in the stream
        for part, size in zip(parts, sizes):
            # in stream order, so each split's file grows in order and the position needs no seek
            scatter_tokens(part, dtype, size, at, bounds, lambda split, tokens, _: tokens.tofile(files[split]))
            at += size
    finally:
        for f in files.values():
            f.close()
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
