"""The optimizers the tasks offer: AdamW, or Muon for the hidden matrices with AdamW for the rest.

Muon (Jordan et al. 2024; ``torch.optim.Muon`` since torch 2.9) orthogonalizes the momentum of each 2-D
weight by a few Newton-Schulz iterations. It is meant for the matrices inside the transformer blocks only;
embeddings, the output head, norms and biases stay with AdamW. Lightning's automatic optimization steps one
optimizer, so ``MuonWithAdamW`` presents the two torch optimizers as one: their parameter groups side by
side (the learning-rate schedule and gradient clipping see every group), one closure call per step, and
a state dict that holds both.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

OPTIMIZERS = ("adamw", "muon")


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
                             " --model.optimizer adamw")
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
                             " another --model.optimizer); resume with the optimizer it was trained with")
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = [g for o in self._inner for g in o.param_groups]
