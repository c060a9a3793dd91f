"""The LoRA adapter spec a classifier is fine-tuned with (peft injects the adapters; ``tasks/classifier.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoraSpec:
    """LoRA adapters (Hu et al. 2021) on the attention and MLP projections, via peft.

    Args:
        rank: adapter rank r.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter input.
        targets: names of the ``nn.Linear`` modules to adapt (lit_llm names: wq, wk, wv, wo, w1, w2, w3).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["wq", "wk", "wv", "wo"])

