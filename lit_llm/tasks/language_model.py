"""Language modelling (causal next-token or BERT masked-LM) on the shared ``TransformerModule``: the loss,
the metrics (loss, perplexity, bits per byte) and the optimizer's parameter groups."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from lit_llm import checkpoint as ckpt_format
from lit_llm.data.masking import mask_tokens
from lit_llm.data.tokenizer import declare_special_tokens, declared_special_tokens, special_id
from lit_llm.model import ModelConfig, build_model
from lit_llm.model.loss import IGNORE_INDEX, lm_loss
from lit_llm.parallel.dims import PP
from lit_llm.parallel.pipeline import (
    PipelineRunner,
    TiedWeights,
    adopt_blocks,
    build_schedule,
    clip_across_stages,
    split_stages,
)
from lit_llm.tasks.base import ParallelConfig, TransformerModule
from lit_llm.tasks.optim import APPLIED_ON_RESUME, OptimizerConfig


class LanguageModel(TransformerModule):
    """Train a transformer of any family: causal families on next-token prediction, the ``bert`` family on
    masked-LM (BERT's 80/10/10 corruption of ``mask_prob`` of the tokens; needs a ``[MASK]`` token).

    Args:
        preset: name of a model preset (see ``lit_llm.model.config.PRESETS``).
        model_args: overrides of preset fields, e.g. ``{n_layer: 6, dropout: 0.1}``.
        vocab_size: tokenizer size; the CLI links it from the data module.
        block_size: context length; the CLI links it from the data module.
        optimizer: the optimizer and its warm-up + cosine schedule (``OptimizerConfig``: ``name`` adamw or muon,
            ``learning_rate``, ``min_lr``, ``warmup_steps``, ``lr_decay_steps``, ``weight_decay``, ``betas``,
            ``eps``, ``muon_lr``, ``muon_momentum``); set only the fields to change, e.g.
            ``--model.optimizer.learning_rate 3e-4``.
        label_smoothing: cross-entropy label smoothing (training loss only; evaluation reports plain CE).
        z_loss: coefficient of the z-loss, mean (log Z)^2 of the softmax normalizer (PaLM); 0 turns it off.
        loss_chunk_size: compute the training loss this many tokens at a time without materializing the full
            (tokens, vocab) logits (chunked cross-entropy); None computes it in one go.
        mask_prob: fraction of tokens the masked-LM objective predicts (``bert`` family only).
        parallel: activation checkpointing, compile, FSDP dtype and pipeline schedule (see ``ParallelConfig``).
        init_from: start from the weights of this lit_llm checkpoint (continued or domain-adaptive pretraining)
            with a fresh optimizer and schedule; unlike ``--ckpt_path``, nothing else is resumed. Its model
            config is used (``model_args`` may change dropout only), and the data must use its tokenizer
            (``data.tokenizer.path`` set to the same checkpoint).
    """

    supports_pipeline = True
    # a resumed fit applies changes to these from the resumed step on (TransformerModule.on_train_start); the
    # network's shape, the optimizer's kind and init_from must stay as the checkpoint has them
    applied_on_resume = frozenset({"label_smoothing", "z_loss", "loss_chunk_size", "mask_prob",
                                   "parallel"}) | APPLIED_ON_RESUME

    def __init__(
        self,
        preset: str = "quickstart",
        model_args: Optional[dict[str, Any]] = None,
        vocab_size: Optional[int] = None,
        block_size: Optional[int] = None,
        optimizer: OptimizerConfig = OptimizerConfig(),
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        loss_chunk_size: Optional[int] = None,
        mask_prob: float = 0.15,
        parallel: Optional[ParallelConfig] = None,
        init_from: Optional[str] = None,
    ) -> None:
        super().__init__(parallel, optimizer)
        self.save_hyperparameters(ignore=["parallel", "optimizer"])
        self._keep_configs_as_dicts()
        self.init_tokenizer: Optional[str] = None  # the tokenizer of init_from, which the data must match
        # the roles of the tokenizer's special tokens when they are not lit_llm's [EOS] ... (an imported model's);
        # from init_from or the data's tokenizer, and saved in checkpoints
        self.special_tokens: Optional[dict[str, str]] = None
        if init_from is not None:
            self.config, init_info = self._init_config(init_from, model_args, vocab_size, block_size)
            self.init_tokenizer, self.special_tokens = init_info.tokenizer, init_info.special_tokens
        else:
            overrides = dict(model_args or {})
            if vocab_size is not None:
                overrides["vocab_size"] = vocab_size
            if block_size is not None:
                overrides["block_size"] = block_size
            self.config = ModelConfig.from_name(preset, **overrides)  # validates names before any work
        if not 0 <= label_smoothing < 1 or z_loss < 0 or (loss_chunk_size is not None and loss_chunk_size < 1):
            raise ValueError(
                f"Need 0 <= label_smoothing < 1, z_loss >= 0 and loss_chunk_size >= 1 or None; got {label_smoothing},"
                f" {z_loss}, {loss_chunk_size}"
            )
        self.model: Optional[torch.nn.Module] = None
        self.mask_id: Optional[int] = None  # masked-LM only, from the tokenizer
        self.tokenizer_json: Optional[str] = None  # set from the data module; saved in checkpoints
        self.tokens_seen = 0
        self.bytes_per_token: Optional[float] = None  # of the prepared corpus, for bits per byte
        self.last_report: dict[str, Any] = {}
        self.eval_loss = MeanMetric()
        self.eval_ppl = Perplexity(ignore_index=IGNORE_INDEX)

    @staticmethod
    def _init_config(path: str, model_args, vocab_size, block_size) -> tuple[ModelConfig, ckpt_format.CheckpointInfo]:
        info = ckpt_format.read_info(path, expect="language_model", purpose="model.init_from")
        cfg = info.model_config
        changed = sorted(set(model_args or {}) - {"dropout"})
        if changed:
            raise ValueError(f"model_args {changed} would change the architecture of init_from; only dropout may be set")
        if vocab_size is not None and vocab_size > cfg["vocab_size"]:
            raise ValueError(f"The data's tokenizer has {vocab_size:,} tokens, more than the {cfg['vocab_size']:,} of"
                             f" init_from; set data.tokenizer.path to {path} to use its tokenizer")
        if block_size is not None and block_size > cfg["block_size"]:
            raise ValueError(f"data.block_size {block_size} exceeds the block_size {cfg['block_size']} of init_from")
        return ModelConfig.from_dict({**cfg, **(model_args or {})}), info

    # ------------------------------------------------------------------ network and parallelism
    @property
    def network(self) -> torch.nn.Module:
        return self.model

    def build_network(self) -> None:
        if self.model is not None:
            return
        model = build_model(self.config)
        if self.hparams.init_from is not None:
            _, state, _ = ckpt_format.load_network(self.hparams.init_from, purpose="model.init_from")
            model.load_state_dict(state)
        self.model = model

    def split_pipeline(self, mesh) -> None:
        batch = getattr(getattr(self.trainer, "datamodule", None), "batch_size", None)
        if batch is not None and batch % self.parallel.microbatches:
            raise ValueError(f"--data.batch_size {batch} is not divisible by --model.parallel.microbatches"
                             f" {self.parallel.microbatches}")
        pp_mesh = mesh[PP]
        return split_stages(self.model, pp_mesh.get_local_rank(), pp_mesh.size(), self.parallel.stages_per_rank)

    def setup_pipeline(self, mesh, stages) -> None:
        pp_mesh = mesh[PP]
        stage, n = pp_mesh.get_local_rank(), pp_mesh.size()
        adopt_blocks(self.model, stages)
        schedule = build_schedule(stages, stage, n, self.trainer.strategy.root_device, pp_mesh.get_group(),
                                  self.parallel.microbatches, self.parallel.pipeline_schedule, self._pipeline_loss)
        tied = TiedWeights(self.model, mesh) if self.config.tie_embeddings else None
        if tied is not None:
            tied.sync_weights()
        self.pipeline = PipelineRunner(schedule, stage, n, pp_mesh.get_group(), tied)
        self.automatic_optimization = False  # the schedule runs forward and backward itself

    def _pipeline_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        return lm_loss(logits, targets, label_smoothing=hp.label_smoothing, z_loss=hp.z_loss)["loss"]

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "tokenizer"):
            self.tokenizer_json = dm.tokenizer.to_str()
            self.special_tokens = declared_special_tokens(dm.tokenizer) or self.special_tokens
            if self.init_tokenizer is not None and self.init_tokenizer != self.tokenizer_json:
                raise ValueError(
                    "The data's tokenizer differs from the one of model.init_from. Continued pretraining must keep the"
                    f" vocabulary: set data.tokenizer.path to {self.hparams.init_from}"
                )
            report = getattr(dm, "report", None) or {}
            self.bytes_per_token = report.get("bytes_per_token")
            if dm.tokenizer.get_vocab_size() > self.config.vocab_size:
                raise ValueError(
                    f"The tokenizer has {dm.tokenizer.get_vocab_size():,} tokens but the model's embedding holds"
                    f" {self.config.vocab_size:,}; use a smaller tokenizer or let the CLI link vocab_size from the data"
                )
        if not self.config.causal and self.tokenizer_json is not None:
            self.mask_id = special_id(declare_special_tokens(Tokenizer.from_str(self.tokenizer_json),
                                                             self.special_tokens), "mask")
            if self.mask_id is None:
                raise ValueError(
                    "The bert family trains with masked-LM and needs a [MASK] token in the tokenizer;"
                    " add it with --data.tokenizer.special_tokens '[\"[MASK]\"]'"
                )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    # ------------------------------------------------------------------ steps
    def _inputs_targets(self, batch: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of a block of block_size + 1 tokens: shifted for causal models, masked for BERT."""
        if self.config.causal:
            return batch[:, :-1], batch[:, 1:]
        special = () if self.mask_id is None else (self.mask_id,)
        return mask_tokens(batch[:, :-1], self.mask_id, self.config.vocab_size, self.hparams.mask_prob, generator, special)

    def _eval_inputs_targets(self, batch: torch.Tensor, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``_inputs_targets``, but masked-LM evaluation masks the same positions every time (a generator
        seeded by the batch index), so evaluations compare."""
        generator = None if self.config.causal else torch.Generator(batch.device).manual_seed(batch_idx)
        return self._inputs_targets(batch, generator)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.pipeline is not None:
            return self._pipeline_training_step(batch)
        x, y = self._inputs_targets(batch)
        hp = self.hparams
        kw = dict(label_smoothing=hp.label_smoothing, z_loss=hp.z_loss, count=self._target_count(y))
        if hp.loss_chunk_size:
            out = self.model.output
            parts = lm_loss(self.model(x, return_hidden=True), y, out.weight, out.bias, chunk_size=hp.loss_chunk_size, **kw)
        else:
            parts = lm_loss(self.model(x), y, **kw)
        self.tokens_seen += y.numel() * self.data_parallel_size
        # one self.log per step: each call costs Lightning ~0.5 ms on a small CPU (tokens_seen and tokens/s are
        # logged by lit_llm.callbacks.TokenThroughput at the logging interval); the loss parts only when they differ
        # with several processes, the mean over all of them: the loss of the global batch
        self.log("train_loss", parts["loss"], prog_bar=True, on_step=True, on_epoch=False,
                 sync_dist=self.trainer.world_size > 1)
        if hp.z_loss or hp.label_smoothing:
            self.log_dict({"train_ce": parts["ce"], "train_z_loss": parts["z_loss"]}, on_step=True, on_epoch=False)
        return parts["loss"]

    def _target_count(self, targets: torch.Tensor) -> Optional[torch.Tensor]:
        """The divisor of the training loss: None for the local count of targets, which every process shares
        when each block is full (pretraining); tasks whose targets vary per row override it."""
        return None

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._eval_step(batch, "val", batch_idx)

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._eval_step(batch, "test", batch_idx)

    def _pipeline_training_step(self, batch: torch.Tensor) -> torch.Tensor:
        """One optimizer step through the pipeline schedule (manual optimization)."""
        x, y = self._inputs_targets(batch)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad(set_to_none=True)
        loss = self.pipeline.train_step(x, y)  # every stage gets the same loss
        if self.trainer.gradient_clip_val:  # Lightning leaves clipping to manual optimization: clip over all stages
            tied = self.pipeline.tied.head_copy() if self.pipeline.tied is not None else None
            clip_across_stages(self.parameters(), self.trainer.gradient_clip_val, self.pipeline.group, tied)
        optimizer.step()
        scheduler.step()
        self.tokens_seen += y.numel() * self.data_parallel_size
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=True)
        return loss

    def _eval_step(self, batch: torch.Tensor, prefix: str, batch_idx: int) -> None:
        x, y = self._eval_inputs_targets(batch, batch_idx)
        if self.pipeline is not None:
            logits = self.pipeline.eval(x, y)
            if logits is None:  # not the last stage; metrics are summed over processes: other stages add nothing
                self.log(f"{prefix}_loss", self.eval_loss, prog_bar=True, on_step=False, on_epoch=True)
                self.log(f"{prefix}_ppl", self.eval_ppl, prog_bar=True, on_step=False, on_epoch=True)
                return
        else:
            logits = self.model(x)
        loss = lm_loss(logits, y)["loss"]  # plain cross-entropy, whatever the training loss options
        self.eval_loss.update(loss, weight=(y != IGNORE_INDEX).sum())
        self.eval_ppl.update(logits, y)
        self.log(f"{prefix}_loss", self.eval_loss, prog_bar=True, on_step=False, on_epoch=True)
        self.log(f"{prefix}_ppl", self.eval_ppl, prog_bar=True, on_step=False, on_epoch=True)

    def _eval_epoch_end(self, prefix: str) -> None:
        """Bits per byte (causal models): the loss in bits over the bytes of text per token, so models with
        different tokenizers compare (the corpus's bytes/token from the prepare report; validation blocks are
        a random sample of the same text). Also keeps the figures for the JSON report."""
        loss = self.eval_loss.compute().item()
        metrics = {f"{prefix}_loss": loss, f"{prefix}_ppl": math.exp(min(loss, 80.0))}
        if self.config.causal and self.bytes_per_token:
            metrics[f"{prefix}_bpb"] = loss / math.log(2) / self.bytes_per_token
            # the same value on every rank (from the synced loss); sync_dist only keeps Lightning from warning
            self.log(f"{prefix}_bpb", metrics[f"{prefix}_bpb"], on_step=False, on_epoch=True, sync_dist=True)
        self.last_report = {"stage": prefix, "step": self.global_step, "tokens_seen": self.tokens_seen, "metrics": metrics}

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Mean next-token (or masked-token) negative log-likelihood of each block, shape (B,)."""
        if self.pipeline is not None:
            raise NotImplementedError("predict under pipeline parallelism: consolidate the checkpoint and predict on one process")
        x, y = self._eval_inputs_targets(batch, batch_idx)
        nll = F.cross_entropy(self.model(x).transpose(1, 2), y, reduction="none", ignore_index=IGNORE_INDEX)  # (B, T)
        return nll.sum(dim=1) / (y != IGNORE_INDEX).sum(dim=1).clamp(min=1)

    # ------------------------------------------------------------------ optimization
    def param_groups(self) -> list[dict[str, Any]]:
        """Weight decay on matrices and embeddings only, not on biases and norm weights."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": self.optim.weight_decay, "name": "decay"},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "name": "no_decay"}]

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ckpt_format.attach(checkpoint, ckpt_format.CheckpointInfo(
            task="language_model", model_config=self.config.to_dict(), tokenizer=self.tokenizer_json,
            tokens_seen=self.tokens_seen, special_tokens=self.special_tokens,
            rng=ckpt_format.capture_rng(),  # dropout masks continue as in an uninterrupted run
        ))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if ckpt_format.KEY not in checkpoint:
            raise ValueError("This checkpoint was not written by lit_llm (no 'lit_llm' entry); pass a checkpoint that"
                             " `lit_llm fit` wrote")
        info = ckpt_format.CheckpointInfo.from_dict(checkpoint[ckpt_format.KEY])
        if info.task != "language_model":
            raise ValueError(f"This is a {info.task} checkpoint; a language model resumes only from its own"
                             " checkpoints (start a new run, or use --model.init_from for a language model's)")
        if self.tokenizer_json is not None and info.tokenizer != self.tokenizer_json:
            raise ValueError(
                "The data module's tokenizer does not match the tokenizer stored in the checkpoint. Use the corpus"
                " and tokenizer the checkpoint was trained with, or start a new run without --ckpt_path."
            )
        if info.config != self.config:
            raise ValueError(
                f"The checkpoint's model config {info.model_config} differs from this run's"
                f" {self.config.to_dict()}; pass the same model settings as the run that wrote it."
            )
        self.tokens_seen = info.tokens_seen
        self.special_tokens = self.special_tokens or info.special_tokens
        ckpt_format.restore_rng(info.rng)
