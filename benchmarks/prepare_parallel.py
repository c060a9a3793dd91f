"""Throughput of the parallel prepare (workers=N) against the one-process path (workers=1), side by side.

1. Builds a corpus of at least ``--mb`` MB (default 20) as JSONL documents by repeating Tiny Shakespeare (five
   paragraphs per document), each copy with a different 10% of its words swapped, so that deduplication keeps
   nearly all of it (``prepare_throughput.build_corpus``).
2. Trains a byte-level BPE (8k) on the first 2 MB and saves it; both runs load it (``tokenizer.path``), so each
   measures read -> default cleaning (exact dedup included) -> tokenize -> token files, manifest and report.
3. Runs ``prepare`` with workers=1, then with ``--workers`` (default 2) over shards of ``--shard_docs``
   documents, each into a fresh folder, and checks that both wrote the same bytes.
4. Times the tokenizer alone: ``encode_batch_fast`` over the same documents held in memory (every core).

    python benchmarks/prepare_parallel.py --mb 20 --workers 2

Ends with one JSON line: corpus size, MB/s of both runs, the speedup, the tokenizer's MB/s and each run's stage
seconds (from its report.json), the cores and the load average before the start (other jobs on a shared
machine take cores from both runs; read the speedup with it).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from prepare_throughput import bpe_from_file, build_corpus

from lit_llm.data.cleaning import DEFAULT_CLEANING
from lit_llm.data.prepare import ENCODE_BATCH, prepare
from lit_llm.data.sources import Source
from lit_llm.data.tokenizer import load_tokenizer

SAME = ["manifest.json", "tokenizer.json", "train.bin", "val.bin", "test.bin", "doc_lengths.npy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shard_docs", type=int, default=2000)
    p.add_argument("--workdir", default=None, help="where the corpus and outputs go (default: a temp folder)")
    args = p.parse_args()
    load_before = os.getloadavg()[0]  # other jobs on the machine take cores from both runs
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lit_llm_prepare_parallel"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    text_mb = build_corpus(corpus, args.mb) / 1e6
    texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
    spec = bpe_from_file(texts, work / "tokenizer.json")
    tok = load_tokenizer(spec.path)
    print(f"corpus: {len(texts):,} documents, {text_mb:.1f} MB of text; shards of {args.shard_docs:,} documents")

    t0 = time.perf_counter()
    for i in range(0, len(texts), ENCODE_BATCH):
        tok.encode_batch_fast(texts[i : i + ENCODE_BATCH], add_special_tokens=False)
    tokenizer_s = time.perf_counter() - t0
    del texts

    import datasets  # noqa: F401  its import (seconds) is paid once, not by whichever run comes first

    runs = {}
    for workers in (1, args.workers):
        out_root = work / f"tokens-{workers}"
        shutil.rmtree(out_root, ignore_errors=True)
        t0 = time.perf_counter()
        out = prepare([Source(path=str(corpus))], out_root, cleaning=DEFAULT_CLEANING, tokenizer=spec, progress=False,
                      workers=workers, shard_docs=args.shard_docs)
        seconds = time.perf_counter() - t0
        runs[workers] = {"out": out, "s": seconds, "stages": json.loads((out / "report.json").read_text())["seconds"]}
        print(f"workers={workers}: {seconds:.1f} s, {text_mb / seconds:.2f} MB/s; stages {runs[workers]['stages']}")
    identical = all(filecmp.cmp(runs[1]["out"] / f, runs[args.workers]["out"] / f, shallow=False) for f in SAME)
    print(f"tokenizer alone: {tokenizer_s:.1f} s, {text_mb / tokenizer_s:.2f} MB/s (encode_batch_fast, every core)")
    result = {
        "corpus_mb": round(text_mb, 1), "shard_docs": args.shard_docs, "workers": args.workers,
        "workers_1_mb_s": round(text_mb / runs[1]["s"], 2),
        f"workers_{args.workers}_mb_s": round(text_mb / runs[args.workers]["s"], 2),
        "speedup": round(runs[1]["s"] / runs[args.workers]["s"], 2),
        "tokenizer_mb_s": round(text_mb / tokenizer_s, 2), "identical_output": identical,
        "stage_seconds": {f"workers_{w}": r["stages"] for w, r in runs.items()},
        "cores": len(os.sched_getaffinity(0)), "load_avg_1min_before": round(load_before, 2),
    }
    print(json.dumps(result))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
