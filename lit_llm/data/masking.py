"""BERT's masked-LM corruption (Devlin et al. 2019, section 3.1)."""

from __future__ import annotations

from typing import Optional

import torch

from lit_llm.model.loss import IGNORE_INDEX


def mask_tokens(
    ids: torch.Tensor, mask_id: int, vocab_size: int, rate: float = 0.15, generator: Optional[torch.Generator] = None,
    special_ids: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``rate`` of the positions; of those, 80% become ``mask_id``, 10% a random token, 10% stay.

    Returns (inputs, labels) where labels are the original ids at chosen positions and IGNORE_INDEX elsewhere.
    Positions holding ``special_ids`` are never chosen.
    """
    if not 0 < rate < 1:
        raise ValueError(f"mask rate must be in (0, 1), got {rate}")
    device = ids.device
    rand = lambda: torch.rand(ids.shape, generator=generator, device=device)  # noqa: E731
    chosen = rand() < rate
    for s in special_ids:
        chosen &= ids != s
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    roll = rand()
    to_mask = chosen & (roll < 0.8)
    to_random = chosen & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, device=device)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels
