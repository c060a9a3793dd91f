"""A GPT-style decoder in plain single-device PyTorch.

Pre-norm blocks (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"),
causal self-attention through ``F.scaled_dot_product_attention`` with separate q/k/v/o projections,
a GELU MLP, learned positions and optionally tied input/output embeddings. No distributed imports:
parallelism is applied from outside (see DESIGN.md).

Module names (``tok_embeddings``, ``layers.{i}.attention.wq`` ...) are chosen so that tensor-parallel
plans stay short and weight conversion to other formats is a lookup table.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lit_llm.model.config import ModelConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config.n_embd
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.wq = nn.Linear(c, c, bias=config.bias)
        self.wk = nn.Linear(c, c, bias=config.bias)
        self.wv = nn.Linear(c, c, bias=config.bias)
        self.wo = nn.Linear(c, c, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, C) -> (B, n_head, T, head_dim); -1 keeps this valid when heads are sharded
        q = self.wq(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, n_head, T, head_dim)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, C)
        return self.resid_dropout(self.wo(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)  # up
        self.w2 = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)  # down
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.gelu(self.w1(x))))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.attention = CausalSelfAttention(config)
        self.ffn_norm = nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.feed_forward = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class GPT(nn.Module):
    """Decoder-only transformer. ``forward(idx)`` maps (B, T) token ids to (B, T, vocab) logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_embeddings = nn.Embedding(config.block_size, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        # a ModuleDict keyed by layer index keeps names stable when a pipeline stage drops layers
        self.layers = nn.ModuleDict({str(i): Block(config) for i in range(config.n_layer)})
        self.norm = nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.output = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, generator: Optional[torch.Generator] = None) -> None:
        """GPT-2 init: N(0, 0.02) for weights, zeros for biases, and residual output projections
        scaled by 1/sqrt(2 * n_layer) (Radford et al. 2019, section 2.3). Safe to call after the model
        was built on the meta device and materialized with ``to_empty``."""
        std = 0.02
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual_out = name.endswith(("attention.wo", "feed_forward.w2"))
                nn.init.normal_(module.weight, mean=0.0, std=resid_std if is_residual_out else std, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std, generator=generator)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(
                f"Sequence length {T} exceeds the model's block_size {self.config.block_size};"
                " crop the input or build the model with a larger block_size"
            )
        pos = torch.arange(T, device=idx.device)
        x = self.dropout(self.tok_embeddings(idx) + self.pos_embeddings(pos))  # (B, T, C)
        for block in self.layers.values():
            x = block(x)
        return self.output(self.norm(x))  # (B, T, vocab)
