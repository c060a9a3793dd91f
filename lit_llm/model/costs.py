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


_COLUMN = ("wq", "wk", "wv", "w1", "w3")  # tensor parallelism splits their outputs (rows; bias too)
_ROW = ("wo", "w2")  # and these their inputs (columns; the bias stays whole)
_VOCAB = ("tok_embeddings.weight", "pos_embeddings.weight", "output.weight")  # split by rows (vocab, positions)


def parameter_shapes(cfg: ModelConfig) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """The shapes of the parameters outside the blocks and of one block, read from a one-block model built on
    the meta device (no memory). A tied head is listed as ``output.weight`` too: the last pipeline stage holds
    a copy."""
    import torch

    from lit_llm.model import build_model

    with torch.device("meta"):
        model = build_model(ModelConfig.from_dict({**cfg.to_dict(), "n_layer": 1}))
    root = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)
            if not n.startswith("layers.")}
    block = {n.split(".", 2)[2]: tuple(p.shape) for n, p in model.named_parameters() if n.startswith("layers.")}
    return root, block


def _rank0_elements(name: str, shape: tuple, tp: int, dp: int) -> int:
    """Elements rank 0 holds of one parameter: split as ``apply_tp`` splits it, then its first dimension cut
    into ``dp`` equal shards, the last ones padded (FSDP2), rank 0's full."""
    dims = list(shape)
    module = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    if tp > 1:
        if module in _COLUMN or name in _VOCAB:
            dims[0] = -(-dims[0] // tp)
        elif module in _ROW and name.endswith("weight"):
            dims[1] = -(-dims[1] // tp)
    rows = -(-dims[0] // dp)
    rest = 1
    for d in dims[1:]:
        rest *= d
    return rows * rest


def rank_parameters(cfg: ModelConfig, pp: int = 1, tp: int = 1, dp: int = 1, shapes=None) -> list[int]:
    """Parameters that rank 0 of each pipeline stage holds under tensor parallelism ``tp`` and FSDP over ``dp``
    (the largest rank of a stage: FSDP pads the last shards, and norms stay whole under tensor parallelism).
    ``shapes``: ``parameter_shapes(cfg)``, to reuse. ``tests/test_plan.py`` checks it against the sharded
    tensors of the real functions under a fake process group."""
    if pp > 1 and not cfg.causal:
        raise ValueError("Pipeline stages are defined for the causal families (gpt2, llama)")
    root, block = shapes or parameter_shapes(cfg)
    per_block = sum(_rank0_elements(n, s, tp, dp) for n, s in block.items())
    first = {"tok_embeddings.weight", "pos_embeddings.weight"}
    head = set(root) - first
    if pp == 1 and cfg.tie_embeddings:
        head -= {"output.weight"}  # one parameter on one stage
    base, extra = divmod(cfg.n_layer, pp)
    stages = [(base + (i < extra)) * per_block for i in range(pp)]
    stages[0] += sum(_rank0_elements(n, root[n], tp, dp) for n in first & set(root))
    stages[-1] += sum(_rank0_elements(n, root[n], tp, dp) for n in head)
    return stages

