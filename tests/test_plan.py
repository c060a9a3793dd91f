"""``python -m lit_llm plan``: the layouts, their memory per GPU, bubble and step time against hand-computed
figures, the layouts it must leave out, and the SLURM script of a chosen layout."""

import pytest

from lit_llm.cli import main
from lit_llm.commands.plan import layouts, plan
from lit_llm.errors import UsageError
from lit_llm.model import ModelConfig

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
    assert _row(rows, "fsdp", 4, 2, 1)["state_gib"] == pytest.approx(state / 8 / GiB)
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
