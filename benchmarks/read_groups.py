"""The read stage (stage 1 of the parallel prepare) for one source of many files: streamed in one process, against
read in file groups (``shards.read_plan``) by 1 and by ``--workers`` processes, side by side on the same files.

Builds a corpus of ``--mb`` MB as JSONL (``prepare_throughput.build_corpus``), cut into ``--files`` files, and
sets the group size so that each group holds ``--files_per_group`` files. datatrove's executor runs the groups
(one worker: in this process). The stream is opened once before the timing, so datasets' first use is not timed.
Each mode writes the raw shards of a
fresh work folder; all three must list the same documents in the same order (the concatenated shards are
compared). Reports seconds and MB/s per mode and the ratios to the one-process read.

    python benchmarks/read_groups.py --mb 40 --files 16 --files_per_group 2 --workers 2

Ends with one JSON line, with the cores and the load average before the start (other jobs on a shared machine
take cores from the parallel run; read its ratio with it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from prepare_throughput import build_corpus

from lit_llm.data import shards
from lit_llm.data.cleaning import DEFAULT_CLEANING, Cleaner
from lit_llm.data.sources import Source, iter_documents
from lit_llm.data.tokenizer import TokenizerSpec


def raw_documents(work: Path) -> bytes:
    spool = json.loads((work / "spool.json").read_text())
    return b"".join((work / shards.raw_name(spool, k)).read_bytes() for k in range(spool["shards"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=40.0)
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--files_per_group", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shard_docs", type=int, default=2000)
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="lit_llm_read_groups"))
    try:
        whole = root / "corpus.jsonl"
        build_corpus(whole, args.mb)
        lines = whole.read_text(encoding="utf-8").splitlines(keepends=True)
        (root / "files").mkdir()
        per = -(-len(lines) // args.files)
        for i in range(args.files):
            (root / "files" / f"part-{i:03d}.jsonl").write_text("".join(lines[i * per:(i + 1) * per]), encoding="utf-8")
        mb = whole.stat().st_size / 1e6
        whole.unlink()
        sources = [Source(path=str(root / "files" / "*.jsonl"))]
        group_bytes = int(mb * 1e6 / args.files * (args.files_per_group - 0.5))  # closes after files_per_group
        shards.READ_GROUP_BYTES = group_bytes
        for _, _ in zip(range(10), iter_documents(sources)):  # datasets' first use (imports, caches) is not timed
            pass
        plan = shards.read_plan(sources, None, "strict")
        result: dict = {"corpus_mb": round(mb, 1), "files": args.files, "groups": len(plan["groups"])}
        outputs = {}
        for mode, workers in (("streamed", 1), ("groups_1_worker", 1), (f"groups_{args.workers}_workers", args.workers)):
            work = root / mode
            stages = shards.ShardedPrepare(DEFAULT_CLEANING, Cleaner(DEFAULT_CLEANING), TokenizerSpec(), False,
                                           work=work, workers=workers, shard_docs=args.shard_docs)
            t0 = time.perf_counter()
            stages.read(iter_documents(sources), None if mode == "streamed" else plan)
            seconds = time.perf_counter() - t0
            result[mode] = {"seconds": round(seconds, 2), "mb_per_s": round(mb / seconds, 1)}
            outputs[mode] = raw_documents(work)
        assert len(set(outputs.values())) == 1, "the modes read different documents"
        for mode in list(outputs)[1:]:
            result[mode]["speedup_over_streamed"] = round(result["streamed"]["seconds"] / result[mode]["seconds"], 2)
        result["documents_bytes"] = len(outputs["streamed"])
        result.update(cores=len(os.sched_getaffinity(0)), load_avg_1min_before=round(load_before, 2),
                      group_bytes=group_bytes)
        print(json.dumps(result))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
