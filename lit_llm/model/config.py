"""One model-config dataclass and its named presets.

``ModelConfig.from_name("gpt2-124m", dropout=0.1)`` returns a preset with overrides applied. The
``family`` picks the architecture and the defaults of its components:

- ``gpt2``: causal decoder, LayerNorm, learned positions, GELU MLP, biases, tied embeddings;
- ``llama``: causal decoder, RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention, no biases;
- ``bert``: bidirectional encoder (post-norm) with a masked-LM head.

Component fields left at ``None`` take the family's default; derived fields (``head_dim``, a default
``intermediate_size`` and ``n_kv_heads``) are resolved in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": dict(norm="layernorm", mlp="gelu_tanh", positions="learned", bias=True, tie_embeddings=True, norm_eps=1e-5),
    "llama": dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False, tie_embeddings=False, norm_eps=1e-5),
    "bert": dict(norm="layernorm", mlp="gelu", positions="learned", bias=True, tie_embeddings=True, norm_eps=1e-12),
}
CHOICES = {"norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "gelu_tanh", "swiglu"), "positions": ("learned", "rope")}


@dataclass
class ModelConfig:
    """Shape and options of a transformer.

    Args:
        name: preset name this config came from (informational).
        family: ``gpt2`` | ``llama`` (causal decoders) or ``bert`` (masked-LM encoder).
        vocab_size: number of token ids the embedding table holds.
        block_size: maximum context length (learned position table size, rotary cache length).
        n_layer: number of transformer blocks.
        n_head: number of attention (query) heads.
        n_embd: model width; must be divisible by ``n_head``.
        n_kv_heads: key/value heads for grouped-query attention (default: ``n_head``, i.e. multi-head).
        intermediate_size: MLP hidden width (default: ``mlp_ratio * n_embd``).
        mlp_ratio: MLP hidden width as a multiple of ``n_embd`` when ``intermediate_size`` is not given.
        norm: ``layernorm`` | ``rmsnorm`` (default from the family).
        mlp: ``gelu`` (exact) | ``gelu_tanh`` (GPT-2's approximation) | ``swiglu`` (default from the family).
        positions: ``learned`` | ``rope`` (default from the family).
        rope_theta: base of the rotary frequencies.
        dropout: dropout probability on embeddings, attention weights and residual branches.
        bias: biases in linear layers and LayerNorms (default from the family).
        tie_embeddings: share the token embedding matrix with the output head (default from the family).
        norm_eps: normalization epsilon (default from the family).
        type_vocab_size: token-type (segment) embeddings, BERT only.
    """

    name: str = "custom"
    family: str = "gpt2"
    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_kv_heads: Optional[int] = None
    intermediate_size: Optional[int] = None
    mlp_ratio: float = 4.0
    norm: Optional[str] = None
    mlp: Optional[str] = None
    positions: Optional[str] = None
    rope_theta: float = 10000.0
    dropout: float = 0.0
    bias: Optional[bool] = None
    tie_embeddings: Optional[bool] = None
    norm_eps: Optional[float] = None
    type_vocab_size: int = 2
    head_dim: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILY_DEFAULTS:
            raise ValueError(f"ModelConfig.family must be one of {sorted(FAMILY_DEFAULTS)}, got {self.family!r}")
        for key, value in FAMILY_DEFAULTS[self.family].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"ModelConfig.{key} must be one of {allowed}, got {getattr(self, key)!r}")
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) <= 0:
                raise ValueError(f"ModelConfig.{key} must be positive, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"ModelConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); change one of them"
            )
        self.n_kv_heads = self.n_kv_heads or self.n_head
        if self.n_head % self.n_kv_heads:
            raise ValueError(f"ModelConfig.n_head ({self.n_head}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        self.head_dim = self.n_embd // self.n_head
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"Rotary positions need an even head_dim, got {self.head_dim}")
        if self.family == "bert" and self.positions != "learned":
            raise ValueError("The bert family uses learned positions")
        self.intermediate_size = self.intermediate_size or int(self.mlp_ratio * self.n_embd)

    @property
    def causal(self) -> bool:
        return self.family != "bert"

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
        """The constructor arguments, resolved (derived ``head_dim`` left out), e.g. to store in a checkpoint."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return cls(**d)

    def num_parameters(self) -> int:
        """Exact parameter count, from the shapes alone (no model is built)."""
        c, v, f, b = self.n_embd, self.vocab_size, self.intermediate_size, int(self.bias)
        kv = self.n_kv_heads * self.head_dim
        norm = c + (c if self.norm == "layernorm" and self.bias else 0)  # weight (+ bias); RMSNorm has no bias
        attn = (c * c + b * c) * 2 + (c * kv + b * kv) * 2  # q, o and k, v projections
        mlp = (c * f + b * f) * (2 if self.mlp == "swiglu" else 1) + (f * c + b * c)  # up (+ gate), down
        n = self.n_layer * (2 * norm + attn + mlp)
        n += v * c  # token embeddings
        if self.positions == "learned":
            n += self.block_size * c
        if self.family == "bert":
            n += self.type_vocab_size * c + norm  # token types + embedding norm
            n += (c * c + c) + norm + v  # MLM head: dense + norm + output bias
        else:
            n += norm  # final norm
        if not self.tie_embeddings:
            n += v * c  # separate output head
        return n


# Named presets. vocab_size and block_size are normally set from the data (the CLI links them).
PRESETS: dict[str, dict[str, Any]] = {
    # a few thousand parameters: unit tests and golden-loss checks (nanoGPT-style: exact GELU)
    "debug": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, mlp="gelu"),
    "debug-llama": dict(family="llama", n_layer=2, n_head=4, n_kv_heads=2, n_embd=32, intermediate_size=88, block_size=32),
    "debug-bert": dict(family="bert", n_layer=2, n_head=2, n_embd=32, block_size=32),
    # tiny: ~10.6M non-embedding parameters in each family (6 layers, width 384; Llama's SwiGLU width and
    # GQA 6/2 chosen to match GPT-2's 4x GELU MLP in parameters)
    "tiny-gpt2": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "tiny-llama": dict(family="llama", n_layer=6, n_head=6, n_kv_heads=2, n_embd=384, intermediate_size=1192,
                       block_size=256),
    "tiny-bert": dict(family="bert", n_layer=6, n_head=6, n_embd=384, block_size=256),
    # nanoGPT's CPU "baby GPT" (shakespeare_char on a laptop): ~0.8M parameters
    "quickstart": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, mlp="gelu"),
    # nanoGPT's GPU shakespeare_char config: ~10.7M parameters
    "shakespeare-gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, mlp="gelu"),
    # GPT-2 (Radford et al. 2019), vocab 50257, context 1024, tied embeddings
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "gpt2-355m": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257),
    "gpt2-774m": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024, vocab_size=50257),
    "gpt2-1.5b": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024, vocab_size=50257),
    # Llama shapes: TinyLlama-1.1B (GQA 32/4), Llama-2-7B and Llama-2-13B
    "llama-1b": dict(family="llama", n_layer=22, n_head=32, n_kv_heads=4, n_embd=2048, intermediate_size=5632,
                     block_size=2048, vocab_size=32000),
    "llama-7b": dict(family="llama", n_layer=32, n_head=32, n_embd=4096, intermediate_size=11008, block_size=4096,
                     vocab_size=32000),
    "llama-13b": dict(family="llama", n_layer=40, n_head=40, n_embd=5120, intermediate_size=13824, block_size=4096,
                      vocab_size=32000),
    # the shapes of Llama 2 70B (Touvron et al. 2023b; 68.98B parameters) and Llama 3.1 405B (Grattafiori et al.
    # 2024, table 3; 405.85B): for planning and simulating large jobs (`lit_llm plan`), not trained here
    "llama-70b": dict(family="llama", n_layer=80, n_head=64, n_kv_heads=8, n_embd=8192, intermediate_size=28672,
                      block_size=4096, vocab_size=32000),
    "llama-405b": dict(family="llama", n_layer=126, n_head=128, n_kv_heads=8, n_embd=16384, intermediate_size=53248,
                       block_size=8192, vocab_size=128256, rope_theta=500000.0),
    # BERT (Devlin et al. 2019), WordPiece vocab 30522, 512 positions
    "bert-base": dict(family="bert", n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=30522),
    "bert-large": dict(family="bert", n_layer=24, n_head=16, n_embd=1024, block_size=512, vocab_size=30522),
}
