"""``python -m lit_llm size``: parameters, training FLOPs and memory of a model, from its config alone.

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

from pathlib import Path
from typing import Any, Optional

import yaml

from lit_llm.model import ModelConfig

BYTES_PER_PARAM = {"32-true": 16, "bf16-mixed": 16, "16-mixed": 16, "bf16-true": 8}


def load_model_config(model: str) -> ModelConfig:
    """A preset name, or a YAML file: a lit_llm CLI config (``model: {model: NAME, model_args: {...}}``) or a
    plain mapping of ModelConfig fields (optionally with ``preset: NAME``)."""
    if not model.endswith((".yaml", ".yml")):
        return ModelConfig.from_name(model)
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"Model config {path} does not exist; pass a preset name or a YAML file")
    data = yaml.safe_load(path.read_text()) or {}
    if isinstance(data.get("model"), dict):  # a CLI config
        section = data["model"]
        overrides = dict(section.get("model_args") or {})
        if "vocab_size" in section:
            overrides["vocab_size"] = section["vocab_size"]
        if isinstance(data.get("data"), dict) and "block_size" in data["data"]:
            overrides["block_size"] = data["data"]["block_size"]
        return ModelConfig.from_name(section.get("model", "quickstart"), **overrides)
    preset = data.pop("preset", None)
    return ModelConfig.from_name(preset, **data) if preset else ModelConfig(**data)


def estimate(cfg: ModelConfig, world_size: int = 8, batch_size: int = 1, context: Optional[int] = None,
             precision: str = "bf16-mixed", fused_attention: bool = True) -> dict[str, Any]:
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


def _gib(x: float) -> str:
    return f"{x / 2**30:,.2f} GiB"


def size(model: str = "quickstart", world_size: int = 8, batch_size: int = 1, context: Optional[int] = None,
         precision: str = "bf16-mixed", fused_attention: bool = True) -> dict[str, Any]:
    """Print a model's exact parameter count, training FLOPs per token and memory per GPU.

    Args:
        model: a preset name (see ``lit_llm.model.config.PRESETS``) or a YAML model/CLI config file.
        world_size: GPUs the model is trained on (for the FSDP sharding figures).
        batch_size: sequences per GPU (for the activation figures).
        context: tokens per sequence (default: the model's block_size).
        precision: ``32-true``, ``bf16-mixed``, ``16-mixed`` or ``bf16-true`` (sets bytes per parameter).
        fused_attention: attention scores are never materialized (SDPA/flash kernels); False adds them.
    """
    r = estimate(load_model_config(model), world_size, batch_size, context, precision, fused_attention)
    print(f"model {r['model']} ({r['family']})")
    print(f"  parameters                  {r['parameters']:>20,}")
    print(f"  matmul parameters           {r['matmul_parameters']:>20,}")
    print(f"  training FLOPs per token    {r['train_flops_per_token']:>20,}   (context {r['context']})")
    print(f"  weights+grads+AdamW, {precision} ({r['bytes_per_param']} B/param)")
    print(f"    DDP, per GPU              {_gib(r['ddp_state_bytes_per_gpu']):>20}")
    print(f"    FSDP over {world_size:<3d}, per GPU    {_gib(r['fsdp_state_bytes_per_gpu']):>20}")
    print(f"  activations, batch {batch_size} x context {r['context']}, per GPU")
    print(f"    no checkpointing          {_gib(r['activation_bytes']):>20}")
    print(f"    full checkpointing        {_gib(r['activation_bytes_full_checkpointing']):>20}")
    return r
