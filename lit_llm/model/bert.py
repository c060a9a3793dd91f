"""The BERT-style bidirectional encoder with a masked-LM head (Devlin et al. 2019), single device.

Post-norm blocks as in the original BERT, learned absolute positions, token-type embeddings, and an MLM
head (dense -> GELU -> LayerNorm -> tied decoder + bias). Names follow the decoder's where the parts are
the same (``attention.wq`` ... ``feed_forward.w1``), so conversion tables and parallel plans carry over.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lit_llm.model.components import Attention, build_mlp, build_norm
from lit_llm.model.config import ModelConfig


class EncoderBlock(nn.Module):
    """Post-norm residual block: h = norm(x + attn(x)); out = norm(h + mlp(h))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.attention_norm = build_norm(config)
        self.feed_forward = build_mlp(config)
        self.ffn_norm = build_norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, is_causal=False, key_padding_mask=key_padding_mask)))
        return self.ffn_norm(x + self.dropout(self.feed_forward(x)))


class Bert(nn.Module):
    """Bidirectional encoder: (B, T) token ids -> (B, T, vocab) masked-LM logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.causal:
            raise ValueError(f"Bert is the encoder family; family {config.family!r} is a causal decoder")
        self.config = config
        c = config.n_embd
        self.tok_embeddings = nn.Embedding(config.vocab_size, c)
        self.pos_embeddings = nn.Embedding(config.block_size, c)
        self.type_embeddings = nn.Embedding(config.type_vocab_size, c)
        self.emb_norm = build_norm(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleDict({str(i): EncoderBlock(config) for i in range(config.n_layer)})
        self.head_dense = nn.Linear(c, c)
        self.head_norm = build_norm(config)
        self.output = nn.Linear(c, config.vocab_size)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, generator: Optional[torch.Generator] = None) -> None:
        """BERT init: N(0, 0.02) weights and embeddings, zero biases, unit norms."""
        if self.config.tie_embeddings and self.output is not None and self.tok_embeddings is not None:
            self.output.weight = self.tok_embeddings.weight  # materializing from meta (to_empty) unties them
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02, generator=generator)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()

    def encode(
        self, idx: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, token_type_ids: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Encoder states (B, T, C). ``attention_mask``: (B, T), nonzero where a token may be attended to."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"Sequence length {T} exceeds the model's block_size {self.config.block_size}")
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(idx)
        h = self.tok_embeddings(idx) + self.pos_embeddings(torch.arange(T, device=idx.device)) + self.type_embeddings(types)
        h = self.dropout(self.emb_norm(h))  # (B, T, C)
        mask = attention_mask.bool() if attention_mask is not None else None
        for block in self.layers.values():
            h = block(h, mask)
        return h

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Masked-LM logits (B, T, vocab); with ``return_hidden``, the MLM head's input to ``output`` (B, T, C)."""
        h = self.head_norm(F.gelu(self.head_dense(self.encode(idx, attention_mask, token_type_ids))))
        return h if return_hidden else self.output(h)
