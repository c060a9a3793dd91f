"""``python -m lit_llm plan``: the parallel layouts of a model on a cluster, with memory per GPU, pipeline
bubble and step time, and the SLURM script of the chosen one.

For every layout lit_llm's strategies run (``ddp``; ``ModelParallel`` with FSDP2 degree dp, tensor(+sequence)
parallel degree tp inside a node and pipeline degree pp with 1F1B, in any combination), with dp x tp x pp =
nodes x GPUs per node:

- training state per GPU: weights, gradients and AdamW moments (``lit_llm.model.costs``: 16 bytes per
  parameter in mixed precision) of the largest rank (``costs.rank_parameters``: the first pipeline stages
  take the odd blocks and the embeddings, the last the head; each weight split over tp as ``apply_tp`` splits
  it, then cut into dp padded shards by FSDP; DDP keeps it whole);
- activations per GPU, with and without full activation checkpointing, for one microbatch of
  ``--microbatch_size`` sequences on the first pipeline stage, which holds ``pp`` microbatches in flight
  under 1F1B; sequence parallelism divides them by tp (Korthikanti et al. 2022);
- the pipeline bubble, (pp - 1) / (m + pp - 1) with m microbatches per step (Narayanan et al. 2021);
- the step time: the step's training FLOPs over (GPUs x peak x MFU), stretched by the bubble.

A layout fits when state + activations (with checkpointing, if that is what it takes) stay under 90% of
``--gpu_memory_gib``. These are estimates from the model's shape; they leave out communication buffers,
the allocator's fragmentation and the all-gathered FSDP blocks, hence the 10% margin. ``--simulate`` checks
the printed rows at full scale on this one CPU (``lit_llm.parallel.simulate``: torch's fake process group,
a meta-device model sharded by the real functions) and prints the state each row's largest rank really
holds. ``--choose N`` renders the SLURM script of row N through ``submit --dry_run`` (give the run's
``--config``).
"""

from __future__ import annotations

from typing import Any, Optional

from lit_llm.errors import UsageError
from lit_llm.model.config import ModelConfig
from lit_llm.model.costs import BYTES_PER_PARAM, estimate, parameter_shapes, rank_parameters

HEADROOM = 0.9  # share of the GPU's memory a plan may use


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def layouts(cfg: ModelConfig, nodes: int, gpus_per_node: int, global_batch: int, microbatch_size: int = 1,
            context: Optional[int] = None, gpu_memory_gib: float = 80.0, peak_tflops: float = 989.0,
            mfu: float = 0.4, precision: str = "bf16-mixed") -> list[dict[str, Any]]:
    """Every valid layout of ``cfg`` on ``nodes`` x ``gpus_per_node`` GPUs, with its memory and time."""
    world = nodes * gpus_per_node
    s = context or cfg.block_size
    base = estimate(cfg, world_size=1, batch_size=microbatch_size, context=s, precision=precision)
    one_layer = (base["activation_bytes"] - 4 * s * microbatch_size * cfg.vocab_size) / cfg.n_layer
    logits = 4 * s * microbatch_size * cfg.vocab_size
    bytes_per_param = BYTES_PER_PARAM[precision]
    shapes = parameter_shapes(cfg)
    step_flops = base["train_flops_per_token"] * global_batch * s
    rows = []
    for pp in _divisors(world):
        for tp in _divisors(gpus_per_node):  # tensor parallelism stays inside a node (NVLink)
            if world % (pp * tp):
                continue
            dp = world // (pp * tp)
            if pp > cfg.n_layer or cfg.n_head % tp or cfg.n_kv_heads % tp or cfg.intermediate_size % tp:
                continue
            if not cfg.causal and (pp > 1 or tp > 1):
                continue  # the encoder (bert) has no pipeline or tensor-parallel plan
            if global_batch % (dp * microbatch_size):
                continue
            m = global_batch // (dp * microbatch_size)  # microbatches per step on each pipeline
            if pp > 1 and m < pp:
                continue  # 1F1B needs at least pp microbatches in flight
            for strategy in (("ddp",) if tp == pp == 1 else ()) + ("fsdp",):
                shard = dp if strategy == "fsdp" else 1
                per_gpu_state = max(rank_parameters(cfg, pp, tp, shard, shapes)) * bytes_per_param
                layers = -(-cfg.n_layer // pp)  # the first stage's layers
                in_flight = pp if pp > 1 else 1
                act = (layers * one_layer * in_flight + (logits if pp == 1 else 0)) / tp
                act_ckpt = (layers * 2 * s * microbatch_size * cfg.n_embd * in_flight + one_layer
                            + (logits if pp == 1 else 0)) / tp
                bubble = (pp - 1) / (m + pp - 1)
                seconds = step_flops / (world * peak_tflops * 1e12 * mfu) / (1 - bubble)
                limit = gpu_memory_gib * 2**30 * HEADROOM
                fits = "yes" if per_gpu_state + act <= limit else (
                    "with checkpointing" if per_gpu_state + act_ckpt <= limit else "no")
                rows.append({"strategy": strategy, "dp": dp, "tp": tp, "pp": pp, "microbatches": m,
                             "state_gib": per_gpu_state / 2**30, "activations_gib": act / 2**30,
                             "activations_checkpointed_gib": act_ckpt / 2**30, "bubble": bubble,
                             "step_seconds": seconds, "fits": fits})
    order = {"yes": 0, "with checkpointing": 1, "no": 2}
    return sorted(rows, key=lambda r: (order[r["fits"]], r["step_seconds"], r["pp"], r["tp"]))


def strategy_args(row: dict[str, Any]) -> list[str]:
    """The fit overrides that run a layout (configs/strategy/ fragments, spelled out)."""
    if row["strategy"] == "ddp":
        return ["--trainer.strategy", "ddp"]
    args = ["--trainer.strategy", "lit_llm.parallel.ModelParallel",
            "--trainer.strategy.data_parallel_size", str(row["dp"]),
            "--trainer.strategy.tensor_parallel_size", str(row["tp"]),
            "--trainer.strategy.pipeline_parallel_size", str(row["pp"]), "--model.optimizer.name", "adamw"]
    parallel = {"activation_checkpointing": "full" if row["fits"] == "with checkpointing" else "none"}
    if row["pp"] > 1:
        parallel.update(pipeline_schedule="1f1b", microbatches=row["microbatches"])
    return args + ["--model.parallel", "{" + ", ".join(f"{k}: {v}" for k, v in parallel.items()) + "}"]


def plan(fit_args: Optional[list[str]] = None, preset: Optional[str] = None, nodes: int = 1, gpus_per_node: int = 8,
         gpu_memory_gib: float = 80.0, global_batch: int = 256, microbatch_size: int = 1,
         context: Optional[int] = None, mfu: float = 0.4, peak_tflops: float = 989.0, top: int = 12,
         choose: Optional[int] = None, simulate: bool = False) -> list[dict[str, Any]]:
    """List the parallel layouts of a model on a cluster with memory per GPU, pipeline bubble and step time.

    Args:
        fit_args: the run's fit arguments (``--config FILE`` ...), whose model is planned; or give --preset.
        preset: a model preset instead of a config (e.g. llama-70b, llama-405b).
        nodes: nodes in the job.
        gpus_per_node: GPUs per node (tensor parallelism stays inside one).
        gpu_memory_gib: memory of one GPU.
        global_batch: sequences per optimizer step, over all data-parallel replicas.
        microbatch_size: sequences per GPU per forward.
        context: tokens per sequence (default: the model's block_size).
        mfu: model FLOPs utilization assumed for the step time.
        peak_tflops: a GPU's dense bf16 peak (H100 SXM: 989).
        top: rows to print.
        choose: render the SLURM script of this row (1 = first) through submit --dry_run; needs a config.
        simulate: build each printed ModelParallel row's largest ranks under a fake process group and print
            the state their sharded tensors hold (``sim GiB``) beside the estimate.
    """
    if (preset is None) == (not fit_args):
        raise UsageError("give --preset NAME or the run's --config FILE (one of them)")
    if min(nodes, gpus_per_node, global_batch, microbatch_size, top) < 1 or not 0 < mfu <= 1:
        raise UsageError("nodes, gpus_per_node, global_batch, microbatch_size and top must be >= 1, mfu in (0, 1]")
    if choose is not None and not fit_args:
        raise UsageError("--choose needs a config: it renders the job of the run's --config FILE, not of a --preset")
    if preset is not None:
        cfg = ModelConfig.from_name(preset)
    else:
        from lit_llm.commands.size import model_config
        from lit_llm.lightning_cli import resolve_config

        cfg, _ = model_config(resolve_config(fit_args))
    rows = layouts(cfg, nodes, gpus_per_node, global_batch, microbatch_size, context, gpu_memory_gib, peak_tflops, mfu)
    if not rows:
        raise UsageError(f"No layout of {cfg.name} fits {nodes} x {gpus_per_node} GPUs with global batch {global_batch}"
                         f" and microbatch {microbatch_size}: make the global batch a multiple of the data-parallel"
                         " degree times the microbatch")
    n = cfg.num_parameters()
    print(f"{cfg.name}: {f'{n / 1e9:.2f}B' if n >= 1e9 else f'{n / 1e6:.2f}M'} parameters on {nodes} x {gpus_per_node} GPUs of"
          f" {gpu_memory_gib:g} GiB, global batch {global_batch} x {context or cfg.block_size} tokens, MFU {mfu:g}")
    print(f"{'#':>3s} {'strategy':>8s} {'dp':>5s} {'tp':>3s} {'pp':>3s} {'state GiB':>10s}"
          + (f" {'sim GiB':>8s}" if simulate else "")
          + f" {'act GiB':>9s} {'act ckpt':>9s} {'bubble':>7s} {'step s':>8s}  fits")
    for i, r in enumerate(rows[:top], 1):
        sim = ""
        if simulate:
            from lit_llm.parallel.simulate import simulate_layout

            if r["strategy"] == "fsdp":
                r["simulated_state_gib"] = simulate_layout(cfg, r["pp"], r["dp"], r["tp"])["max_state_bytes"] / 2**30
                sim = f" {r['simulated_state_gib']:>8.1f}"
            else:
                sim = f" {'-':>8s}"
        print(f"{i:>3d} {r['strategy']:>8s} {r['dp']:>5d} {r['tp']:>3d} {r['pp']:>3d} {r['state_gib']:>10.1f}{sim}"
              f" {r['activations_gib']:>9.1f} {r['activations_checkpointed_gib']:>9.1f} {r['bubble']:>7.1%}"
              f" {r['step_seconds']:>8.2f}  {r['fits']}")
    if choose is not None:
        if not 1 <= choose <= len(rows):
            raise UsageError(f"--choose must be a row number in 1..{len(rows)}, got {choose}")
        from lit_llm.commands.submit import submit

        submit(fit_args + strategy_args(rows[choose - 1]), nodes=nodes, gpus_per_node=gpus_per_node, dry_run=True)
    return rows
