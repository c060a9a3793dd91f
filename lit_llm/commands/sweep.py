"""``python -m lit_llm sweep``: one classifier config over several seeds (and folds), with confidence intervals,
and a paired comparison against another sweep.

A single run's accuracy moves by a point or more from seed to seed on SST-2-sized test sets, so one number
cannot say whether a change helped. ``sweep`` runs the config once per seed (``seed_everything`` = seed; the
data split stays the config's, so every seed and every config sees the same test examples), through
``crossval`` with ``--num_folds K``. It writes ``sweep.json``: every run's test metrics and fit time
(``seconds``; per fold, a fold's share of its seed's time, DAPT included), and per metric the
mean, the sample standard deviation and the 95% confidence interval of the mean over seeds (Student's t; a
cross-validated seed counts once, as its mean over folds). It is rewritten after every seed, so a sweep cut
short keeps the seeds it finished.

``--compare_to OTHER/sweep.json`` adds the paired comparison of this sweep against another over the seeds
both ran: the mean difference, its 95% interval, and the two-sided p-value of the paired t-test
(``scipy.stats``). Pairing removes what the two configs share on a seed (the test set, the folds), so it
detects smaller differences than two independent intervals would.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional

from lit_llm.commands.crossval import _run, run_folds
from lit_llm.errors import UsageError
from lit_llm.io import write_text_atomic
from lit_llm.lightning_cli import resolve_config

CONFIDENCE = 0.95


def interval(values: list[float]) -> dict[str, Any]:
    """Mean, sample std and the 95% Student-t confidence interval of the mean of ``values``."""
    from scipy import stats

    n, mean = len(values), statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * std / n**0.5 if n > 1 else float("nan")
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n, "values": values}


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """``a`` - ``b`` over pairs: the mean difference, its 95% interval and the paired t-test's p-value."""
    from scipy import stats

    if len(a) != len(b) or len(a) < 2:
        raise UsageError(f"A paired comparison needs the same seeds on both sides, at least 2; got {len(a)} and {len(b)}")
    diff = interval([x - y for x, y in zip(a, b)])
    test = stats.ttest_rel(a, b)
    p = float(test.pvalue) if diff["std"] > 0 else (0.0 if diff["mean"] != 0 else 1.0)
    return {"mean_diff": diff["mean"], "ci95": diff["ci95"], "p_value": p, "n": len(a), "diffs": diff["values"]}


def sweep(fit_args: Optional[list[str]] = None, seeds: int = 5, first_seed: int = 0, num_folds: int = 0,
          folds: Optional[list[int]] = None, dapt_config: Optional[str] = None, out: Optional[str] = None,
          compare_to: Optional[str] = None, metric: str = "test_acc") -> dict[str, Any]:
    """Run a classifier config over seeds (and folds); report mean ± std and 95% intervals, and optionally a
    paired comparison with another sweep.

    Args:
        fit_args: the classifier's fit arguments (``--config FILE`` repeatable, and overrides), as for ``fit``.
        seeds: how many seeds: ``first_seed``, ``first_seed + 1``, ...
        first_seed: the first seed.
        num_folds: 0 fits on the config's train split and tests on its test split; K > 1 runs K-fold
            cross-validation (``crossval``) per seed.
        folds: with ``num_folds``, run only these folds (default: all).
        dapt_config: with ``num_folds``, domain-adaptive pretraining inside each fold (see ``crossval``).
        out: output folder (default: the config's ``trainer.default_root_dir`` + ``/sweep``); seed s goes to
            ``out/seedS``, and the summary to ``out/sweep.json``.
        compare_to: another sweep's ``sweep.json`` to compare with, seed by seed (the same seeds and folds).
        metric: the metric the comparison reports (any test metric, e.g. ``test_f1_macro``).
    """
    fit_args = list(fit_args or [])
    if seeds < 1:
        raise UsageError(f"seeds must be >= 1, got {seeds}")
    if num_folds == 1 or num_folds < 0:
        raise UsageError(f"num_folds is 0 (no cross-validation) or at least 2, got {num_folds}")
    if (folds is not None or dapt_config) and not num_folds:
        raise UsageError("folds and dapt_config apply to cross-validation: pass --num_folds K")
    baseline = None
    if compare_to is not None:
        path = Path(compare_to)
        if not path.is_file():
            raise UsageError(f"--compare_to {path} does not exist: give the sweep.json of an earlier sweep")
        baseline = json.loads(path.read_text())
    resolved = resolve_config(fit_args)  # a config that does not parse fails before the first seed
    root = Path(out or Path(resolved["trainer"].get("default_root_dir") or "runs") / "sweep")
    runs: list[dict[str, Any]] = []
    for i, seed in enumerate(range(first_seed, first_seed + seeds)):
        seed_dir = root / f"seed{seed}"
        args = fit_args + ["--seed_everything", str(seed)]
        started = time.perf_counter()
        progress = f"seed {i + 1} of {seeds}"  # one line before each run; with folds, in each fold's line
        if num_folds:
            summary = run_folds(args, num_folds=num_folds, folds=folds, out=str(seed_dir), dapt_config=dapt_config,
                                within=progress)
            seconds = (time.perf_counter() - started) / len(summary["folds"])
            runs += [{"seed": seed, **fold, "seconds": seconds} for fold in summary["folds"]]
        else:
            print(f"{progress}: {seed_dir}", flush=True)
            common = args + ["--trainer.default_root_dir", str(seed_dir)]
            _run(["fit"] + common)
            seconds = time.perf_counter() - started
            ckpts = seed_dir / "checkpoints"
            best = ckpts / "best.ckpt" if (ckpts / "best.ckpt").is_file() else ckpts / "last.ckpt"
            _run(["test"] + common + ["--ckpt_path", str(best)])
            report = json.loads((seed_dir / "eval" / "test.json").read_text())
            runs.append({"seed": seed, "checkpoint": str(best), **report["metrics"], "seconds": seconds})
        result = _summary(fit_args, num_folds, dapt_config, runs)
        write_text_atomic(root / "sweep.json", json.dumps(result, indent=2) + "\n")  # after every seed: a sweep
        # cut short keeps the seeds it finished
    if baseline is not None:
        result["comparison"] = compare(result, baseline, metric) | {"baseline": str(compare_to)}
        write_text_atomic(root / "sweep.json", json.dumps(result, indent=2) + "\n")
    print(f"{seeds} seeds{f' x {num_folds} folds' if num_folds else ''} ({root / 'sweep.json'}):")
    for name, s in result["metrics"].items():
        print(f"  {name:<16s} {s['mean']:.4f} ± {s['std']:.4f}  95% CI [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]")
    if baseline is not None:
        c = result["comparison"]
        print(f"  vs {compare_to}: {metric} {c['mean_diff']:+.4f}, 95% CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}],"
              f" paired t-test p = {c['p_value']:.3g} over {c['n']} seeds")
    return result


def _summary(fit_args: list[str], num_folds: int, dapt_config: Optional[str],
             runs: list[dict[str, Any]]) -> dict[str, Any]:
    result = {"fit_args": fit_args, "num_folds": num_folds, "dapt_config": dapt_config, "runs": runs,
              "per_seed": per_seed(runs)}
    result["metrics"] = {name: interval([s[name] for s in result["per_seed"]]) for name in _metric_names(runs)}
    return result


def _metric_names(runs: list[dict[str, Any]]) -> list[str]:
    return [k for k, v in runs[0].items() if k not in ("seed", "fold", "checkpoint") and isinstance(v, (int, float))]


def per_seed(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each seed's metrics: the run's own, or the mean over its folds."""
    names, out = _metric_names(runs), []
    for seed in dict.fromkeys(r["seed"] for r in runs):
        mine = [r for r in runs if r["seed"] == seed]
        out.append({"seed": seed, "folds": [r["fold"] for r in mine if "fold" in r],
                    **{n: statistics.fmean(r[n] for r in mine) for n in names}})
    return out


def compare(a: dict[str, Any], b: dict[str, Any], metric: str = "test_acc") -> dict[str, Any]:
    """Sweep ``a`` against sweep ``b`` on ``metric``, paired by seed (each seed's mean over the same folds)."""
    mine, theirs = ({s["seed"]: s for s in x["per_seed"]} for x in (a, b))
    shared = [seed for seed in mine if seed in theirs]
    if len(shared) < 2:
        raise UsageError(f"The sweeps share {len(shared)} seed(s) ({sorted(mine)} vs {sorted(theirs)}); a paired"
                         " comparison needs at least 2: run both with the same --first_seed and --seeds")
    for seed in shared:
        if mine[seed]["folds"] != theirs[seed]["folds"]:
            raise UsageError(f"Seed {seed} ran folds {mine[seed]['folds']} here and {theirs[seed]['folds']} in the"
                             " other sweep: compare sweeps over the same folds")
        if metric not in mine[seed] or metric not in theirs[seed]:
            raise UsageError(f"metric {metric!r} is not in both sweeps; they have {sorted(set(mine[seed]) - {'seed', 'folds'})}")
    return {"metric": metric, "seeds": shared,
            **paired([mine[s][metric] for s in shared], [theirs[s][metric] for s in shared])}
