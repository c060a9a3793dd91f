"""The causal decoder (GPT-2 and Llama families) in plain single-device PyTorch.

Pre-norm blocks (Radford et al. 2019), attention through ``F.scaled_dot_product_attention``, optional
grouped-query attention and rotary positions (Llama: Touvron et al. 2023), and a KV cache for decoding.
No distributed imports: parallelism is applied from outside (lit_llm.parallel, docs/architecture.md). ``forward`` tolerates a model
cut into pipeline stages: a stage without ``tok_embeddings`` takes hidden states, one without ``output``
returns them.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from lit_llm.model.components import Attention, KVCache, build_mlp, build_norm, rope_cache
from lit_llm.model.config import ModelConfig


class Block(nn.Module):
    """Pre-norm residual block: h = x + attn(norm(x)); out = h + mlp(norm(h))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = build_norm(config)
        self.attention = Attention(config)
        self.ffn_norm = build_norm(config)
        self.feed_forward = build_mlp(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope=None, cache: Optional[KVCache] = None, start_pos: Union[int, torch.Tensor] = 0,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), rope, cache=cache, start_pos=start_pos,
                                            attn_mask=attn_mask))
        return x + self.dropout(self.feed_forward(self.ffn_norm(x)))


class Decoder(nn.Module):
    """Decoder-only transformer: (B, T) token ids -> (B, T, vocab) logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.causal:
            raise ValueError(f"Decoder is the causal (gpt2/llama) transformer; family {config.family!r} needs lit_llm.model.build_model")
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_embeddings = nn.Embedding(config.block_size, config.n_embd) if config.positions == "learned" else None
        self.dropout = nn.Dropout(config.dropout)
        # a ModuleDict keyed by layer index keeps names stable when a pipeline stage drops layers
        self.layers = nn.ModuleDict({str(i): Block(config) for i in range(config.n_layer)})
        self.norm = build_norm(config)
        self.output = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        if config.positions == "rope":
            self.register_buffer("rope_cos", torch.empty(config.block_size, config.head_dim), persistent=False)
            self.register_buffer("rope_sin", torch.empty(config.block_size, config.head_dim), persistent=False)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, generator: Optional[torch.Generator] = None) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, unit norms, and residual output projections scaled by
        1/sqrt(2 * n_layer) (Radford et al. 2019, section 2.3). Also fills the rotary tables, so it is safe to
        call after building on the meta device and materializing with ``to_empty``."""
        if self.config.tie_embeddings and self.output is not None and self.tok_embeddings is not None:
            self.output.weight = self.tok_embeddings.weight  # materializing from meta (to_empty) unties them
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
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()
        if self.config.positions == "rope":
            cos, sin = rope_cache(self.config.head_dim, self.config.block_size, self.config.rope_theta)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def new_kv_cache(self, batch_size: int, max_len: Optional[int] = None) -> nn.ModuleDict:
        """Empty per-layer KV caches for incremental decoding of up to ``max_len`` (default block_size) tokens."""
        c = self.config
        ref = self.tok_embeddings.weight if self.tok_embeddings is not None else next(self.parameters())
        return nn.ModuleDict({
            name: KVCache(batch_size, c.n_kv_heads, max_len or c.block_size, c.head_dim, ref.dtype, ref.device)
            for name in self.layers
        })

    def forward(
        self, idx: torch.Tensor, cache: Optional[nn.ModuleDict] = None, start_pos: Union[int, torch.Tensor] = 0,
        return_hidden: bool = False,
        positions: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``idx``: (B, T) token ids, or (B, T, C) hidden states for a pipeline stage without embeddings.
        With ``cache``, the T tokens sit in cache slots ``start_pos..start_pos+T`` after the cached ones.

        Batched decoding of prompts of different lengths (``lit_llm.generate.iter_batch_tokens``) gives each
        row its own ``positions`` (B, T) and an ``attn_mask`` (B, 1, T, S) that hides its padding; by default
        position = slot and the mask is causal."""
        T = idx.size(1)
        if isinstance(start_pos, torch.Tensor):  # a slot per row (a continuous batch): positions come with it
            if positions is None or attn_mask is None:
                raise ValueError("A tensor start_pos (one cache slot per row) needs the rows' positions and attn_mask")
            if int(start_pos.max()) + T > self.config.block_size:
                raise ValueError(f"Cache slots up to {int(start_pos.max()) + T} exceed the block_size"
                                 f" {self.config.block_size}")
        elif start_pos + T > self.config.block_size:
            raise ValueError(
                f"Positions up to {start_pos + T} exceed the model's block_size {self.config.block_size};"
                " crop the input or build the model with a larger block_size"
            )
        if self.tok_embeddings is not None:
            h = self.tok_embeddings(idx)  # (B, T, C)
            if self.pos_embeddings is not None:
                pos = torch.arange(start_pos, start_pos + T, device=idx.device) if positions is None else positions
                h = h + self.pos_embeddings(pos)
            h = self.dropout(h)
        else:
            h = idx
        rope = None
        if self.config.positions == "rope" and positions is None:  # from start_pos on: attention takes what it needs
            rope = (self.rope_cos[start_pos:], self.rope_sin[start_pos:])
        elif self.config.positions == "rope":  # (B, 1, T, head_dim): one row of positions per sequence
            rope = (self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1))
        for name, block in self.layers.items():
            h = block(h, rope, cache[name] if cache is not None else None, start_pos, attn_mask)
        if self.norm is not None:
            h = self.norm(h)
        if return_hidden or self.output is None:
            return h
        return self.output(h)  # (B, T, vocab)
