"""CPU time-to-target, side by side: nanoGPT's baby-GPT recipe (``benchmarks/nanogpt_recipe.py``, a plain
PyTorch script) against lit_llm's quickstart command (``python -m lit_llm fit --config configs/quickstart.yaml``).

Each run is its own process, timed from launch to exit (imports, data, training, its evaluation and the
saved checkpoint included), on alternating rounds so that a busy moment of the shared machine falls on both.
Before the rounds the tokens are prepared once for both, as nanoGPT's ``prepare.py`` is run once before
``train.py``. After each run its saved weights are scored by this script with one function on the whole
validation split of the same tokens (every token predicted once, context 64), so both sides are judged by
the same number. A lit_llm run counts only if it reaches the target (nanoGPT's quickstart val loss, 1.874).

Prints one JSON object: the wall time of every run, the medians, the ratio of the medians (goal <= 0.6) and
the val loss of every run.

    python benchmarks/time_to_target.py                 # 3 rounds
    python benchmarks/time_to_target.py --rounds 5 --also configs/nanogpt.yaml   # + lit_llm on nanoGPT's recipe
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lit_llm.checkpoint import load_network  # noqa: E402
from lit_llm.data import PretrainDataModule  # noqa: E402
from lit_llm.data.pretrain import ContiguousBlocks  # noqa: E402
from lit_llm.data.tokens import open_split  # noqa: E402
from lit_llm.model import Decoder, ModelConfig  # noqa: E402

TARGET = 1.874  # nanoGPT's CPU recipe reaches about 1.88 (its README); the target on the same split
BLOCK = 64


@torch.no_grad()
def val_loss(model: torch.nn.Module, val: np.ndarray) -> float:
    """Mean next-token cross-entropy over the whole split, in non-overlapping blocks of 64 (as lit_llm's
    validation reads it): every token but the first is predicted once."""
    dataset = ContiguousBlocks(val, BLOCK)  # lit_llm's validation blocks, (BLOCK + 1) tokens each
    blocks = torch.stack([dataset[i] for i in range(len(dataset))])
    x, y = blocks[:, :-1], blocks[:, 1:]
    model.eval()
    total = sum(F.cross_entropy(model(x[i : i + 256]).flatten(0, 1), y[i : i + 256].flatten(), reduction="sum").item()
                for i in range(0, len(x), 256))
    return total / y.numel()


def timed(cmd: list[str], env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"error: {' '.join(cmd[:4])} ... failed with exit code {code}; see {log}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default="configs/quickstart.yaml", help="lit_llm's side")
    parser.add_argument("--also", default=None, help="another lit_llm config timed in the same rounds")
    parser.add_argument("--nanogpt_iters", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more overrides for lit_llm's fit")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="time_to_target"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", LIT_LLM_DATA_DIR=args.data_dir,
               PYTHONUNBUFFERED="1")
    os.environ["LIT_LLM_DATA_DIR"] = args.data_dir

    # prepared once, outside the timing, for both sides (nanoGPT's prepare.py; lit_llm's token cache)
    dm = PretrainDataModule(corpus="tinyshakespeare", block_size=BLOCK, val_fraction=0.1)
    dm.prepare_data()
    train, val = open_split(dm.token_dir, "train"), open_split(dm.token_dir, "val")
    bins = work / "nanogpt_data"
    bins.mkdir(exist_ok=True)
    np.asarray(train, dtype=np.uint16).tofile(bins / "train.bin")
    np.asarray(val, dtype=np.uint16).tofile(bins / "val.bin")
    (bins / "meta.json").write_text(json.dumps({"vocab_size": dm.vocab_size}))

    sides = {"nanogpt": None, "lit_llm": args.config}
    if args.also:
        sides[f"lit_llm:{Path(args.also).stem}"] = args.also
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            out = work / f"{name.replace(':', '_')}_{r}"
            if sides[name] is None:
                cmd = [sys.executable, str(REPO / "benchmarks" / "nanogpt_recipe.py"), "--data_dir", str(bins),
                       "--out_dir", str(out), "--max_iters", str(args.nanogpt_iters)]
                seconds = timed(cmd, env, work / f"{out.name}.log")
                state = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)
                model = Decoder(ModelConfig.from_dict(state["model_args"]))
                model.load_state_dict(state["model"])
            else:
                cmd = [sys.executable, "-m", "lit_llm", "fit", "--config", sides[name],
                       "--trainer.default_root_dir", str(out), *args.extra]
                seconds = timed(cmd, env, work / f"{out.name}.log")
                config, weights, _ = load_network(out / "checkpoints" / "last.ckpt")
                model = Decoder(config)
                model.load_state_dict(weights)
            loss = val_loss(model, val)
            runs[name].append({"seconds": round(seconds, 1), "val_loss": round(loss, 4)})
            print(json.dumps({"round": r, "side": name, **runs[name][-1]}), file=sys.stderr, flush=True)

    base = statistics.median(run["seconds"] for run in runs["nanogpt"])
    result = {"target_val_loss": TARGET, "rounds": args.rounds, "runs": runs, "median_s": {}, "ratio_to_nanogpt": {},
              "reached_target": {}}
    for name in sides:
        med = statistics.median(run["seconds"] for run in runs[name])
        result["median_s"][name] = round(med, 1)
        result["ratio_to_nanogpt"][name] = round(med / base, 3)
        result["reached_target"][name] = all(run["val_loss"] <= TARGET for run in runs[name])
    result.update(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                  torch=torch.__version__, python=platform.python_version())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
