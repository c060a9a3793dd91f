"""Checking a parallel layout at cluster scale on one CPU: torch's fake process group stands in for the
other ranks, the model is built on the meta device (no memory), and the real ``split_stages`` and ``parallelize``
(TP, then FSDP2) shard it as ``configure_model`` does on that rank of the real job. The per-rank
parameters, gradients and AdamW state are then read from the sharded tensors themselves.

What it checks: that the mesh, the pipeline cut, the tensor-parallel plans and FSDP2 accept the layout,
and what each rank holds. What a fake process group cannot show: bandwidth, stragglers, NCCL timeouts, the
allocator's fragmentation and the transient all-gathered blocks; those need the real cluster.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from lit_llm.model import ModelConfig, build_model
from lit_llm.parallel.pipeline import local_tensor, split_stages


def _bytes(tensors) -> int:
    return sum(local_tensor(t).numel() * t.element_size() for t in tensors)


def simulate_rank(cfg: ModelConfig, pp: int, dp: int, tp: int, rank: int = 0, replicas: int = 1) -> dict[str, Any]:
    """Shard ``cfg`` for ``rank`` of a ``pp x replicas x dp x tp`` job (the mesh ``ModelParallel`` builds, its
    data-parallel dimension as replicas x shards; ``replicas`` > 1 is HSDP, FSDP over ``dp`` within each)
    under a fake process group, give every parameter a gradient in its sharded layout (FSDP2 reduce-scatters
    into the parameter's layout; ``tests/test_plan.py`` checks that against a real backward at small scale),
    take one AdamW step on the meta device, and count the bytes this rank holds (float32 throughout)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    from lit_llm.parallel.dims import PP, ParallelDims
    from lit_llm.parallel.parallelize import parallelize

    world = pp * replicas * dp * tp
    dims = ParallelDims(world_size=world, dp_replicate=replicas, dp_shard=dp, tp=tp, pp=pp)
    dims.check_model(cfg)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside the {world} ranks of the layout")
    if dist.is_initialized():
        raise RuntimeError("simulate_rank needs its own (fake) process group; call it where none is initialized")
    excepthook = sys.excepthook  # init_process_group chains a "[rank N]" prefix onto it each time
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        mesh = dims.build_mesh("cpu")  # the mesh training builds
        with torch.device("meta"):
            model = build_model(cfg)
        stage = mesh[PP].get_local_rank()
        if pp > 1:
            split_stages(model, stage, pp, 1)
        parallelize([model], mesh, dims)  # what configure_model applies on this rank
        params = list(model.parameters())
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        optimizer.step()
        moments = [t for state in optimizer.state.values() for t in state.values()
                   if torch.is_tensor(t) and t.dim() > 0]  # exp_avg, exp_avg_sq (the step counters are scalars)
        out = {"rank": rank, "stage": stage, "parameters": sum(local_tensor(p).numel() for p in params),
               "parameter_bytes": _bytes(params), "gradient_bytes": _bytes(p.grad for p in params),
               "optimizer_bytes": _bytes(moments)}
        out["state_bytes"] = out["parameter_bytes"] + out["gradient_bytes"] + out["optimizer_bytes"]
        return out
    finally:
        dist.destroy_process_group()
        sys.excepthook = excepthook


def simulate_layout(cfg: ModelConfig, pp: int, dp: int, tp: int, replicas: int = 1) -> dict[str, Any]:
    """The first and the last pipeline stage's rank 0 of ``simulate_rank`` (the largest shards: FSDP pads the
    last shard, and the stages between hold no more blocks than the first and none of the embeddings), and
    the larger of the two as the layout's per-GPU state."""
    ranks = sorted({0, (pp - 1) * replicas * dp * tp})
    sims = [simulate_rank(cfg, pp, dp, tp, r, replicas) for r in ranks]
    return {"pp": pp, "replicas": replicas, "dp": dp, "tp": tp, "world_size": pp * replicas * dp * tp,
            "ranks": sims, "max_state_bytes": max(s["state_bytes"] for s in sims)}
