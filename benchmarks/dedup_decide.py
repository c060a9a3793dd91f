"""The parallel prepare's dedup decision (stage 3): sorting the keys in buckets (``shards._decide_exact`` for
``dedup_exact``, the default cleaning's global step; ``shards._decide_minhash`` for ``dedup_minhash``, with the
walk of the documents that share a band) against deciding them one document at a time with the step's own
``seen`` (how stage 3 decided every step before; keys in a set, or in SQLite with ``data.dedup_memory_mb``).

For each corpus size N (documents), the clean stage's output is written once (shards of 20,000 documents), then
one fresh process per mode decides it. ``--step dedup_exact``: each document a random 16-byte digest, every 10th
from the 30,000th on repeating one 25,005 documents back, in another shard. ``--step dedup_minhash``: each
document a random 128-value signature (9 bands of 13, datasketch's for threshold 0.8), every 10th from the
30,000th on taking 3 of its bands from the document 25,005 back (a near-duplicate's candidate), every 7th from
the 30,001st taking 1 band from the document 7 back (chains: a document that matches only a removed one is
kept). Reported per mode: seconds, microseconds a document, the process's peak resident memory above its memory
before the decision (Linux's ``VmHWM``, reset before), and the documents removed, which must be the same in every
mode. ``sort_default`` runs without ``dedup_memory_mb`` (buckets of ``shards.SORT_MB``), ``sort_buckets`` with
``--memory_mb``. The peak counts the documents' fates (``fates_mib``: two int32 a document, which the sort modes
memory-map from scratch files and the one-by-one modes hold as arrays; stage 3 before held one shard's at a
time, so subtract ``fates_mib`` from their peaks to compare), beside the keys. The one-by-one modes run the loop
stage 3 ran for every step (``one_by_one`` below), without the keep files and counts that the sort modes'
figures include.

    python benchmarks/dedup_decide.py --docs 200000 400000 800000 --memory_mb 16
    python benchmarks/dedup_decide.py --step dedup_minhash --docs 100000 400000 --memory_mb 16

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARD_DOCS = 20_000
MODES = ("sort_default", "sort_buckets", "one_by_one_set", "one_by_one_sqlite")


def write_shards(work: Path, docs: int, step: str) -> int:
    """The clean stage's files for ``docs`` documents that all reach the step; the number of shards."""
    from lit_llm.data import shards

    rng = np.random.default_rng(0)
    if step == "dedup_exact":
        keys = rng.integers(0, 256, (docs, 16), dtype=np.uint8)
        repeats = np.arange(30_000, docs, 10)
        keys[repeats] = keys[repeats - 25_005]  # a digest from another shard, never itself a repeat
    else:
        keys = rng.integers(0, 2**32, (docs, 128), dtype=np.uint64)  # datasketch's values are below 2**32
        near = np.arange(30_000, docs, 10)
        keys[near, 13:52] = keys[near - 25_005, 13:52]  # bands 1 to 3 of 9
        chain = np.arange(30_001, docs, 7)
        keys[chain, 104:117] = keys[chain - 7, 104:117]  # band 8
    (work / "clean").mkdir(parents=True)
    n_shards = -(-docs // SHARD_DOCS)
    for k in range(n_shards):
        part = keys[k * SHARD_DOCS:(k + 1) * SHARD_DOCS]
        stem = shards.shard_name(k)
        np.savez(work / "clean" / f"{stem}.npz", fate=np.full(len(part), 1, dtype=np.int32),
                 bytes=np.zeros(len(part), dtype=np.int64), keys0=part)
        shards._write_record(work / "clean" / f"{stem}.json", [work / "clean" / f"{stem}.npz"], documents=len(part))
    return n_shards


def one_by_one(work: Path, stems: list[str], starts: np.ndarray, fate: np.ndarray, final: np.ndarray, step) -> None:
    """Stage 3 before the sort: the step's own ``seen``, document by document, in corpus order."""
    from lit_llm.data import shards

    for k, stem in enumerate(stems):
        docs, which = shards._reaching(int(starts[k]), fate, final, 0, slice(starts[k], starts[k + 1]))
        with np.load(work / "clean" / f"{stem}.npz") as z:
            keys = z["keys0"][which]
        final[[doc for doc, key in zip(docs.tolist(), keys) if step.seen(key)]] = 0


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> int:
    """Reset this process's peak resident memory to its current one (Linux: ``clear_refs`` 5), so that the peak
    after is the decision's, not the imports'; returns the current resident KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def run_one(mode: str, work: Path, n_shards: int, memory_mb: float, step_name: str) -> dict:
    """In this process: the decision in ``mode``; seconds, peak RSS growth in MiB, documents removed."""
    from lit_llm.data import shards
    from lit_llm.data.cleaning import Cleaner

    cleaner = Cleaner([step_name])
    before = _reset_peak()
    t0 = time.perf_counter()
    if mode.startswith("sort"):
        record = shards._decide_duplicates(work, n_shards, cleaner, None if mode == "sort_default" else memory_mb)
        removed, docs = record["read"] - record["kept"], record["read"]
    else:  # stage 3 before: the step's seen, document by document, in corpus order
        stems = [shards.shard_name(k) for k in range(n_shards)]
        fate = np.concatenate([np.load(work / "clean" / f"{s}.npz")["fate"] for s in stems])
        final = fate.copy()
        starts = np.arange(n_shards + 1, dtype=np.int64) * SHARD_DOCS
        starts[-1] = len(fate)
        step = cleaner.steps[0][1]
        if mode == "one_by_one_sqlite":
            step.keys.spill(work / "seen.sqlite", memory_mb)
        one_by_one(work, stems, starts, fate, final, step)
        cleaner.close()
        removed, docs = int((final == 0).sum()), len(fate)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    return {"seconds": round(seconds, 2), "us_per_doc": round(seconds / docs * 1e6, 2),
            "peak_mib_above_start": round((peak - before) / 1024, 1), "removed": removed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, nargs="+", default=[200_000, 400_000, 800_000])
    p.add_argument("--memory_mb", type=float, default=16.0, help="data.dedup_memory_mb of the bounded modes")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--step", default="dedup_exact", choices=["dedup_exact", "dedup_minhash"])
    p.add_argument("--one", nargs=5, help=argparse.SUPPRESS)  # mode, folder, shards, memory_mb, step: a child run
    args = p.parse_args()
    if args.one:
        mode, folder, n_shards, memory, step = args.one
        print(json.dumps(run_one(mode, Path(folder), int(n_shards), float(memory), step)))
        return
    rows = []
    for docs in args.docs:
        row: dict = {"docs": docs, "fates_mib": round(docs * 8 / 2**20, 1)}
        with tempfile.TemporaryDirectory() as folder:
            n_shards = write_shards(Path(folder) / "written", docs, args.step)
            for mode in args.modes:
                work = Path(folder) / mode  # each mode decides a copy: a finished record would be reused
                subprocess.run(["cp", "-r", str(Path(folder) / "written"), str(work)], check=True)
                out = subprocess.run([sys.executable, __file__, "--one", mode, str(work), str(n_shards),
                                      str(args.memory_mb), args.step], check=True, capture_output=True,
                                     text=True).stdout
                row[mode] = json.loads(out.strip().splitlines()[-1])
        assert len({row[m]["removed"] for m in args.modes}) == 1, row
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(json.dumps({"step": args.step, "memory_mb": args.memory_mb, "shard_docs": SHARD_DOCS, "rows": rows,
                      "cores": os.cpu_count(), "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
