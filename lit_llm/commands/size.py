"""``python -m lit_llm size``: parameters, training FLOPs and memory of a model, from its config alone.

The model is a preset (``--preset llama-7b``) or the one a fit config builds (``--config FILE`` ..., with fit's
overrides), resolved by fit's parser. The formulas are in ``lit_llm.model.costs``.
"""

from __future__ import annotations

from typing import Any, Optional

from lit_llm.errors import UsageError
from lit_llm.model import ModelConfig
from lit_llm.model.costs import Precision, estimate

# the name of the model's preset argument: ``preset``, called ``model`` before its rename
PRESET_KEYS = ("preset", "model")


def model_config(resolved: dict[str, Any]) -> tuple[ModelConfig, str]:
    """The network that a resolved fit config (``lit_llm.lightning_cli.resolve_config``) builds, without building it,
    and where its vocabulary size came from."""
    args = resolved["model"].get("init_args") or {}
    overrides = dict(args.get("model_args") or {})
    pretrained = args.get("init_from")
    if pretrained:  # fine-tuning or continued pretraining: the checkpoint's network (dropout may change)
        from lit_llm.checkpoint import read_info

        info = read_info(pretrained, purpose="size")
        return ModelConfig.from_dict({**info.model_config, **overrides}), f"the checkpoint {pretrained}"
    for key in ("vocab_size", "block_size"):  # set by fit's links from the data (block_size) or by hand
        if args.get(key) is not None:
            overrides[key] = args[key]
    preset = next((args[k] for k in PRESET_KEYS if isinstance(args.get(k), str)), None)
    if preset is None:
        raise UsageError(f"size cannot tell the network of {resolved['model'].get('class_path')}: it has no preset")
    cfg = ModelConfig.from_name(preset, **overrides)
    return cfg, "the config" if "vocab_size" in overrides else "the preset; fit takes it from the tokenizer"


def _gib(x: float) -> str:
    return f"{x / 2**30:,.2f} GiB"


def size(fit_args: Optional[list[str]] = None, preset: Optional[str] = None, world_size: int = 8, batch_size: int = 1,
         context: Optional[int] = None, precision: Precision = "bf16-mixed",
         fused_attention: bool = True) -> dict[str, Any]:
    """Print a model's exact parameter count, training FLOPs per token and memory per GPU.

    The model is a preset (--preset NAME) or the one fit builds from a config: --config FILE (repeatable) and
    fit's overrides, e.g. ``--config configs/quickstart.yaml --data.block_size 256``. With neither: fit's default.

    Args:
        fit_args: fit's arguments, resolved as by fit: ``--config FILE`` ... and overrides.
        preset: a preset name (see ``lit_llm.model.config.PRESETS``) instead of a config.
        world_size: GPUs the model is trained on (for the FSDP sharding figures).
        batch_size: sequences per GPU (for the activation figures).
        context: tokens per sequence (default: the model's block_size).
        precision: sets the bytes per parameter of weights, gradients and AdamW state.
        fused_attention: attention scores are never materialized (SDPA/flash kernels); False adds them.
    """
    if preset is not None:
        if fit_args:
            raise UsageError(f"give --preset or a config, not both (fit arguments: {' '.join(fit_args)})")
        cfg, vocab_from = ModelConfig.from_name(preset), "the preset"
    else:
        from lit_llm.lightning_cli import resolve_config

        cfg, vocab_from = model_config(resolve_config(fit_args or []))
    r = estimate(cfg, world_size, batch_size, context, precision, fused_attention)
    print(f"model {r['model']} ({r['family']}), vocab_size {cfg.vocab_size:,} ({vocab_from})")
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
