"""Peak memory of the whole prepare against corpus size, side by side: one process (``workers: 1``, dedup keys in
memory) and the parallel path with its dedup keys on disk (``workers: 2``, ``dedup_memory_mb: 16``).

For each ``--mb`` size: a corpus as benchmarks/prepare_parallel.py builds it (Tiny Shakespeare repeated, 10% of
the words swapped per copy), default cleaning (exact dedup) plus ``dedup_minhash``, and a BPE given by file (no
run trains one). Each run is a fresh process; its peak resident memory (``ru_maxrss`` of it and of its worker
processes, the largest of them) is reported with the seconds it took.

    python benchmarks/prepare_memory.py --mb 5 10 20

Ends with one JSON line. The goal of issue 26 is memory that does not grow with the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLEANING = [{"whitespace": {}}, {"length": {"min_chars": 1}}, {"dedup_exact": {}}, {"dedup_minhash": {}}]


def run_one(corpus: str, tokenizer: str, out: str, workers: int, memory_mb: float | None) -> dict:
    """In this process: one prepare; its seconds and peak RSS (MiB) of this process and of its children."""
    from lit_llm.data.prepare import prepare
    from lit_llm.data.sources import Source
    from lit_llm.data.tokenizer import TokenizerSpec

    t0 = time.perf_counter()
    prepare([Source(path=corpus)], Path(out), CLEANING, TokenizerSpec(kind="bpe", path=tokenizer), progress=False,
            workers=workers, shard_docs=2000, dedup_memory_mb=memory_mb)
    seconds = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": round(seconds, 1), "peak_mib": round(own, 1), "peak_child_mib": round(children, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, nargs="+", default=[5.0, 10.0, 20.0])
    p.add_argument("--one", nargs=5, help=argparse.SUPPRESS)  # corpus, tokenizer, out, workers, memory|none
    args = p.parse_args()
    if args.one:
        corpus, tokenizer, out, workers, memory = args.one
        print(json.dumps(run_one(corpus, tokenizer, out, int(workers), None if memory == "none" else float(memory))))
        return
    from prepare_throughput import bpe_from_file, build_corpus

    work = Path(tempfile.mkdtemp(prefix="lit_llm_prepare_memory"))
    rows = []
    for mb in args.mb:
        corpus = work / f"corpus{mb}.jsonl"
        text_mb = build_corpus(corpus, mb) / 1e6
        tokenizer = work / "tokenizer.json"
        if not tokenizer.exists():
            bpe_from_file([json.loads(line)["text"] for line in open(corpus, encoding="utf-8")], tokenizer)
        row: dict = {"corpus_mb": round(text_mb, 1)}
        for name, workers, memory in (("one_process_in_memory", 1, "none"), ("workers_2_on_disk", 2, "16")):
            out = work / f"tokens-{name}-{mb}"
            proc = subprocess.run([sys.executable, __file__, "--one", str(corpus), str(tokenizer), str(out),
                                   str(workers), memory], check=True, capture_output=True, text=True)
            row[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            shutil.rmtree(out, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(json.dumps({"rows": rows, "cores": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
