"""``python -m lit_llm prepare``: run only the data stage of a fit config, without training."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import Literal, Optional

from lit_llm.errors import UsageError

Stage = Literal["all", "read", "clean", "dedup", "tokenize", "split", "merge"]


def prepare(fit_args: Optional[list[str]] = None, stage: Stage = "all", task: Optional[int] = None,
            tasks: Optional[int] = None) -> Path:
    """Run only the data preparation stage (sources, cleaning, tokenizer, token files, report) of a config.

    The config is resolved as fit resolves it (--config FILE repeatable, overrides such as
    --data.tokenizer.vocab_size 8192), so fit with the same arguments reuses the result.

    Args:
        fit_args: fit's arguments: ``--config FILE`` ... (a full fit config or a configs/data/ fragment) and overrides.
        stage: ``all`` prepares the whole of it. The others run one stage of the parallel path in its work folder,
            as the jobs that ``submit --job prepare`` chains do: ``read`` (the documents into shards), ``clean``
            (this task's part of the shards, in data.workers processes), ``dedup`` (global deduplication and the
            tokenizer), ``tokenize`` (this task's part), ``split`` (this task's part of the shards written into the
            split files, at its place in the token stream), ``merge`` (the token folder, from the finished stages).
        task: this task's part of the shards for ``clean``, ``tokenize`` and ``split`` (default
            $SLURM_ARRAY_TASK_ID, else 0).
        tasks: the number of parts (default $SLURM_ARRAY_TASK_COUNT, else 1).
    """
    from jsonargparse import ArgumentParser

    from lit_llm.data import PretrainDataModule
    from lit_llm.lightning_cli import resolve_config

    data = resolve_config(fit_args or [])["data"]
    module, _, name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, PretrainDataModule)):
        raise UsageError(f"prepare runs the language-model data stage (PretrainDataModule); the config's data is"
                         f" {data['class_path']}")
    # build only the data module, from the section fit resolved
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    dm = parser.instantiate_classes(parser.parse_object({"data": data.get("init_args") or {}})).data
    if stage not in ("all", "merge"):
        task = int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)) if task is None else task
        tasks = int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 1)) if tasks is None else tasks
        if not 0 <= task < tasks:
            raise UsageError(f"--task {task} --tasks {tasks}: need 0 <= task < tasks")
        t0 = time.perf_counter()
        work = dm.prepare_stage(stage, task, tasks)
        part = f" (part {task + 1} of {tasks})" if stage in ("clean", "tokenize", "split") else ""
        print(f"stage {stage}{part} done in {time.perf_counter() - t0:.2f} s: {work}")
        return work
    t0 = time.perf_counter()
    dm.prepare_stage(None if stage == "all" else "merge")
    r = dm.report
    print(f"token folder: {dm.token_dir} ({'merged' if stage == 'merge' else 'prepared or found'} in"
          f" {time.perf_counter() - t0:.2f} s)")
    print(f"documents: {r['documents_read']:,} read, {r['documents_kept']:,} kept; duplicates removed: {r['duplicates_removed']:,}")
    for row in r["cleaning"]:
        print(f"  {row['step']:<16s} in {row['in']:>10,}  out {row['out']:>10,}  removed {row['removed']:>8,}")
    print("tokens: " + ", ".join(f"{k} {v:,}" for k, v in r["tokens"].items()) + f"; {r['bytes_per_token']:.3f} bytes/token")
    print(f"report: {dm.token_dir / 'report.json'}; document lengths: {dm.token_dir / 'doc_lengths.png'}")
    return dm.token_dir
