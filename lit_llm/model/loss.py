"""Language-model losses: cross-entropy with ignore_index, label smoothing and z-loss, plain or chunked.

The chunked form never builds the full (N, vocab) float32 logits: it projects ``chunk_size`` rows at a
time and recomputes each chunk's logits in the backward pass (activation checkpointing), so the loss's
peak memory is one chunk's logits instead of all of them.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _sums(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, z_coef: float,
          ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and summed z-loss (log Z)^2 over the tokens that are not ignored."""
    logits = logits.float()
    ce = F.cross_entropy(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="sum")
    if z_coef == 0:
        return ce, ce.new_zeros(())
    keep = targets != ignore_index
    z = torch.logsumexp(logits, dim=-1).pow(2)  # PaLM (Chowdhery et al. 2022) section 5: z-loss
    return ce, (z * keep).sum()


def lm_loss(
    hidden_or_logits: torch.Tensor,
    targets: torch.Tensor,
    head_weight: Optional[torch.Tensor] = None,
    head_bias: Optional[torch.Tensor] = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    chunk_size: Optional[int] = None,
    ignore_index: int = IGNORE_INDEX,
    count: Optional[torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """Mean loss over non-ignored targets and its parts: ``{"loss", "ce", "z_loss"}``.

    ``count`` replaces the divisor (the non-ignored targets here): data-parallel training on targets of varying
    length passes the mean count over its processes, so that the averaged gradients are those of the global
    batch's token mean, as on one process.

    Without ``chunk_size``, ``hidden_or_logits`` are logits (..., V). With it, they are the hidden states
    (..., C) before the output head, and ``head_weight`` (V, C) (and ``head_bias``) are applied chunk by chunk.
    """
    targets = targets.reshape(-1)
    count = (targets != ignore_index).sum().clamp(min=1) if count is None else count
    if chunk_size is None:
        ce, z = _sums(hidden_or_logits.reshape(targets.numel(), -1), targets, label_smoothing, z_loss, ignore_index)
    else:
        if head_weight is None:
            raise ValueError("The chunked loss needs the output head's weight")
        hidden = hidden_or_logits.reshape(targets.numel(), -1)

        def chunk_sums(h, t, w, b):
            return _sums(F.linear(h, w, b), t, label_smoothing, z_loss, ignore_index)

        ce = z = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, targets.numel(), chunk_size):
            sl = slice(start, start + chunk_size)
            c, zz = checkpoint(chunk_sums, hidden[sl], targets[sl], head_weight, head_bias, use_reentrant=False)
            ce, z = ce + c, z + zz
    ce, z = ce / count, z / count
    return {"loss": ce + z_loss * z, "ce": ce, "z_loss": z}
