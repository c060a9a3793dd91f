"""nanoGPT's CPU "baby GPT" recipe as a plain PyTorch script: the baseline of ``benchmarks/time_to_target.py``.

It does what nanoGPT's ``train.py`` does with the README's CPU settings (``--device=cpu --compile=False
--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0``, shakespeare_char's lr 1e-3, min_lr 1e-4,
beta2 0.99, warm-up 100, weight decay 0.1 on matrices, gradient clipping at 1.0): random blocks read from
``train.bin`` (a uint16 memmap opened per batch), the loss printed every step, one evaluation at the end
(20 batches of each split) and a ``ckpt.pt`` with the model and optimizer.

The network is lit_llm's ``Decoder`` with the quickstart preset, so that this baseline and lit_llm's
quickstart train the very same model, and the comparison measures recipe and framework only. It imports
torch and ``lit_llm.model`` (plain nn.Modules), not Lightning.

    python benchmarks/nanogpt_recipe.py --data_dir DIR --out_dir OUT [--max_iters 2000]

``DIR`` holds ``train.bin``, ``val.bin`` (uint16 token ids) and ``meta.json`` ({"vocab_size": N}), as
nanoGPT's ``prepare.py`` writes them; ``time_to_target.py`` writes them from lit_llm's token split.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_llm.model import Decoder, ModelConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--max_iters", type=int, default=2000)
    parser.add_argument("--eval_iters", type=int, default=20)
    args = parser.parse_args()
    block_size, batch_size = 64, 12
    learning_rate, min_lr, warmup_iters, lr_decay_iters = 1e-3, 1e-4, 100, args.max_iters
    torch.manual_seed(1337)
    vocab_size = json.loads((args.data_dir / "meta.json").read_text())["vocab_size"]

    def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.memmap(args.data_dir / f"{split}.bin", dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block_size].astype(np.int64)) for i in ix])
        return x, y

    config = ModelConfig.from_name("quickstart", vocab_size=vocab_size, block_size=block_size, dropout=0.0)
    model = Decoder(config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=learning_rate, betas=(0.9, 0.99))

    def get_lr(it: int) -> float:
        if it < warmup_iters:
            return learning_rate * (it + 1) / (warmup_iters + 1)
        if it > lr_decay_iters:
            return min_lr
        ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)

    @torch.no_grad()
    def estimate_loss() -> dict[str, float]:
        model.eval()
        out = {}
        for split in ("train", "val"):
            losses = torch.zeros(args.eval_iters)
            for k in range(args.eval_iters):
                x, y = get_batch(split)
                losses[k] = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
            out[split] = losses.mean().item()
        model.train()
        return out

    t0 = time.time()
    for it in range(args.max_iters):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        x, y = get_batch("train")
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"iter {it}: loss {loss.item():.4f}, time {(time.time() - t0) * 1000:.0f}ms", flush=True)
    losses = estimate_loss()
    print(f"step {args.max_iters}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "model_args": config.to_dict(),
                "iter_num": args.max_iters, "val_loss": losses["val"]}, args.out_dir / "ckpt.pt")


if __name__ == "__main__":
    main()
