"""LoRA adapters (peft): the spec a classifier or a tuned language model is trained with, and how it is applied."""

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

    def peft_config(self):
        """This spec as peft's ``LoraConfig`` (peft is the ``lora`` extra: a clear error when it is missing)."""
        try:
            from peft import LoraConfig
        except ImportError as e:
            raise ImportError(f"LoRA (model.lora) needs peft, which is not installed ({e}): pip install"
                              " 'lit_llm[lora]'") from None
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=list(self.targets))


def add_lora(model, spec: LoraSpec):
    """``model`` inside peft's ``LoraModel``: adapters on the ``spec.targets`` projections, every other weight frozen."""
    config = spec.peft_config()
    from peft import LoraModel

    return LoraModel(model, config, "default")
