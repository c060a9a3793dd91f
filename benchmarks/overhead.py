"""What does Lightning cost over a plain PyTorch loop?

Runs the quickstart model on the quickstart data for ``--steps`` optimizer steps twice in one process:
once through ``lightning.Trainer`` with lit_llm's LanguageModel, PretrainDataModule and TokenThroughput
callback (no progress bar or logger I/O, which the plain loop lacks too), and once through a
hand-written loop with the same model, optimizer, schedule, gradient clipping and DataLoader. Both time
the steps after ``--warmup`` with the same clock. The pair is repeated ``--repeats`` times back to back,
so that slow drifts of a shared machine hit both sides of a pair alike. The reported ratio is the median
of the per-pair ratios; the ms/step figures are medians over repeats. Prints ms/step for each and ends
with one JSON line.

    python benchmarks/overhead.py --steps 200 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import lightning as L
import torch

from lit_llm.callbacks import TokenThroughput
from lit_llm.data import PretrainDataModule
from lit_llm.tasks import LanguageModel


class StepClock(L.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.stamps.append(time.perf_counter())


def ms_per_step(stamps: list[float], warmup: int) -> float:
    return 1000 * (stamps[-1] - stamps[warmup - 1]) / (len(stamps) - warmup)


def make(steps: int) -> tuple[PretrainDataModule, LanguageModel]:
    L.seed_everything(1337, verbose=False)
    dm = PretrainDataModule("tinyshakespeare", block_size=64, batch_size=12)
    module = LanguageModel("quickstart", vocab_size=dm.vocab_size, block_size=64, optimizer={"lr_decay_steps": steps})
    return dm, module


def timed_fit(dm: PretrainDataModule, module: LanguageModel, steps: int, warmup: int,
              callbacks: tuple = ()) -> float:
    """ms per step after ``warmup`` of a plain CPU ``Trainer.fit`` (no logging, checkpoints or validation)."""
    clock = StepClock()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, gradient_clip_val=1.0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[*callbacks, clock],
    )
    trainer.fit(module, dm)
    return ms_per_step(clock.stamps, warmup)


def lightning_run(steps: int, warmup: int) -> float:
    return timed_fit(*make(steps), steps, warmup, (TokenThroughput(),))


def plain_run(steps: int, warmup: int) -> float:
    dm, module = make(steps)
    dm.setup("fit")
    module.configure_model()
    model = module.model.train()
    optimizer, scheduler = module.build_optimizer(steps)  # the same groups and schedule as configure_optimizers
    stamps = []
    loader = dm.train_dataloader()
    batches = iter(loader)
    for _ in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss.item()  # Lightning reads the loss every step too (progress/logging); keep the sync comparable
        stamps.append(time.perf_counter())
    return ms_per_step(stamps, warmup)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    light, plain = [], []
    for r in range(args.repeats):
        plain.append(plain_run(args.steps, args.warmup))
        light.append(lightning_run(args.steps, args.warmup))
        print(f"repeat {r}: plain {plain[-1]:.2f} ms/step, lightning {light[-1]:.2f} ms/step", flush=True)
    lm, pm = statistics.median(light), statistics.median(plain)
    ratio = statistics.median(a / b for a, b in zip(light, plain))
    print(f"torch {torch.__version__}, lightning {L.__version__}, threads {torch.get_num_threads()}")
    print(f"plain PyTorch loop : {pm:.2f} ms/step (median of {args.repeats})")
    print(f"Lightning Trainer  : {lm:.2f} ms/step (median of {args.repeats})")
    print(f"ratio              : {ratio:.4f} (median of the {args.repeats} paired ratios)")
    print(json.dumps({"lightning_ms_per_step": round(lm, 3), "plain_ms_per_step": round(pm, 3), "ratio": round(ratio, 4)}))


if __name__ == "__main__":
    main()
