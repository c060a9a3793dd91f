"""The sentiment experiment of configs/experiment/, end to end on CPU, over several seeds, with a results table.

Runs, each on SST-2 (official test set) and CR (stratified 10-fold cross-validation):
  (a) scratch:    the classifier from random weights;
  (b) pretrained: from the language model of pretrain.yaml (Tiny Shakespeare + SST-2 train text, no labels);
  (c) dapt:       from that model after domain-adaptive pretraining (SST-2: dapt_sst2.yaml on SST-2 train
                  text; CR: dapt_cr.yaml on each fold's training-fold text, inside crossval);
  (d) lora:       (b) with rank-8 LoRA adapters and the head trained instead of the whole model.

Each run is a ``lit_llm sweep`` over ``--seeds`` seeds (``runs/experiment/{sst2,cr}_{run}/sweep.json``);
(b) and (c) are compared with (a) seed by seed (paired t-test). Stages write only their own folders, so
several of these commands can run side by side (e.g. one per run, ``--threads 1`` each).

    python scripts/sentiment_experiment.py                                   # everything
    python scripts/sentiment_experiment.py --stages sst2 --runs scratch      # one piece
    python scripts/sentiment_experiment.py --stages table                    # the table from what has run
    python scripts/sentiment_experiment.py --stages ensemble                 # SST-2: the seeds averaged

Prints a markdown table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lit_llm.commands.crossval import _run
from lit_llm.commands.sweep import compare, sweep

EXP = Path(__file__).resolve().parents[1] / "configs" / "experiment"
OUT = Path("runs/experiment")
INITS = {"scratch": "init/scratch.yaml", "pretrained": "init/pretrained.yaml", "lora": "init/lora.yaml"}
RUNS = ("scratch", "pretrained", "dapt", "lora")


def cfg(*names: str) -> list[str]:
    return [a for n in names for a in ("--config", str(EXP / n))]


def sst2(run: str, seeds: int) -> None:
    init = "init/dapt_sst2.yaml" if run == "dapt" else INITS[run]
    sweep(cfg("classifier.yaml", "data/sst2.yaml", init), seeds=seeds, out=str(OUT / f"sst2_{run}"))


def cr(run: str, seeds: int, folds: int) -> None:
    init = INITS["pretrained" if run == "dapt" else run]
    sweep(cfg("classifier.yaml", "data/cr.yaml", init), seeds=seeds, num_folds=10, folds=list(range(folds)),
          dapt_config=str(EXP / "dapt_cr.yaml") if run == "dapt" else None, out=str(OUT / f"cr_{run}"))


def ensemble(run: str) -> dict:
    """SST-2 test accuracy of the average of the seeds' class probabilities (each seed's best checkpoint)."""
    import torch
    import yaml

    from lit_llm.data.labelled import ClassificationDataModule, frame_examples, pad_examples
    from lit_llm.tasks import SequenceClassifier

    sweep_json = json.loads((OUT / f"sst2_{run}" / "sweep.json").read_text())
    data = yaml.safe_load((EXP / "data/sst2.yaml").read_text())["data"]["init_args"]
    texts, labels = ClassificationDataModule(**data).load_examples()["test"]
    probs = []
    for r in sweep_json["runs"]:
        model = SequenceClassifier.restore(r["checkpoint"]).eval()
        if hasattr(model.backbone, "peft_config"):
            model.merge_lora()
        rows = frame_examples(model.tokenizer, texts, True, data["max_length"])
        with torch.no_grad():
            probs.append(torch.cat([model(*pad_examples(model.tokenizer, rows[i : i + 256])).softmax(-1)
                                    for i in range(0, len(rows), 256)]))
    y = torch.tensor(labels)
    single = [float((p.argmax(-1) == y).float().mean()) for p in probs]
    return {"seeds": len(probs), "ensemble_acc": float((torch.stack(probs).mean(0).argmax(-1) == y).float().mean()),
            "single_acc": single}


def trainable(run: str) -> int:
    """Parameters the run trains (all of them, but for LoRA), counted on the model its config builds."""
    import yaml

    from lit_llm.model.lora import LoraSpec
    from lit_llm.tasks import SequenceClassifier

    init = yaml.safe_load((EXP / INITS["pretrained" if run == "dapt" else run]).read_text())["model"]["init_args"]
    if init.get("lora"):
        init["lora"] = LoraSpec(**init["lora"])
    model = SequenceClassifier(**init)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def table() -> dict:
    """The results table from every sweep.json on disk, with each run's paired comparison against (a)."""
    results: dict = {}
    for data in ("sst2", "cr"):
        for run in RUNS:
            path = OUT / f"{data}_{run}" / "sweep.json"
            if path.is_file():
                results[f"{data}_{run}"] = json.loads(path.read_text())
    print("\n| run | trainable params | SST-2 acc, mean ± std [95% CI] | vs (a), p | CR acc, 10-fold CV [95% CI] |"
          " vs (a), p | seeds (SST-2 / CR x folds) | min per SST-2 run |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for run in RUNS:
        cells, seeds = [], []
        for data in ("sst2", "cr"):
            s = results.get(f"{data}_{run}")
            if s is None:
                cells += ["", ""]
                continue
            m = s["metrics"]["test_acc"]
            folds = len(s["per_seed"][0]["folds"])
            seeds.append(f"{m['n']} x {folds}" if folds else str(m["n"]))
            cells.append(f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f} [{100 * m['ci95'][0]:.1f}, {100 * m['ci95'][1]:.1f}]")
            base = results.get(f"{data}_scratch")
            shared = {r["seed"] for r in s["per_seed"]} & {r["seed"] for r in (base or {}).get("per_seed", [])}
            if run != "scratch" and len(shared) >= 2:
                c = compare(s, base)
                rows[f"{data}_{run}_vs_scratch"] = c
                cells.append(f"{100 * c['mean_diff']:+.1f} [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}],"
                             f" p = {c['p_value']:.2g}")
            else:
                cells.append("")
        if not seeds:
            continue
        secs = results.get(f"sst2_{run}", {}).get("metrics", {}).get("seconds", {}).get("mean")
        print(f"| ({'abcd'[RUNS.index(run)]}) {run} | {trainable(run):,} | " + " | ".join(cells)
              + f" | {'/'.join(seeds)} | {'' if secs is None else f'{secs / 60:.1f}'} |")
    return {"sweeps": {k: v["metrics"] for k, v in results.items()}, "comparisons": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["pretrain", "dapt", "sst2", "cr", "table"],
                        choices=["pretrain", "dapt", "sst2", "cr", "table", "ensemble"])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--seeds", type=int, default=5, help="seeds per run (a sweep each)")
    parser.add_argument("--folds", type=int, default=10, help="CR folds to run (of 10)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seconds = {}

    def timed(name, fn, *a):
        t0 = time.perf_counter()
        fn(*a)
        seconds[name] = round(time.perf_counter() - t0)
        print(f"{name}: {seconds[name]} s", flush=True)

    if "pretrain" in args.stages:
        timed("pretrain", _run, ["fit"] + cfg("pretrain.yaml"))
    if "dapt" in args.stages:
        timed("dapt_sst2", _run, ["fit"] + cfg("dapt_sst2.yaml"))
    for run in args.runs:
        if "sst2" in args.stages:
            timed(f"sst2_{run}", sst2, run, args.seeds)
        if "cr" in args.stages:
            timed(f"cr_{run}", cr, run, args.seeds, args.folds)
    summary = table() if "table" in args.stages else {}
    if "ensemble" in args.stages:
        summary["ensembles"] = {run: ensemble(run) for run in args.runs if (OUT / f"sst2_{run}" / "sweep.json").is_file()}
        for run, e in summary["ensembles"].items():
            print(f"SST-2 {run}: the {e['seeds']} seeds' averaged probabilities: {100 * e['ensemble_acc']:.1f}"
                  f" (single seeds {', '.join(f'{100 * a:.1f}' for a in e['single_acc'])})")
    print(json.dumps({"seconds": seconds, **summary}))


if __name__ == "__main__":
    main()
