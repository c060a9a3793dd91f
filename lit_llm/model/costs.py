"""What a model costs to train, from its config alone: parameters, training FLOPs per token and memory per GPU.

``python -m lit_llm size`` prints these figures; the throughput callback uses the FLOPs for MFU.

Formulas (all stated per GPU):

- FLOPs per training token: ``6 * N_matmul + 12 * n_layer * n_embd * context`` (Kaplan et al. 2020 and
  PaLM, Chowdhery et al. 2022, appendix B). ``N_matmul`` counts the weights used in matrix multiplies:
  every parameter except embedding lookups and norms/biases, plus the output head (tied or not).
- Weights + gradients + AdamW state: 16 bytes per parameter with fp32 master weights (``32-true`` and
  ``bf16-mixed``: 4 weight + 4 gradient + 8 Adam moments), 8 with ``bf16-true`` (2 + 2 + 4). DDP keeps a
  full copy on every GPU; FSDP (ZeRO-3) shards all three over ``world_size`` (plus one gathered block at a
  time, not counted).
- Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
  section 4.1), per layer in bytes with 16-bit activations: ``s*b*(15*h + k*f)`` with k = 4 for a GELU MLP and
  8 for SwiGLU (34*s*b*h for GPT-2's f = 4h), plus ``5*a*s^2*b`` when attention scores are materialized
  (eager attention; fused SDPA/flash kernels avoid it). Full activation checkpointing keeps ``2*s*b*h`` per
  layer plus one layer's worth during recomputation. The fp32 logits for the loss add ``4*s*b*vocab``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from lit_llm.model.config import ModelConfig

Precision = Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"]  # the keys of BYTES_PER_PARAM
BYTES_PER_PARAM = {"32-true": 16, "bf16-mixed": 16, "16-mixed": 16, "bf16-true": 8}


def estimate(cfg: ModelConfig, world_size: int = 8, batch_size: int = 1, context: Optional[int] = None,
             precision: Precision = "bf16-mixed", fused_attention: bool = True) -> dict[str, Any]:
    """The figures ``size`` prints, as a dict (bytes and FLOPs)."""
    if precision not in BYTES_PER_PARAM:
        raise ValueError(f"precision must be one of {sorted(BYTES_PER_PARAM)}, got {precision!r}")
    if world_size < 1 or batch_size < 1:
        raise ValueError("world_size and batch_size must be >= 1")
    s, b, h, L, a, f, v = context or cfg.block_size, batch_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.intermediate_size, cfg.vocab_size
    n = cfg.num_parameters()
    kv = cfg.n_kv_heads * cfg.head_dim
    per_layer_matmul = 2 * h * h + 2 * h * kv + (3 if cfg.mlp == "swiglu" else 2) * h * f
    n_matmul = L * per_layer_matmul + v * h + (h * h if cfg.family == "bert" else 0)
    flops_per_token = 6 * n_matmul + 12 * L * h * s
    state = n * BYTES_PER_PARAM[precision]
    k = 8 if cfg.mlp == "swiglu" else 4
    layer_act = s * b * (15 * h + k * f) + (0 if fused_attention else 5 * a * s * s * b)
    logits = 4 * s * b * v
    return {
        "model": cfg.name, "family": cfg.family, "parameters": n, "matmul_parameters": n_matmul,
        "train_flops_per_token": flops_per_token, "context": s, "batch_size": b, "world_size": world_size,
        "precision": precision, "bytes_per_param": BYTES_PER_PARAM[precision],
        "ddp_state_bytes_per_gpu": state, "fsdp_state_bytes_per_gpu": state / world_size,
        "activation_bytes": L * layer_act + logits,
        "activation_bytes_full_checkpointing": L * 2 * s * b * h + layer_act + logits,
    }


def stage_parameters(cfg: ModelConfig, pp: int = 1) -> list[int]:
    """Parameters each of ``pp`` pipeline stages holds: even runs of consecutive blocks as
    ``lit_llm.parallel.pipeline.split_stages`` cuts them (the first stages take one more block when ``pp``
    does not divide ``n_layer``), the embeddings on the first stage, the final norm and the head on the last,
    where a tied head is a copy of the embedding (Megatron-LM's scheme). ``[num_parameters()]`` for pp = 1."""
    n = cfg.num_parameters()
    if pp == 1:
        return [n]
    if not cfg.causal:
        raise ValueError("Pipeline stages are defined for the causal families (gpt2, llama)")
    c, v = cfg.n_embd, cfg.vocab_size
    embeddings = v * c + (cfg.block_size * c if cfg.positions == "learned" else 0)
    final_norm = c + (c if cfg.norm == "layernorm" and cfg.bias else 0)
    head = v * c  # its own weight, or the last stage's copy of the tied embedding
    per_layer = (n - embeddings - final_norm - (0 if cfg.tie_embeddings else head)) // cfg.n_layer
    base, extra = divmod(cfg.n_layer, pp)
    stages = [(base + (i < extra)) * per_layer for i in range(pp)]
    stages[0] += embeddings
    stages[-1] += final_norm + head
    return stages
