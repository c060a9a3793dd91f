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

from lit_llm.errors import UsageError
from lit_llm.io import write_text_atomic
from lit_llm.lightning_cli import resolve_config, run


def _run(args: list[str]) -> None:
    """Run one ``fit`` / ``test`` (``args`` starts with the subcommand) in this process."""
    run(args)
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:  # the next stage must start its own run
        wandb.finish()


def crossval(fit_args: Optional[list[str]] = None, num_folds: Optional[int] = None, folds: Optional[list[int]] = None,
             out: Optional[str] = None, dapt_config: Optional[str] = None) -> dict[str, Any]:
    """k-fold cross-validation of a classifier config: fit and test each fold, report mean ± std.

    Args:
        fit_args: the classifier's fit arguments, passed to every fold's fit and test: ``--config FILE``
            (repeatable, composed in order) and overrides such as ``--trainer.max_epochs 3``.
        num_folds: number of folds (default: the config's ``data.num_folds``).
        folds: run only these folds (default: all). The summary covers the folds run.
        out: output folder (default: the config's ``trainer.default_root_dir``); fold k goes to ``out/foldK``.
        dapt_config: a language-model fit config for domain-adaptive pretraining in each fold. Its data
            sources are replaced by the training folds' text, its tokenizer and weights come from the
            classifier's ``model.init_from``.
    """
    return run_folds(fit_args, num_folds, folds, out, dapt_config)


def run_folds(fit_args: Optional[list[str]] = None, num_folds: Optional[int] = None, folds: Optional[list[int]] = None,
              out: Optional[str] = None, dapt_config: Optional[str] = None, within: str = "") -> dict[str, Any]:
    """``crossval``; ``within`` names the outer loop in each fold's progress line (``sweep``: "seed 1 of 2")."""
    fit_args = list(fit_args or [])
    resolved = resolve_config(fit_args)  # as fit will see it; a config that does not parse fails before fold 0
    model, data = resolved["model"].get("init_args") or {}, resolved["data"].get("init_args") or {}
    if "split" not in data or "num_folds" not in data:
        raise UsageError(f"crossval needs a classification data config (ClassificationDataModule with split and"
                         f" num_folds); the config's data is {resolved['data']['class_path']}")
    num_folds = data["num_folds"] if num_folds is None else num_folds  # the config's, unless given here
    root = Path(out or resolved["trainer"].get("default_root_dir") or "runs/crossval")
    if dapt_config:
        if not model.get("init_from"):
            raise UsageError("Domain-adaptive pretraining continues the classifier's model.init_from; the config has none")
        resolve_config(["--config", dapt_config])
    fold_ids = list(range(num_folds)) if folds is None else list(folds)
    bad = [k for k in fold_ids if not 0 <= k < num_folds]
    if bad:
        raise UsageError(f"folds {bad} are outside 0..{num_folds - 1}")
    results = []
    for i, k in enumerate(fold_ids):
        fold_dir = root / f"fold{k}"
        print(f"fold {i + 1} of {len(fold_ids)}{f' ({within})' if within else ''}: {fold_dir}", flush=True)
        common = fit_args + ["--data.split", "kfold", "--data.num_folds", str(num_folds), "--data.fold", str(k),
                             "--trainer.default_root_dir", str(fold_dir)]
        if dapt_config:
            labels = {"label_names": model.get("label_names"), "num_classes": model.get("num_classes", 2)}
            dapt_ckpt = _dapt(fold_dir, dapt_config, model["init_from"], {**data, **labels}, num_folds, k)
            common += ["--model.init_from", str(dapt_ckpt)]
        _run(["fit"] + common)
        ckpts = fold_dir / "checkpoints"
        best = ckpts / "best.ckpt" if (ckpts / "best.ckpt").is_file() else ckpts / "last.ckpt"
        _run(["test"] + common + ["--ckpt_path", str(best)])
        report = json.loads((fold_dir / "eval" / "test.json").read_text())
        results.append({"fold": k, "checkpoint": str(best), **report["metrics"]})
    summary = summarize(results)
    summary.update(fit_args=fit_args, dapt_config=dapt_config, num_folds=num_folds)
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
