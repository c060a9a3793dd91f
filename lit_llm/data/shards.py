"""The parallel path of ``prepare`` (``data.workers`` other than 1): the same token files, built over shards.

The corpus is cut into shards of ``shard_docs`` documents by position in the sources' deterministic order, so
the shards, and every byte written, depend on the input and never on the number of workers. Stages, each
leaving files in the work folder (``prepare.shard_folder``: ``<token folder>.shards<shard_docs>``):

1. read (this process; or, for one local source of many files, one task per group of files: ``read_plan``): the
   documents, in order, into ``raw/00000.texts`` ... (``raw/g00000-00000.texts`` ... in groups; the format is
   ``_write_texts``'s); record ``spool.json``;
2. clean (one datatrove task per shard, ``workers`` processes): the per-document cleaning steps; for each
   global step (deduplication) the key of every document that reaches it: its exact digest, or its MinHash
   signature; ``clean/00000.texts`` (the texts that survive), ``clean/00000.npz`` (fates, keys, sizes);
3. dedup (this process): the global steps decide, one after another, which survivors are duplicates, as one
   process decides (first occurrence wins), each by sorting its keys in buckets that ``dedup_memory_mb``
   bounds (``dedup_minhash`` then walks the documents that share a band); ``keep/00000.npy`` and the cleaning
   counts, in ``dedup.json``;
4. tokenizer (this process): trained once on the kept texts, in order (its trainer uses every core);
5. tokenize (one task per shard): ``tokens/00000.bin`` and the tokens per document beside it;
6. split (one task per part of the shards): each shard's tokens written into the split files
   (``split/train.bin``, ``test.bin``, ``val.bin``) at its place in the token stream, which the token counts of
   stage 5 give, so array tasks fill one set of files together (``split/00000.json`` marks a shard written);
   then the caller moves the files into the token folder, with the manifest and report (the merge).

Every shard's files are written under a temporary name and renamed, then listed with their size and sha256 in
a record (``clean/00000.json`` ...), written last: a shard is finished when its record exists and its files
match it. A rerun skips finished shards (a killed prepare resumes there); a reader checks the files it reads
against their record, and a damaged one is one ValueError naming it, after which its record is removed so the
next run redoes that shard alone.

datatrove's ``LocalPipelineExecutor`` runs the tasks (the process pool, per-task logs and stats under
``logs/``); its own completion markers are not used, since an empty marker cannot tell a whole shard from a
truncated one (docs/data.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
from datatrove.pipeline.base import PipelineStep
from loguru import logger
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from lit_llm.data.cleaning import Cleaner, DedupExact, Step, build_steps
from lit_llm.data.prepare import (
    Built,
    _batches,
    _tokenize,
    end_of_document,
    refuse_empty,
    resolve_workers,
    scatter_tokens,
    split_bounds,
)
from lit_llm.data.tokenizer import TokenizerSpec, tokenizer_hash, train_tokenizer
from lit_llm.data.tokens import token_dtype
from lit_llm.io import atomic_path, file_sha256, write_text_atomic

# Cleaning steps by where they can run. A per-document step maps one text to its result alone, so a worker runs
# it; a global step remembers what it saw, so it is decided in one pass over all shards in order. A step in
# neither set is refused by the parallel path: a stateful step run per shard would miss duplicates across shards.
PER_DOCUMENT_STEPS = frozenset({"unicode", "strip_html", "remove_control", "whitespace", "regex_replace", "lowercase",
                                "length", "quality", "stopwords", "stem"})
GLOBAL_STEPS = frozenset({"dedup_exact", "dedup_minhash"})
SPLITS = ("train", "test", "val")  # the split files, in the order prepare.split_bounds lays them in the stream


class ShardedPrepare:
    """The stages of the parallel path over one work folder. Each stage skips what an earlier run finished, so a
    stage can run alone (a SLURM job, or one task of an array over the shards) and ``build_sharded`` afterwards
    finds everything done but the merge. ``cleaner`` is ``Cleaner(cleaning)``: the global steps run in it, and
    its counts become the report's."""

    def __init__(self, cleaning: list[Any], cleaner: Cleaner, spec: TokenizerSpec, progress: bool, *, work: Path,
                 workers: int, shard_docs: int, dedup_memory_mb: Optional[float] = None) -> None:
        unknown = [name for name, _ in cleaner.steps if name not in PER_DOCUMENT_STEPS | GLOBAL_STEPS]
        if unknown:
            raise ValueError(f"The parallel prepare does not know whether the cleaning steps {unknown} are"
                             f" per-document or global; set data.workers: 1, or add them to PER_DOCUMENT_STEPS or"
                             f" GLOBAL_STEPS in {__name__}")
        self.cleaning, self.cleaner, self.spec, self.progress = cleaning, cleaner, spec, progress
        self.work, self.workers, self.shard_docs, self.dedup_memory_mb = work, workers, shard_docs, dedup_memory_mb

    def read(self, docs: Iterator[str], plan: Optional[dict[str, Any]] = None, task: int = 0, tasks: int = 1
             ) -> Optional[int]:
        """Stage 1; the number of shards, once every part of the read is done (None while one is not). Without a
        ``plan``, this process streams ``docs`` (task 0 alone: the others have nothing to do); with one
        (``read_plan``), this task's part of the file groups, in ``workers`` processes."""
        if plan is None:
            if task != 0:
                return None
            spool = _spool(docs, self.work, self.shard_docs, self.progress)
        else:
            groups = len(plan["groups"])
            self.work.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.work / "read_plan.json", json.dumps(plan))  # every task writes the same bytes
            _run(ReadGroup(self.work, plan, self.shard_docs, not self.progress), groups, self.workers,
                 self.work / "logs" / "read", not self.progress, part(groups, task, tasks))
            spool = _index_groups(self.work, plan, self.shard_docs)
            if spool is None:
                return None
        if spool["shards"] == 0:
            refuse_empty(0, 0, self.cleaner)
        return spool["shards"]

    def shards(self) -> int:
        """The number of shards the read stage wrote."""
        record, plan = self.work / "spool.json", self.work / "read_plan.json"
        if not record.is_file() and plan.is_file():  # a read in groups whose last task did not see the others'
            _index_groups(self.work, json.loads(plan.read_text(encoding="utf-8")), self.shard_docs)  # (NFS caches)
        if not record.is_file():
            raise ValueError(f"{record} is missing: the read stage (prepare --stage read) has not finished for this"
                             " config and shard_docs; run it first")
        return _read_spool(self.work)["shards"]

    def clean(self, task: int = 0, tasks: int = 1) -> None:
        """Stage 2 for this task's part of the shards (all of them by default), in ``workers`` processes."""
        _run(CleanShard(self.work, self.cleaning, not self.progress), self.shards(), self.workers,
             self.work / "logs" / "clean", not self.progress, part(self.shards(), task, tasks))

    def dedup(self) -> dict[str, Any]:
        """Stage 3 (this process): the record of what deduplication kept (read back once written)."""
        dedup = _decide_duplicates(self.work, self.shards(), self.cleaner, self.dedup_memory_mb)
        refuse_empty(dedup["read"], dedup["kept"], self.cleaner)
        return dedup

    def tokenizer(self) -> Tokenizer:
        """Stage 4 (this process): the tokenizer, trained on the kept texts (loaded again once saved, or from
        ``tokenizer.path`` where the config names one, whose declared end of text decides the EOS)."""
        return _tokenizer(self.work, self.spec, self.shards(), self.dedup()["kept"])

    def tokenize(self, task: int = 0, tasks: int = 1, tok: Optional[Tokenizer] = None) -> None:
        """Stage 5 for this task's part of the shards, with ``tok`` (default: stage 4's, read back)."""
        tok = tok or self.tokenizer()
        ranks = part(self.shards(), task, tasks)
        threads = max(1, resolve_workers(0) // max(1, min(self.workers, len(ranks))))  # the cores, shared
        dtype = token_dtype(tok.get_vocab_size())
        _run(TokenizeShard(self.work, tokenizer_hash(tok), end_of_document(tok, self.spec), dtype.name,
                           self.spec.kind == "char", threads, not self.progress), self.shards(), self.workers,
             self.work / "logs" / "tokenize", not self.progress, ranks)

    def split(self, val_fraction: float, test_fraction: float, task: int = 0, tasks: int = 1,
              tok: Optional[Tokenizer] = None) -> dict[str, tuple[int, int]]:
        """Stage 6 for this task's part of the shards: their tokens written into the split files at their place
        in the stream (files the tasks share; each writes its own ranges). Returns where each split lies."""
        tok, n_shards = tok or self.tokenizer(), self.shards()
        return _split_shards(self.work, n_shards, part(n_shards, task, tasks),
                             token_dtype(tok.get_vocab_size()), val_fraction, test_fraction)

    def split_files(self, out: Path, val_fraction: float, test_fraction: float, tok: Tokenizer) -> dict[str, int]:
        """The merge's part: stage 6 for whatever shards the tasks left, then the split files, cut to their
        exact sizes, moved into ``out``; the tokens per split."""
        folder, dtype = self.work / "split", token_dtype(tok.get_vocab_size())
        if any(not (folder / f"{name}.bin").is_file() for name in SPLITS):  # each task that writes opens all three
            for done in folder.glob("*.json"):  # a split file lost after shards were marked: write those again
                done.unlink()
        bounds = self.split(val_fraction, test_fraction, tok=tok)
        for name, (a, b) in bounds.items():
            path = folder / f"{name}.bin"
            path.touch()  # an empty split (test_fraction 0) too
            os.truncate(path, (b - a) * dtype.itemsize)
            os.replace(path, out / f"{name}.bin")
        return {name: b - a for name, (a, b) in bounds.items()}


def _split_shards(work: Path, n_shards: int, ranks: range, dtype: np.dtype, val_fraction: float,
                  test_fraction: float) -> dict[str, tuple[int, int]]:
    """Write the tokens of the shards ``ranks`` into ``work/split/{train,test,val}.bin`` at their offsets in the
    stream (``os.pwrite``: tasks on other nodes write other ranges of the same files). A shard is marked written
    (``split/00000.json``: its offset, size and the sha256 of its token file) once its bytes are on disk; a marked
    shard is skipped, so a killed or retried task redoes only what it left."""
    records = []
    for k in range(n_shards):
        record = work / "tokens" / f"{shard_name(k)}.json"
        if not record.is_file():
            raise ValueError(f"{record} is missing: the tokenize stage (prepare --stage tokenize) has not finished"
                             " every shard; run it first")
        records.append(_read_record(record))
    starts = np.concatenate([[0], np.cumsum([r["tokens"] for r in records])]).astype(np.int64)
    bounds = split_bounds(int(starts[-1]), val_fraction, test_fraction)
    folder = work / "split"
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, int] = {}
    try:
        for k in ranks:
            stem = shard_name(k)
            done = folder / f"{stem}.json"
            want = {"at": int(starts[k]), "tokens": int(records[k]["tokens"]), "of": int(starts[-1]),
                    "sha256": records[k]["files"][f"{stem}.bin"]["sha256"]}
            if done.is_file() and _read_record(done) == want:
                continue
            _verify(work / "tokens" / f"{stem}.json", [f"{stem}.bin"])
            if not files:
                files = {name: os.open(folder / f"{name}.bin", os.O_RDWR | os.O_CREAT, 0o644) for name in bounds}
            scatter_tokens(work / "tokens" / f"{stem}.bin", dtype, want["tokens"], want["at"], bounds,
                           lambda name, tokens, pos: _pwrite_all(files[name], tokens.tobytes(), pos * dtype.itemsize))
            for fd in files.values():
                os.fsync(fd)
            write_text_atomic(done, json.dumps(want))
    finally:
        for fd in files.values():
            os.close(fd)
    return bounds


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """``os.pwrite`` until every byte is written: one call may write fewer (network file systems, a full disk)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(f"could not write the split file (pwrite wrote {written} bytes at offset {offset})")
        view, offset = view[written:], offset + written


def part(n_shards: int, task: int, tasks: int) -> range:
    """The shards of array task ``task`` of ``tasks``: a contiguous range, the ranges together covering all once."""
    if not 0 <= task < tasks:
        raise ValueError(f"task {task} of {tasks}: need 0 <= task < tasks")
    return range(task * n_shards // tasks, (task + 1) * n_shards // tasks)


def build_sharded(docs: Iterator[str], cleaning: list[Any], cleaner: Cleaner, spec: TokenizerSpec, tmp: Path,
                  val_fraction: float, test_fraction: float, progress: bool, *, work: Path, workers: int,
                  shard_docs: int, dedup_memory_mb: Optional[float] = None, plan: Optional[dict[str, Any]] = None
                  ) -> Built:
    """The parallel path: stages 1-5 of the module doc in ``work``, then the split files into ``tmp``. Reuses what
    a killed run, or the stages run apart as SLURM jobs, finished there with the same config and ``shard_docs``.
    With a ``plan`` (``read_plan``) the read stage reads file groups in the workers instead of streaming ``docs``."""
    stages = ShardedPrepare(cleaning, cleaner, spec, progress, work=work, workers=workers, shard_docs=shard_docs,
                            dedup_memory_mb=dedup_memory_mb)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    stages.read(docs, plan)
    seconds["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stages.clean()
    seconds["clean"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dedup = stages.dedup()
    seconds["dedup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok = stages.tokenizer()
    seconds["tokenizer"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stages.tokenize(tok=tok)
    seconds["tokenize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    counts = stages.split_files(tmp, val_fraction, test_fraction, tok)
    doc_tokens = _document_tokens(work, stages.shards())
    seconds["split"] = time.perf_counter() - t0
    return Built(tok, end_of_document(tok, spec), dedup["read"], dedup["kept"], dedup["bytes"], doc_tokens, counts,
                 seconds)


def shard_name(k: int) -> str:
    """The file stem of shard ``k``: ``00000``, ``00001``, ... (datatrove numbers its task logs the same way)."""
    return f"{k:05d}"


# ----------------------------------------------------------------------------------------------- the tasks
class _ShardTask(PipelineStep):
    """A datatrove pipeline step that does one stage for shard ``rank`` (datatrove's task number) in ``work``."""

    type = "lit_llm"

    def __init__(self, work: Path, quiet: bool) -> None:
        super().__init__()
        self.work, self.quiet = Path(work), quiet

    def finished(self, rank: int) -> bool:
        """Whether shard ``rank``'s record says it is done (its files are not read: the task checks them when it
        runs, and the stage that reads them checks them again)."""
        raise NotImplementedError

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled in a worker process: a quiet prepare silences datatrove's console logs there too (its task
        logs name each task and print its stats)."""
        self.__dict__.update(state)
        if self.quiet:
            logger.disable("datatrove")


class CleanShard(_ShardTask):
    """Stage 2 for one shard: the per-document steps on ``raw/<k>.texts``, and the keys the global steps need."""

    name = "clean"

    def __init__(self, work: Path, cleaning: list[Any], quiet: bool) -> None:
        super().__init__(work, quiet)
        self.cleaning = cleaning

    def finished(self, rank: int) -> bool:
        return (self.work / "clean" / f"{shard_name(rank)}.json").is_file()

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        stem = shard_name(rank)
        record = self.work / "clean" / f"{stem}.json"
        if _record_problem(record) is None:  # finished by an earlier run
            return
        name = raw_name(_read_spool(self.work), rank)
        if name.startswith("raw/g"):  # a damaged file of a group: its record goes, so the read redoes that group
            _verify(self.work / "raw" / f"{name[4:10]}.json", [name[4:]])
        _verify(self.work / "spool.json", [name])
        raw = _read_texts(self.work / name)
        with self.track_time(unit="shard"):
            fates, texts, keys = clean_documents(build_steps(self.cleaning), raw)
        _write_texts(self.work / "clean" / f"{stem}{TEXTS}", texts)
        with atomic_path(self.work / "clean" / f"{stem}.npz") as path, open(path, "wb") as f:
            np.savez(f, fate=fates, bytes=np.array([len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts],
                                                  dtype=np.int64),
                     **{f"keys{j}": _stack(rows) for j, rows in keys.items()})
        _write_record(record, [record.with_suffix(TEXTS), record.with_suffix(".npz")], documents=len(fates))
        self.stat_update("documents", value=len(fates), unit="shard")
        self.stat_update("survivors", value=len(texts), unit="shard")


class TokenizeShard(_ShardTask):
    """Stage 5 for one shard: its kept texts, tokenized as the one-process path does, into ``tokens/<k>.bin``.
    In a pool worker the tokenizer uses ``threads`` threads (cores / workers), so that the workers together do
    not run more threads than there are cores."""

    name = "tokenize"

    def __init__(self, work: Path, tokenizer_sha: str, eos: Optional[int], dtype: str, by_line: bool, threads: int,
                 quiet: bool) -> None:
        super().__init__(work, quiet)
        self.tokenizer_sha, self.eos, self.dtype, self.by_line = tokenizer_sha, eos, dtype, by_line
        self.threads, self.parent_pid = threads, os.getpid()

    def finished(self, rank: int) -> bool:
        record = self.work / "tokens" / f"{shard_name(rank)}.json"
        try:
            return _read_record(record)["tokenizer_hash"] == self.tokenizer_sha
        except (OSError, ValueError, KeyError):
            return False

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        stem = shard_name(rank)
        record = self.work / "tokens" / f"{stem}.json"
        if _record_problem(record) is None and _read_record(record)["tokenizer_hash"] == self.tokenizer_sha:
            return  # finished by an earlier run, with this tokenizer
        if os.getpid() != self.parent_pid:  # a worker process, whose thread pool starts at its first encode
            os.environ["RAYON_NUM_THREADS"] = str(self.threads)
        tok = _load_tokenizer(self.work / "tokenizer.json", self.tokenizer_sha)
        texts = list(kept_texts(self.work, rank))
        with self.track_time(unit="shard"):
            with atomic_path(record.with_suffix(".bin")) as path:
                lengths = _tokenize(tok, texts, path, np.dtype(self.dtype), self.eos, len(texts), progress=False,
                                    by_line=self.by_line)
        with atomic_path(record.with_suffix(".npy")) as path, open(path, "wb") as f:
            np.save(f, lengths)
        _write_record(record, [record.with_suffix(".bin"), record.with_suffix(".npy")],
                      tokenizer_hash=self.tokenizer_sha, tokens=int(lengths.sum()))
        self.stat_update("documents", value=len(texts), unit="shard")
        self.stat_update("tokens", value=int(lengths.sum()), unit="shard")


_LOADED: dict[tuple[str, str], Tokenizer] = {}  # this process's tokenizer, by file and hash


def _load_tokenizer(path: Path, sha: str) -> Tokenizer:
    """The tokenizer at ``path``, which must hash to ``sha``; loaded once per process (a worker tokenizes many
    shards, and a load costs as much as tokenizing 40 KB)."""
    if (str(path), sha) not in _LOADED:
        tok = Tokenizer.from_file(str(path))
        if tokenizer_hash(tok) != sha:
            raise ValueError(f"{path} is not the tokenizer this prepare built (was it changed while prepare ran?);"
                             f" delete {path.parent} and run prepare again")
        _LOADED.clear()
        _LOADED[(str(path), sha)] = tok
    return _LOADED[(str(path), sha)]


def _run(task: _ShardTask, tasks: int, workers: int, logs: Path, quiet: bool, ranks: Optional[range] = None) -> None:
    """Run ``task`` for the shards ``ranks`` (default all ``tasks``) in ``workers`` processes (datatrove's local
    executor, forkserver; its local_rank_offset and local_tasks select the range, as on one node of many). Every
    task checks its own record, so datatrove's completion markers are not consulted (skip_completed off). The
    finished shards at either end of the range are left out, so a stage that is done (the merge's pass over every
    stage) starts no executor and reads no shard again."""
    from datatrove.executor import LocalPipelineExecutor

    ranks = range(tasks) if ranks is None else ranks
    start, stop = ranks.start, ranks.stop
    while start < stop and task.finished(start):
        start += 1
    while start < stop and task.finished(stop - 1):
        stop -= 1
    ranks = range(start, stop)
    if not ranks:
        return
    if quiet:
        logger.disable("datatrove")
    try:
        LocalPipelineExecutor([task], tasks=tasks, workers=min(workers, len(ranks)), logging_dir=str(logs),
                              skip_completed=False, local_tasks=len(ranks), local_rank_offset=ranks.start).run()
    finally:
        if quiet:
            logger.enable("datatrove")


# ------------------------------------------------------------------------------------- cleaning, per shard
def clean_documents(steps: list[tuple[str, Step]], texts: Iterable[str]
                    ) -> tuple[np.ndarray, list[str], dict[int, list[np.ndarray]]]:
    """Run the per-document steps on each text as if no global step removed it.

    Returns, per document, its fate (the index of the step that dropped it; ``len(steps)``: it survived;
    ``len(steps) + 1``: it survived blank, which carries nothing to learn), the texts of the survivors that are
    not blank, in order, and for each global step (by index) the key of every document that reaches it, in order.
    Whether a document reaches a step depends only on the steps before it, so the keys are the ones one process
    would have compared; which of them are duplicates is ``_decide_duplicates``'s to say."""
    n = len(steps)
    fates: list[int] = []
    survivors: list[str] = []
    keys: dict[int, list[np.ndarray]] = {j: [] for j, (name, _) in enumerate(steps) if name in GLOBAL_STEPS}
    for text in texts:
        fate = n
        for j, (name, step) in enumerate(steps):
            if j in keys:
                keys[j].append(step.key(text))
                continue
            text = step(text)
            if text is None:
                fate = j
                break
        if fate == n:
            if text.strip():
                survivors.append(text)
            else:
                fate = n + 1
        fates.append(fate)
    return np.array(fates, dtype=np.int32), survivors, keys


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.uint8)


# ------------------------------------------------------------------------------- the stages in this process
def _spool(docs: Iterator[str], work: Path, shard_docs: int, progress: bool) -> dict[str, Any]:
    """Stage 1: the documents in their deterministic order into ``raw/<k>.texts``, ``shard_docs`` per shard, then
    the record ``spool.json`` (shards, documents, checksums). A complete spool of a killed run is reused; its
    files are checked when a task reads them."""
    record = work / "spool.json"
    if record.is_file():
        return _read_spool(work)
    (work / "raw").mkdir(parents=True, exist_ok=True)
    docs = tqdm(docs, desc="read", unit="doc", disable=not progress, mininterval=1.0)
    files, documents = _write_shards(docs, shard_docs, lambda k: work / "raw" / f"{shard_name(k)}{TEXTS}")
    _write_record(record, files, shards=len(files), documents=documents, shard_docs=shard_docs)
    return _read_record(record)


READ_GROUP_BYTES = 256 << 20  # the files one read task reads together (its start costs about a second)


def read_plan(sources: list[Any], data_dir: Optional[str], encoding_errors: str) -> Optional[dict[str, Any]]:
    """How the read stage can run in parallel, or None where it streams in one process. One local source of
    several files (a web crawl's dump: FineWeb's is thousands of Parquet or JSONL files) is cut into groups of
    consecutive files of about ``READ_GROUP_BYTES``, in the sources' order; read tasks read groups apart and each
    writes its group's documents as shards of ``shard_docs`` (the last one short). The groups depend on the files
    alone, never on the workers, and the shards in group order hold the documents in the one-process order, so
    the output is the same bytes. Mixed sources (their order comes from interleaving streams), a hub dataset, a
    ``max_documents`` limit or a feedback store stream in one process, as does a source of a single group."""
    from lit_llm.data.sources import resolve_files, source_format

    if len(sources) != 1 or sources[0].path is None or sources[0].max_documents is not None:
        return None
    source = sources[0]
    files = resolve_files(source, data_dir)
    fmt = source_format(source, files)
    if fmt == "feedback":
        return None
    groups: list[list[str]] = [[]]
    size = 0
    for f in files:
        if size >= READ_GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(str(f.resolve()))
        size += f.stat().st_size
    if len(groups) < 2:
        return None
    return {"source": {**dataclasses.asdict(source), "format": fmt, "weight": 1.0}, "encoding_errors": encoding_errors,
            "groups": groups}


class ReadGroup(_ShardTask):
    """Stage 1 for one group of files (``read_plan``): its documents as shards ``raw/g<group>-<k>.texts``, and its
    record ``raw/g<group>.json``."""

    name = "read"

    def __init__(self, work: Path, plan: dict[str, Any], shard_docs: int, quiet: bool) -> None:
        super().__init__(work, quiet)
        self.plan, self.shard_docs = plan, shard_docs

    def finished(self, rank: int) -> bool:
        return _group_done(self.work, self.plan, rank)

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        import glob

        from lit_llm.data.sources import Source, iter_documents

        group = f"g{shard_name(rank)}"
        record = self.work / "raw" / f"{group}.json"
        if _record_problem(record) is None and _group_done(self.work, self.plan, rank):  # by an earlier run
            return
        (self.work / "raw").mkdir(parents=True, exist_ok=True)
        source = Source(**self.plan["source"])
        encoding_errors = self.plan["encoding_errors"]

        def texts() -> Iterator[str]:
            for path in self.plan["groups"][rank]:  # one file at a time: its path as a glob that matches it alone
                if source.format == "json" and _blank_file(Path(path)):
                    continue  # datasets' json reader fails on a file with no row, which the stream passes over
                yield from iter_documents([dataclasses.replace(source, path=glob.escape(path))],
                                          encoding_errors=encoding_errors)

        with self.track_time(unit="group"):
            files, documents = _write_shards(texts(), self.shard_docs,
                                             lambda k: self.work / "raw" / f"{group}-{shard_name(k)}{TEXTS}")
        _write_record(record, files, documents=documents, sources=self.plan["groups"][rank])
        self.stat_update("documents", value=documents, unit="group")


def _group_done(work: Path, plan: dict[str, Any], rank: int) -> bool:
    """Whether group ``rank``'s record is there and was written for this plan's files (a record of a run with
    other groups is not this group's)."""
    try:
        return _read_record(work / "raw" / f"g{shard_name(rank)}.json").get("sources") == plan["groups"][rank]
    except (OSError, ValueError):
        return False


def _blank_file(path: Path) -> bool:
    """Whether a file holds nothing but white space (checked from its first MB; a larger file is not blank)."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return len(head) < (1 << 20) and not head.strip()


def _index_groups(work: Path, plan: dict[str, Any], shard_docs: int) -> Optional[dict[str, Any]]:
    """The record ``spool.json`` of a read in groups, once every group's record is there (None before): the
    groups' shards in order, numbered 0, 1, ... by their place (``raw_name``), with the sizes and checksums their
    records hold (the clean tasks check each file against them). Any read task may write it, and all write the
    same bytes."""
    record = work / "spool.json"
    if record.is_file():
        return _read_spool(work)
    groups = len(plan["groups"])
    if not all(_group_done(work, plan, g) for g in range(groups)):
        return None
    records = [work / "raw" / f"g{shard_name(g)}.json" for g in range(groups)]
    files: dict[str, Any] = {}
    documents = 0
    for r in records:
        info = _read_record(r)
        files.update({f"raw/{name}": digest for name, digest in info["files"].items()})
        documents += info["documents"]
    write_text_atomic(record, json.dumps({"files": files, "shards": len(files), "documents": documents,
                                          "shard_docs": shard_docs, "raw": list(files)}, indent=1))
    return _read_spool(work)


def _read_spool(work: Path) -> dict[str, Any]:
    """The read stage's record ``spool.json``, refused where its shards are in an older lit_llm's format."""
    spool = _read_record(work / "spool.json")
    old = [name for name in spool["files"] if not name.endswith(TEXTS)]
    if old:
        raise ValueError(f"{work} was left by an older lit_llm, whose shards ({old[0]} ...) this one does not read;"
                         f" delete {work} and run prepare again")
    return spool


def raw_name(spool: dict[str, Any], k: int) -> str:
    """Shard ``k``'s raw file, relative to the work folder: the read in one process numbers them itself, a read
    in groups lists them in order."""
    return spool["raw"][k] if "raw" in spool else f"raw/{shard_name(k)}{TEXTS}"


TEXTS = ".texts"  # a shard's documents (_write_texts); JSON Lines cost 3 times as much to write and read back


def _write_texts(path: Path, texts: Iterable[str]) -> Path:
    """``texts`` into the shard file ``path``: each one's UTF-8 followed by the byte 0xFF, which UTF-8 never holds,
    so a text may hold any character, newlines and NUL included (and a lone surrogate passes unchanged, as its
    3-byte form)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for text in texts:
            f.write(text.encode("utf-8", "surrogatepass"))
            f.write(b"\xff")
    return path


def _read_texts(path: Path, block: int = 1 << 22) -> Iterator[str]:
    """The texts of a shard file (``_write_texts``), in order, read in blocks of ``block`` bytes (a text longer
    than a block is gathered from its pieces). A file cut inside a text is an error; one cut just after a text's
    end reads as fewer texts, which only the shard's record (its size and sha256, checked before a read) tells."""
    pending: list[bytes] = []
    last = b"\xff"  # the file's last byte (an empty file is whole)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            last = chunk[-1:]
            *ends, rest = chunk.split(b"\xff")
            if ends:
                pending.append(ends[0])
                yield b"".join(pending).decode("utf-8", "surrogatepass")
                for piece in ends[1:]:
                    yield piece.decode("utf-8", "surrogatepass")
                pending = []
            pending.append(rest)
    if last != b"\xff":
        raise ValueError(f"{path} ends inside a text: it was cut short; delete it and run prepare again")


def _write_shards(texts: Iterable[str], shard_docs: int, path: Callable[[int], Path]) -> tuple[list[Path], int]:
    """``texts`` as shard files of ``shard_docs`` texts (the last one short), shard k at ``path(k)``: the files
    and the number of texts. The read in one process and a read task of a file group both write through here."""
    files: list[Path] = []
    documents = 0
    for batch in _batches(texts, shard_docs):
        files.append(_write_texts(path(len(files)), batch))
        documents += len(batch)
    return files, documents


def _decide_duplicates(work: Path, n_shards: int, cleaner: Cleaner, memory_mb: Optional[float] = None
                       ) -> dict[str, Any]:
    """Stage 3: the global steps decide which documents are duplicates, exactly as one process does (first
    occurrence wins, in shard order and document order); ``keep/<k>.npy`` says which survivors of shard k stay.

    The steps are decided one after another, each over the documents that reach it (a document removed by an
    earlier global step reaches no later one), which gives one process's answers: whether a document is a
    duplicate at a step depends on the earlier documents that reached that step, never on a later step.
    Both steps are decided by sorting their keys (``_sorted_runs``: in buckets of at most ``SORT_MB``, or
    ``memory_mb`` where that is smaller; the steps run one after another, each within it), vectorized:
    ``dedup_exact`` in ``_decide_exact``, ``dedup_minhash`` in ``_decide_minhash``, which walks in corpus order
    only the documents that share a band with another. Sets the cleaner's counts and returns the record
    ``dedup.json``: documents read and kept, their bytes, the counts, the buckets per step. A complete record of
    a killed run is reused."""
    record = work / "dedup.json"
    if _record_problem(record) is None:
        info = _read_record(record)
        cleaner.counts = info["counts"]
        return info
    stems = [shard_name(k) for k in range(n_shards)]
    run = uuid.uuid4().hex[:12]  # this run's scratch: another prepare deciding in the same folder keeps its own
    scratch = work / f"decide-{run}"  # (the work folder, and a killed run's scratch in it, go once published)
    scratch.mkdir(parents=True)
    try:
        files, info = _decide(work, stems, cleaner, memory_mb, scratch)
    finally:
        cleaner.close()  # the fates are scratch (no map of them is left open)
        shutil.rmtree(scratch, ignore_errors=True)
    _write_record(record, files, **info)
    cleaner.counts = info["counts"]
    return _read_record(record)


def _decide(work: Path, stems: list[str], cleaner: Cleaner, memory_mb: Optional[float], scratch: Path
            ) -> tuple[list[Path], dict[str, Any]]:
    """``_decide_duplicates``'s work, its scratch in ``scratch``: the keep files written, and the record's info."""
    n = len(cleaner.steps)
    sizes = [_verify(work / "clean" / f"{stem}.json")["documents"] for stem in stems]
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    # each document's fate from the per-document steps (the step that removed it, n if none), and its final fate
    fate, final = _scratch(scratch / "fate.npy", int(starts[-1])), _scratch(scratch / "final.npy", int(starts[-1]))
    for k, stem in enumerate(stems):
        with np.load(work / "clean" / f"{stem}.npz") as z:
            fate[starts[k]:starts[k + 1]] = z["fate"]
    final[:] = fate
    global_steps = [(j, step) for j, (name, step) in enumerate(cleaner.steps) if name in GLOBAL_STEPS]
    buckets = {}  # per global step, how many buckets its keys were sorted in
    # without the setting the buckets are bounded too: smaller buckets sort faster (a 256 MiB bucket took 1.5 times
    # as long per document as 16 to 64 MiB ones: benchmarks/dedup_decide.py), and memory stays flat by default
    budget = max(1024, int(min(SORT_MB if memory_mb is None else memory_mb, SORT_MB) * 2**20))
    for j, step in global_steps:  # one after another: the setting bounds each sort alone
        decide = _decide_exact if isinstance(step, DedupExact) else _decide_minhash
        buckets[str(j)] = decide(work, stems, starts, fate, final, j, step, budget, scratch)
    counts = np.zeros((n, 2), dtype=np.int64)
    read = kept = text_bytes = 0
    (work / "keep").mkdir(parents=True, exist_ok=True)
    files = []
    for k, stem in enumerate(stems):
        shard_fate, shard_final = np.asarray(fate[starts[k]:starts[k + 1]]), np.asarray(final[starts[k]:starts[k + 1]])
        for j in range(n):
            counts[j] += ((shard_final >= j).sum(), (shard_final > j).sum())
        keep = shard_final[shard_fate == n] == n
        with atomic_path(work / "keep" / f"{stem}.npy") as path, open(path, "wb") as f:
            np.save(f, keep)
        files.append(work / "keep" / f"{stem}.npy")
        with np.load(work / "clean" / f"{stem}.npz") as z:
            doc_bytes = z["bytes"]
        read += len(shard_fate)
        kept += int(keep.sum())
        text_bytes += int(doc_bytes[keep].sum())
    return files, {"read": read, "kept": kept, "bytes": text_bytes, "counts": counts.tolist(), "buckets": buckets}


def _scratch(path: Path, size: int) -> np.ndarray:
    """An int32 array of ``size`` on disk (a memory map: a corpus's worth of fates is not held in memory)."""
    if size == 0:
        return np.zeros(0, dtype=np.int32)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(size,))


def _reaching(start: int, fate: np.ndarray, final: np.ndarray, j: int, shard: slice) -> tuple[np.ndarray, np.ndarray]:
    """Shard ``shard``'s documents that reach global step ``j``: their index in the corpus, and their row in the
    shard's keys of step j. A worker computed step j's key for each document that its per-document steps let
    reach j, in order; of those, the ones an earlier global step removed do not reach it."""
    rows = np.flatnonzero(fate[shard] > j)
    alive = final[shard][rows] == fate[shard][rows]
    return rows[alive] + start, np.flatnonzero(alive)


SORT_MB = 64  # the largest bucket, with or without data.dedup_memory_mb
SORT_BYTES_PER_COLUMN = 24  # what a row costs while its bucket is sorted, per 8-byte column: the row, its keys
#                            and their sorted copy, and the order and the documents (one column's worth each)


def _buckets(reach: int, width: int, budget: int) -> int:
    """How many buckets ``reach`` rows of ``width`` columns take for one bucket's sort to fit ``budget`` bytes."""
    return max(1, -(-reach * width * SORT_BYTES_PER_COLUMN // budget))


def _opaque_keys(block: np.ndarray, width: int) -> np.ndarray:
    """Each row's key (all columns but the last) as one opaque value of its bytes: a stable sort of those (equal
    keys stay in corpus order) is 4 times as fast as np.lexsort over a band's 14 columns, and as fast over a
    digest's 2."""
    return np.ascontiguousarray(block[:, : width - 1]).view(np.dtype((np.void, 8 * (width - 1)))).ravel()


def _sorted_runs(rows: Iterator[np.ndarray], width: int, reach: int, budget: int, scratch: Path, name: str,
                 on_repeat: Optional[Callable[[np.ndarray], None]] = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Group equal keys, whatever the corpus size. ``rows`` are uint64 arrays of ``width`` columns, the key's
    then the document's index, in corpus order; ``reach`` is how many there are in all. They go into buckets by
    their key's second column (as many as keep one bucket's sort within ``budget`` bytes), on disk in ``scratch``
    in corpus order; then, bucket by bucket, the documents sorted by key (a
    stable sort: equal keys stay in corpus order), and for each a flag: its key equals the one before it. Rows
    with equal keys share a bucket, so every run of equal keys is whole in one bucket. With ``on_repeat``, a row
    whose key an earlier row of the same buffer has is handed to it (its documents) instead of a bucket: where
    only the first of equal keys matters (``dedup_exact``), a document repeated a million times then costs a
    bucket one row per buffer, not a million. (Without it, a key held by more rows than a bucket's share is sorted
    in memory whole: MinHash groups need every member.)"""
    buckets = _buckets(reach, width, budget)
    paths = [scratch / f"{name}-{b}.bin" for b in range(buckets)]
    pending: list[np.ndarray] = []
    held = 0

    def flush() -> None:
        nonlocal pending, held
        if not pending:
            return
        block = np.concatenate(pending)
        pending, held = [], 0
        if on_repeat is not None:
            keys = _opaque_keys(block, width)
            first = np.zeros(len(block), dtype=bool)
            first[np.unique(keys, return_index=True)[1]] = True  # the first of equal keys, in corpus order
            del keys
            on_repeat(block[~first, width - 1])
            block = block[first]
        _append_parts(block, block[:, 1] % buckets, paths)

    for block in rows:
        pending.append(block)
        held += block.nbytes
        if held * (4 if on_repeat else 2) >= budget:  # the buffer and its copy (and on_repeat's sort of it)
            flush()
    flush()
    for path in paths:
        if path.is_file():
            block = np.fromfile(path, dtype=np.uint64).reshape(-1, width)
            path.unlink()
            keys = _opaque_keys(block, width)
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            repeat = np.zeros(len(block), dtype=bool)
            repeat[1:] = keys[1:] == keys[:-1]
            del keys
            yield block[order, width - 1], repeat


def _reaching_rows(work: Path, stems: list[str], starts: np.ndarray, fate: np.ndarray, final: np.ndarray, j: int,
                   rows: Callable[[np.ndarray, np.ndarray], np.ndarray], doc_bytes: int, budget: int
                   ) -> Iterator[np.ndarray]:
    """``rows(docs, keys)`` for the documents that reach step ``j``, in corpus order, in blocks of at most an
    eighth of ``budget`` bytes (``doc_bytes`` a document), beside one shard's keys as the clean stage stored them."""
    chunk = max(1, budget // 8 // doc_bytes)
    for k, stem in enumerate(stems):
        docs, which = _reaching(int(starts[k]), fate, final, j, slice(starts[k], starts[k + 1]))
        with np.load(work / "clean" / f"{stem}.npz") as z:
            keys = z[f"keys{j}"]
        for at in range(0, len(docs), chunk):
            yield rows(docs[at : at + chunk], keys[which[at : at + chunk]])


def _reach(stems: list[str], starts: np.ndarray, fate: np.ndarray, j: int) -> int:
    """An upper bound on the documents that reach step ``j`` (the per-document steps let them; an earlier global
    step may have removed some): what sizes the buckets."""
    return int(sum(int((fate[starts[k]:starts[k + 1]] > j).sum()) for k in range(len(stems))))


def _decide_exact(work: Path, stems: list[str], starts: np.ndarray, fate: np.ndarray, final: np.ndarray, j: int,
                  step: DedupExact, budget: int, scratch: Path) -> int:
    """``dedup_exact`` at step ``j``: a document whose digest an earlier document reaching the step had is removed
    here: every row of a run of equal digests but the first. Returns the number of buckets."""

    def rows(docs: np.ndarray, keys: np.ndarray) -> np.ndarray:  # the 16-byte digest as two columns, the document
        digest = np.ascontiguousarray(keys, dtype=np.uint8).view("<u8").reshape(-1, 2)
        return np.column_stack([digest, docs.astype(np.uint64)])

    def remove(docs: np.ndarray) -> None:
        final[np.sort(docs.astype(np.int64))] = j

    reach = _reach(stems, starts, fate, j)
    blocks = _reaching_rows(work, stems, starts, fate, final, j, rows, 24, budget)
    for docs, repeat in _sorted_runs(blocks, 3, reach, budget, scratch, f"exact{j}", on_repeat=remove):
        remove(docs[repeat])
    return _buckets(reach, 3, budget)


def _decide_minhash(work: Path, stems: list[str], starts: np.ndarray, fate: np.ndarray, final: np.ndarray, j: int,
                    step: Any, budget: int, scratch: Path) -> int:
    """``dedup_minhash`` at step ``j``, as its ``seen`` decides one document after another (a document is removed
    when one of its bands equals that band of an earlier *kept* document; a kept document's bands are
    remembered, a removed one's are not), without holding the bands. Rows are (band, its values, document),
    sorted in buckets; a run of equal rows is a group of documents that share a band. A document in no group of
    two or more shares no band with any other: it is kept. The others, each with its groups (written to disk as
    (document, group) pairs), are walked in corpus order: removed if one of its groups already holds a kept
    document, else kept and its groups marked. Returns the number of buckets."""
    bands = step.bands
    width = bands[0][1] - bands[0][0]
    if any(end - start != width for start, end in bands):
        raise ValueError(f"dedup_minhash's bands differ in width ({bands}); the sort needs bands of one width")

    def rows(docs: np.ndarray, keys: np.ndarray) -> np.ndarray:  # one row per (document, band)
        out = np.empty((len(docs), len(bands), width + 2), dtype=np.uint64)
        if not len(docs):  # (a shard with no signature stores them as shape (0, 0))
            return out.reshape(0, width + 2)
        for i, (start, end) in enumerate(bands):
            out[:, i, 0] = i
            out[:, i, 1 : width + 1] = keys[:, start:end]
        out[:, :, width + 1] = docs[:, None]
        return out.reshape(-1, width + 2)

    reach = _reach(stems, starts, fate, j) * len(bands)
    pairs_path = scratch / f"minhash{j}-pairs.bin"
    groups = 0
    with open(pairs_path, "wb") as pairs:
        blocks = _reaching_rows(work, stems, starts, fate, final, j, rows, len(bands) * (width + 2) * 8, budget)
        for docs, repeat in _sorted_runs(blocks, width + 2, reach, budget, scratch, f"minhash{j}"):
            run = np.cumsum(~repeat) - 1  # each row's run, numbered in this bucket
            shared = np.bincount(run)[run] > 1
            ids, group = np.unique(run[shared], return_inverse=True)  # the runs of two or more, numbered 0, 1, ...
            np.column_stack([docs[shared], group.astype(np.uint64) + groups]).tofile(pairs)
            groups += len(ids)
    _walk_groups(pairs_path, groups, int(starts[-1]), budget, scratch / f"minhash{j}", final, j)
    return _buckets(reach, width + 2, budget)


WALK_BYTES_PER_PAIR = 128  # a (document, group) pair while its range is sorted and walked (Python ints included)


def _walk_groups(pairs_path: Path, groups: int, documents: int, budget: int, prefix: Path, final: np.ndarray,
                 j: int) -> None:
    """The walk of ``_decide_minhash``: sets ``final`` to ``j`` for the documents it removes. ``pairs_path`` holds
    (document, group) rows in any order, for documents below ``documents``; they are cut into ranges of documents
    (as many as would keep one range's walk within ``budget`` bytes were the pairs spread evenly, and a range that
    still holds too many, where near-duplicates cluster, is halved until it fits), each sorted and walked in
    document order. A group's mark is one byte, memory-mapped on disk where the groups outgrow the budget."""
    n = pairs_path.stat().st_size // 16
    if groups <= budget // 4:
        marked = np.zeros(groups, dtype=np.uint8)
    else:
        marked = np.lib.format.open_memmap(prefix.with_name(prefix.name + "-marks.npy"), mode="w+", dtype=np.uint8,
                                           shape=(groups,))
    ranges = max(1, -(-n * WALK_BYTES_PER_PAIR // budget))
    span = max(1, -(-documents // ranges))
    paths = _partition(pairs_path, budget, [(r * span, min(documents, (r + 1) * span)) for r in range(ranges)],
                       prefix)
    pairs_path.unlink()
    todo = list(reversed(paths))  # a stack, in document order
    while todo:
        path, lo, hi = todo.pop()
        if path.stat().st_size // 16 * WALK_BYTES_PER_PAIR > budget and hi - lo > 1:
            mid = (lo + hi) // 2  # one document has at most a pair per band, so halving ends
            todo.extend(reversed(_partition(path, budget, [(lo, mid), (mid, hi)], prefix)))
            path.unlink()
            continue
        block = np.fromfile(path, dtype=np.uint64).reshape(-1, 2)
        path.unlink()
        if not len(block):
            continue
        block = block[np.lexsort((block[:, 1], block[:, 0]))]  # by document, then group
        docs, gids = block[:, 0].tolist(), block[:, 1].tolist()
        ends = np.flatnonzero(np.diff(block[:, 0])).tolist() + [len(docs) - 1]
        del block
        removed, first = [], 0
        for last in ends:
            own = gids[first : last + 1]
            if any(marked[g] for g in own):
                removed.append(docs[first])
            else:
                marked[own] = 1
            first = last + 1
        final[np.array(removed, dtype=np.int64)] = j


def _partition(path: Path, budget: int, ranges: list[tuple[int, int]], prefix: Path) -> list[tuple[Path, int, int]]:
    """The (document, group) rows of ``path`` cut by document into the consecutive ``ranges`` [lo, hi), each in a
    file of its own: (file, lo, hi), in order (a file may be empty)."""
    stamp = uuid.uuid4().hex[:8]
    out = [(prefix.with_name(f"{prefix.name}-{stamp}-{r}.bin"), lo, hi) for r, (lo, hi) in enumerate(ranges)]
    for p, _, _ in out:
        p.touch()
    edges = np.array([lo for lo, _ in ranges[1:]], dtype=np.uint64)
    for block in _blocks(path, budget):
        _append_parts(block, np.searchsorted(edges, block[:, 0], side="right"), [p for p, _, _ in out])
    return out


def _append_parts(block: np.ndarray, part: np.ndarray, paths: list[Path]) -> None:
    """Append each row of ``block`` to the file ``paths[part[row]]``, keeping the rows' order within a file."""
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(len(paths) + 1))
    for k, path in enumerate(paths):
        if bounds[k] < bounds[k + 1]:
            with open(path, "ab") as f:
                block[order[bounds[k]:bounds[k + 1]]].tofile(f)


def _blocks(path: Path, budget: int) -> Iterator[np.ndarray]:
    """The (document, group) rows of ``path`` in blocks of at most a quarter of ``budget`` bytes."""
    n = path.stat().st_size // 16
    step = max(1, budget // 4 // 16)
    for start in range(0, n, step):
        yield np.fromfile(path, dtype=np.uint64, count=min(step, n - start) * 2, offset=start * 16).reshape(-1, 2)


def kept_texts(work: Path, k: int) -> Iterator[str]:
    """The texts of shard ``k`` that cleaning and deduplication keep, in order (files checked first)."""
    stem = shard_name(k)
    _verify(work / "clean" / f"{stem}.json")
    _verify(work / "dedup.json", [f"keep/{stem}.npy"])
    keep = np.load(work / "keep" / f"{stem}.npy")
    for text, kept in zip(_read_texts(work / "clean" / f"{stem}{TEXTS}"), keep):
        if kept:
            yield text


def _tokenizer(work: Path, spec: TokenizerSpec, n_shards: int, kept: int) -> Tokenizer:
    """Stage 4: the tokenizer, trained once on every kept text in order (or loaded from ``tokenizer.path``), and
    saved in ``work``, where the tokenize tasks load it. The object is returned as built, since a checkpoint's
    tokenizer carries the special tokens it declares (an imported model's end of text), which decide the EOS. A
    trained tokenizer that a killed run saved is reused: the shards that run tokenized used it."""
    path = work / "tokenizer.json"
    if spec.path is None and path.is_file():
        return Tokenizer.from_file(str(path))
    tok = train_tokenizer(spec, (t for k in range(n_shards) for t in kept_texts(work, k)), length=kept)
    with atomic_path(path) as tmp:
        tok.save(str(tmp))
    return tok


def _document_tokens(work: Path, n_shards: int) -> np.ndarray:
    """The tokens of every document, in stream order, from the shards' records (each file checked)."""
    lengths = []
    for k in range(n_shards):
        record = work / "tokens" / f"{shard_name(k)}.json"
        _verify(record, [f"{shard_name(k)}.npy"])
        lengths.append(np.load(record.with_suffix(".npy")))
    return np.concatenate(lengths)


# ------------------------------------------------------------------------------------- records and checks
def _digest(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _write_record(record: Path, files: list[Path], **info: Any) -> None:
    """The record of finished work: each file's size and sha256 (by its path relative to the record's folder),
    plus ``info``. Written last and atomically: its presence is what marks the work finished."""
    digests = {str(f.relative_to(record.parent)): _digest(f) for f in files}
    write_text_atomic(record, json.dumps({"files": digests, **info}, indent=1))


def _read_record(record: Path) -> dict[str, Any]:
    return json.loads(record.read_text(encoding="utf-8"))


def _record_problem(record: Path, names: Optional[list[str]] = None) -> Optional[str]:
    """What is wrong with ``record`` or the files it lists (only ``names`` of them, if given), or None."""
    if not record.is_file():
        return f"{record} is missing"
    try:
        files = _read_record(record)["files"]
    except (ValueError, KeyError):
        return f"{record} is not a whole record"
    for name in files if names is None else names:
        path = record.parent / name
        want = files.get(name)
        if want is None:
            return f"{record} does not list {path}"
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != want["bytes"]:
            return f"{path} has {size} bytes where its record {record.name} says {want['bytes']}"
        if _digest(path)["sha256"] != want["sha256"]:
            return f"{path} does not match the sha256 in its record {record.name}"
    return None


def _verify(record: Path, names: Optional[list[str]] = None) -> dict[str, Any]:
    """The record, once the files it lists (or ``names`` of them) match it. A missing, truncated or altered file is
    one ValueError naming it; the record is removed first, so the next run redoes that work and only that."""
    problem = _record_problem(record, names)
    if problem is not None:
        record.unlink(missing_ok=True)
        raise ValueError(f"A shard of the parallel prepare is damaged: {problem}. Its record was removed, so running"
                         " prepare again redoes that part alone.")
    return _read_record(record)
