"""Pipeline parallelism with ``torch.distributed.pipelining`` (Lightning has no pipeline strategy: its
issue 17180). The model is cut into consecutive stages, one per pipeline rank, and a schedule (GPipe or
1F1B, Narayanan et al. 2021) runs microbatches through them. The interleaved 1F1B schedule (Narayanan et al.
2021, section 2.2) gives each rank several smaller stages, ``v`` apart (rank r holds stages r, r + pp, ...),
which shrinks the pipeline bubble by ``v`` for more point-to-point traffic.

Tied embeddings (the gpt2 family) are kept tied as Megatron-LM keeps them (Shoeybi et al. 2019): the first
stage holds the embedding, the last stage a copy of the same weight as its head, and after every backward
the two stages all-reduce that weight's gradient (``TiedWeights``), so both copies take the same steps.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from lit_llm.model.transformer import Decoder

SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")


class PipelineRunner:
    """This rank's pipeline stage and the schedule that drives it: what a task's steps call instead of the
    model under pipeline parallelism. Only the last stage computes the loss and the logits."""

    def __init__(self, schedule, stage: int, num_stages: int, group, tied: Optional["TiedWeights"] = None) -> None:
        self.schedule, self.stage, self.num_stages, self.group = schedule, stage, num_stages, group
        self.tied = tied

    @property
    def is_last(self) -> bool:
        return self.stage == self.num_stages - 1

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward and backward of every microbatch; the mean loss, the same on every stage."""
        losses: list[torch.Tensor] = []
        if self.stage == 0:
            self.schedule.step(x)
        elif self.is_last:
            self.schedule.step(target=y, losses=losses)
        else:
            self.schedule.step()
        if self.tied is not None:
            self.tied.sum_grads()
        loss = torch.stack(losses).mean().detach() if losses else torch.zeros((), device=x.device)
        torch.distributed.broadcast(loss, group=self.group, group_src=self.num_stages - 1)
        return loss

    def eval(self, x: torch.Tensor, y: torch.Tensor):
        """The logits on the last stage, None on the others. Every stage takes part; the last one gets the
        targets (without them a stage waits forever)."""
        if self.stage == 0:
            out = self.schedule.eval(x)
            return out if self.is_last else None
        if self.is_last:
            return self.schedule.eval(target=y, losses=[])
        self.schedule.eval()
        return None


def split_stages(model: Decoder, rank: int, ranks: int, stages_per_rank: int) -> list[Decoder]:
    """This pipeline rank's stages of ``model``: stages ``rank, rank + ranks, ...`` of ``ranks x
    stages_per_rank`` even runs of consecutive blocks. ``model`` keeps the union in place (its state dict
    names what this rank owns, for checkpoints and the optimizer); with one stage per rank the model itself
    is the stage, otherwise each stage is a view of it (its own table of submodules, the same modules).
    ``Decoder.forward`` runs on any such part: embeddings on the first stage, final norm and head on the last.
    With tied embeddings the last stage's head keeps the weight it shared with the embedding (the same values
    on every rank: the full model was built from one seed); ``TiedWeights`` keeps the two copies equal."""
    if not model.config.causal:
        raise ValueError("Pipeline parallelism is defined for the causal families (gpt2, llama)")
    total = ranks * stages_per_rank
    if total > model.config.n_layer:
        raise ValueError(f"{ranks} pipeline ranks x {stages_per_rank} stages per rank = {total} stages, more than"
                         f" n_layer={model.config.n_layer}; use fewer stages per rank or pipeline ranks")
    names = list(model.layers.keys())
    runs = np.array_split(np.arange(len(names)), total)
    mine = list(range(rank, total, ranks))
    keep = {names[i] for s in mine for i in runs[s]}
    for name in names:
        if name not in keep:
            del model.layers[name]
    if rank > 0:
        model.tok_embeddings, model.pos_embeddings = None, None
    if rank < ranks - 1:
        model.norm, model.output = None, None
    if stages_per_rank == 1:
        return [model]
    views = []
    for s in mine:
        view = copy.copy(model)  # shares parameters and buffers through the same submodules
        view._modules = dict(model._modules)
        view._modules["layers"] = nn.ModuleDict({names[i]: model.layers[names[i]] for i in runs[s]})
        if s > 0:
            view._modules["tok_embeddings"] = view._modules["pos_embeddings"] = None
        if s < total - 1:
            view._modules["norm"] = view._modules["output"] = None
        views.append(view)
    return views


def adopt_blocks(model: Decoder, stages: list[nn.Module]) -> None:
    """After the stages' blocks were wrapped (activation checkpointing replaces them in their stage's
    table), point ``model``'s table at the same wrapped blocks again."""
    for stage in stages:
        if stage is not model:
            for name, block in stage.layers.items():
                model.layers[name] = block


def build_schedule(stage_modules: list[nn.Module], rank: int, ranks: int, device: torch.device, group,
                   microbatches: int, schedule: str, loss_fn: Callable):
    """A ``PipelineStage`` for each of this rank's stages (rank, rank + ranks, ...) and the schedule that
    drives them."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

    if schedule not in SCHEDULES:
        raise ValueError(f"pipeline_schedule must be one of {SCHEDULES}, got {schedule!r}")
    total = ranks * len(stage_modules)
    stages = [PipelineStage(module, rank + i * ranks, total, device, group=group)
              for i, module in enumerate(stage_modules)]
    if schedule == "interleaved_1f1b":
        return ScheduleInterleaved1F1B(stages, n_microbatches=microbatches, loss_fn=loss_fn)
    cls = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
    return cls(stages[0], n_microbatches=microbatches, loss_fn=loss_fn)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (FSDP, tensor parallel), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


class TiedWeights:
    """The tied embedding and head weight of a pipelined gpt2 model: the first stage's ``tok_embeddings.weight``
    and the last stage's ``output.weight``, one copy each, kept equal by summing their gradients over a
    process group of exactly those two stages (one group per data- and tensor-parallel coordinate, so the
    local shards on the two sides correspond: FSDP and tensor parallelism shard both the same way).

    Create it on every process (group creation is collective); ``weight`` is None on the middle stages."""

    def __init__(self, model: Decoder, mesh) -> None:
        ranks = mesh.mesh  # (pipeline, data, tensor) global ranks
        me = torch.distributed.get_rank()
        self.group, self.weight, self.is_head = None, None, False
        for coord in np.ndindex(*ranks.shape[1:]):
            pair = [int(ranks[(0, *coord)]), int(ranks[(-1, *coord)])]
            group = torch.distributed.new_group(pair)  # every process creates every group, in the same order
            if me in pair:
                self.group = group
        if self.group is not None:
            self.is_head = model.tok_embeddings is None
            self.weight = model.output.weight if self.is_head else model.tok_embeddings.weight

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Copy the first stage's weight to the head (once, at set-up: equal already unless a stage loaded
        something else)."""
        if self.group is not None:
            torch.distributed.broadcast(local_tensor(self.weight.data), group=self.group, group_src=0)

    @torch.no_grad()
    def sum_grads(self) -> None:
        """After backward: each side gets the sum of both sides' gradients, the tied weight's full gradient."""
        if self.group is not None and self.weight.grad is not None:
            torch.distributed.all_reduce(local_tensor(self.weight.grad), group=self.group)

    def head_copy(self) -> Optional[torch.Tensor]:
        """The head's copy (last stage only), which a global gradient norm must count once, not twice."""
        return self.weight if self.is_head else None


@torch.no_grad()
def grad_norm(parameters, group=None) -> torch.Tensor:
    """The total L2 norm of the gradients, the same on every process: a DTensor's is gathered, and with a
    pipeline ``group`` the stages' norms are combined (each process holds only its stage's gradients)."""
    return total_norm([p.grad for p in parameters if p.grad is not None], group)


def total_norm(tensors, group=None) -> torch.Tensor:
    """The total L2 norm of ``tensors`` (gradients, or the weights themselves), the same on every process, as
    ``grad_norm`` computes it."""
    grads = [t.detach() for t in tensors]
    if not grads:
        norm = torch.zeros(())
    else:
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        if hasattr(norm, "full_tensor"):  # FSDP's and TP's DTensor gradients
            norm = norm.full_tensor()
    if group is not None:
        squared = norm.pow(2)
        torch.distributed.all_reduce(squared, group=group)
        norm = squared.sqrt()
    return norm


@torch.no_grad()
def clip_across_stages(parameters, max_norm: float, group, count_once: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Clip gradients by the global norm over every stage's parameters (each process sees only its stage),
    as ``clip_grad_norm_`` does on one process. ``count_once``: a tied weight's second copy, clipped but left
    out of the norm (one process holds it once). Returns the total norm."""
    params = [p for p in parameters if p.grad is not None]
    total = grad_norm([p for p in params if p is not count_once], group)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total
