"""The one config parser: ``LitLLMCLI`` (fit, validate, test, predict) and ``resolve_config``, which every other
command that reads a fit config (``prepare``, ``size``, ``crossval``, ``submit``) uses.

``resolve_config(["--config", "a.yaml", "--config", "b.yaml", "--data.batch_size", "4"])`` runs fit's own
parser on those arguments and stops before anything is built: repeated ``--config`` files compose in order and
dotted overrides apply exactly as in ``fit``, and the result is what ``fit --print_config`` prints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import sys
from argparse import RawDescriptionHelpFormatter
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
import yaml
from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_llm.callbacks import (
    EvaluationReport,
    LogLines,
    LRMonitor,
    NonFiniteGuard,
    PlotCurves,
    Preemption,
    SampleGenerations,
    TokenThroughput,
)
from lit_llm.callbacks.preemption import slurm_job_id, sweep_stale_temps
from lit_llm.checkpoint import RUN_KEY, checkpoints_by_step, load_sharded_meta, newest_checkpoint, read_info
from lit_llm.data import PretrainDataModule
from lit_llm.errors import USER_ERRORS, UsageError, one_line
from lit_llm.io import check_writable
from lit_llm.tasks import LanguageModel, OptimizerConfig
from lit_llm.tracking import run_metadata

SUBCOMMANDS = ("fit", "validate", "test", "predict")


class _HelpFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's formatter, keeping the line breaks of the description."""


WANDB_RUN_ID = "wandb_run_id"  # the checkpoint key that holds the W&B run id of the run that saved it


def wandb_run_to_resume(ckpt_path: Optional[str], root: str, dirpath: str) -> Optional[str]:
    """The W&B run id saved in the checkpoint a fit resumes from (``--ckpt_path FILE`` or ``newest``), if any."""
    if ckpt_path == "newest":
        path = newest_checkpoint(root, dirpath)
    else:
        path = Path(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None
    if path is None:
        return None
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True).get(WANDB_RUN_ID)
    except Exception:  # noqa: BLE001 - a file that does not load gets its clear error from _resume_path
        return None


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Save config.yaml beside the run and also send the resolved config to the logger (e.g. the W&B run)."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.logger, Logger):
            config = json.loads(self.parser.dump(self.config, skip_none=False, format="json"))
            # the code version, the hardware and the prepared data's hashes beside the resolved config
            metadata = {"config": config, "run": run_metadata(trainer, trainer.datamodule)}
            for logger in trainer.loggers:
                logger.log_hyperparams(metadata)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Record the W&B run in the checkpoint, so that ``fit --ckpt_path`` continues that run."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[WANDB_RUN_ID] = logger.version


class _RunRecord(Callback):
    """Writes which run saved a checkpoint (``RUN_KEY``: the SLURM job and the config's fingerprint), so that a
    SLURM requeue resumes only its own job's or its own config's checkpoints (``LitLLMCLI._resume_path``)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RUN_KEY] = dict(self.record)


def config_fingerprint(config: dict[str, Any]) -> str:
    """A short hash of a resolved fit config without ``ckpt_path``: the same command line gives the same one."""
    plain = {k: v for k, v in config.items() if k != "ckpt_path"}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """A hyperparameter as JSON data (tuples as lists, dataclasses and Namespaces as dicts), for comparison."""
    return json.loads(json.dumps(value, sort_keys=True, default=lambda v: getattr(v, "__dict__", str(v))))


def _without_implicit_hpc_resume(trainer: L.Trainer) -> None:
    """Lightning resumes a SLURM ``fit`` that has no ckpt_path from the highest ``hpc_ckpt_N.ckpt`` in
    ``default_root_dir``, whichever job or config wrote it, and fails on every requeue when that one file is
    corrupt (Lightning's ``_CheckpointConnector._hpc_resume_path``). lit_llm resolves the resume itself
    (``LitLLMCLI._resume_path``: this job's or this config's newest complete checkpoint), so that lookup is off."""
    connector = trainer._checkpoint_connector

    class _Connector(type(connector)):  # type: ignore[misc, valid-type]
        @property
        def _hpc_resume_path(self) -> Optional[str]:
            return None

    connector.__class__ = _Connector


class _WorkStarted(Callback):
    """Notes that the run got past data preparation and setup: an error after this is not a bad argument."""

    def __init__(self) -> None:
        self.started = False

    def _started(self, *_: Any) -> None:
        self.started = True

    on_fit_start = on_validation_start = on_test_start = on_predict_start = _started


def _import(class_path: str) -> Any:
    """The class a class_path names (the parsed config may name it by a shorter import path than ours)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return class_path


_UNSET = object()
COMPOSED_DICTS = ("model_args",)  # the model's dict arguments that compose key by key across configs


def _model_section(doc: Any) -> dict[str, Any]:
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        return {}
    return {**model, **(model.get("init_args") or {})}  # model.KEY or model.init_args.KEY


def compose_dict_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with one last ``--model.model_args`` that merges every value given for it, in order.

    jsonargparse replaces a dict-typed value whole, so ``--config pretrain.yaml --model.model_args '{dropout: 0.2}'``
    would drop the experiment's ``{n_layer: 4, n_embd: 128}`` and train the preset's full shape. Here the values
    of ``model.model_args`` in the ``--config`` files and on the command line are merged key by key, as every
    other section composes (a later value changes only the keys it names; ``null`` clears what came before)."""
    argv = list(argv)
    composed: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        given: dict[str, Any] = {}
        if flag in ("--config", "-c") and Path(value).is_file():
            try:
                with open(value, encoding="utf-8") as f:  # read from the file: YAML's marks name it
                    given = _model_section(yaml.safe_load(f))
            except yaml.YAMLError as e:  # jsonargparse would call the file "<unicode string>"
                raise UsageError(f"--config {value} is not valid YAML: {e}") from None
            except UnicodeDecodeError as e:
                raise UsageError(f"--config {value} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        for key in COMPOSED_DICTS:
            if flag in (f"--model.{key}", f"--model.init_args.{key}"):
                try:
                    given = {key: yaml.safe_load(value)}
                except yaml.YAMLError:
                    given = {}
            if key in given:
                new = given[key]
                composed[key] = None if new is None else {**(composed.get(key) or {}), **new} if isinstance(new, dict) else new
        i += 1
    return argv + [a for key, v in composed.items() for a in (f"--model.{key}", json.dumps(v))]


def _sections() -> dict[str, Any]:
    """fit's argument sections and the class whose signature each one's keys come from (for "did you mean")."""
    from lit_llm.data.instructions import InstructionDataModule, PreferenceDataModule
    from lit_llm.data.labelled import ClassificationDataModule
    from lit_llm.tasks import InstructionModel, PreferenceModel, SequenceClassifier

    return {"trainer": [L.Trainer], "model": [LanguageModel, SequenceClassifier, InstructionModel, PreferenceModel],
            "data": [PretrainDataModule, ClassificationDataModule, InstructionDataModule, PreferenceDataModule],
            "checkpoint": [ModelCheckpoint],
            "lr_monitor": [LRMonitor], "throughput": [TokenThroughput], "evaluation": [EvaluationReport],
            "preemption": [Preemption], "nonfinite": [NonFiniteGuard], "samples": [SampleGenerations],
            "plots": [PlotCurves], "log_lines": [LogLines]}


# the settings of model.optimizer (lit_llm.tasks.optim.OptimizerConfig), which older configs gave as model.<name>
_OPTIMIZER_FIELDS = frozenset(f.name for f in dataclasses.fields(OptimizerConfig)) - {"name"}


def suggest_key(key: str) -> Optional[str]:
    """The fit key nearest to a mistyped one (``trainer.max_stepz`` -> ``trainer.max_steps``; ``modle.x`` ->
    ``model.x``), from the signatures of the classes behind fit's sections; None when nothing is close."""
    import difflib
    import inspect

    sections = _sections()
    section, _, rest = key.partition(".")
    rest = rest.removeprefix("init_args.")
    if section not in sections:
        top = ["config", "ckpt_path", "seed_everything", *sections]
        close = difflib.get_close_matches(section, top, n=1)
        if not close or close[0] == section:
            return None
        fixed = f"{close[0]}.{rest}".rstrip(".")
        return suggest_key(fixed) or fixed if close[0] in sections else fixed
    if not rest:
        return None
    head, _, tail = rest.partition(".")
    if section == "model" and head == "optimizer" and tail:  # a field of the typed optimizer config
        close = difflib.get_close_matches(tail, sorted(_OPTIMIZER_FIELDS | {"name"}), n=1)
        return f"model.optimizer.{close[0]}" if close and close[0] != tail else None
    names = {p for cls in sections[section] for p in inspect.signature(cls.__init__).parameters if p != "self"}
    if section == "model":  # the typed optimizer config's settings, which older configs gave as model.<name>
        names |= _OPTIMIZER_FIELDS
    close = difflib.get_close_matches(head, sorted(names), n=1)
    if not close or (close[0] == head and head not in _OPTIMIZER_FIELDS):
        return None
    moved = "optimizer." if section == "model" and close[0] in _OPTIMIZER_FIELDS else ""
    return f"{section}.{moved}{close[0]}{'.' + tail if tail else ''}"


def _prints_config(arg: str) -> bool:
    return arg == "--print_config" or arg.startswith("--print_config=")


def _asks_help(arg: str) -> bool:
    return arg in ("-h", "--help") or arg.endswith(".help") or ".help=" in arg


class ExactOptionsParser(LightningArgumentParser):
    """Lightning's parser without argparse's abbreviations, in every nested parser too (jsonargparse builds a
    class's parser with its parent's type): ``--model.optimizer.lr 1`` would silently set ``lr_decay_steps``, and
    ``--trainer.max_st`` ``max_steps``. An option is taken only as written; a near miss gets "did you mean"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


class LitLLMCLI(LightningCLI):
    """LightningCLI taking any LightningModule and DataModule by class_path. The default is LanguageModel +
    PretrainDataModule, so a config without class_path trains a language model.

    The model and data classes that the arguments choose become the parser's defaults before the arguments are
    parsed for good (``parse_arguments``): jsonargparse keeps a previous class's init_args that a new class
    shares when the class_path changes, so a LanguageModel default would otherwise lend its learning rate,
    warm-up and weight decay to a SequenceClassifier.

    A ValueError / FileNotFoundError-type error raised before the run starts (a bad preset, a missing file, a
    block_size longer than the data) is raised again as ``UsageError``, which ``python -m lit_llm`` prints as one
    ``error:`` line; an error after the run started keeps its type and traceback.
    """

    def __init__(self, *args, **kwargs) -> None:
        self.default_classes = {
            "model": f"{LanguageModel.__module__}.{LanguageModel.__name__}",
            "data": f"{PretrainDataModule.__module__}.{PretrainDataModule.__name__}",
        }
        self._class_parsers: list[LightningArgumentParser] = []  # the parsers that hold default_classes
        self._work = _WorkStarted()
        self._run_record: dict[str, Any] = {"slurm_job": None, "config": None}  # set by _parse_ckpt_path for fit
        kwargs.setdefault("save_config_callback", LoggerSaveConfigCallback)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 1337)
        # the optimizer and schedule are LanguageModel arguments; no separate --optimizer keys that would fight them
        kwargs.setdefault("auto_configure_optimizers", False)
        # exit_on_error=False: a parse error is raised (ArgumentError), and python -m lit_llm prints it on one line
        kwargs.setdefault("parser_kwargs", {
            "prog": "python -m lit_llm", "formatter_class": _HelpFormatter, "exit_on_error": False,
            "description": "The Lightning commands; `python -m lit_llm --help` lists every command.",
            **{sub: {"exit_on_error": False} for sub in SUBCOMMANDS},
        })
        kwargs.setdefault("parser_class", ExactOptionsParser)
        kwargs.setdefault(
            "trainer_defaults",
            {
                "logger": [
                    {
                        "class_path": "lit_llm.tracking.WandbLogger",  # Lightning's, quiet at start-up
                        # offline: no account, no network; set offline: false (and log in) to sync
                        "init_args": {"project": "lit_llm", "offline": True},
                    },
                    # and a CSV file in the run's folder: curves without W&B (python -m lit_llm plot, PlotCurves)
                    {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": ".", "name": "csv"}},
                ],
                # checkpoint files written beside their final name, fsynced and renamed (lit_llm.checkpoint_io)
                "plugins": [{"class_path": "lit_llm.checkpoint_io.AtomicCheckpointIO"}],
            },
        )
        try:
            # any LightningModule / DataModule by class_path (SequenceClassifier + ClassificationDataModule for
            # fine-tuning); a config without class_path means LanguageModel + PretrainDataModule
            super().__init__(L.LightningModule, L.LightningDataModule, *args, subclass_mode_model=True,
                             subclass_mode_data=True, **kwargs)
        except USER_ERRORS as e:
            if self._work.started or isinstance(e, UsageError):
                raise
            raise UsageError(one_line(e)) from e

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self._class_parsers.append(parser)
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
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")  # skip non-finite steps, never save NaN weights
        parser.add_lightning_class_args(SampleGenerations, "samples")  # causal language models only
        parser.add_lightning_class_args(PlotCurves, "plots")  # PNG curves from the CSV log at the end of fit
        parser.add_lightning_class_args(LogLines, "log_lines")  # progress as lines, for log files (submit's jobs)
        # language modelling: the data decides the context and the vocabulary (links that do not apply to the
        # chosen classes, e.g. a classifier's, are skipped)
        parser.link_arguments("data.init_args.block_size", "model.init_args.block_size")
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        # classification: the model decides the classes
        parser.link_arguments("model.init_args.num_classes", "data.init_args.num_classes")
        parser.link_arguments("model.init_args.label_names", "data.init_args.label_names")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse twice when the arguments choose another model or data class than the default: the first parse
        (with the defaults) finds the chosen classes, which become the defaults of the second. Help and
        --print_config print during the final parse only."""
        if isinstance(args, (dict, Namespace)):
            return super().parse_arguments(parser, args)
        argv = sys.argv[1:] if args is None else list(args)
        if not any(_asks_help(a) for a in argv):
            argv = compose_dict_args(argv)
            probe = [a for a in argv if not _prints_config(a)]
            config = parser.parse_args(probe)
            section = config[config.subcommand] if config.get("subcommand") else config
            chosen = {key: section[key].class_path for key in self.default_classes
                      if section.get(key) and _import(section[key].class_path) is not _import(self.default_classes[key])}
            if chosen:
                self.default_classes.update(chosen)
                for p in self._class_parsers:
                    p.set_defaults({key: {"class_path": path} for key, path in chosen.items()})
            elif len(probe) == len(argv):  # the defaults were chosen and nothing is to be printed: this is the result
                self.config = config
                return
        self.config = parser.parse_args(argv)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(self._work)
        if self.subcommand == "fit":  # a CLI that runs fit resolves its resume itself (_resume_path)
            trainer.callbacks.append(_RunRecord(self._run_record))
            _without_implicit_hpc_resume(trainer)
        return trainer

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        _check_optimizer_fits_strategy(cfg)
        _check_schedule(cfg)
        root = cfg.trainer.default_root_dir or "."
        # keep everything a run writes inside its output directory
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = f"{root}/checkpoints"
        logger = cfg.trainer.logger
        job = slurm_job_id()
        resumed = None
        if self.subcommand == "fit" and not job:
            resumed = wandb_run_to_resume(cfg.get("ckpt_path"), root, cfg.checkpoint.dirpath)
        for lg in logger if isinstance(logger, list) else [logger]:
            # a requeued SLURM job keeps its job id: as the W&B run id it continues the same run (resume="allow");
            # a fit resumed by hand (--ckpt_path) continues the run that saved its checkpoint
            if (job or resumed) and lg and not isinstance(lg, bool) and lg.class_path.endswith("WandbLogger"):
                if lg.init_args.get("id") is None and lg.init_args.get("version") is None:
                    lg.init_args.id = f"slurm-{job}" if job else resumed
            # W&B, CSV and TensorBoard logs go inside the run's folder unless a save_dir is given
            if lg and not isinstance(lg, bool) and "save_dir" in getattr(lg, "init_args", {}):
                if lg.init_args.save_dir in (None, "."):
                    lg.init_args.save_dir = root


    def _parse_ckpt_path(self) -> None:
        """Before LightningCLI reads the checkpoint's hyperparameters: sweep what a killed save left behind,
        resolve and check ``--ckpt_path`` (see ``_resume_path``), and for ``fit`` check that the run resumes with
        the hyperparameters it was trained with, except those it can apply (``_check_resumed_hparams``).
        LightningCLI's own step would quietly replace the command line's values with the checkpoint's; it runs
        only for validate, test and predict, where the checkpoint's model is the one to evaluate."""
        self._run_record: dict[str, Any] = {"slurm_job": None, "config": None}
        sub = self.config.get("subcommand")
        if not sub:
            return super()._parse_ckpt_path()
        cfg = self.config[sub]
        root = cfg.trainer.default_root_dir or "."
        dirpath = cfg.checkpoint.dirpath or f"{root}/checkpoints"
        if sub == "fit":
            dumped = json.loads(self.parser.dump(self.config, format="json", skip_link_targets=False))[sub]
            self._run_record = {"slurm_job": slurm_job_id(), "config": config_fingerprint(dumped)}
        if sub == "fit" and "://" not in str(dirpath):  # a read-only or misplaced local folder: now, not at a save
            check_writable(dirpath, "--checkpoint.dirpath" if cfg.checkpoint.dirpath else "--trainer.default_root_dir")
        if sub == "fit" and _first_local_process():  # nothing is being saved yet
            for p in sweep_stale_temps(root, dirpath):
                rank_zero_info(f"removed {p}, left by an interrupted checkpoint save")
        cfg.ckpt_path = self._resume_path(sub, cfg.get("ckpt_path"), root, dirpath)
        if sub != "fit":
            return super()._parse_ckpt_path()
        if cfg.ckpt_path and Path(cfg.ckpt_path).exists():
            self._check_resumed_hparams(cfg.ckpt_path, dumped["model"])

    def _resume_path(self, sub: str, ckpt_path: Optional[str], root: str, dirpath: str) -> Optional[str]:
        """``--ckpt_path newest`` resumes from the complete checkpoint with the highest step among the run's
        ``hpc_ckpt_N.ckpt`` and ``checkpoints/*.ckpt``; a file that does not load is passed over. A SLURM job's
        fit without --ckpt_path (a requeue, or the same script resubmitted) does the same, among the checkpoints
        that this job or a run of this very config saved: an earlier, different run in the folder is not
        continued (it needs --ckpt_path). ``last``, a file or a sharded folder is checked before any work, so a
        truncated, foreign or hostile one is one clear error."""
        on_slurm = sub == "fit" and slurm_job_id() is not None and SLURMEnvironment.detect()
        if ckpt_path is None and on_slurm:
            job, config = self._run_record["slurm_job"], self._run_record["config"]
            found = checkpoints_by_step(root, dirpath)
            mine = [c for c in found if c[3].get("slurm_job") == job or c[3].get("config") == config]
            newest = mine[0][2] if mine else None
            if found and found[0] not in mine:
                rank_zero_warn(f"{found[0][2]} (step {found[0][0]}) was saved by another run (another SLURM job"
                               " with another config); it is not continued. Pass --ckpt_path to continue it, or give"
                               " this run its own --trainer.default_root_dir")
            if newest is not None:
                rank_zero_info(f"resuming from the newest complete checkpoint, {newest} (of this run: its SLURM job"
                               " or its config)")
            return str(newest) if newest is not None else None
        if ckpt_path == "newest":
            newest = newest_checkpoint(root, dirpath)
            if newest is not None:
                rank_zero_info(f"resuming from the newest complete checkpoint, {newest}")
            elif sub != "fit":  # evaluating nothing would report a random model's numbers
                raise UsageError(f"--ckpt_path newest: no complete checkpoint in {root} or {dirpath} to {sub}")
            else:
                rank_zero_info(f"--ckpt_path newest: no checkpoint in {root} or {dirpath} yet; starting from step 0")
            return str(newest) if newest is not None else None
        if ckpt_path == "hpc":  # Lightning's own lookup is off: the highest hpc_ckpt_N.ckpt that loads
            hpc = [c for c in checkpoints_by_step(root) if c[2].name.startswith("hpc_ckpt_")]
            if not hpc:
                raise UsageError(f"--ckpt_path hpc: no complete hpc_ckpt_N.ckpt in {root}")
            return str(hpc[0][2])
        if ckpt_path == "last" and Path(dirpath, "last.ckpt").exists():
            ckpt_path = str(Path(dirpath, "last.ckpt"))  # checked below like any path
        if ckpt_path and ckpt_path not in ("last", "best") and not ckpt_path.startswith("registry"):
            if Path(ckpt_path).is_dir():
                load_sharded_meta(ckpt_path)  # its .metadata through the allow-list, meta.pt weights-only
            else:
                read_info(ckpt_path, purpose=f"{sub} --ckpt_path")
        return ckpt_path

    def _check_resumed_hparams(self, ckpt_path: str, model: dict[str, Any]) -> None:
        """A fit resumed with a changed model hyperparameter applies it when the task can
        (``TransformerModule.applied_on_resume``: the learning rates, the schedule, the optimizer's settings, the
        loss options) and refuses the others with one line naming them, never keeping the checkpoint's value
        silently."""
        path = Path(ckpt_path)
        meta = path / "meta.pt" if path.is_dir() else path
        saved = torch.load(meta, map_location="cpu", weights_only=True, mmap=not path.is_dir()).get("hyper_parameters")
        if not isinstance(saved, dict):
            return
        cls = _import(model.get("class_path", ""))
        applied = getattr(cls, "applied_on_resume", frozenset())
        # a typed config's fields are compared one by one (``optimizer.learning_rate`` may change, ``optimizer.name``
        # may not); a name is applied when it or its config is in ``applied``
        saved, now = _flatten_configs(_plain(saved)), _flatten_configs(_plain(model.get("init_args") or {}))
        applied = applied | {k for k in set(saved) | set(now) if k.partition(".")[0] in applied}
        changed = [k for k in sorted(set(saved) & set(now))
                   if now[k] is not None and _plain(saved[k]) != _plain(now[k]) and k not in applied]
        if changed:
            diffs = ", ".join(f"model.{k}={_plain(saved[k])!r} (this run: {_plain(now[k])!r})" for k in changed)
            raise UsageError(f"--ckpt_path {ckpt_path} was trained with {diffs}; a resumed run cannot change"
                             f" {'it' if len(changed) == 1 else 'them'}. Resume with the checkpoint's value, or"
                             " start a new run in another --trainer.default_root_dir")
        changed_applied = [k for k in sorted(set(saved) & set(now) & applied)
                           if now[k] is not None and _plain(saved[k]) != _plain(now[k])]
        if changed_applied:
            rank_zero_info(f"resuming with changed {', '.join('model.' + k for k in changed_applied)}: applied from"
                           " this step on")


def _flatten_configs(hparams: dict[str, Any]) -> dict[str, Any]:
    """The typed configs among a task's hyperparameters (``optimizer``) as one dotted key per field."""
    flat = dict(hparams)
    value = flat.pop("optimizer", None)
    if isinstance(value, dict):
        flat.update({f"optimizer.{k}": v for k, v in value.items()})
    elif value is not None:  # a checkpoint from before OptimizerConfig: the optimizer's kind
        flat["optimizer.name"] = value
    return flat


def _optimizer_args(cfg: Namespace) -> dict[str, Any]:
    """``model.optimizer`` of a parsed fit config, as a dict (empty when the model has none)."""
    model = cfg.get("model")
    args = (model.get("init_args") or {}) if isinstance(model, Namespace) else {}
    value = args.get("optimizer") if isinstance(args, (dict, Namespace)) else None
    if isinstance(value, Namespace):
        return value.as_dict()
    return dict(value) if isinstance(value, dict) else {}


SHARDED_STRATEGIES = ("ModelParallel", "ModelParallelStrategy")  # class names whose weights are sharded


def _check_optimizer_fits_strategy(cfg: Namespace) -> None:
    """Muon on a sharded strategy, refused at parse time (``configure_model`` would refuse it too, after the
    data is prepared): strategy fragments no longer switch the optimizer behind the user's back."""
    strategy = cfg.trainer.get("strategy")
    name = strategy.get("class_path", "") if isinstance(strategy, (dict, Namespace)) else str(strategy or "")
    if _optimizer_args(cfg).get("name") == "muon" and name.rpartition(".")[2] in SHARDED_STRATEGIES:
        raise UsageError("--model.optimizer.name muon orthogonalizes whole weight matrices: it runs on one device or"
                         " under DDP (configs/strategy/ddp.yaml), not on FSDP, TP or PP, whose weights are sharded."
                         " Add --model.optimizer.name adamw and a learning rate for it (e.g."
                         " --model.optimizer.learning_rate 1e-3)")


def _check_schedule(cfg: Namespace) -> None:
    """A warm-up longer than the schedule, refused at parse time: ``build_optimizer`` finds it only once the data
    is prepared and the loggers have started (and left a csv/version_0 behind). The schedule's length is
    ``lr_decay_steps``, or ``trainer.max_steps`` (an upper bound of the steps the run takes)."""
    args = _optimizer_args(cfg)
    warmup = args.get("warmup_steps")
    length = args.get("lr_decay_steps") or (cfg.trainer.get("max_steps") or -1)
    if isinstance(warmup, int) and isinstance(length, int) and 0 < length < warmup:
        key = "--model.optimizer.lr_decay_steps" if args.get("lr_decay_steps") else "--trainer.max_steps"
        raise UsageError(f"--model.optimizer.warmup_steps {warmup} is longer than the schedule ({key} {length});"
                         " lower the warm-up or lengthen the run")


def _first_local_process() -> bool:
    """True in the first process of a node (DDP children get LOCAL_RANK, SLURM tasks SLURM_LOCALID)."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))) == 0


class _Parsed(Exception):
    """Stops a parse-only LitLLMCLI right after parsing (LightningCLI parses, seeds, builds and runs in one
    constructor; the resolver needs only the first step)."""

    def __init__(self, cli: LitLLMCLI) -> None:
        super().__init__("parsed")
        self.cli = cli


class _ParseOnly(LitLLMCLI):
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        raise _Parsed(self)


def resolve_config(argv: Sequence[str] = (), subcommand: str = "fit") -> dict[str, Any]:
    """The config that ``python -m lit_llm <subcommand> *argv`` runs, as plain data, without building anything.

    It is parsed by ``fit``'s own parser (LitLLMCLI), so ``--config`` repeats and composes in order, dotted
    overrides (``--model.init_args.optimizer.learning_rate 1e-3``, ``--data.batch_size 4``) apply, and the model and data
    classes are chosen, exactly as in ``fit``. The result equals what ``fit --print_config`` prints, plus the
    values that links fill in while parsing (e.g. ``model.init_args.block_size`` from the data's block_size).

    Args:
        argv: fit's arguments, without the subcommand (and without --help or --print_config, which exit).
        subcommand: fit, validate, test or predict.

    Raises:
        argparse.ArgumentError: the arguments do not parse (a missing config file, an unknown key, a bad value).
    """
    if subcommand not in SUBCOMMANDS:
        raise ValueError(f"subcommand must be one of {SUBCOMMANDS}, got {subcommand!r}")
    try:
        _ParseOnly(args=[subcommand, *argv])
    except _Parsed as parsed:
        cli = parsed.cli
    else:  # pragma: no cover - _ParseOnly always raises
        raise AssertionError("LitLLMCLI did not parse")
    dumped = json.loads(cli.parser.dump(cli.config, format="json", skip_unset=False, skip_link_targets=False))
    return dumped[subcommand]


def run(argv: Sequence[str]) -> LitLLMCLI:
    """Run ``python -m lit_llm fit|validate|test|predict ...`` in this process (``argv`` starts with the subcommand)."""
    return LitLLMCLI(args=list(argv))
