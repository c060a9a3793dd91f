"""The parallel prepare's dedup decision (stage 3) for ``dedup_exact``, the default cleaning's global step: sorting
digests in buckets (``shards._decide_exact``) against deciding them one document at a time with the step's own
``seen`` (how stage 3 decided every step before; keys in a set, or in SQLite with ``data.dedup_memory_mb``).

For each corpus size N (documents), the clean stage's output is written once (shards of 20,000 documents, each a
random 16-byte digest, every 10th document from the 30,000th on repeating one 25,005 documents back, in another
shard), then
one fresh process per mode decides it. Reported per mode: seconds, microseconds a document, the process's peak
resident memory above its memory before the decision (Linux's ``VmHWM``, reset before), and the documents removed, which must be
the same in every mode. The peak counts the documents' fates (``fates_mib``: two int32 a document, which the sort
modes memory-map from scratch files and the one-by-one modes hold as arrays; stage 3 before held one shard's
at a time, so subtract ``fates_mib`` from their peaks to compare), beside the keys. The one-by-one modes run
``shards._decide_in_order``, the loop stage 3 ran for every step, without the keep files and counts that the sort
modes' figures include.

    python benchmarks/dedup_decide.py --docs 200000 400000 800000 --memory_mb 16

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
MODES = ("sort_in_memory", "sort_buckets", "one_by_one_set", "one_by_one_sqlite")


def write_shards(work: Path, docs: int) -> int:
    """The clean stage's files for ``docs`` documents that all reach the exact step; the number of shards."""
    from lit_llm.data import shards

    rng = np.random.default_rng(0)
    digests = rng.integers(0, 256, (docs, 16), dtype=np.uint8)
    repeats = np.arange(30_000, docs, 10)
    digests[repeats] = digests[repeats - 25_005]  # a digest from another shard, never itself a repeat
    (work / "clean").mkdir(parents=True)
    n_shards = -(-docs // SHARD_DOCS)
    for k in range(n_shards):
        part = digests[k * SHARD_DOCS:(k + 1) * SHARD_DOCS]
        stem = shards.shard_name(k)
        np.savez(work / "clean" / f"{stem}.npz", fate=np.full(len(part), 1, dtype=np.int32),
                 bytes=np.zeros(len(part), dtype=np.int64), keys0=part)
        shards._write_record(work / "clean" / f"{stem}.json", [work / "clean" / f"{stem}.npz"])
    return n_shards


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


def run_one(mode: str, work: Path, n_shards: int, memory_mb: float) -> dict:
    """In this process: the decision in ``mode``; seconds, peak RSS growth in MiB, documents removed."""
    from lit_llm.data import shards
    from lit_llm.data.cleaning import Cleaner

    cleaner = Cleaner(["dedup_exact"])
    before = _reset_peak()
    t0 = time.perf_counter()
    if mode.startswith("sort"):
        record = shards._decide_duplicates(work, n_shards, cleaner, None if mode == "sort_in_memory" else memory_mb)
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
        shards._decide_in_order(work, stems, starts, fate, final, 0, step)
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
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # mode, folder, shards, memory_mb: a child run
    args = p.parse_args()
    if args.one:
        mode, folder, n_shards, memory = args.one
        print(json.dumps(run_one(mode, Path(folder), int(n_shards), float(memory))))
        return
    rows = []
    for docs in args.docs:
        row: dict = {"docs": docs, "fates_mib": round(docs * 8 / 2**20, 1)}
        with tempfile.TemporaryDirectory() as folder:
            n_shards = write_shards(Path(folder) / "written", docs)
            for mode in args.modes:
                work = Path(folder) / mode  # each mode decides a copy: a finished record would be reused
                subprocess.run(["cp", "-r", str(Path(folder) / "written"), str(work)], check=True)
                out = subprocess.run([sys.executable, __file__, "--one", mode, str(work), str(n_shards),
                                      str(args.memory_mb)], check=True, capture_output=True, text=True).stdout
                row[mode] = json.loads(out.strip().splitlines()[-1])
        assert len({row[m]["removed"] for m in args.modes}) == 1, row
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(json.dumps({"memory_mb": args.memory_mb, "shard_docs": SHARD_DOCS, "rows": rows,
                      "cores": os.cpu_count(), "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
