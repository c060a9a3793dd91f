"""GPT-2 124M training throughput and MFU on one GPU: bf16 mixed precision, eager and with torch.compile.

Runs the product's own path: ``LanguageModel(preset="gpt2-124m")`` under a Lightning ``Trainer``
(``precision="bf16-mixed"``, gradient clipping on, the warm-up + cosine schedule, AdamW), with
``parallel=ParallelConfig(compile=True)`` compiling each transformer block as the CLI's ``--model.parallel.compile true`` does. The data are
random token blocks (throughput does not depend on the text), vocabulary 50,304 (GPT-2's 50,257 padded to a
multiple of 64, as nanoGPT does).

MFU = tokens/s x training FLOPs per token / peak, with FLOPs per token from ``lit_llm.model.costs.estimate``
(6 N_matmul + 12 L d T) and two peaks: the bf16 matmul rate measured here (8192^3 ``torch.mm``, median of
10 after 3 warm-ups) and, where the card is known, its datasheet dense bf16 peak.

    python benchmarks/gpu_train.py              # needs one CUDA GPU; never run in CI

Prints one line per mode and ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lit_llm.model import ModelConfig
from lit_llm.model.costs import estimate
from lit_llm.tasks import LanguageModel, ParallelConfig

DATASHEET_BF16 = {"H100 80GB HBM3": 989.4e12, "H100 SXM": 989.4e12, "H200": 989.4e12, "A100": 312e12}
VOCAB = 50304


class RandomBlocks(Dataset):
    """``n`` blocks of ``block_size + 1`` token ids, drawn once (the loader then only copies)."""

    def __init__(self, n: int, block_size: int) -> None:
        self.data = torch.randint(0, VOCAB, (n, block_size + 1), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


class StepTimer(L.Callback):
    """Wall time of the steps after ``skip`` warm-up steps (compilation happens in those), synchronized."""

    def __init__(self, skip: int) -> None:
        self.skip, self.times, self._t = skip, [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        torch.cuda.synchronize()
        if batch_idx >= self.skip:
            self.times.append(time.perf_counter() - self._t)


def matmul_peak(n: int = 8192, reps: int = 10) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    times = []
    for i in range(reps + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1000)
    return 2 * n**3 / statistics.median(times)


def run(compile: bool, batch_size: int, block_size: int, steps: int, skip: int) -> dict:
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    module = LanguageModel(preset="gpt2-124m", vocab_size=VOCAB, block_size=block_size, optimizer={"learning_rate": 6e-4,
                           "min_lr": 6e-5, "warmup_steps": min(10, skip + steps)}, parallel=ParallelConfig(compile=compile))
    timer = StepTimer(skip)
    trainer = L.Trainer(accelerator="cuda", devices=1, precision="bf16-mixed", max_steps=skip + steps,
                        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[timer])
    loader = DataLoader(RandomBlocks(batch_size * (skip + steps), block_size), batch_size=batch_size,
                        shuffle=False, pin_memory=True, num_workers=2)
    t0 = time.perf_counter()
    trainer.fit(module, loader)
    step_s = statistics.median(timer.times)
    return {"compile": compile, "step_ms": round(1000 * step_s, 2), "tokens_per_s": round(batch_size * block_size / step_s),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "fit_s_incl_compile": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per mode")
    parser.add_argument("--skip", type=int, default=10, help="untimed warm-up steps per mode")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_train.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name()
    peak = matmul_peak()
    sheet = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
    cfg = ModelConfig.from_name("gpt2-124m", vocab_size=VOCAB, block_size=args.block_size)
    flops_per_token = estimate(cfg, world_size=1, batch_size=args.batch_size)["train_flops_per_token"]
    print(f"{name}: measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s; GPT-2 124M {cfg.num_parameters():,} params,"
          f" {flops_per_token / 1e9:.3f} GFLOP per training token at context {args.block_size}")
    results = []
    for compile in (False, True):
        r = run(compile, args.batch_size, args.block_size, args.steps, args.skip)
        r["mfu_measured_peak"] = round(r["tokens_per_s"] * flops_per_token / peak, 4)
        if sheet:
            r["mfu_datasheet_peak"] = round(r["tokens_per_s"] * flops_per_token / sheet, 4)
        print(f"compile={compile}: {r['step_ms']} ms/step, {r['tokens_per_s']:,} tokens/s, MFU {r['mfu_measured_peak']:.1%}"
              f" of measured peak" + (f", {r['mfu_datasheet_peak']:.1%} of datasheet" if sheet else "")
              + f", peak memory {r['peak_mem_gib']} GiB, fit incl. compile {r['fit_s_incl_compile']} s")
        results.append(r)
    print(json.dumps({"device": name, "torch": torch.__version__, "lightning": L.__version__,
                      "matmul_peak_tflops": round(peak / 1e12, 1), "datasheet_peak_tflops": sheet and sheet / 1e12,
                      "batch_size": args.batch_size, "block_size": args.block_size,
                      "flops_per_token": flops_per_token, "runs": results}))


if __name__ == "__main__":
    main()
