"""The sentiment experiment of configs/experiment/, end to end on CPU, with a results table.

Runs, each on SST-2 (official test set) and CR (10-fold cross-validation):
  (a) scratch:    the classifier from random weights;
  (b) pretrained: from the language model of pretrain.yaml (Tiny Shakespeare + SST-2 train text, no labels);
  (c) dapt:       from that model after domain-adaptive pretraining (SST-2: dapt_sst2.yaml on SST-2 train
                  text; CR: dapt_cr.yaml on each fold's training-fold text, inside crossval).

    python scripts/sentiment_experiment.py                      # everything (~40 min on 2 cores)
    python scripts/sentiment_experiment.py --stages sst2 cr     # reuse the pretraining checkpoints

Prints a markdown table, writes runs/experiment/results.json and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lit_llm.commands.crossval import _run, crossval

EXP = Path(__file__).resolve().parents[1] / "configs" / "experiment"
OUT = Path("runs/experiment")
INITS = {"scratch": "init_scratch.yaml", "pretrained": "init_pretrained.yaml"}


def cfg(*names: str) -> list[str]:
    return [a for n in names for a in ("--config", str(EXP / n))]


def sst2(run: str) -> dict:
    init = "init_dapt_sst2.yaml" if run == "dapt" else INITS[run]
    root = OUT / f"sst2_{run}"
    args = cfg("classifier.yaml", "sst2.yaml", init) + ["--trainer.default_root_dir", str(root)]
    _run(["fit"] + args)
    _run(["test"] + args + ["--ckpt_path", str(root / "checkpoints" / "best.ckpt")])
    return json.loads((root / "eval" / "test.json").read_text())["metrics"]


def cr(run: str, folds: int) -> dict:
    init = INITS["pretrained" if run == "dapt" else run]
    summary = crossval(cfg("classifier.yaml", "cr.yaml", init), num_folds=10,
                       folds=list(range(folds)), out=str(OUT / f"cr_{run}"),
                       dapt_config=str(EXP / "dapt_cr.yaml") if run == "dapt" else None)
    return {k: v["mean"] for k, v in summary["metrics"].items()} | {f"{k}_std": v["std"] for k, v in summary["metrics"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["pretrain", "dapt", "sst2", "cr"],
                        choices=["pretrain", "dapt", "sst2", "cr"])
    parser.add_argument("--runs", nargs="+", default=["scratch", "pretrained", "dapt"])
    parser.add_argument("--folds", type=int, default=10, help="CR folds to run (of 10)")
    args = parser.parse_args()
    results: dict = json.loads((OUT / "results.json").read_text()) if (OUT / "results.json").is_file() else {}
    timings = results.setdefault("seconds", {})

    def timed(name, fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        timings[name] = round(time.perf_counter() - t0)
        return out

    if "pretrain" in args.stages:
        timed("pretrain", _run, ["fit"] + cfg("pretrain.yaml"))
    if "dapt" in args.stages:
        timed("dapt_sst2", _run, ["fit"] + cfg("dapt_sst2.yaml"))
    for run in args.runs:
        if "sst2" in args.stages:
            results[f"sst2_{run}"] = timed(f"sst2_{run}", sst2, run)
        if "cr" in args.stages:
            results[f"cr_{run}"] = timed(f"cr_{run}", cr, run, args.folds)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n| run | SST-2 acc | SST-2 F1 | CR acc (10-fold) | CR F1 | CPU time |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        s, c = results.get(f"sst2_{run}", {}), results.get(f"cr_{run}", {})
        secs = timings.get(f"sst2_{run}", 0) + timings.get(f"cr_{run}", 0)
        print(f"| {run} | {100 * s.get('test_acc', float('nan')):.1f} | {100 * s.get('test_f1', float('nan')):.1f}"
              f" | {100 * c.get('test_acc', float('nan')):.1f} ± {100 * c.get('test_acc_std', float('nan')):.1f}"
              f" | {100 * c.get('test_f1', float('nan')):.1f} | {secs / 60:.1f} min |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
