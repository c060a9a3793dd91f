"""LightningModule for language modelling (causal next-token or BERT masked-LM): model + loss + optimizer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from tokenizers import Tokenizer

from lit_llm.data.masking import mask_tokens
from lit_llm.model import ModelConfig, build_model
from lit_llm.model.loss import IGNORE_INDEX, lm_loss
from lit_llm.parallel import ParallelDims, apply_ac, apply_compile, apply_fsdp, apply_tp
from lit_llm.parallel.pipeline import SCHEDULES, build_schedule, clip_across_stages, split_stage

CKPT_KEY = "lit_llm"  # checkpoint entry with everything needed to rebuild the model without the config files


def cosine_with_warmup(step: int, warmup_steps: int, decay_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up over ``warmup_steps``, cosine decay to ``min_ratio`` at ``decay_steps``,
    constant after (the schedule of nanoGPT's ``get_lr``)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)


class LanguageModel(L.LightningModule):
    """Train a transformer of any family: causal families on next-token prediction, the ``bert`` family on
    masked-LM (BERT's 80/10/10 corruption of ``mask_prob`` of the tokens; needs a ``[MASK]`` token).

    Args:
        model: name of a model preset (see ``lit_llm.model.config.PRESETS``).
        model_args: overrides of preset fields, e.g. ``{n_layer: 6, dropout: 0.1}``.
        vocab_size: tokenizer size; the CLI links it from the data module.
        block_size: context length; the CLI links it from the data module.
        learning_rate: peak learning rate after warm-up.
        min_lr: learning rate at the end of the cosine decay.
        warmup_steps: optimizer steps of linear warm-up.
        lr_decay_steps: optimizer step at which the cosine decay reaches ``min_lr``
            (default: ``trainer.max_steps``). Set it explicitly to resume into a longer run.
        weight_decay: AdamW weight decay, applied to matrices and embeddings only (not biases or norms).
        betas: AdamW betas.
        eps: AdamW epsilon.
        label_smoothing: cross-entropy label smoothing (training loss only; evaluation reports plain CE).
        z_loss: coefficient of the z-loss, mean (log Z)^2 of the softmax normalizer (PaLM); 0 turns it off.
        loss_chunk_size: compute the training loss this many tokens at a time without materializing the full
            (tokens, vocab) logits (chunked cross-entropy); None computes it in one go.
        mask_prob: fraction of tokens the masked-LM objective predicts (``bert`` family only).
        activation_checkpointing: ``none``, ``full`` (every block) or ``selective`` (every ``ac_every``-th).
        ac_every: with selective checkpointing, checkpoint every this many blocks.
        compile: ``torch.compile`` each block.
        fsdp_param_dtype: FSDP2 mixed-precision compute dtype, e.g. ``bfloat16`` (under ModelParallelStrategy).
        pipeline_schedule: ``gpipe`` or ``1f1b`` (with ``lit_llm.parallel.ModelParallel(pipeline_parallel_size>1)``).
        microbatches: microbatches per batch in the pipeline schedule (must divide the batch size).
        init_from: start from the weights of this lit_llm checkpoint (continued or domain-adaptive pretraining)
            with a fresh optimizer and schedule; unlike ``--ckpt_path``, nothing else is resumed. Its model
            config is used (``model_args`` may change dropout only), and the data must use its tokenizer
            (``data.tokenizer.path`` set to the same checkpoint).
    """

    def __init__(
        self,
        model: str = "quickstart",
        model_args: Optional[dict[str, Any]] = None,
        vocab_size: Optional[int] = None,
        block_size: Optional[int] = None,
        learning_rate: float = 1e-3,
        min_lr: float = 1e-4,
        warmup_steps: int = 100,
        lr_decay_steps: Optional[int] = None,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        loss_chunk_size: Optional[int] = None,
        mask_prob: float = 0.15,
        activation_checkpointing: str = "none",
        ac_every: int = 2,
        compile: bool = False,
        fsdp_param_dtype: Optional[str] = None,
        pipeline_schedule: str = "1f1b",
        microbatches: int = 2,
        init_from: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.init_tokenizer: Optional[str] = None  # the tokenizer of init_from, which the data must match
        if init_from is not None:
            self.config, self.init_tokenizer = self._init_config(init_from, model_args, vocab_size, block_size)
        else:
            overrides = dict(model_args or {})
            if vocab_size is not None:
                overrides["vocab_size"] = vocab_size
            if block_size is not None:
                overrides["block_size"] = block_size
            self.config = ModelConfig.from_name(model, **overrides)  # validates names before any work
        if not 0 <= label_smoothing < 1 or z_loss < 0 or (loss_chunk_size is not None and loss_chunk_size < 1):
            raise ValueError(
                f"Need 0 <= label_smoothing < 1, z_loss >= 0 and loss_chunk_size >= 1 or None; got {label_smoothing},"
                f" {z_loss}, {loss_chunk_size}"
            )
        if activation_checkpointing not in ("none", "full", "selective"):
            raise ValueError(f"activation_checkpointing must be none, full or selective, got {activation_checkpointing!r}")
        if fsdp_param_dtype is not None and not isinstance(getattr(torch, fsdp_param_dtype, None), torch.dtype):
            raise ValueError(f"fsdp_param_dtype must name a torch dtype such as bfloat16, got {fsdp_param_dtype!r}")
        if pipeline_schedule not in SCHEDULES or microbatches < 1:
            raise ValueError(f"pipeline_schedule must be one of {SCHEDULES} and microbatches >= 1; got"
                             f" {pipeline_schedule!r}, {microbatches}")
        self.model: Optional[torch.nn.Module] = None
        self._pipeline = None  # (schedule, stage index, number of stages, pp process group) under pipeline parallel
        self.mask_id: Optional[int] = None  # masked-LM only, from the tokenizer
        self.tokenizer_json: Optional[str] = None  # set from the data module; saved in checkpoints
        self.tokens_seen = 0
        self.bytes_per_token: Optional[float] = None  # of the prepared corpus, for bits per byte
        self.last_report: dict[str, Any] = {}
        self.eval_loss = MeanMetric()
        self.eval_ppl = Perplexity(ignore_index=IGNORE_INDEX)

    @staticmethod
    def _init_config(path: str, model_args, vocab_size, block_size) -> tuple[ModelConfig, str]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"init_from checkpoint {path} does not exist; pass the .ckpt that `lit_llm fit` wrote")
        extra = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(CKPT_KEY) or {}
        if extra.get("task", "lm") != "lm" or "model_config" not in extra or not extra.get("tokenizer"):
            raise ValueError(f"{path} is not a lit_llm language-model checkpoint (no model config and tokenizer)")
        cfg = extra["model_config"]
        changed = sorted(set(model_args or {}) - {"dropout"})
        if changed:
            raise ValueError(f"model_args {changed} would change the architecture of init_from; only dropout may be set")
        if vocab_size is not None and vocab_size > cfg["vocab_size"]:
            raise ValueError(f"The data's tokenizer has {vocab_size:,} tokens, more than the {cfg['vocab_size']:,} of"
                             f" init_from; set data.tokenizer.path to {path} to use its tokenizer")
        if block_size is not None and block_size > cfg["block_size"]:
            raise ValueError(f"data.block_size {block_size} exceeds the block_size {cfg['block_size']} of init_from")
        return ModelConfig.from_dict({**cfg, **(model_args or {})}), extra["tokenizer"]

    def configure_model(self) -> None:
        """Build the model, then apply parallelism from outside it. Under Lightning's ModelParallelStrategy
        ``self.device_mesh`` has "data_parallel" and "tensor_parallel" dimensions (and "pipeline_parallel" under
        lit_llm's ModelParallel): the pipeline stage is cut first, then tensor + sequence parallel, activation
        checkpointing and compile per block, then FSDP2 over data parallel. The full
        model is built (seeded) before it is sharded, so every layout starts from the same weights as one
        process."""
        if self.model is not None:
            return
        hp = self.hparams
        model = build_model(self.config)
        if hp.init_from is not None:
            ckpt = torch.load(hp.init_from, map_location="cpu", weights_only=True, mmap=True)
            model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
        mesh = self.device_mesh
        names = mesh.mesh_dim_names if mesh is not None else ()
        pp = mesh["pipeline_parallel"].size() if "pipeline_parallel" in names else 1
        if mesh is not None:
            dims = ParallelDims(world_size=mesh.size(), dp_shard=mesh["data_parallel"].size(),
                                tp=mesh["tensor_parallel"].size(), pp=pp)
            dims.check_model(self.config)
            if dims.tp > 1 and pp > 1:
                raise ValueError("Pipeline parallel does not combine with tensor parallel here yet; use pp x dp")
            if pp > 1:
                batch = getattr(getattr(self.trainer, "datamodule", None), "batch_size", None)
                if batch is not None and batch % hp.microbatches:
                    raise ValueError(f"--data.batch_size {batch} is not divisible by --model.microbatches {hp.microbatches}")
                split_stage(model, mesh["pipeline_parallel"].get_local_rank(), pp)
            if dims.tp > 1:
                apply_tp(model, mesh["tensor_parallel"])
        if hp.activation_checkpointing != "none":
            apply_ac(model, hp.activation_checkpointing, hp.ac_every)
        if hp.compile:
            apply_compile(model)
        if mesh is not None:
            dtype = getattr(torch, hp.fsdp_param_dtype) if hp.fsdp_param_dtype else None
            apply_fsdp(model, mesh["data_parallel"], param_dtype=dtype)
        self.model = model
        if pp > 1:
            pp_mesh = mesh["pipeline_parallel"]
            stage = pp_mesh.get_local_rank()
            schedule = build_schedule(model, stage, pp, self.trainer.strategy.root_device, pp_mesh.get_group(),
                                      hp.microbatches, hp.pipeline_schedule, self._pipeline_loss)
            self._pipeline = (schedule, stage, pp, pp_mesh.get_group())
            self.automatic_optimization = False  # the schedule runs forward and backward itself

    def _pipeline_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        return lm_loss(logits, targets, label_smoothing=hp.label_smoothing, z_loss=hp.z_loss)["loss"]

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "tokenizer"):
            self.tokenizer_json = dm.tokenizer.to_str()
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
            self.mask_id = Tokenizer.from_str(self.tokenizer_json).token_to_id("[MASK]")
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
        if self._pipeline is not None:
            return self._pipeline_training_step(batch)
        x, y = self._inputs_targets(batch)
        hp = self.hparams
        kw = dict(label_smoothing=hp.label_smoothing, z_loss=hp.z_loss)
        if hp.loss_chunk_size:
            out = self.model.output
            parts = lm_loss(self.model(x, return_hidden=True), y, out.weight, out.bias, chunk_size=hp.loss_chunk_size, **kw)
        else:
            parts = lm_loss(self.model(x), y, **kw)
        self.tokens_seen += y.numel() * self.trainer.world_size
        # one self.log per step: each call costs Lightning ~0.5 ms on a small CPU (tokens_seen and tokens/s are
        # logged by lit_llm.callbacks.TokenThroughput at the logging interval); the loss parts only when they differ
        # with several processes, the mean over all of them: the loss of the global batch
        self.log("train_loss", parts["loss"], prog_bar=True, on_step=True, on_epoch=False,
                 sync_dist=self.trainer.world_size > 1)
        if hp.z_loss or hp.label_smoothing:
            self.log_dict({"train_ce": parts["ce"], "train_z_loss": parts["z_loss"]}, on_step=True, on_epoch=False)
        return parts["loss"]

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._eval_step(batch, "val", batch_idx)

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._eval_step(batch, "test", batch_idx)

    def _pipeline_training_step(self, batch: torch.Tensor) -> torch.Tensor:
        """One optimizer step through the pipeline schedule (manual optimization)."""
        schedule, stage, n_stages, group = self._pipeline
        x, y = self._inputs_targets(batch)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] = []
        if stage == 0:
            schedule.step(x)
        elif stage == n_stages - 1:
            schedule.step(target=y, losses=losses)
        else:
            schedule.step()
        loss = torch.stack(losses).mean().detach() if losses else torch.zeros((), device=batch.device)
        torch.distributed.broadcast(loss, group=group, group_src=n_stages - 1)  # every stage logs the same loss
        if self.trainer.gradient_clip_val:  # Lightning leaves clipping to manual optimization: clip over all stages
            clip_across_stages(self.parameters(), self.trainer.gradient_clip_val, group)
        optimizer.step()
        scheduler.step()
        self.tokens_seen += y.numel() * self.trainer.world_size // n_stages
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=True)
        return loss

    def _eval_step(self, batch: torch.Tensor, prefix: str, batch_idx: int) -> None:
        x, y = self._eval_inputs_targets(batch, batch_idx)
        if self._pipeline is not None:
            schedule, stage, n_stages, _ = self._pipeline
            # every stage takes part; the last one gets the targets (without them a stage waits forever)
            logits = schedule.eval(x) if stage == 0 else schedule.eval(target=y, losses=[]) if stage == n_stages - 1 else schedule.eval()
            if stage != n_stages - 1:  # metrics are summed over processes: other stages add nothing
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
        if self._pipeline is not None:
            raise NotImplementedError("predict under pipeline parallelism: consolidate the checkpoint and predict on one process")
        x, y = self._eval_inputs_targets(batch, batch_idx)
        nll = F.cross_entropy(self.model(x).transpose(1, 2), y, reduction="none", ignore_index=IGNORE_INDEX)  # (B, T)
        return nll.sum(dim=1) / (y != IGNORE_INDEX).sum(dim=1).clamp(min=1)

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> dict[str, Any]:
        decay_steps = self.hparams.lr_decay_steps or self.trainer.max_steps
        if decay_steps is None or decay_steps < 0:
            raise ValueError("Set --trainer.max_steps or --model.lr_decay_steps: the cosine schedule needs a length")
        optimizer, scheduler = self.build_optimizer(decay_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def build_optimizer(self, decay_steps: int) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW with weight decay on matrices and embeddings only, and the warm-up + cosine schedule."""
        hp = self.hparams
        if hp.warmup_steps > decay_steps:
            raise ValueError(f"warmup_steps ({hp.warmup_steps}) is larger than the decay length ({decay_steps})")
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]  # matrices and embeddings
        no_decay = [p for p in params if p.dim() < 2]  # biases and norm weights
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.learning_rate,
            betas=tuple(hp.betas),
            eps=hp.eps,
        )
        min_ratio = hp.min_lr / hp.learning_rate
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, hp.warmup_steps, decay_steps, min_ratio)
        )
        return optimizer, scheduler

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = {
            "model_config": self.config.to_dict(),
            "tokenizer": self.tokenizer_json,
            "tokens_seen": self.tokens_seen,
            "torch_rng_state": torch.get_rng_state(),  # dropout masks continue as in an uninterrupted run
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get(CKPT_KEY)
        if extra is None:
            raise ValueError("This checkpoint was not written by lit_llm's LanguageModel (no 'lit_llm' entry)")
        saved_tok = extra.get("tokenizer")
        if self.tokenizer_json is not None and saved_tok is not None and saved_tok != self.tokenizer_json:
            raise ValueError(
                "The data module's tokenizer does not match the tokenizer stored in the checkpoint. Use the corpus"
                " and tokenizer the checkpoint was trained with, or start a new run without --ckpt_path."
            )
        if ModelConfig.from_dict(extra["model_config"]) != self.config:
            raise ValueError(
                f"The checkpoint's model config {extra['model_config']} differs from this run's"
                f" {self.config.to_dict()}; pass the same model settings as the run that wrote it."
            )
        self.tokens_seen = extra.get("tokens_seen", 0)
        if "torch_rng_state" in extra:
            torch.set_rng_state(extra["torch_rng_state"])
