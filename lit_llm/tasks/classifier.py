"""Sequence classification on a lit_llm backbone: a pretrained checkpoint (any family) plus a linear head.

Pooling: the last non-pad token for causal decoders (the only position that has seen the whole text), the
``[CLS]`` position or the masked mean for the encoder. The tokenizer comes from the pretrained checkpoint
and travels in every classifier checkpoint, so data, training and serving use one vocabulary.

Fine-tuning stages (head-only warm-up, gradual unfreezing) are callbacks (``lit_llm.callbacks.finetuning``);
layer-wise learning-rate decay is set here, because it shapes the optimizer's parameter groups. LoRA
adapters come from peft, which injects them into our ``nn.Linear`` projections by name and merges them
back for export (``merge_lora``).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from lit_llm import checkpoint as ckpt_format
from lit_llm.data.tokenizer import load_tokenizer
from lit_llm.model import ModelConfig, build_model
from lit_llm.model.lora import LoraSpec, add_lora
from lit_llm.parallel import ParallelDims
from lit_llm.tasks.base import ParallelConfig, TransformerModule
from lit_llm.tasks.optim import OptimizerConfig

__all__ = ["LoraSpec", "SequenceClassifier"]


POOLINGS = ("auto", "last", "cls", "mean")


def _as_dict(spec: Any) -> Optional[dict[str, Any]]:
    """A LoRA spec as a dict: a LoraSpec when the module is built in Python, already a dict in the
    hyperparameters LightningCLI records from the config."""
    return None if spec is None else dict(spec) if isinstance(spec, dict) else dataclasses.asdict(spec)


class SequenceClassifier(TransformerModule):
    """Classify texts with a lit_llm transformer and a linear head.

    Args:
        init_from: the pretrained lit_llm checkpoint to start from (any family). Its config and tokenizer
            are used. None trains from scratch (then give ``model`` and ``tokenizer``).
        preset: model preset when training from scratch.
        model_args: overrides of the preset (from scratch), or of ``dropout`` only (from a checkpoint).
        tokenizer: tokenizer.json or .ckpt whose tokenizer to use when training from scratch.
        num_classes: number of classes.
        label_names: class names in id order (reports and serving).
        pooling: ``last`` (last non-pad token), ``cls`` (first token) or ``mean``; ``auto``: last for causal
            models, cls for the encoder.
        head_dropout: dropout before the head.
        optimizer: the optimizer and its schedule (``OptimizerConfig``); ``learning_rate`` is the head's, the top
            of the layer-wise decay, and ``muon`` is for the backbone blocks' 2-D weights (scaled by
            ``layer_decay`` per block, like the rest; AdamW for the rest, the head included).
        layer_decay: layer-wise learning-rate decay (Howard & Ruder 2018; Clark et al. 2020): block i from the
            top trains at ``learning_rate * layer_decay ** i``, the embeddings at ``layer_decay ** (n_layer + 1)``.
        lora: train LoRA adapters and the head instead of the whole backbone.
        parallel: activation checkpointing, compile and FSDP dtype under a parallel strategy (``ParallelConfig``).
    """

    def __init__(
        self,
        init_from: Optional[str] = None,
        preset: str = "debug",
        model_args: Optional[dict[str, Any]] = None,
        tokenizer: Optional[str] = None,
        num_classes: int = 2,
        label_names: Optional[list[str]] = None,
        pooling: Literal["auto", "last", "cls", "mean"] = "auto",
        head_dropout: float = 0.1,
        optimizer: OptimizerConfig = OptimizerConfig(min_lr=0.0, warmup_steps=0, weight_decay=0.01,
                                                     betas=(0.9, 0.999)),
        layer_decay: float = 1.0,
        lora: Optional[LoraSpec] = None,
        parallel: Optional[ParallelConfig] = None,
    ) -> None:
        super().__init__(parallel, optimizer)
        self.save_hyperparameters(ignore=["parallel", "optimizer"])
        self._keep_configs_as_dicts()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if num_classes < 2 or not 0 < layer_decay <= 1:
            raise ValueError(f"Need num_classes >= 2 and 0 < layer_decay <= 1; got {num_classes}, {layer_decay}")
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(f"label_names has {len(label_names)} names but num_classes is {num_classes}")
        state = None
        if init_from is not None:
            # a language model's checkpoint, or a classifier's (its backbone)
            config, state, self.tokenizer = ckpt_format.load_network(init_from, expect=None,
                                                                     purpose="model.init_from")
            extra = set(model_args or {}) - {"dropout"}
            if extra:
                raise ValueError(f"model_args {sorted(extra)} would change the pretrained architecture; only dropout may be set")
            config = ModelConfig.from_dict({**config.to_dict(), **(model_args or {})})
        else:
            if tokenizer is None:
                raise ValueError("A classifier trained from scratch needs model.tokenizer (a tokenizer.json or .ckpt);"
                                 " or give model.init_from to fine-tune a pretrained model")
            self.tokenizer = load_tokenizer(tokenizer)
            args = {"vocab_size": self.tokenizer.get_vocab_size(), **(model_args or {})}
            label = args.pop("name", None)  # a stored config (``restore``) carries its own name
            config = ModelConfig.from_name(preset, **args)
            if label is not None:
                config = dataclasses.replace(config, name=label)
        if self.tokenizer.get_vocab_size() > config.vocab_size:
            raise ValueError(
                f"The tokenizer has {self.tokenizer.get_vocab_size():,} tokens but the model's embedding holds"
                f" {config.vocab_size:,}: the checkpoint and tokenizer do not belong together"
            )
        self.config = config
        self.pooling = pooling if pooling != "auto" else ("last" if config.causal else "cls")
        if config.causal and self.pooling == "cls":
            raise ValueError("cls pooling needs the encoder: in a causal model the first token sees only itself; use last")
        backbone = build_model(config)
        if state is not None:
            backbone.load_state_dict(state)
        self._drop_lm_head(backbone)
        self.backbone: nn.Module = backbone
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(config.n_embd, num_classes))
        if lora is not None:
            self._add_lora(lora)
        kw = dict(num_classes=num_classes)
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(average="micro", **kw), "f1_macro": MulticlassF1Score(average="macro", **kw),
            "precision": MulticlassPrecision(average="macro", **kw), "recall": MulticlassRecall(average="macro", **kw),
            **({"f1": BinaryF1Score()} if num_classes == 2 else {}),
        })
        self.val_metrics, self.test_metrics = metrics.clone(prefix="val_"), metrics.clone(prefix="test_")
        self.val_confusion = MulticlassConfusionMatrix(**kw)
        self.test_confusion = MulticlassConfusionMatrix(**kw)
        self.eval_loss = MeanMetric()
        self.last_report: dict[str, Any] = {}

    # ------------------------------------------------------------------ model
    @staticmethod
    def _drop_lm_head(backbone: nn.Module) -> None:
        """The language-model head is not used for classification (and would get no gradient under DDP)."""
        backbone.output = None
        if hasattr(backbone, "head_dense"):  # BERT's MLM transform
            backbone.head_dense = backbone.head_norm = None

    def _add_lora(self, spec: LoraSpec) -> None:
        self.backbone = add_lora(self.backbone, spec)  # freezes every non-adapter backbone weight

    @property
    def core(self) -> nn.Module:
        """The transformer itself (inside peft's wrapper when LoRA is on)."""
        return self.backbone.model if hasattr(self.backbone, "peft_config") else self.backbone

    def merge_lora(self) -> None:
        """Fold the LoRA updates into the projection weights and drop the adapters (same logits, plain modules)."""
        if not hasattr(self.backbone, "peft_config"):
            raise ValueError("This classifier has no LoRA adapters to merge")
        self.backbone = self.backbone.merge_and_unload()

    # ------------------------------------------------------------------ parallelism (TransformerModule)
    def build_network(self) -> None:
        """Built in ``__init__`` (the pretrained weights, LoRA and the head need it there)."""

    @property
    def network(self) -> nn.Module:
        return self.core

    def extra_modules(self) -> list[nn.Module]:
        return [self.head]

    def check_parallel(self, dims: ParallelDims) -> None:
        if self.hparams.lora is not None:
            raise ValueError("LoRA adapters are not sharded here: fine-tune with LoRA under configs/strategy/ddp.yaml,"
                             " or drop model.lora to use FSDP or tensor parallelism")

    @property
    def blocks(self) -> list[nn.Module]:
        core = self.core
        return [core.layers[k] for k in sorted(core.layers, key=int)]

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class logits (B, num_classes). ``attention_mask`` (B, T) is True on real tokens (right padding)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        if self.config.causal:
            h = self.core(input_ids, return_hidden=True)  # right padding never reaches earlier positions
        else:
            h = self.core.encode(input_ids, attention_mask=attention_mask)
        if self.pooling == "last":
            last = attention_mask.long().sum(1).clamp(min=1) - 1
            pooled = h[torch.arange(h.size(0), device=h.device), last]
        elif self.pooling == "cls":
            pooled = h[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return self.head(pooled)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        # with several processes, the mean over all of them: the loss of the global batch
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=self.trainer.world_size > 1)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], metrics: MetricCollection, confusion) -> None:
        logits = self(batch["input_ids"], batch["attention_mask"])
        self.eval_loss.update(F.cross_entropy(logits, batch["labels"], reduction="sum") / logits.size(0), logits.size(0))
        preds = logits.argmax(-1)
        metrics.update(preds, batch["labels"])
        confusion.update(preds, batch["labels"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, self.val_confusion)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, self.test_confusion)

    def _eval_epoch_end(self, stage: str, metrics: MetricCollection, confusion) -> None:
        values = {k: v.item() for k, v in metrics.compute().items()}
        values[f"{stage}_loss"] = self.eval_loss.compute().item()
        # torchmetrics already reduced over processes, so every rank holds the same values
        self.log_dict(values, prog_bar=True, sync_dist=True)
        matrix = confusion.compute()
        self.last_report = {
            "stage": stage, "step": self.global_step, "examples": int(matrix.sum().item()),
            "metrics": values, "confusion_matrix": matrix.tolist(),
            "label_names": self.hparams.label_names or [str(i) for i in range(self.hparams.num_classes)],
        }
        metrics.reset()
        confusion.reset()
        self.eval_loss.reset()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_metrics, self.val_confusion)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_metrics, self.test_confusion)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self(batch["input_ids"], batch["attention_mask"]).softmax(-1)
        return {"probs": probs, "labels": probs.argmax(-1)}

    # ------------------------------------------------------------------ optimizer
    def _depth(self, name: str) -> int:
        """Distance from the top for layer-wise LR decay: 0 for the head and final norm, i + 1 for the i-th
        block from the top, n_layer + 1 for the embeddings."""
        if name.startswith("head."):
            return 0
        parts = name.split(".")
        if "layers" in parts:
            return self.config.n_layer - int(parts[parts.index("layers") + 1])
        if any(p in ("norm",) for p in parts[-2:-1]):
            return 0
        return self.config.n_layer + 1

    def param_groups(self) -> list[dict[str, Any]]:
        """One group per (depth, decayed or not), the learning rate scaled by ``layer_decay ** depth``."""
        hp = self.hparams
        groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            # LoRA freezes the base weights for good; staged fine-tuning freezes and unfreezes later, so every
            # other parameter is in the optimizer from the start (a frozen one has no gradient and is skipped)
            if hp.lora is not None and not p.requires_grad:
                continue
            groups.setdefault((self._depth(name), p.dim() >= 2), []).append(p)
        return [{"params": ps, "lr_scale": hp.layer_decay**depth, "weight_decay": self.optim.weight_decay if decay else 0.0,
                 "depth": depth, "name": f"depth{depth}/{'decay' if decay else 'no_decay'}"}
                for (depth, decay), ps in sorted(groups.items())]

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_info(self) -> ckpt_format.CheckpointInfo:
        hp = self.hparams
        return ckpt_format.CheckpointInfo(
            task="classification", model_config=self.config.to_dict(), tokenizer=self.tokenizer.to_str(),
            num_classes=hp.num_classes, label_names=hp.label_names, pooling=self.pooling,
            lora=_as_dict(hp.lora), rng=ckpt_format.capture_rng())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ckpt_format.attach(checkpoint, self.checkpoint_info())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = ckpt_format.CheckpointInfo.from_dict(checkpoint.get(ckpt_format.KEY) or {"task": None,
                                                                                       "model_config": {}, "tokenizer": ""})
        if info.task != "classification":
            raise ValueError("This is not a classifier checkpoint; fine-tune from it with model.init_from instead of --ckpt_path")
        if info.tokenizer != self.tokenizer.to_str():
            raise ValueError("The checkpoint's tokenizer differs from this model's; use the model config the checkpoint was trained with")
        if info.config != self.config or info.num_classes != self.hparams.num_classes:
            raise ValueError(
                f"The checkpoint's model ({info.model_config}, {info.num_classes} classes) differs from this"
                f" run's ({self.config.to_dict()}, {self.hparams.num_classes} classes)"
            )
        ckpt_format.restore_rng(info.rng)

    @classmethod
    def restore(cls, path: str | Path, map_location: str = "cpu") -> "SequenceClassifier":
        """A classifier checkpoint alone back into a model (for serving and export): the pretrained file it
        started from is not needed."""
        info, ckpt = ckpt_format.load(path, expect="classification", purpose="restoring a classifier")
        hp = ckpt.get("hyper_parameters", {})
        kept = {"label_names": info.label_names, **{k: hp[k] for k in ("label_names", "head_dropout") if k in hp}}
        damaged = ckpt_format.DAMAGED_HINT
        try:
            with tempfile.TemporaryDirectory() as d:  # the from-scratch path, with the stored config and tokenizer
                tok_path = Path(d) / "tokenizer.json"
                tok_path.write_text(info.tokenizer)
                # every field of the stored config overrides the preset, its name included
                model = cls(preset="debug", model_args=info.model_config, tokenizer=str(tok_path),
                            num_classes=info.num_classes, pooling=info.pooling, lora=info.lora_spec(), **kept)
        except Exception as e:  # noqa: BLE001 - a bad config or tokenizer JSON, whatever the library raises
            raise ckpt_format.CheckpointError(f"{path} holds a model config or tokenizer that does not load"
                                              f" ({str(e).splitlines()[0][:200]}){damaged}") from None
        try:
            model.load_state_dict(ckpt["state_dict"])
        except (RuntimeError, KeyError) as e:
            raise ckpt_format.CheckpointError(f"{path} does not match its own model config"
                                              f" ({str(e).splitlines()[0][:200]}){damaged}") from None
        return model.to(map_location).eval()
