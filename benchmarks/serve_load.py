"""How fast does ``lit_llm serve`` answer?

1. Load: starts ``python -m lit_llm serve`` on a loopback port and sends ``--requests`` completion requests
   (``--max_tokens`` tokens each, or with ``--min_tokens`` a mix of lengths drawn per request from that range, the
   same requests in every mode; fixed seeds) from 1, 8 and 32 concurrent clients, each thread with its own
   keep-alive HTTP connection. Prints requests/s, generated tokens/s and p50/p95 latency per concurrency.
   Each ``--batching`` mode (default: ``static``, the server's batching before continuous batching, with its
   default ``--max_batch_size`` 8, and ``continuous``, 32 KV-cache rows) gets its own server, in alternating
   ``--rounds``; the JSON has the medians and the continuous / static throughput ratio per concurrency. The
   CPU seconds each process spent per request (this client, and every process of the server: LitServe's
   front end, queue manager and model worker) say where a request's cost lies: on a machine of few cores
   the client and the front end share the cores with the worker, which bounds what faster decoding can buy.
2. Time to first token mid-batch: with ``--ttft_clients`` - 1 clients streaming completions back to back, one
   more client sends ``--ttft_probes`` streamed requests at random moments, so each arrives while others
   decode. Prints its time to first token (p50) and the decode step time (the other streams' time per token:
   from their first to their last text, over their completion tokens - 1; a server that sends a stream's text
   in fewer, larger events has the same step), and their ratio: how many decoding steps a new request waits.
   Before it, the time to the first text of 1-token requests sent one at a time to the idle server: the
   request path alone.
3. Workers alone: 32 requests at once decoded in this process by the static worker (batches of 8) and the
   continuous one (32 rows): what decoding allows without HTTP and the queues between processes.
4. KV cache: generates ``--gen_tokens`` tokens in this process with and without the KV cache (batch 1,
   ``--repeats`` alternating pairs) and prints the median tokens/s of each and the median per-pair ratio.

The model is the ``--preset`` (default ``debug``: 2 layers, width 32) with ``--block_size`` positions and a character
tokenizer of Tiny Shakespeare, random weights (speed does not depend on them), unless ``--checkpoint`` names
one. Ends with one JSON line of the figures.

    python benchmarks/serve_load.py
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import httpx
import torch

from lit_llm.data.corpora import resolve_corpus
from lit_llm.data.tokenizer import TokenizerSpec, encode, train_tokenizer
from lit_llm.generate import generate_tokens, load_checkpoint
from lit_llm.model import ModelConfig, build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.helpers
from tests.helpers.server_process import ServerProcess  # noqa: E402  (the server-in-a-subprocess test harness)

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


def _cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of this process and of each process of the server's tree, by pid."""
    import psutil  # a dependency of wandb, a core dependency

    procs = [psutil.Process()]
    root = psutil.Process(server_pid)
    procs += [root, *root.children(recursive=True)]
    out = {}
    for proc in procs:
        try:
            t = proc.cpu_times()
            out[f"{proc.pid}:{'client' if proc.pid == procs[0].pid else proc.name()}"] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def request_tokens(i: int, min_tokens: int, max_tokens: int) -> int:
    """Request ``i``'s ``max_tokens``: drawn from [min_tokens, max_tokens] by its index, the same in every mode and round."""
    return random.Random(i).randint(min_tokens, max_tokens)


def load(base_url: str, concurrency: int, requests: int, max_tokens: int, server_pid: Optional[int] = None,
         min_tokens: Optional[int] = None) -> dict:
    local = threading.local()

    def one(i: int) -> tuple[float, int]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base_url, timeout=300)
        t0 = time.perf_counter()
        n = request_tokens(i, min_tokens or max_tokens, max_tokens)
        r = local.client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": n, "seed": i})
        r.raise_for_status()
        return time.perf_counter() - t0, r.json()["usage"]["completion_tokens"]

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # connections up, workers warm
        cpu0 = _cpu_seconds(server_pid) if server_pid else {}
        t0 = time.perf_counter()
        results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
        cpu1 = _cpu_seconds(server_pid) if server_pid else {}
    latencies = [lat for lat, _ in results]
    cpu_ms = {k: 1000 * (cpu1[k] - cpu0[k]) / requests for k in cpu1 if k in cpu0}
    return {"concurrency": concurrency, "requests": requests, "req_per_s": requests / wall,
            "tokens_per_s": sum(n for _, n in results) / wall,
            "p50_ms": 1000 * percentile(latencies, 0.5), "p95_ms": 1000 * percentile(latencies, 0.95),
            "cpu_ms_per_request": dict(sorted(cpu_ms.items(), key=lambda kv: -kv[1]))}


def time_to_first_token(base_url: str, clients: int, probes: int, max_tokens: int) -> dict:
    """TTFT of requests that arrive while ``clients - 1`` others stream, against the decode step time."""
    stop, per_token, ttfts = threading.Event(), [], []

    def stream(client: httpx.Client, seed: int, on_text) -> int:
        """Streams one completion, calling ``on_text(time)`` for each event with text; returns its tokens."""
        body = {"prompt": PROMPT, "max_tokens": max_tokens, "seed": seed, "stream": True,
                "stream_options": {"include_usage": True}}
        tokens = 0
        with client.stream("POST", "/v1/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    event = json.loads(line[6:])
                    if event["choices"] and event["choices"][0]["text"]:
                        on_text(time.perf_counter())
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
        return tokens

    def background(i: int) -> None:
        with httpx.Client(base_url=base_url, timeout=300) as client:
            while not stop.is_set():
                times: list[float] = []
                tokens = stream(client, i, times.append)
                if len(times) >= 2 and tokens > 1:
                    per_token.append((times[-1] - times[0]) / (tokens - 1))

    def probe() -> None:
        rng = random.Random(0)
        with httpx.Client(base_url=base_url, timeout=300) as client:
            stream(client, 0, lambda t: None)  # connection up
            for k in range(probes):
                time.sleep(rng.uniform(0.0, 0.05))
                t0, first = time.perf_counter(), []
                stream(client, k, lambda t: first.append(t))
                ttfts.append(first[0] - t0)

    threads = [threading.Thread(target=background, args=(i,)) for i in range(clients - 1)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the others are decoding
    probe()
    stop.set()
    for t in threads:
        t.join()
    step = statistics.median(per_token)
    ttft = statistics.median(ttfts)
    return {"clients": clients, "probes": probes, "ttft_p50_ms": 1000 * ttft, "step_p50_ms": 1000 * step,
            "ttft_in_steps": ttft / step}


def idle_first_token(base_url: str, requests: int = 40, warmup: int = 5) -> float:
    """Median ms to the first streamed text of a 1-token request on an otherwise idle server: the request path
    alone (HTTP, the front end, the queue between processes, one prefill)."""
    times = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for i in range(requests):
            t0 = time.perf_counter()
            body = {"prompt": PROMPT, "max_tokens": 1, "seed": i, "stream": True}
            with client.stream("POST", "/v1/completions", json=body) as r:
                r.raise_for_status()
                next(line for line in r.iter_lines() if line.startswith("data:"))
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[warmup:])


def worker_only(checkpoint: Path, requests: int, max_tokens: int, repeats: int) -> dict:
    """The model workers without the server: ``requests`` completions all waiting at once, decoded by the
    static worker (batches of 8, one after the other) and the continuous one (32 rows), in alternating
    repeats; tokens/s (median) of each. What decoding alone allows, without HTTP or the queues between
    processes."""
    from lit_llm.feedback import FeedbackStore
    from lit_llm.serve import CompletionJob, CompletionSpec, ContinuousGenerationAPI, GenerationAPI, read_served

    with tempfile.TemporaryDirectory() as tmp:
        spec = CompletionSpec(read_served(str(checkpoint), None, None, max_tokens, 8),
                              FeedbackStore(Path(tmp) / "fb.jsonl"))
        static, continuous = GenerationAPI(str(checkpoint), spec), ContinuousGenerationAPI(str(checkpoint), spec)
        static.setup("cpu")
        continuous.setup("cpu")
    ids = encode(static.tokenizer, PROMPT)
    jobs = [CompletionJob(ids, max_tokens, [], seed=i) for i in range(requests)]

    def run_static() -> None:
        for start in range(0, requests, 8):
            list(static.predict(jobs[start : start + 8]))

    def run_continuous() -> None:
        for i, job in enumerate(jobs):
            continuous.add_request(str(i), job)
        while continuous.has_active_requests():
            continuous.step(None)

    times: dict[str, list[float]] = {"static": [], "continuous": []}
    for _ in range(repeats):
        for name, fn in (("static", run_static), ("continuous", run_continuous)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    rate = {name: requests * max_tokens / statistics.median(t) for name, t in times.items()}
    return {"requests": requests, "tokens_per_s": rate, "continuous_over_static": rate["continuous"] / rate["static"]}


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
    p.add_argument("--min_tokens", type=int, default=None,
                   help="load requests ask for a max_tokens drawn from [min_tokens, max_tokens] (default: all ask for"
                        " --max_tokens), as a mix of short and long answers does")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--workers", type=int, default=1, help="model worker processes of the server")
    p.add_argument("--batching", nargs="+", default=["static", "continuous"], choices=["static", "continuous"])
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of the --batching modes")
    p.add_argument("--max_batch_size", type=int, default=None, help="default: the server's (8 static, 32 continuous)")
    p.add_argument("--batch_timeout", type=float, default=0.005, help="seconds a static server waits to fill a batch")
    p.add_argument("--stream_interval", type=float, default=None,
                   help="seconds of a stream's text per event on the continuous server (default: the server's)")
    p.add_argument("--ttft_clients", type=int, default=32, help="streaming clients of the time-to-first-token test")
    p.add_argument("--ttft_probes", type=int, default=30, help="timed requests of the time-to-first-token test")
    p.add_argument("--gen_tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=11, help="timed pairs (with / without cache)")
    args = p.parse_args()

    runs: dict[str, list[dict]] = {mode: [] for mode in args.batching}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or write_checkpoint(Path(tmp) / "model.ckpt", args.preset, args.block_size)
        for _ in range(args.rounds):
            for mode in args.batching:
                flags = ["--workers", str(args.workers), "--max_tokens", str(args.max_tokens), "--batching", mode,
                         "--batch_timeout", str(args.batch_timeout), "--log_level", "warning",
                         "--feedback_store", str(Path(tmp) / "fb.jsonl")]
                if args.max_batch_size:
                    flags += ["--max_batch_size", str(args.max_batch_size)]
                if args.stream_interval is not None and mode == "continuous":
                    flags += ["--stream_interval", str(args.stream_interval)]
                with ServerProcess(ckpt, flags) as server:
                    levels = [load(server.base_url, c, args.requests, args.max_tokens, server.proc.pid, args.min_tokens)
                              for c in args.concurrency]
                    idle = idle_first_token(server.base_url)
                    ttft = time_to_first_token(server.base_url, args.ttft_clients, args.ttft_probes, args.max_tokens)
                    ttft["idle_first_token_ms"] = idle
                runs[mode].append({"load": levels, "ttft": ttft})
        speed = generation_speed(ckpt, args.gen_tokens, args.repeats)
        decode_only = worker_only(ckpt, 32, args.max_tokens, args.repeats)

    def median_of(mode: str, i: int, key: str) -> float:
        return statistics.median(run["load"][i][key] for run in runs[mode])

    summary = {}
    for mode in args.batching:
        summary[mode] = {
            "load": [{"concurrency": c, **{k: median_of(mode, i, k) for k in ("req_per_s", "tokens_per_s", "p50_ms",
                                                                               "p95_ms")}}
                     for i, c in enumerate(args.concurrency)],
            "ttft": {k: statistics.median(run["ttft"][k] for run in runs[mode])
                     for k in ("ttft_p50_ms", "step_p50_ms", "ttft_in_steps", "idle_first_token_ms")}}
    per_request = f"{args.min_tokens}-{args.max_tokens}" if args.min_tokens else str(args.max_tokens)
    print(f"model: {args.checkpoint or args.preset}; {args.workers} worker(s), {per_request} tokens per request,"
          f" {args.requests} requests per level, medians of {args.rounds} rounds")
    print(f"{'batching':>10s} {'concurrency':>11s} {'req/s':>8s} {'tok/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for mode in args.batching:
        for r in summary[mode]["load"]:
            print(f"{mode:>10s} {r['concurrency']:>11d} {r['req_per_s']:>8.1f} {r['tokens_per_s']:>8.0f}"
                  f" {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f}")
        t = summary[mode]["ttft"]
        print(f"{mode:>10s} time to first token mid-batch ({args.ttft_clients} clients): p50 {t['ttft_p50_ms']:.1f} ms,"
              f" decode step {t['step_p50_ms']:.1f} ms: {t['ttft_in_steps']:.1f} steps; idle first token"
              f" {t['idle_first_token_ms']:.1f} ms")
    ratios = {}
    if {"static", "continuous"} <= set(args.batching):
        ratios = {str(c): summary["continuous"]["load"][i]["req_per_s"] / summary["static"]["load"][i]["req_per_s"]
                  for i, c in enumerate(args.concurrency)}
        print("continuous / static throughput: " + ", ".join(f"{r:.2f}x at {c}" for c, r in ratios.items()))
    print(f"workers alone, 32 requests at once: {decode_only['tokens_per_s']['static']:.0f} tok/s static,"
          f" {decode_only['tokens_per_s']['continuous']:.0f} continuous ({decode_only['continuous_over_static']:.2f}x)")
    print(f"generation, batch 1, {args.gen_tokens} tokens: {speed['with_cache']:.0f} tok/s with the KV cache,"
          f" {speed['without_cache']:.0f} tok/s without (median pair ratio {speed['speedup']:.2f}x)")
    print(json.dumps({"batching": summary, "continuous_over_static_req_per_s": ratios, "rounds": runs,
                      "generation_tokens_per_s": speed, "workers_alone": decode_only, "workers": args.workers, "max_batch_size": args.max_batch_size,
                      "batch_timeout": args.batch_timeout, "stream_interval": args.stream_interval, "model": str(args.checkpoint or args.preset),
                      "max_tokens": args.max_tokens, "min_tokens": args.min_tokens, "block_size": args.block_size,
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
