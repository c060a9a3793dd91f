"""``python -m lit_llm crossval``: k-fold cross-validation of a classification config, optionally with
domain-adaptive pretraining inside each fold.

For each fold k: (1) with ``--dapt_config``, continue language-model training of the classifier's
pretrained checkpoint on the text of the training folds only (never the held-out fold); (2) fit the
classifier on the training folds (``val_fraction`` of them held out for checkpoint selection); (3) test the
selected checkpoint on fold k. The per-fold ``eval/test.json`` reports are summarized as mean ± sample
standard deviation in ``crossval.json``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from lit_llm.io import write_text_atomic


def _run(args: list[str]) -> None:
    from lit_llm.cli import main

    main(args)
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:  # the next stage must start its own run
        wandb.finish()


def _merged_section(configs: list[str], key: str) -> dict[str, Any]:
    """The ``init_args`` of one section (model or data) over several config files, later files winning."""
    merged: dict[str, Any] = {}
    for c in configs:
        section = (yaml.safe_load(Path(c).read_text()) or {}).get(key) or {}
        merged.update(section.get("init_args", section) if "class_path" in section or "init_args" in section else section)
    return merged


def crossval(config: list[str], num_folds: int = 10, folds: Optional[list[int]] = None, out: Optional[str] = None,
             dapt_config: Optional[str] = None, args: Optional[list[str]] = None) -> dict[str, Any]:
    """k-fold cross-validation of a classifier config: fit and test each fold, report mean ± std.

    Args:
        config: the classification config file(s), as for ``fit --config`` (several are merged in order).
        num_folds: number of folds.
        folds: run only these folds (default: all). The summary covers the folds run.
        out: output folder (default: the config's ``trainer.default_root_dir``); fold k goes to ``out/foldK``.
        dapt_config: a language-model fit config for domain-adaptive pretraining in each fold. Its data
            sources are replaced by the training folds' text, its tokenizer and weights come from the
            classifier's ``model.checkpoint``.
        args: further command-line overrides passed to every classifier fit and test, e.g.
            ``["--trainer.max_epochs", "3"]``.
    """
    for c in config + ([dapt_config] if dapt_config else []):
        if not Path(c).is_file():
            raise FileNotFoundError(f"Config {c} does not exist")
    model = _merged_section(config, "model")
    data = _merged_section(config, "data")
    root = Path(out or _merged_section(config, "trainer").get("default_root_dir") or "runs/crossval")
    if dapt_config and not model.get("checkpoint"):
        raise ValueError("Domain-adaptive pretraining continues the classifier's model.checkpoint; the config has none")
    fold_ids = list(range(num_folds)) if folds is None else list(folds)
    bad = [k for k in fold_ids if not 0 <= k < num_folds]
    if bad:
        raise ValueError(f"folds {bad} are outside 0..{num_folds - 1}")
    base = [a for c in config for a in ("--config", c)]
    results = []
    for k in fold_ids:
        fold_dir = root / f"fold{k}"
        common = base + ["--data.split", "kfold", "--data.num_folds", str(num_folds), "--data.fold", str(k),
                         "--trainer.default_root_dir", str(fold_dir)] + list(args or [])
        if dapt_config:
            labels = {"label_names": model.get("label_names"), "num_classes": model.get("num_classes", 2)}
            dapt_ckpt = _dapt(fold_dir, dapt_config, model["checkpoint"], {**data, **labels}, num_folds, k)
            common += ["--model.checkpoint", str(dapt_ckpt)]
        _run(["fit"] + common)
        ckpts = fold_dir / "checkpoints"
        best = ckpts / "best.ckpt" if (ckpts / "best.ckpt").is_file() else ckpts / "last.ckpt"
        _run(["test"] + common + ["--ckpt_path", str(best)])
        report = json.loads((fold_dir / "eval" / "test.json").read_text())
        results.append({"fold": k, "checkpoint": str(best), **report["metrics"]})
    summary = summarize(results)
    summary.update(config=config, dapt_config=dapt_config, num_folds=num_folds)
    write_text_atomic(root / "crossval.json", json.dumps(summary, indent=2) + "\n")
    print(f"cross-validation over {len(results)} folds ({root / 'crossval.json'}):")
    for name, s in summary["metrics"].items():
        print(f"  {name:<16s} {s['mean']:.4f} ± {s['std']:.4f}")
    return summary


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation of every metric over folds (std 0 for a single fold)."""
    names = [k for k in results[0] if k not in ("fold", "checkpoint")]
    metrics = {}
    for name in names:
        values = [r[name] for r in results]
        metrics[name] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "folds": values}
    return {"folds": results, "metrics": metrics}


def _dapt(fold_dir: Path, dapt_config: str, pretrained: str, data: dict[str, Any], num_folds: int, fold: int) -> Path:
    """Continue LM training of ``pretrained`` on the training folds' text of fold ``fold``; return the checkpoint."""
    from lit_llm.data.labelled import ClassificationDataModule

    keep = {k: v for k, v in data.items() if k in ("train", "format", "text_field", "label_field", "label_names",
                                                   "num_classes", "seed", "val_fraction", "data_dir", "encoding_errors")}
    dm = ClassificationDataModule(**keep, split="kfold", num_folds=num_folds, fold=fold)
    texts = dm.texts("train") + dm.texts("val")  # every training fold; the held-out fold stays unseen
    text_file = write_text_atomic(fold_dir / "dapt_text.txt", "\n".join(t.replace("\n", " ") for t in texts) + "\n")
    out = fold_dir / "dapt"
    sources = json.dumps([{"path": str(text_file.resolve()), "format": "text", "sample_by": "line"}])
    _run(["fit", "--config", dapt_config, "--data.corpus", "null", "--data.sources", sources,
          "--data.tokenizer.path", pretrained, "--model.init_from", pretrained, "--trainer.default_root_dir", str(out)])
    return out / "checkpoints" / "last.ckpt"
