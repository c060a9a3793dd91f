"""Step time of training from streaming shards (``data.stream``, litdata) against the memory-mapped file, side by
side: the quickstart model on Tiny Shakespeare, ``--steps`` optimizer steps each, alternating the two loaders
``--repeats`` times in one process so that a shared machine's drift hits both. Reports the median ms per step
after ``--warmup`` steps and the ratio stream / mmap, and each run's whole ``fit`` in seconds (the first stream
run also writes the chunks).

    python benchmarks/stream_vs_mmap.py --steps 150 --repeats 3

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import lightning as L
from overhead import timed_fit

from lit_llm.data import PretrainDataModule
from lit_llm.tasks import LanguageModel


def run(stream: bool, steps: int, warmup: int, cache: str) -> tuple[float, float]:
    """ms per step after ``warmup``, and the seconds ``fit`` took in all."""
    L.seed_everything(1337, verbose=False)
    dm = PretrainDataModule("tinyshakespeare", block_size=64, batch_size=12, stream=stream, cache_dir=cache)
    module = LanguageModel("quickstart", vocab_size=dm.vocab_size, block_size=64, optimizer={"lr_decay_steps": steps})
    t0 = time.perf_counter()
    ms = timed_fit(dm, module, steps, warmup)
    return ms, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cache = tempfile.mkdtemp(prefix="lit_llm_stream_vs_mmap")
    PretrainDataModule("tinyshakespeare", block_size=64, batch_size=12, cache_dir=cache).prepare_data()
    results: dict[str, list[tuple[float, float]]] = {"mmap": [], "stream": []}
    for _ in range(args.repeats):
        for name in ("mmap", "stream"):
            results[name].append(run(name == "stream", args.steps, args.warmup, cache))
            print(name, results[name][-1])
    ms = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    print(json.dumps({
        "steps": args.steps, "repeats": args.repeats,
        "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
        "stream_over_mmap": round(ms["stream"] / ms["mmap"], 3),
        "fit_s": {k: [round(r[1], 2) for r in v] for k, v in results.items()},
        "cores": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
