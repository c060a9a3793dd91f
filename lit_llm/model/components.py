"""Building blocks shared by the model families: norms, MLPs, rotary positions, attention, KV cache.

Plain single-device PyTorch. Module names follow the Llama reference code (``wq/wk/wv/wo``, ``w1/w2/w3``)
so that tensor-parallel plans and weight-conversion tables stay short.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from lit_llm.model.config import ModelConfig


def build_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)  # Zhang & Sennrich 2019
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class GeluMLP(nn.Module):
    """w2(gelu(w1 x)); ``approximate='tanh'`` is GPT-2's GELU."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)  # up
        self.w2 = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)  # down
        self.approximate = "tanh" if config.mlp == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x), approximate=self.approximate))


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x) (Shazeer 2020, "GLU Variants Improve Transformer"), as in Llama."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)  # gate
        self.w3 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)  # up
        self.w2 = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def build_mlp(config: ModelConfig) -> nn.Module:
    return SwiGLU(config) if config.mlp == "swiglu" else GeluMLP(config)


def rope_cache(head_dim: int, length: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (length, head_dim), for rotary embeddings (Su et al. 2021, RoFormer).

    Frequencies are laid out as two concatenated halves (the "rotate_half" convention of Hugging Face's
    Llama), so converted weights need no permutation.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)  # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hd)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, n_head, T, head_dim) queries or keys by position; cos/sin are (T', head_dim), or
    (B, 1, T', head_dim) when each row has its own positions, of which the first T are used (T' > T where
    a pipeline stage under sequence parallelism got a shard of the sequence and attention gathered it)."""
    T = x.size(2)
    cos, sin = cos[..., :T, :], sin[..., :T, :]
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache(nn.Module):
    """Keys and values of one attention layer for incremental decoding: (B, n_kv_heads, max_len, head_dim)."""

    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device) -> None:
        super().__init__()
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: Union[int, torch.Tensor], k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv, T, hd) at positions start..start+T; return all keys/values up to there.

        ``start`` may also be a (B,) tensor, one slot per row, for one token per row (T = 1): rows of a
        continuous batch each sit at their own length. The keys/values then run up to the furthest row; the
        caller's mask hides each row's slots past its own."""
        if isinstance(start, torch.Tensor):
            if k.size(2) != 1:
                raise ValueError(f"A slot per row writes one token per row, got {k.size(2)}")
            rows = torch.arange(k.size(0), device=k.device)
            self.k[rows, :, start] = k[:, :, 0]
            self.v[rows, :, start] = v[:, :, 0]
            end = int(start.max()) + 1
            return self.k[:, :, :end], self.v[:, :, :end]
        end = start + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"KV cache holds {self.k.size(2)} positions, asked to write up to {end}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def rows(self, n: int) -> "KVCache":
        """The first ``n`` rows, sharing this cache's memory: what is written there lands here."""
        view = KVCache.__new__(KVCache)
        nn.Module.__init__(view)
        view.register_buffer("k", self.k[:n], persistent=False)
        view.register_buffer("v", self.v[:n], persistent=False)
        return view


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, hd = config.n_embd, config.head_dim
        self.head_dim = hd
        self.dropout = config.dropout
        self.wq = nn.Linear(c, config.n_head * hd, bias=config.bias)
        self.wk = nn.Linear(c, config.n_kv_heads * hd, bias=config.bias)
        self.wv = nn.Linear(c, config.n_kv_heads * hd, bias=config.bias)
        self.wo = nn.Linear(config.n_head * hd, c, bias=config.bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        is_causal: bool = True,
        key_padding_mask: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        start_pos: Union[int, torch.Tensor] = 0,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``attn_mask`` (B, 1, T, S), True = attend, replaces the causal mask: batched decoding of left-padded
        prompts, where each row's keys start at its own slot."""
        B, T, _ = x.shape
        # (B, T, heads * hd) -> (B, heads, T, hd); -1 keeps this valid when heads are sharded
        q = self.wq(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask = None
        if cache is not None:
            k, v = cache.update(start_pos, k, v)  # (B, n_kv, start_pos + T, hd)
            if isinstance(start_pos, torch.Tensor):
                if attn_mask is None:
                    raise ValueError("A slot per row (a tensor start_pos) needs the rows' attn_mask")
            elif start_pos > 0:  # queries at start_pos.. see every cached key up to their own position
                q_pos = torch.arange(start_pos, start_pos + T, device=x.device)
                mask = torch.arange(k.size(2), device=x.device)[None, :] <= q_pos[:, None]  # (T, S)
                is_causal = False
        if key_padding_mask is not None:  # (B, S), True = attend; bidirectional encoders
            mask = key_padding_mask[:, None, None, :]
        if attn_mask is not None:
            mask = attn_mask
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=k.size(1) != q.size(1),
        )  # (B, n_head, T, hd)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))
