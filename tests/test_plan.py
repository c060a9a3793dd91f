"""``python -m lit_llm plan``: the layouts, their memory per GPU, bubble and step time against hand-computed
figures, the layouts it must leave out, and the SLURM script of a chosen layout."""

import subprocess
import sys

import pytest
import torch

from lit_llm.cli import main
from lit_llm.commands.plan import layouts, plan
from lit_llm.errors import UsageError
from lit_llm.model import ModelConfig
from tests.helpers.paths import REPO

GiB = 2**30


def _row(rows, strategy, dp, tp, pp):
    [row] = [r for r in rows if (r["strategy"], r["dp"], r["tp"], r["pp"]) == (strategy, dp, tp, pp)]
    return row


def test_llama_7b_on_one_node_matches_the_hand_computed_figures():
    cfg = ModelConfig.from_name("llama-7b")
    rows = layouts(cfg, nodes=1, gpus_per_node=8, global_batch=16, context=4096, gpu_memory_gib=80, mfu=0.5)
    state = 6_738_415_616 * 16  # bytes: fp32 weights, gradients and two AdamW moments
    assert _row(rows, "ddp", 8, 1, 1)["state_gib"] == pytest.approx(state / GiB)
    assert _row(rows, "ddp", 8, 1, 1)["fits"] == "no"  # 100 GiB of state on every GPU
    assert _row(rows, "fsdp", 8, 1, 1)["state_gib"] == pytest.approx(state / 8 / GiB)
    norms = 65 * 4096 * 16  # 2 per block + the final one: tensor parallelism leaves them whole
    assert _row(rows, "fsdp", 4, 2, 1)["state_gib"] == pytest.approx(((state - norms) / 8 + norms / 4) / GiB)
    # activations of one 4096-token sequence, per layer s*(15h + 8f) bytes (SwiGLU), 32 layers, + fp32 logits
    act = 32 * 4096 * (15 * 4096 + 8 * 11008) + 4 * 4096 * 32000
    assert _row(rows, "fsdp", 8, 1, 1)["activations_gib"] == pytest.approx(act / GiB)
    assert _row(rows, "fsdp", 4, 2, 1)["activations_gib"] == pytest.approx(act / 2 / GiB)  # sequence parallel
    pipe = _row(rows, "fsdp", 4, 1, 2)  # 16 sequences over 4 replicas: 4 microbatches per pipeline
    assert pipe["microbatches"] == 4 and pipe["bubble"] == pytest.approx(1 / 5)
    flops = (6 * (32 * (2 * 4096 * 4096 + 2 * 4096 * 4096 + 3 * 4096 * 11008) + 32000 * 4096)
             + 12 * 32 * 4096 * 4096) * 16 * 4096
    one = _row(rows, "fsdp", 8, 1, 1)["step_seconds"]
    assert one == pytest.approx(flops / (8 * 989e12 * 0.5))
    assert pipe["step_seconds"] == pytest.approx(one / (1 - 1 / 5))
    assert rows[0]["fits"] == "yes" and all(r["dp"] * r["tp"] * r["pp"] == 8 for r in rows)


def test_layouts_the_model_or_the_strategies_cannot_run_are_left_out():
    rows = layouts(ModelConfig.from_name("llama-70b"), nodes=2, gpus_per_node=16, global_batch=64)
    assert {r["tp"] for r in rows} == {1, 2, 4, 8}  # 16 does not divide the 8 key/value heads
    assert [r for r in rows if r["tp"] > 1 and r["pp"] > 1 and r["dp"] > 1]  # 3D layouts are offered
    assert all(r["microbatches"] >= r["pp"] for r in rows)  # 1F1B needs pp microbatches in flight
    big = layouts(ModelConfig.from_name("llama-405b"), nodes=512, gpus_per_node=8, global_batch=2048, context=8192)
    assert big and all(r["dp"] <= 2048 for r in big) and big[0]["fits"] != "no"


def test_plan_renders_the_chosen_layout_as_a_slurm_job(capsys):
    main(["plan", "--config", "configs/quickstart.yaml", "--nodes", "2", "--gpus_per_node", "4",
          "--global_batch", "64", "--choose", "3"])
    out = capsys.readouterr().out
    table, script = out.split("#!/bin/bash")
    third = table.splitlines()[4].split()
    assert third[:5] == ["3", "fsdp", "4", "2", "1"]
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=4" in script
    assert ("--trainer.strategy.data_parallel_size 4 --trainer.strategy.tensor_parallel_size 2"
            " --trainer.strategy.pipeline_parallel_size 1") in script


def test_plan_refuses_impossible_requests_with_the_fix():
    with pytest.raises(UsageError, match="--preset NAME or the run's --config"):
        plan(["--config", "configs/quickstart.yaml"], preset="llama-7b")
    with pytest.raises(UsageError, match="multiple of the data-parallel degree"):
        plan(preset="llama-7b", nodes=2, gpus_per_node=8, global_batch=1)  # 16 GPUs: tp <= 8, and pp 2 needs 2
    with pytest.raises(UsageError, match="needs a config"):
        plan(preset="llama-7b", choose=1)


@pytest.mark.parametrize("preset", ["debug", "debug-llama"])
def test_rank_parameters_count_what_split_stages_keeps(preset):
    from lit_llm.model import build_model
    from lit_llm.model.costs import rank_parameters
    from lit_llm.parallel.pipeline import split_stages

    cfg = ModelConfig.from_name(preset, n_layer=5)  # 5 blocks over 2 and 3 stages: uneven runs
    for pp in (1, 2, 3):
        real = []
        for stage in range(pp):
            with torch.device("meta"):
                model = build_model(cfg)
            split_stages(model, stage, pp, 1) if pp > 1 else None
            real.append(sum(p.numel() for p in model.parameters()))  # a tied pair counts once per stage
        assert rank_parameters(cfg, pp) == real


def test_fake_process_group_shards_llama_70b_as_the_plan_estimates():
    """64 ranks (pp 2 x dp 4 x tp 8) and 4,096 (dp 1,024 x tp 4) built on one CPU: the largest ranks' sharded
    tensors hold exactly what plan counts, FSDP's padding of uneven shards included."""
    from lit_llm.model.costs import rank_parameters
    from lit_llm.parallel.simulate import simulate_layout

    cfg = ModelConfig.from_name("llama-70b")
    sim = simulate_layout(cfg, pp=2, dp=4, tp=8)
    assert [r["rank"] for r in sim["ranks"]] == [0, 32] and [r["stage"] for r in sim["ranks"]] == [0, 1]
    assert [r["parameters"] for r in sim["ranks"]] == rank_parameters(cfg, pp=2, tp=8, dp=4)
    for r in sim["ranks"]:
        assert r["gradient_bytes"] == r["parameter_bytes"] and r["optimizer_bytes"] == 2 * r["parameter_bytes"]
    [row] = [r for r in layouts(cfg, nodes=8, gpus_per_node=8, global_batch=1024, context=4096)
             if (r["strategy"], r["dp"], r["tp"], r["pp"]) == ("fsdp", 4, 8, 2)]
    assert sim["max_state_bytes"] == row["state_gib"] * GiB
    # where FSDP's padding matters: k/v projections of 256 rows a tensor-parallel rank, over 1,024 shards
    sim = simulate_layout(cfg, pp=1, dp=1024, tp=4)
    assert [r["parameters"] for r in sim["ranks"]] == rank_parameters(cfg, tp=4, dp=1024)
    assert sim["ranks"][0]["parameters"] > 1.05 * cfg.num_parameters() / 4096
    # HSDP, 512 ranks: 8 replicas of FSDP 16 x TP 4; a rank holds a 16th of its tensor-parallel slice
    sim = simulate_layout(cfg, pp=1, dp=16, tp=4, replicas=8)
    assert sim["world_size"] == 512 and sim["ranks"][0]["parameters"] == rank_parameters(cfg, tp=4, dp=16)[0]
    with pytest.raises(ValueError, match="does not divide n_kv_heads=8"):
        simulate_layout(cfg, pp=1, dp=4, tp=16)


@pytest.mark.parametrize("rank", [0, 7])  # the first and the last pipeline stage
def test_gradients_and_adamw_state_take_the_parameters_sharded_layout_in_a_real_backward(rank):
    """What simulate_rank assumes at scale (a gradient per parameter in its sharded layout), checked with a
    real forward and backward of a small model under FSDP 2 x TP 2 x PP 2 and the fake process group. In a
    process of its own: torch's collectives keep process groups cached past destroy_process_group."""
    code = f"from tests import test_plan; test_plan.check_real_backward({rank})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def check_real_backward(rank: int) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from lit_llm.model import build_model
    from lit_llm.parallel import apply_fsdp, apply_tp
    from lit_llm.parallel.pipeline import split_stages

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=8)
    mesh = init_device_mesh("cpu", (2, 2, 2), mesh_dim_names=("pipeline_parallel", "data_parallel", "tensor_parallel"))
    model = build_model(ModelConfig.from_name("debug-llama"))
    split_stages(model, mesh["pipeline_parallel"].get_local_rank(), 2, 1)
    apply_tp(model, mesh["tensor_parallel"])
    apply_fsdp(model, mesh["data_parallel"])
    x = (torch.zeros(2, 32, dtype=torch.long) if model.tok_embeddings is not None
         else torch.randn(2, 16, 32, requires_grad=True))  # a later stage's input: its sequence shard
    model(x).float().pow(2).mean().backward()
    optimizer = torch.optim.AdamW(model.parameters())
    optimizer.step()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.to_local().shape == p.to_local().shape, name
        assert p.grad.placements == p.placements, name
        assert optimizer.state[p]["exp_avg"].to_local().shape == p.to_local().shape, name
    dist.destroy_process_group()


def test_plan_simulate_prints_what_the_sharded_tensors_hold(capsys):
    rows = plan(preset="llama-70b", nodes=8, gpus_per_node=8, global_batch=512, top=2, simulate=True)
    out = capsys.readouterr().out
    assert "sim GiB" in out.splitlines()[1]
    for r in rows[:2]:
        assert r["simulated_state_gib"] == pytest.approx(r["state_gib"], rel=1e-9)
    assert "simulated_state_gib" not in rows[2]  # only the printed rows are built
