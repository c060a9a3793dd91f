"""The optimizers the tasks offer: AdamW, or Muon for the hidden matrices with AdamW for the rest.

Muon (Jordan et al. 2024; ``torch.optim.Muon`` since torch 2.9) orthogonalizes the momentum of each 2-D
weight by a few Newton-Schulz iterations. It is meant for the matrices inside the transformer blocks only;
embeddings, the output head, norms and biases stay with AdamW. Lightning's automatic optimization steps one
optimizer, so ``MuonWithAdamW`` presents the two torch optimizers as one: their parameter groups side by
side (the learning-rate schedule and gradient clipping see every group), one closure call per step, and
a state dict that holds both.

``OptimizerConfig`` is the one typed set of optimizer and schedule settings every task takes as
``--model.optimizer.*`` (each task gives its own defaults as a default instance; a config names only the
fields it changes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import nn

OPTIMIZERS = ("adamw", "muon")


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer and its warm-up + cosine schedule (``TransformerModule.build_optimizer``).

    Args:
        name: ``adamw``, or ``muon``: ``torch.optim.Muon`` for the 2-D weights inside the transformer blocks, AdamW
            at ``learning_rate`` for the rest (embeddings, head, norms, biases). Muon runs on one device or under
            DDP only.
        learning_rate: peak learning rate after warm-up (of AdamW's groups; a task may scale it per group).
        min_lr: learning rate at the end of the cosine decay.
        warmup_steps: optimizer steps of linear warm-up.
        lr_decay_steps: optimizer step at which the cosine decay reaches ``min_lr`` (default: the run's length,
            ``trainer.max_steps``). Set it explicitly to resume into a longer run.
        weight_decay: decoupled weight decay, on matrices and embeddings only (not biases or norms).
        betas: AdamW betas.
        eps: AdamW epsilon.
        muon_lr: with ``muon``: peak learning rate of the Muon matrices (the schedule scales it like
            ``learning_rate``).
        muon_momentum: with ``muon``: Muon's (Nesterov) momentum.
    """

    name: Literal["adamw", "muon"] = "adamw"
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    lr_decay_steps: Optional[int] = None
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    muon_lr: float = 0.02
    muon_momentum: float = 0.95

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))  # a list after YAML or a checkpoint's hparams
        if self.name not in OPTIMIZERS:
            raise ValueError(f"model.optimizer.name must be adamw or muon, got {self.name!r}")
        numbers = (self.learning_rate, self.min_lr, self.weight_decay, self.eps, self.muon_lr, *self.betas)
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers) or len(self.betas) != 2:
            raise ValueError(f"model.optimizer: the learning rates, weight decay, eps and two betas must be finite"
                             f" numbers; got {self}")
        if self.learning_rate <= 0 or self.muon_lr <= 0 or not 0 <= self.min_lr <= self.learning_rate:
            raise ValueError(f"model.optimizer: need learning_rate > 0, muon_lr > 0 and 0 <= min_lr <= learning_rate;"
                             f" got {self.learning_rate}, {self.muon_lr}, {self.min_lr}")
        if self.warmup_steps < 0 or (self.lr_decay_steps is not None and self.lr_decay_steps < 1):
            raise ValueError(f"model.optimizer: need warmup_steps >= 0 and lr_decay_steps >= 1 or None; got"
                             f" {self.warmup_steps}, {self.lr_decay_steps}")
        if not all(0 <= b < 1 for b in self.betas) or self.weight_decay < 0 or self.eps <= 0:
            raise ValueError(f"model.optimizer: need betas in [0, 1), weight_decay >= 0 and eps > 0; got {self.betas},"
                             f" {self.weight_decay}, {self.eps}")

    @classmethod
    def of(cls, value: Union["OptimizerConfig", dict[str, Any], str, None],
           defaults: Optional["OptimizerConfig"] = None) -> "OptimizerConfig":
        """The config itself; or a dict (a checkpoint's hyperparameters, or ``{"learning_rate": 1e-2}`` from
        Python) over ``defaults`` (a task's own), setting only the fields it names; None gives ``defaults``."""
        defaults = defaults or cls()
        if value is None or isinstance(value, cls):
            return value or defaults
        if isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(f"model.optimizer has no setting {unknown}; its settings are"
                                 f" {[f.name for f in fields(cls)]}")
            return replace(defaults, **value)
        if value in OPTIMIZERS:  # a checkpoint saved before OptimizerConfig: hparams["optimizer"] was the kind
            return replace(defaults, name=value)
        raise TypeError(f"model.optimizer must be an OptimizerConfig or a dict, got {value!r}")

    def as_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint's hyperparameters (weights-only loading)."""
        return asdict(self)


# what a resumed fit may change (applied from the resumed step on): every setting but the optimizer's kind
APPLIED_ON_RESUME = frozenset(f"optimizer.{f.name}" for f in fields(OptimizerConfig) if f.name != "name")


def hidden_matrices(network: nn.Module) -> set[nn.Parameter]:
    """The 2-D weights inside the transformer blocks (``network.layers``): the parameters Muon is for."""
    layers = getattr(network, "layers", None)
    if layers is None:
        return set()
    return {p for p in layers.parameters() if p.dim() == 2}


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on ``muon_groups`` and AdamW on ``adamw_groups``, stepped together as one optimizer.

    Args:
        muon_groups: parameter groups of 2-D matrices (each may set ``lr`` and ``weight_decay``).
        adamw_groups: parameter groups of everything else.
        muon: keyword arguments of ``torch.optim.Muon`` (``lr``, ``momentum``, ``weight_decay``, ...).
        adamw: keyword arguments of ``torch.optim.AdamW``.
    """

    def __init__(self, muon_groups: list[dict[str, Any]], adamw_groups: list[dict[str, Any]],
                 muon: dict[str, Any], adamw: dict[str, Any]) -> None:
        muon_groups = [g for g in muon_groups if g["params"]]
        adamw_groups = [g for g in adamw_groups if g["params"]]
        if not muon_groups:
            raise ValueError("optimizer 'muon' found no 2-D weights in the transformer blocks to optimize; use"
                             " --model.optimizer.name adamw")
        self.muon = torch.optim.Muon(muon_groups, **muon)
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw) if adamw_groups else None
        self._inner = [o for o in (self.muon, self.adamw) if o is not None]
        super().__init__([p for o in self._inner for g in o.param_groups for p in g["params"]], {})
        # the inner optimizers' own group dicts: a schedule that sets group["lr"] here sets it there
        self.param_groups = [g for o in self._inner for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self._inner:
            optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict() if self.adamw else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("This optimizer state is not a Muon + AdamW state (the checkpoint was trained with"
                             " another --model.optimizer.name); resume with the optimizer it was trained with")
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = [g for o in self._inner for g in o.param_groups]
