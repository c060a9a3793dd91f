"""One model-config dataclass and its named presets.

``ModelConfig.from_name("quickstart", dropout=0.1)`` returns a preset with overrides applied.
Derived fields (``head_dim``, ``intermediate_size``) are computed in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class ModelConfig:
    """Shape and options of the GPT-style decoder.

    Args:
        name: preset name this config came from (informational).
        vocab_size: number of token ids the embedding table holds.
        block_size: maximum context length (size of the learned position table).
        n_layer: number of transformer blocks.
        n_head: number of attention heads.
        n_embd: model width; must be divisible by ``n_head``.
        mlp_ratio: MLP hidden width as a multiple of ``n_embd`` (4 in GPT-2).
        dropout: dropout probability on embeddings, attention weights and residual branches.
        bias: add biases to linear layers and LayerNorms (GPT-2 has them).
        tie_embeddings: share the token embedding matrix with the output head.
        norm_eps: LayerNorm epsilon.
    """

    name: str = "custom"
    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    # derived in __post_init__
    head_dim: int = dataclasses.field(init=False)
    intermediate_size: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) <= 0:
                raise ValueError(f"ModelConfig.{key} must be positive, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"ModelConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head});"
                " change one of them"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        self.head_dim = self.n_embd // self.n_head
        self.intermediate_size = int(self.mlp_ratio * self.n_embd)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        """Return the preset ``name`` with ``overrides`` applied (e.g. ``vocab_size=65``)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown model preset {name!r}. Available presets: {', '.join(sorted(PRESETS))}")
        valid = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(
                f"Unknown ModelConfig field(s) {unknown} for preset {name!r}. Valid fields: {', '.join(sorted(valid))}"
            )
        return cls(**{"name": name, **PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments (derived fields left out), e.g. to store in a checkpoint."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return cls(**d)

    def num_parameters(self) -> int:
        """Exact parameter count, from the shapes alone (no model is built)."""
        c, v, f, b = self.n_embd, self.vocab_size, self.intermediate_size, int(self.bias)
        norm = c + b * c  # weight (+ bias)
        attn = 4 * (c * c + b * c)  # q, k, v, o projections
        mlp = (c * f + b * f) + (f * c + b * c)  # up, down
        n = self.n_layer * (2 * norm + attn + mlp) + norm  # blocks + final norm
        n += v * c + self.block_size * c  # token + position tables
        if not self.tie_embeddings:
            n += v * c  # separate output head
        return n


# Named presets. vocab_size and block_size are normally set from the data (the CLI links them).
PRESETS: dict[str, dict[str, Any]] = {
    # a few thousand parameters: unit tests and golden-loss checks
    "debug": dict(n_layer=2, n_head=2, n_embd=32, block_size=32),
    # nanoGPT's CPU "baby GPT" (shakespeare_char on a laptop): ~0.8M parameters
    "quickstart": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    # nanoGPT's GPU shakespeare_char config: ~10.7M parameters
    "shakespeare-gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
    # GPT-2 small (124M with tied embeddings, vocab 50257, context 1024)
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
}
