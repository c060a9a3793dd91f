"""``python -m lit_llm plot RUN_DIR [RUN_DIR ...]``: training curves as PNG files, from the runs' CSV logs.

Every ``fit`` logs to W&B (offline) and to a CSV file in its run folder (``RUN_DIR/csv/version_N/metrics.csv``;
a resumed run adds a version). This reads the CSV, so curves need no W&B account, browser or network, and
draws one PNG per quantity, each with every run given (a comparison): the training loss (and the validation
loss), the validation perplexity, the learning rate and the tokens per second. ``fit`` draws its own run's
curves at the end (``lit_llm.callbacks.PlotCurves``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

from lit_llm.errors import UsageError
from lit_llm.io import atomic_path

# figure name -> the columns it draws (a column prefix ending in "*" matches several, e.g. one per LR group)
FIGURES = {
    "loss": ["train_loss", "val_loss"],
    "val_ppl": ["val_ppl"],
    "learning_rate": ["lr*"],
    "tokens_per_sec": ["tokens_per_sec"],
}


def csv_files(run_dir: Path) -> list[Path]:
    """The CSV logs of one run, oldest version first (a resumed run continues in the next version)."""
    files = list(run_dir.glob("csv/version_*/metrics.csv")) or list(run_dir.glob("**/metrics.csv"))

    def version(path: Path) -> tuple[int, str]:
        name = path.parent.name
        return (int(name.split("_")[1]) if name.startswith("version_") and name[8:].isdigit() else -1, str(path))

    return sorted(files, key=version)


def read_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """column -> {step: value} over all of a run's CSV versions; a step logged again by a later version (a
    resumed run repeating steps after its checkpoint) takes the later value."""
    files = csv_files(run_dir)
    if not files:
        raise UsageError(f"{run_dir} has no CSV log (csv/version_*/metrics.csv): give the folder of a run that"
                         " fit wrote with the default loggers (or a CSVLogger)")
    curves: dict[str, dict[int, float]] = {}
    for path in files:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                step = row.get("step")
                if not step:
                    continue
                for name, value in row.items():
                    if name in ("step", "epoch") or value in (None, ""):
                        continue
                    try:
                        number = float(value)
                    except ValueError:
                        continue
                    if math.isfinite(number):
                        curves.setdefault(name, {})[int(float(step))] = number
    return curves


def _columns(curves: dict[str, dict[int, float]], patterns: list[str]) -> list[str]:
    return [c for p in patterns for c in sorted(curves) if (c.startswith(p[:-1]) if p.endswith("*") else c == p)]


def plot(runs: list[str], out: Optional[str] = None) -> list[Path]:
    """Draw training curves (loss, val perplexity, learning rate, tokens/s) from runs' CSV logs as PNG files.

    Args:
        runs: run folders (a fit's ``trainer.default_root_dir``); several are drawn on the same axes. On the
            command line: ``plot runs/a runs/b``, or ``--runs runs/a``.
        out: folder for the PNG files (default: ``RUN/plots`` of the first run).
    """
    if not runs:
        raise UsageError("Give at least one run folder: plot outputs/quickstart (several: plot runs/a runs/b)")
    dirs = [Path(r) for r in runs]
    for d in dirs:
        if not d.is_dir():
            raise UsageError(f"{d} is not a folder: give the trainer.default_root_dir of a fit")
    data = {d: read_curves(d) for d in dirs}
    names = _run_names(dirs)
    out_dir = Path(out) if out else dirs[0] / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for figure, patterns in FIGURES.items():
        lines = [(d, c) for d in dirs for c in _columns(data[d], patterns)]
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for d, column in lines:
            points = sorted(data[d][column].items())
            label = column if len(dirs) == 1 else f"{names[d]}: {column}"
            style = {"marker": "o"} if len(points) < 30 else {}
            ax.plot([s for s, _ in points], [v for _, v in points], label=label, **style)
        ax.set_xlabel("step")
        ax.set_ylabel(figure.replace("_", " "))
        if figure in ("loss", "val_ppl") and all(v > 0 for d, c in lines for v in data[d][c].values()):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / f"{figure}.png"))
        plt.close(fig)
    if not written:
        raise UsageError(f"No curve to draw in {', '.join(map(str, dirs))}: the CSV logs hold none of"
                         f" {sorted(c for p in FIGURES.values() for c in p)}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return written


def _run_names(dirs: list[Path]) -> dict[Path, str]:
    """Short labels: the folder names, or their paths when two runs share a name."""
    names = [d.name for d in dirs]
    return {d: d.name if names.count(d.name) == 1 else str(d) for d in dirs}


def _save(fig, path: Path) -> Path:
    """Save the figure under a temporary name beside ``path``, then rename it: never a half-written PNG."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    return path
