"""How fast does ``lit_llm serve`` answer?

1. Load: starts ``python -m lit_llm serve`` on a loopback port and sends ``--requests`` completion requests
   (``--max_tokens`` tokens each, fixed seed) from 1, 8 and 32 concurrent clients, each thread with its own
   keep-alive HTTP connection. Prints requests/s, generated tokens/s and p50/p95 latency per concurrency.
2. KV cache: generates ``--gen_tokens`` tokens in this process with and without the KV cache (batch 1,
   ``--repeats`` alternating pairs) and prints the median tokens/s of each and the median per-pair ratio.

The model is the ``--preset`` (default ``debug``: 2 layers, width 32) with ``--block_size`` positions and a character
tokenizer of Tiny Shakespeare, random weights (speed does not depend on them), unless ``--checkpoint`` names
one. Ends with one JSON line of the figures.

    python benchmarks/serve_load.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from lit_llm.data.corpora import resolve_corpus
from lit_llm.data.tokenizer import TokenizerSpec, encode, train_tokenizer
from lit_llm.generate import generate_tokens, load_checkpoint
from lit_llm.model import ModelConfig, build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the server-in-a-subprocess test harness
from server_process import ServerProcess  # noqa: E402

PROMPT = "ROMEO:\nWhat light through yonder window breaks"


def write_checkpoint(path: Path, preset: str, block_size: int) -> Path:
    text = resolve_corpus("tinyshakespeare").read_text(encoding="utf-8")
    tok = train_tokenizer(TokenizerSpec(kind="char"), [text])
    cfg = ModelConfig.from_name(preset, vocab_size=tok.get_vocab_size(), block_size=block_size)
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "lit_llm": {"model_config": cfg.to_dict(), "tokenizer": tok.to_str()}}, path)
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(base_url: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    local = threading.local()

    def one(i: int) -> tuple[float, int]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base_url, timeout=300)
        t0 = time.perf_counter()
        r = local.client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": max_tokens, "seed": i})
        r.raise_for_status()
        return time.perf_counter() - t0, r.json()["usage"]["completion_tokens"]

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # connections up, workers warm
        t0 = time.perf_counter()
        results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
    latencies = [lat for lat, _ in results]
    return {"concurrency": concurrency, "requests": requests, "req_per_s": requests / wall,
            "tokens_per_s": sum(n for _, n in results) / wall,
            "p50_ms": 1000 * percentile(latencies, 0.5), "p95_ms": 1000 * percentile(latencies, 0.95)}


def generation_speed(checkpoint: Path, tokens: int, repeats: int) -> dict:
    """tokens/s with and without the KV cache, timed in alternating pairs so that a shared machine's slow
    spells hit both sides; medians over ``repeats`` pairs, and the median of the per-pair ratios."""
    model, tok = load_checkpoint(checkpoint)
    idx = torch.tensor([encode(tok, PROMPT)])
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for use_cache in (True, False):
            t0 = time.perf_counter()
            generate_tokens(model, idx, tokens, temperature=0, use_cache=use_cache)
            times[use_cache].append(time.perf_counter() - t0)
    ratios = [plain / cached for cached, plain in zip(times[True], times[False])]
    return {"with_cache": tokens / statistics.median(times[True]),
            "without_cache": tokens / statistics.median(times[False]), "speedup": statistics.median(ratios)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--preset", default="debug", help="model preset when no --checkpoint is given")
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--requests", type=int, default=96, help="timed requests per concurrency level")
    p.add_argument("--max_tokens", type=int, default=32)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--workers", type=int, default=1, help="model worker processes of the server")
    p.add_argument("--max_batch_size", type=int, default=8, help="requests the server decodes together")
    p.add_argument("--batch_timeout", type=float, default=0.005, help="seconds the server waits to fill a batch")
    p.add_argument("--gen_tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=11, help="timed pairs (with / without cache)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or write_checkpoint(Path(tmp) / "model.ckpt", args.preset, args.block_size)
        server = ServerProcess(ckpt, ["--workers", str(args.workers), "--max_tokens", str(args.max_tokens),
                                      "--max_batch_size", str(args.max_batch_size), "--batch_timeout", str(args.batch_timeout),
                                      "--log_level", "warning", "--feedback_store", str(Path(tmp) / "fb.jsonl")])
        with server:
            levels = [load(server.base_url, c, args.requests, args.max_tokens) for c in args.concurrency]
        speed = generation_speed(ckpt, args.gen_tokens, args.repeats)

    print(f"model: {args.checkpoint or args.preset}; server: {args.workers} worker(s), batches of up to"
          f" {args.max_batch_size} (timeout {args.batch_timeout} s), {args.max_tokens} tokens per request, {args.requests} requests per level")
    print(f"{'concurrency':>11s} {'req/s':>8s} {'tok/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for r in levels:
        print(f"{r['concurrency']:>11d} {r['req_per_s']:>8.1f} {r['tokens_per_s']:>8.0f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f}")
    print(f"generation, batch 1, {args.gen_tokens} tokens: {speed['with_cache']:.0f} tok/s with the KV cache,"
          f" {speed['without_cache']:.0f} tok/s without (median pair ratio {speed['speedup']:.2f}x)")
    print(json.dumps({"load": levels, "generation_tokens_per_s": speed, "workers": args.workers,
                      "max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout, "model": str(args.checkpoint or args.preset), "max_tokens": args.max_tokens, "block_size": args.block_size,
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
