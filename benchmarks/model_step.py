"""Per-family training-step speed at equal parameter count, and the chunked loss's peak memory.

1. For each family's ``tiny-*`` preset (~10.6M non-embedding parameters: 6 layers, width 384; Llama's
   SwiGLU width and GQA chosen to match GPT-2's 4x GELU MLP in parameters), all with tied embeddings,
   vocab 8192, context 256, batch 8: the median forward+backward time over ``--iters`` steps after warm-up,
   and tokens/s.
2. The loss alone at a 32k vocabulary (8,192 tokens, width 512): forward+backward of the plain loss vs the
   chunked loss (1,024 tokens per chunk), each in a fresh subprocess, reporting the peak resident memory
   during the loss above the resident memory before it. The CPU allocator has no peak counter, so the
   kernel's high-water mark is reset first (``5 > /proc/self/clear_refs``) and read from VmHWM. The plain
   loss holds the (8192, 32768) fp32 logits (1 GiB) and their gradient; the chunked one holds one chunk at a
   time. Both include the 64 MB gradient of the head weight.

    python benchmarks/model_step.py

Ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from peak_memory import peak_rss_mb

from lit_llm.data.masking import mask_tokens
from lit_llm.model import ModelConfig, build_model
from lit_llm.model.loss import lm_loss

FAMILIES = ("gpt2", "llama", "bert")


def family_step(name: str, iters: int, batch: int = 8, context: int = 256, vocab: int = 8192) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(f"tiny-{name}", vocab_size=vocab, block_size=context, tie_embeddings=True)
    model = build_model(cfg).train()
    ids = torch.randint(0, vocab, (batch, context + 1))
    if cfg.causal:
        x, y = ids[:, :-1], ids[:, 1:]
    else:
        x, y = mask_tokens(ids[:, :-1], mask_id=0, vocab_size=vocab)
    times = []
    for i in range(iters + 3):
        t0 = time.perf_counter()
        lm_loss(model(x), y)["loss"].backward()
        model.zero_grad(set_to_none=True)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times)
    non_emb = cfg.num_parameters() - vocab * 384 - (context * 384 if cfg.positions == "learned" else 0)  # tied
    return {"params": cfg.num_parameters(), "non_embedding_params": non_emb, "fwd_bwd_ms": round(ms, 1),
            "tokens_per_s": round(batch * context / (ms / 1000))}


def loss_memory(mode: str, tokens: int = 8192, width: int = 512, vocab: int = 32768, chunk: int = 1024) -> dict:
    torch.manual_seed(0)
    h = torch.randn(tokens, width, requires_grad=True)
    w = torch.randn(vocab, width, requires_grad=True)
    t = torch.randint(0, vocab, (tokens,))
    with peak_rss_mb({"mode": mode}) as result:
        if mode == "plain":
            loss = lm_loss(h @ w.t(), t)["loss"]
        else:
            loss = lm_loss(h, t, w, chunk_size=chunk)["loss"]
        loss.backward()
    return {**result, "loss": loss.item()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--loss-memory", choices=["plain", "chunked"], help=argparse.SUPPRESS)  # subprocess mode
    args = p.parse_args()
    if args.loss_memory:
        print(json.dumps(loss_memory(args.loss_memory)))
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    result = {}
    for name in FAMILIES:
        r = family_step(name, args.iters)
        result[name] = r
        print(f"{name:6s} {r['params']:>11,} params ({r['non_embedding_params']:,} non-embedding): "
              f"fwd+bwd {r['fwd_bwd_ms']:.1f} ms, {r['tokens_per_s']:,} tokens/s")
    mem = {}
    for mode in ("plain", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--loss-memory", mode], capture_output=True, text=True, check=True)
        mem[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"loss at vocab 32768, 8192 tokens, {mode:7s}: peak +{mem[mode]['peak_mb']:.0f} MB (loss {mem[mode]['loss']:.4f})")
    result["loss_peak_mb"] = {m: mem[m]["peak_mb"] for m in mem}
    result["chunked_over_plain_peak"] = round(mem["chunked"]["peak_mb"] / mem["plain"]["peak_mb"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
