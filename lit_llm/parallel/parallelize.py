"""Functions that parallelize a single-device model in place (torchtitan's parallelize functions).

``parallelize`` is the one sequence that training (``TransformerModule.configure_model``, ``lit_llm.tasks.base``,
with the mesh of ``ParallelDims.build_mesh``) and ``plan --simulate`` (``parallel/simulate.py``) both apply to the
parts a rank runs after its pipeline cut: tensor + sequence parallelism first, then activation checkpointing and
compilation per block, then FSDP2 over the data-parallel dimension.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from lit_llm.model.transformer import Decoder
from lit_llm.parallel.dims import TP, ParallelDims


def parallelize(parts: Sequence[nn.Module], mesh=None, dims: Optional[ParallelDims] = None,
                activation_checkpointing: str = "none", ac_every: int = 2, compile: bool = False,
                param_dtype: Optional[torch.dtype] = None, extra: Sequence[nn.Module] = ()) -> None:
    """Parallelize the ``parts`` this rank runs (the network, or its pipeline stages, each its own FSDP root) over
    ``mesh`` (``ParallelDims.build_mesh``'s; None: one device or DDP, where only activation checkpointing and
    compilation apply). ``extra`` modules (a task's head) are replicated over the tensor-parallel ranks and sharded
    with the first part."""
    if mesh is not None and dims.tp > 1:
        for part in parts:
            apply_tp(part, mesh[TP])
        for module in extra:
            replicate_over(module, mesh[TP])
    for part in parts:
        if activation_checkpointing != "none":
            apply_ac(part, activation_checkpointing, ac_every)
        if compile:
            apply_compile(part)
        if mesh is not None:
            apply_fsdp(part, dims.fsdp_mesh(mesh), param_dtype=param_dtype, extra=extra if part is parts[0] else ())


def replicate_over(module: nn.Module, mesh) -> None:
    """Make a small task module (a classifier head) a replicated DTensor module over the tensor-parallel mesh:
    its weights become DTensors like the sharded network's (gradient clipping needs one kind), it takes and
    returns plain tensors, and every rank computes the same output from the same full input."""
    from torch.distributed.tensor import DTensor, distribute_module

    def to_dtensor(mod, inputs, device_mesh):
        return tuple(DTensor.from_local(x, device_mesh, [Replicate()], run_check=False) for x in inputs)

    def to_local(mod, outputs, device_mesh):
        return outputs.to_local()

    distribute_module(module, mesh, input_fn=to_dtensor, output_fn=to_local)


def apply_tp(model: Decoder, tp_mesh) -> None:
    """Megatron-style tensor parallelism with sequence parallelism (Korthikanti et al. 2022).

    Attention heads and the MLP's hidden units are split over ``tp_mesh`` (q/k/v and w1/w3 column-wise,
    o and w2 row-wise); between blocks the activations are split along the sequence, and the norms run on
    their sequence shard. Every parameter becomes a DTensor, which gradient clipping needs (it fails on a
    mix of DTensors and plain tensors).
    """
    if not model.config.causal:
        raise ValueError("Tensor-parallel plans are defined for the causal families (gpt2, llama)")
    # a pipeline stage holds part of these: the embeddings on the first stage, the norm and head on the last;
    # between stages the hidden states travel as this rank's sequence shard, which the next block's norm takes
    root_plan = {}
    if model.tok_embeddings is not None:
        root_plan["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    if model.norm is not None:
        root_plan["norm"] = SequenceParallel()
    if model.output is not None:
        root_plan["output"] = ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate())
    if model.pos_embeddings is not None:  # (T, C) table lookups: the sequence is dim 0
        root_plan["pos_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(0))
    if root_plan:
        parallelize_module(model, tp_mesh, root_plan)
    if model.output is None and model.norm is not None:
        # a task without the LM head (a classifier pools the hidden states) gets them whole on every rank
        parallelize_module(model.norm, tp_mesh, PrepareModuleOutput(output_layouts=Shard(1),
                                                                    desired_output_layouts=Replicate()))
    elif model.config.tie_embeddings and model.output is not None and model.tok_embeddings is not None:
        model.output.weight = model.tok_embeddings.weight  # both sharded the same way (vocab rows): one again
    for block in model.layers.values():
        plan = {
            "attention_norm": SequenceParallel(),
            # (x, rope): gather the sequence before the projections; rope tables stay plain tensors
            "attention": PrepareModuleInput(input_layouts=(Shard(1), None), desired_input_layouts=(Replicate(), None)),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
        }
        if hasattr(block.feed_forward, "w3"):
            plan["feed_forward.w3"] = ColwiseParallel()
        parallelize_module(block, tp_mesh, plan)


def apply_ac(model: nn.Module, mode: str = "full", every: int = 2) -> None:
    """Activation checkpointing of whole blocks: ``full`` wraps every block, ``selective`` every ``every``-th.

    Uses torch's ``checkpoint_wrapper`` (as torchtitan does), which keeps state-dict names unchanged.
    """
    if mode not in ("full", "selective"):
        raise ValueError(f"activation_checkpointing must be none, full or selective, got {mode!r}")
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper  # torch's own

    for i, name in enumerate(list(model.layers.keys())):
        if mode == "full" or i % every == 0:
            model.layers[name] = checkpoint_wrapper(model.layers[name], preserve_rng_state=True)


def apply_compile(model: nn.Module) -> None:
    """``torch.compile`` each block in place (repeated blocks compile once and keep module names)."""
    for block in model.layers.values():
        block.compile()


def apply_fsdp(model: nn.Module, dp_mesh, param_dtype: Optional[torch.dtype] = None,
               reduce_dtype: torch.dtype = torch.float32, reshard_after_forward: bool = True,
               extra: Sequence[nn.Module] = ()) -> None:
    """FSDP2 (``fully_shard``) per block, then each ``extra`` module (a task's head outside the network), then
    the root (embeddings, final norm, LM head), over ``dp_mesh``.

    ``param_dtype`` (e.g. bfloat16) is the mixed-precision compute dtype; gradients are reduced in
    ``reduce_dtype`` and the sharded master weights stay float32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in model.layers.values():
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    for module in extra:
        fully_shard(module, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
