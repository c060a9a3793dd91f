"""Scaling curves: training tokens/s of lit_llm's model against batch size and against model size.

One training step is ``vs_peers.step_times``'s: forward, cross-entropy, backward and an AdamW step (fp32
on CPU, bf16 autocast on a GPU), timed as the median over ``--steps`` steps after warm-up, for:
- batch size: the quickstart model (4 layers, width 128, context 64) at batch 1 to 128;
- model size: width 64 to 512 (4 layers, heads of 32, context 64, vocab 65) at batch 16.

Prints one JSON object, and with ``--plot FILE`` draws both curves into one PNG (matplotlib, a core
dependency).

    python benchmarks/scaling.py --plot docs/images/scaling_cpu.png
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vs_peers import step_times  # noqa: E402  (the same timed step as the peer comparison)

from lit_llm.model import Decoder, ModelConfig  # noqa: E402


def tokens_per_s(width: int, batch: int, device: str, steps: int, context: int = 64) -> dict:
    torch.manual_seed(0)
    config = ModelConfig.from_name("quickstart", vocab_size=65, block_size=context, n_embd=width,
                                   n_head=max(1, width // 32))
    model = Decoder(config).to(device).train()
    ids = torch.randint(0, 65, (batch, context + 1), device=device)
    times = step_times(model, [(ids[:, :-1], ids[:, 1:])] * (steps + 3), device, steps + 3)[3:]  # after warm-up
    ms = 1000 * statistics.median(times)
    return {"width": width, "batch": batch, "params": config.num_parameters(), "ms_per_step": round(ms, 2),
            "tokens_per_s": round(batch * context / ms * 1000)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    rows = result["batch_size"]
    a.plot([r["batch"] for r in rows], [r["tokens_per_s"] for r in rows], marker="o")
    a.set(xscale="log", xlabel="batch size (blocks of 64 tokens)", ylabel="training tokens/s",
          title="quickstart model (0.8M), by batch size")
    rows = result["model_size"]
    b.plot([r["params"] / 1e6 for r in rows], [r["tokens_per_s"] for r in rows], marker="o")
    for r in rows:
        b.annotate(f"w{r['width']}", (r["params"] / 1e6, r["tokens_per_s"]), fontsize=8)
    b.set(xscale="log", xlabel="parameters (M), 4 layers", ylabel="training tokens/s", title="by model size, batch 16")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(f"lit_llm training throughput: {result['device']}, torch {result['torch']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64, 128])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda"
              else f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "torch": torch.__version__,
              "batch_size": [tokens_per_s(128, b, args.device, args.steps) for b in args.batches],
              "model_size": [tokens_per_s(w, 16, args.device, args.steps) for w in args.widths]}
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
