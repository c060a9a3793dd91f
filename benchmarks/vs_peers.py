"""Training-step time against litgpt, side by side: litgpt's own ``GPT`` (its ``Config`` set to the same shape)
and lit_llm's ``Decoder``, trained in the same loop on the same batches with the same optimizer (AdamW,
fused where the device has it), loss (cross-entropy) and precision (fp32 on CPU, bf16 autocast on GPU).

Two architectures per shape:
- ``llama``: RMSNorm, rotary positions, SwiGLU MLP, no biases, untied head, on both sides: the same
  computation, so the ratio is the implementation's.
- ``gpt2``: lit_llm's GPT-2 block (LayerNorm, GELU MLP, biases, learned positions, tied head) against
  litgpt's nearest (LayerNorm, GELU MLP, biases; litgpt has no learned positions, so rotary, and an untied
  head). Same matmul shapes, not the same computation.

Shapes: ``quickstart`` (4 layers, width 128, context 64, vocab 65, batch 16) and ``tiny`` (6 layers, width
384, context 256, vocab 8,192, batch 8), and on a GPU ``gpt2-124m`` (12 layers, width 768, context 1024,
vocab 50,304, batch 8). The two models are timed in alternating blocks of steps; the figure is the median
ms/step of each and the ratio lit_llm / litgpt (goal <= 1).

Needs the ``bench`` extra (``pip install -e '.[bench]'``, which installs litgpt); prints one JSON object.

    python benchmarks/vs_peers.py [--shapes quickstart tiny] [--steps 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_llm.model import Decoder, ModelConfig  # noqa: E402

SHAPES = {
    "quickstart": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, batch=16),
    "tiny": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192, batch=8),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, batch=8),
}


def models(shape: dict, family: str):
    """(lit_llm Decoder, litgpt GPT) of the same shape and, for llama, the same architecture."""
    from litgpt.config import Config
    from litgpt.model import GPT

    n_layer, n_head, n_embd, block, vocab = (shape[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"))
    hidden = 4 * n_embd if family == "gpt2" else int(8 * n_embd / 3) // 64 * 64 or 64
    ours = Decoder(ModelConfig(family=family, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block,
                               vocab_size=vocab, intermediate_size=hidden, dropout=0.0))
    common = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block, vocab_size=vocab,
                  padded_vocab_size=vocab, n_query_groups=n_head, intermediate_size=hidden, rotary_percentage=1.0)
    if family == "llama":
        config = Config(**common, bias=False, norm_class_name="RMSNorm", norm_eps=1e-5, mlp_class_name="LLaMAMLP",
                        parallel_residual=False)
    else:
        config = Config(**common, bias=True, norm_class_name="LayerNorm", norm_eps=1e-5,
                        mlp_class_name="GptNeoxMLP", gelu_approximate="tanh", parallel_residual=False)
    return ours, GPT(config)


def step_times(model: torch.nn.Module, batches: list, device: str, steps: int) -> list[float]:
    fused = device == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    times = []
    for i, (x, y) in enumerate(batches[:steps]):
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def compare(name: str, family: str, device: str, steps: int, blocks: int) -> dict:
    shape = SHAPES[name]
    torch.manual_seed(0)
    ours, theirs = (m.to(device).train() for m in models(shape, family))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (steps, shape["batch"], shape["block_size"] + 1), generator=g)
    batches = [(b[:, :-1].to(device), b[:, 1:].to(device)) for b in ids]
    step_times(ours, batches, device, 3)  # warm-up: allocator, kernels
    step_times(theirs, batches, device, 3)
    mine, peer = [], []
    for b in range(blocks):  # alternating blocks of steps, the order swapped every block
        for model, out in ((ours, mine), (theirs, peer)) if b % 2 == 0 else ((theirs, peer), (ours, mine)):
            out.extend(step_times(model, batches, device, steps))
    ms_ours, ms_peer = 1000 * statistics.median(mine), 1000 * statistics.median(peer)
    tokens = shape["batch"] * shape["block_size"]
    return {"shape": name, "family": family, "params_lit_llm": n(ours), "params_litgpt": n(theirs),
            "lit_llm_ms": round(ms_ours, 2), "litgpt_ms": round(ms_peer, 2), "ratio": round(ms_ours / ms_peer, 3),
            "lit_llm_tokens_per_s": round(tokens / ms_ours * 1000), "litgpt_tokens_per_s": round(tokens / ms_peer * 1000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=None, choices=sorted(SHAPES))
    parser.add_argument("--families", nargs="+", default=["llama", "gpt2"], choices=["llama", "gpt2"])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    try:
        import litgpt  # noqa: F401
    except ImportError:
        raise SystemExit("error: litgpt is not installed; pip install -e '.[bench]' (the peers' extra)")
    shapes = args.shapes or (["gpt2-124m"] if args.device == "cuda" else ["quickstart", "tiny"])
    rows = []
    for name in shapes:
        for family in args.families:
            rows.append(compare(name, family, args.device, args.steps, args.blocks))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    from importlib.metadata import version

    print(json.dumps({"device": torch.cuda.get_device_name() if args.device == "cuda" else
                      f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
                      "torch": torch.__version__, "litgpt": version("litgpt"), "rows": rows}))


if __name__ == "__main__":
    main()
