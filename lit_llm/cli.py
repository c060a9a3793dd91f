"""``python -m lit_llm``: LightningCLI for fit/validate/test/predict, plus the commands in ``EXTRA_COMMANDS``."""

from __future__ import annotations

import json
import sys
from argparse import RawDescriptionHelpFormatter
from pathlib import Path
from typing import Callable, Optional

import yaml
from jsonargparse import ArgumentParser, DefaultHelpFormatter
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger

from lit_llm.callbacks import EvaluationReport, LRMonitor, Preemption, SampleGenerations, TokenThroughput
from lit_llm.callbacks.preemption import slurm_job_id
from lit_llm.crossval import crossval
from lit_llm.data import PretrainDataModule
from lit_llm.export import export, import_hf
from lit_llm.generate import generate
from lit_llm.modules import LanguageModel
from lit_llm.parallel.checkpoint import consolidate
from lit_llm.size import size
from lit_llm.serve import serve
from lit_llm.slurm import submit
from lit_llm.tracking import run_metadata

DESCRIPTION = """lit_llm: train, evaluate and sample a from-scratch transformer.

Lightning subcommands: fit, validate, test, predict (see `python -m lit_llm fit --help`).
Extra commands (each has --help):
  prepare    run the data stage of a config: sources, cleaning, tokenizer, token files, report
  generate   sample text from a checkpoint
  export     write a checkpoint as a Hugging Face transformers directory (--format hf)
  import-hf  turn a transformers GPT-2 / Llama / BERT directory into a lit_llm checkpoint
  size       parameters, training FLOPs per token and memory per GPU of a model preset or YAML
  consolidate  merge a sharded (FSDP / tensor-parallel) checkpoint folder into one file
  crossval   k-fold cross-validation of a classifier config (fit + test per fold, mean ± std)
  submit     write the SLURM job script for a config and sbatch it (--dry_run prints it)
  serve      serve a checkpoint over HTTP (OpenAI-compatible completions/chat, or /v1/classify) with feedback
"""


class _HelpFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's formatter, keeping the line breaks of the description."""


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Save config.yaml beside the run and also send the resolved config to the logger (e.g. the W&B run)."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.logger, Logger):
            config = json.loads(self.parser.dump(self.config, skip_none=False, format="json"))
            # the code version, the hardware and the prepared data's hashes beside the resolved config
            trainer.logger.log_hyperparams({"config": config, "run": run_metadata(trainer, trainer.datamodule)})


def chosen_class(argv: list[str], key: str) -> Optional[str]:
    """The class_path that ``argv`` chooses for ``key`` (model or data), from ``--config`` files or ``--key X``;
    the last one wins, as in parsing. None when none is chosen."""
    chosen = None
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        if flag in ("--config", "-c") and Path(value).is_file():
            section = (yaml.safe_load(Path(value).read_text()) or {}).get(key)
            if isinstance(section, dict) and section.get("class_path"):
                chosen = section["class_path"]
        elif flag == f"--{key}" and value and not value.lstrip().startswith(("{", "[")) and not Path(value).is_file():
            chosen = value
    return chosen


class LitLLMCLI(LightningCLI):
    """LightningCLI taking any LightningModule and DataModule by class_path. The default is LanguageModel +
    PretrainDataModule, so a config without class_path trains a language model.

    Args:
        model_class_path: the class the model section defaults to. ``main`` passes the class that the
            arguments choose: jsonargparse keeps a previous class's init_args that the new class shares when
            the class_path changes, so a LanguageModel default would lend its learning rate, warm-up and
            weight decay defaults to a SequenceClassifier.
        data_class_path: likewise for the data section.
    """

    def __init__(self, *args, model_class_path: Optional[str] = None, data_class_path: Optional[str] = None,
                 **kwargs) -> None:
        self.default_classes = {
            "model": model_class_path or f"{LanguageModel.__module__}.{LanguageModel.__name__}",
            "data": data_class_path or f"{PretrainDataModule.__module__}.{PretrainDataModule.__name__}",
        }
        kwargs.setdefault("save_config_callback", LoggerSaveConfigCallback)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 1337)
        # the optimizer and schedule are LanguageModel arguments; no separate --optimizer keys that would fight them
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault(
            "parser_kwargs", {"description": DESCRIPTION, "prog": "python -m lit_llm", "formatter_class": _HelpFormatter}
        )
        kwargs.setdefault(
            "trainer_defaults",
            {
                "logger": {
                    "class_path": "lightning.pytorch.loggers.WandbLogger",
                    # offline: no account, no network; set offline: false (and log in) to sync
                    "init_args": {"project": "lit_llm", "offline": True},
                }
            },
        )
        # any LightningModule / DataModule by class_path (SequenceClassifier + ClassificationDataModule for
        # fine-tuning); a config without class_path means LanguageModel + PretrainDataModule
        super().__init__(L.LightningModule, L.LightningDataModule, *args, subclass_mode_model=True,
                         subclass_mode_data=True, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({key: {"class_path": path} for key, path in self.default_classes.items()})
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.filename": "step{step}",
                "checkpoint.auto_insert_metric_name": False,
                # a rerun into the same output directory replaces its checkpoints instead of adding last-v1.ckpt
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(LRMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(TokenThroughput, "throughput")
        parser.add_lightning_class_args(EvaluationReport, "evaluation")
        parser.add_lightning_class_args(Preemption, "preemption")  # acts only under SLURM
        parser.add_lightning_class_args(SampleGenerations, "samples")  # causal language models only
        # language modelling: the data decides the context and the vocabulary (links that do not apply to the
        # chosen classes, e.g. a classifier's, are skipped)
        parser.link_arguments("data.init_args.block_size", "model.init_args.block_size")
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        # classification: the model decides the classes
        parser.link_arguments("model.init_args.num_classes", "data.init_args.num_classes")
        parser.link_arguments("model.init_args.label_names", "data.init_args.label_names")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        root = cfg.trainer.default_root_dir or "."
        # keep everything a run writes inside its output directory
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = f"{root}/checkpoints"
        logger = cfg.trainer.logger
        job = slurm_job_id()
        for lg in logger if isinstance(logger, list) else [logger]:
            # a requeued SLURM job keeps its job id: as the W&B run id it continues the same run (resume="allow")
            if job and lg and not isinstance(lg, bool) and lg.class_path.endswith("WandbLogger"):
                if lg.init_args.get("id") is None and lg.init_args.get("version") is None:
                    lg.init_args.id = f"slurm-{job}"
            # W&B, CSV and TensorBoard logs go inside the run's folder unless a save_dir is given
            if lg and not isinstance(lg, bool) and "save_dir" in getattr(lg, "init_args", {}):
                if lg.init_args.save_dir in (None, "."):
                    lg.init_args.save_dir = root


def prepare_command(config: str) -> Path:
    """Run only the data preparation stage (sources, cleaning, tokenizer, token files, report) of a config.

    It reads the same ``data:`` section that ``fit`` reads, so ``fit`` with that config reuses the result.

    Args:
        config: a YAML file with a ``data:`` section (a full fit config or a configs/data/ fragment).
    """
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"Config {path} does not exist")
    data = (yaml.safe_load(path.read_text()) or {}).get("data")
    if not isinstance(data, dict):
        raise ValueError(f"{path} has no data: section to prepare")
    if "class_path" in data:
        if not data["class_path"].endswith("PretrainDataModule"):
            raise ValueError(f"prepare runs the language-model data stage; {path}'s data is {data['class_path']}")
        data = data.get("init_args") or {}
    parser = ArgumentParser()
    parser.add_class_arguments(PretrainDataModule, "data")
    dm = parser.instantiate_classes(parser.parse_object({"data": data})).data
    dm.prepare_data()
    r = dm.report
    print(f"token folder: {dm.token_dir}")
    print(f"documents: {r['documents_read']:,} read, {r['documents_kept']:,} kept; duplicates removed: {r['duplicates_removed']:,}")
    for row in r["cleaning"]:
        print(f"  {row['step']:<16s} in {row['in']:>10,}  out {row['out']:>10,}  removed {row['removed']:>8,}")
    print("tokens: " + ", ".join(f"{k} {v:,}" for k, v in r["tokens"].items()) + f"; {r['bytes_per_token']:.3f} bytes/token")
    return dm.token_dir


# commands that are not Trainer methods: each is a typed function whose signature and docstring are its CLI
EXTRA_COMMANDS: dict[str, Callable] = {
    "prepare": prepare_command, "generate": generate, "export": export, "import-hf": import_hf, "size": size,
    "consolidate": consolidate, "crossval": crossval, "submit": submit, "serve": serve,
}


def main(args: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in EXTRA_COMMANDS:
        fn = EXTRA_COMMANDS[argv[0]]
        summary = (fn.__doc__ or "").split("\n\n")[0]
        parser = ArgumentParser(prog=f"python -m lit_llm {argv[0]}", description=summary, formatter_class=_HelpFormatter)
        parser.add_function_arguments(fn, as_positional=False)  # every argument a --flag
        fn(**parser.parse_args(argv[1:]).as_dict())
        return
    LitLLMCLI(args=None if args is None else argv, model_class_path=chosen_class(argv, "model"),
              data_class_path=chosen_class(argv, "data"))
