"""Peak memory of global deduplication against corpus size: keys in memory against keys on disk
(``data.dedup_memory_mb``), side by side.

For each corpus size N (documents), one fresh process per mode runs the two deduplication steps of a cleaning
config, ``dedup_exact`` then ``dedup_minhash`` (threshold 0.8, 128 permutations), over N documents' keys, as the
parallel prepare's dedup stage does (``shards._decide_duplicates``: the keys were computed by the workers; here
they are drawn at random, a 16-byte digest and a 128-value signature per document, and every 10th document
repeats the one before it and every 10th (offset 5) nearly repeats it, so both steps remove some). It reports the process's peak resident memory
(``ru_maxrss``) above the same process's memory before the first key, the seconds, and what each step removed;
both modes must remove the same documents.

    python benchmarks/dedup_memory.py --docs 100000 200000 400000 --memory_mb 16

Ends with one JSON line. Flat memory on disk is the goal: it should not grow with N, while the set in memory does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run_one(docs: int, memory_mb: float | None, folder: str) -> dict:
    """In this process: the two steps over ``docs`` keys; peak RSS growth in MiB, seconds, documents removed."""
    from lit_llm.data.cleaning import Cleaner

    cleaner = Cleaner(["dedup_exact", "dedup_minhash"])
    cleaner.spill(Path(folder), memory_mb)
    (_, exact), (_, near) = cleaner.steps
    rng = np.random.default_rng(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    removed = [0, 0]
    t0 = time.perf_counter()
    chunk = 10_000
    for start in range(0, docs, chunk):  # keys drawn a chunk at a time: the drawing holds no corpus-sized array
        n = min(chunk, docs - start)
        digests = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        signatures = rng.integers(0, 2**32, (n, 128), dtype=np.uint64)
        for i in range(1, n, 10):  # a repeat of the document before it
            digests[i], signatures[i] = digests[i - 1], signatures[i - 1]
        for i in range(5, n, 10):  # a near copy: another text (digest), 5 of its 128 minimum hashes different
            signatures[i] = signatures[i - 1]
            signatures[i, :5] += 1
        for i in range(n):
            if exact.seen(digests[i]):
                removed[0] += 1
            elif near.seen(signatures[i]):
                removed[1] += 1
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    cleaner.close()
    return {"peak_mib_above_start": round((peak - before) / 1024, 1), "seconds": round(seconds, 2),
            "removed": removed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, nargs="+", default=[100_000, 200_000, 400_000])
    p.add_argument("--memory_mb", type=float, default=16.0, help="data.dedup_memory_mb of the on-disk runs")
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # docs, memory_mb or 'none', folder: a child run
    args = p.parse_args()
    if args.one:
        docs, memory, folder = args.one
        print(json.dumps(run_one(int(docs), None if memory == "none" else float(memory), folder)))
        return
    rows = []
    for docs in args.docs:
        row: dict = {"docs": docs}
        for mode, memory in (("in_memory", "none"), ("on_disk", str(args.memory_mb))):
            with tempfile.TemporaryDirectory() as folder:
                out = subprocess.run([sys.executable, __file__, "--one", str(docs), memory, folder], check=True,
                                     capture_output=True, text=True).stdout
            row[mode] = json.loads(out.strip().splitlines()[-1])
        assert row["in_memory"]["removed"] == row["on_disk"]["removed"], row
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(json.dumps({"memory_mb": args.memory_mb, "rows": rows, "cores": os.cpu_count(),
                      "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
