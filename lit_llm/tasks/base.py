"""The LightningModule every task shares: the network, its parallelization, the optimizer and schedule.

A task (``LanguageModel``, ``SequenceClassifier``) is a small subclass that says how its network is built
(``build_network``), which parameters form which optimizer groups (``param_groups``) and what its loss and
metrics are. Everything else lives here once:

- ``configure_model`` applies the parallelism that the strategy's device mesh asks for, with the functions
  in ``lit_llm.parallel`` (pipeline split, tensor + sequence parallel, activation checkpointing, compile,
  FSDP2), so every task runs under every strategy YAML in ``configs/strategy/``;
- ``configure_optimizers`` builds the optimizer of ``--model.optimizer`` (``optim.OptimizerConfig``: AdamW, or
  Muon with AdamW) from the task's groups and the warm-up + cosine schedule, whose length is
  ``optimizer.lr_decay_steps`` or the run's ``trainer.estimated_stepping_batches``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional, Union

import lightning as L
import torch
from torch import nn

from lit_llm.model import ModelConfig
from lit_llm.parallel import ParallelDims
from lit_llm.parallel.parallelize import parallelize
from lit_llm.tasks import optim


@dataclass
class ParallelConfig:
    """How ``configure_model`` parallelizes the network. The degrees themselves come from the strategy
    (``configs/strategy/*.yaml``: ``ModelParallel(data_parallel_size, tensor_parallel_size,
    pipeline_parallel_size)``); these are the per-model choices that go with them.

    Args:
        activation_checkpointing: ``none``, ``full`` (every block) or ``selective`` (every ``ac_every``-th).
        ac_every: with selective checkpointing, checkpoint every this many blocks.
        compile: ``torch.compile`` each block.
        fsdp_param_dtype: FSDP2 mixed-precision compute dtype (under ``ModelParallel``); None keeps float32.
        pipeline_schedule: ``gpipe``, ``1f1b`` or ``interleaved_1f1b`` (with ``pipeline_parallel_size > 1``).
        microbatches: microbatches per batch in the pipeline schedule (must divide the batch size).
        stages_per_rank: pipeline stages each rank holds: 1, or 2 and more with ``interleaved_1f1b``.
    """

    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    ac_every: int = 2
    compile: bool = False
    fsdp_param_dtype: Optional[Literal["bfloat16", "float16", "float32"]] = None
    pipeline_schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = "1f1b"
    microbatches: int = 2
    stages_per_rank: int = 1

    def __post_init__(self) -> None:
        if self.activation_checkpointing not in ("none", "full", "selective"):
            raise ValueError(f"parallel.activation_checkpointing must be none, full or selective, got"
                             f" {self.activation_checkpointing!r}")
        if self.pipeline_schedule not in ("gpipe", "1f1b", "interleaved_1f1b"):
            raise ValueError(f"parallel.pipeline_schedule must be gpipe, 1f1b or interleaved_1f1b, got"
                             f" {self.pipeline_schedule!r}")
        if (self.pipeline_schedule == "interleaved_1f1b") != (self.stages_per_rank > 1):
            raise ValueError(f"parallel.stages_per_rank={self.stages_per_rank} with pipeline_schedule"
                             f" {self.pipeline_schedule!r}: the interleaved schedule needs 2 or more stages per rank"
                             " (--model.parallel.stages_per_rank 2), gpipe and 1f1b exactly 1")
        if self.fsdp_param_dtype not in (None, "bfloat16", "float16", "float32"):
            raise ValueError(f"parallel.fsdp_param_dtype must be bfloat16, float16 or float32, got {self.fsdp_param_dtype!r}")
        if self.microbatches < 1 or self.ac_every < 1 or self.stages_per_rank < 1:
            raise ValueError(f"parallel.microbatches, ac_every and stages_per_rank must be >= 1, got"
                             f" {self.microbatches}, {self.ac_every}, {self.stages_per_rank}")


def cosine_with_warmup(step: int, warmup_steps: int, decay_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up over ``warmup_steps``, cosine decay to ``min_ratio`` at ``decay_steps``,
    constant after (the schedule of nanoGPT's ``get_lr``)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)


class TransformerModule(L.LightningModule):
    """Base of the task modules. Subclasses set ``self.config`` (the network's ``ModelConfig``) in
    ``__init__`` and implement ``build_network``, ``param_groups`` and their steps.

    The optimizer and schedule settings are ``self.optim`` (``optim.OptimizerConfig``, the task's
    ``--model.optimizer``); the parallel ones ``self.parallel``. Both are stored in ``hparams`` as plain dicts.
    """

    supports_pipeline = False  # a task that can run as pipeline stages says so and implements the schedule
    # hyperparameters a resumed fit may change: they take effect from the resumed step on (``on_train_start``
    # applies the optimizer's and the schedule's over the restored state); a change to any other is refused
    # (a dotted name is one field of a typed config: ``optimizer.learning_rate``; ``optim.APPLIED_ON_RESUME``)
    applied_on_resume: frozenset[str] = frozenset({"parallel"})

    def __init__(self, parallel: Optional[Union[ParallelConfig, dict]] = None,
                 optimizer: Optional[Union[optim.OptimizerConfig, dict]] = None) -> None:
        super().__init__()
        # a dict after a checkpoint round trip (hyperparameters are stored as plain data)
        self.parallel = ParallelConfig(**parallel) if isinstance(parallel, dict) else (parallel or ParallelConfig())
        # a dict sets only the fields it names, over the task's own defaults (its signature's default instance)
        own = inspect.signature(type(self).__init__).parameters.get("optimizer")
        own = own.default if own is not None and isinstance(own.default, optim.OptimizerConfig) else None
        self.optim = optim.OptimizerConfig.of(optimizer, own)
        self.config: ModelConfig
        self.pipeline = None  # lit_llm.parallel.pipeline.PipelineRunner under pipeline parallelism
        self._parallelized = False

    def _keep_configs_as_dicts(self) -> None:
        """Call after ``save_hyperparameters(ignore=["parallel", "optimizer"])``: the parallel and optimizer
        configs are stored as plain dicts, so that checkpoints load weights-only without their classes."""
        for hparams in (self.hparams, self._hparams_initial):  # the checkpoint's, and what the loggers record
            hparams["parallel"] = asdict(self.parallel)
            hparams["optimizer"] = self.optim.as_dict()

    # ------------------------------------------------------------------ subclass hooks
    def build_network(self) -> None:
        """Build the single-device network (seeded, full size) if it is not built yet."""
        raise NotImplementedError

    @property
    def network(self) -> nn.Module:
        """The transformer (``Decoder`` or ``Bert``) that the parallelism functions act on."""
        raise NotImplementedError

    def extra_modules(self) -> list[nn.Module]:
        """Task modules outside the network (e.g. a classifier head), sharded with it under FSDP."""
        return []

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups: ``params``, ``weight_decay`` and optionally ``lr_scale``."""
        raise NotImplementedError

    def setup_pipeline(self, mesh, stages: list[nn.Module]) -> None:  # pragma: no cover - where supports_pipeline
        raise NotImplementedError

    # ------------------------------------------------------------------ parallelism
    def configure_model(self) -> None:
        """Build the network, then parallelize it from outside. Under lit_llm's ModelParallel ``self.device_mesh``
        is ``ParallelDims.build_mesh``'s (Lightning's own ModelParallelStrategy: "data_parallel" and
        "tensor_parallel" only; ``ParallelDims.of_mesh`` reads both): the pipeline stage is cut first, then tensor + sequence parallel, activation
        checkpointing and compile per block, then FSDP2 over data parallel. The full network is built (seeded)
        before it is sharded, so every layout starts from the same weights as one process."""
        if self._parallelized:
            return
        self.build_network()
        net, par = self.network, self.parallel
        mesh = self.device_mesh
        parts = [net]  # what runs: the network, or this rank's pipeline stages
        dims = ParallelDims.of_mesh(mesh) if mesh is not None else None
        pp = dims.pp if dims is not None else 1
        if mesh is not None and self.optim.name == "muon":
            raise ValueError("--model.optimizer.name muon orthogonalizes whole weight matrices: it runs on one device"
                             " or under DDP (configs/strategy/ddp.yaml), not on FSDP, TP or PP meshes, whose weights"
                             " are sharded. Use --model.optimizer.name adamw with those strategies.")
        if mesh is not None:
            dims.check_model(self.config)
            self.check_parallel(dims)
            if pp > 1:
                if not self.supports_pipeline:
                    raise ValueError(f"{type(self).__name__} does not run as pipeline stages; use"
                                     " configs/strategy/ddp.yaml, fsdp.yaml or tp.yaml")
                parts = self.split_pipeline(mesh)
        # the sequence plan --simulate applies too: TP + SP, activation checkpointing, compile, then FSDP2 (or HSDP)
        parallelize(parts, mesh, dims, par.activation_checkpointing, par.ac_every, par.compile,
                    getattr(torch, par.fsdp_param_dtype) if par.fsdp_param_dtype else None, self.extra_modules())
        if pp > 1:
            self.setup_pipeline(mesh, parts)
        self._parallelized = True

    @property
    def data_parallel_size(self) -> int:
        """How many different batches one step sees: the mesh's data-parallel degree (tensor-parallel ranks and
        pipeline stages share a batch), or every process under DDP."""
        mesh = self.device_mesh
        if mesh is not None:  # build_mesh's DP is a flattened dimension: not in mesh_dim_names
            return ParallelDims.of_mesh(mesh).dp
        return self.trainer.world_size

    def check_parallel(self, dims: ParallelDims) -> None:
        """Refuse layouts the task cannot run, before any work (override to add checks)."""

    def split_pipeline(self, mesh) -> list[nn.Module]:  # pragma: no cover - overridden where supports_pipeline
        """Cut the network to this pipeline rank's part; return the stages it runs."""
        raise NotImplementedError

    # ------------------------------------------------------------------ optimization
    def decay_steps(self) -> int:
        """Length of the cosine schedule: ``optimizer.lr_decay_steps``, or the optimizer steps the run will take."""
        steps = self.optim.lr_decay_steps or self.trainer.estimated_stepping_batches
        if steps is None or not math.isfinite(steps) or steps < 0:
            raise ValueError("Set --trainer.max_steps (or --trainer.max_epochs) or --model.optimizer.lr_decay_steps:"
                             " the cosine schedule needs a length")
        return int(steps)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = self.build_optimizer(self.decay_steps())
        # the groups' settings as this run configures them, to apply over a resumed checkpoint's (on_train_start)
        self._configured_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """On a resumed fit, apply this run's optimizer settings and schedule over the restored ones.

        Restoring a checkpoint loads the optimizer's parameter groups (learning rate, weight decay, betas...) and
        the schedule's base learning rates as they were saved, so a resume with
        ``--model.optimizer.learning_rate 1e-4``
        would silently keep the old rate. Here each group takes this run's settings and the learning rate its
        schedule gives at the restored step (``base * lambda(step)``, the very expression ``LambdaLR`` uses, so an
        unchanged config resumes bit-identically). Tasks whose groups change during training (staged
        fine-tuning) leave ``applied_on_resume`` without optimizer settings, and resuming them with changed
        settings is refused instead (``LitLLMCLI._check_resumed_hparams``)."""
        configured = getattr(self, "_configured_groups", None)
        if self.trainer.ckpt_path is None or configured is None or not self.trainer.lr_scheduler_configs:
            return
        if "optimizer.learning_rate" not in self.applied_on_resume:
            return
        optimizer = self.trainer.optimizers[0]
        scheduler = self.trainer.lr_scheduler_configs[0].scheduler
        if len(optimizer.param_groups) != len(configured) or not hasattr(scheduler, "lr_lambdas"):
            raise RuntimeError(f"the restored optimizer has {len(optimizer.param_groups)} parameter groups, this run"
                               f" configures {len(configured)}; resume with the config that trained the checkpoint")
        for group, mine, lmbda in zip(optimizer.param_groups, configured, scheduler.lr_lambdas):
            group.update({k: v for k, v in mine.items() if k != "lr"})
            group["lr"] = mine["initial_lr"] * lmbda(scheduler.last_epoch)
        scheduler.base_lrs = [mine["initial_lr"] for mine in configured]
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    def build_optimizer(self, decay_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """The optimizer over the task's parameter groups (``self.optim``: AdamW, or Muon for the blocks'
        matrices with AdamW for the rest) and the warm-up + cosine schedule."""
        hp = self.optim
        if hp.warmup_steps > decay_steps:
            raise ValueError(f"optimizer.warmup_steps ({hp.warmup_steps}) is larger than the decay length"
                             f" ({decay_steps})")
        kind = hp.name
        adamw = dict(lr=hp.learning_rate, betas=hp.betas, eps=hp.eps)
        groups, muon_groups = [], []
        hidden = optim.hidden_matrices(self.network) if kind == "muon" else set()
        for g in self.param_groups():
            g = dict(g)
            scale = g.pop("lr_scale", 1.0)
            params = list(g.pop("params"))
            groups.append(dict(g, params=[p for p in params if p not in hidden], lr=hp.learning_rate * scale))
            if kind == "muon":
                muon_groups.append(dict(g, params=[p for p in params if p in hidden], lr=hp.muon_lr * scale))
        if kind == "muon":
            optimizer = optim.MuonWithAdamW(muon_groups, groups, muon=dict(lr=hp.muon_lr, momentum=hp.muon_momentum),
                                            adamw=adamw)
        else:
            optimizer = torch.optim.AdamW(groups, **adamw)
        min_ratio = hp.min_lr / hp.learning_rate
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, hp.warmup_steps, decay_steps, min_ratio)
        )
        return optimizer, scheduler
