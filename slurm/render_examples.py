"""Write the example job scripts in slurm/ from ``lit_llm.commands.submit.render_script`` (tests/test_slurm.py checks
that they match). Run after changing the template:  python slurm/render_examples.py"""

from pathlib import Path

from lit_llm.commands.submit import render_script

HERE = Path(__file__).resolve().parent

EXAMPLES = {
    # one node, 8 GPUs, DDP, bf16 mixed precision (configs/trainer/gpu.yaml)
    "gpu_single_node.sbatch": dict(fit_args=["--config", "configs/quickstart.yaml", "--config", "configs/trainer/gpu.yaml",
                                             "--config", "configs/strategy/ddp.yaml"],
                                   nodes=1, gpus_per_node=8, time="04:00:00", partition="gpu"),
    # 4 nodes x 8 GPUs, FSDP2 over all 32 processes
    "gpu_multi_node.sbatch": dict(fit_args=["--config", "configs/quickstart.yaml", "--config", "configs/model/gpt2-124m.yaml",
                                            "--config", "configs/trainer/gpu.yaml", "--config", "configs/strategy/fsdp.yaml",
                                            # Muon needs whole matrices: AdamW at GPT-2's learning rate under FSDP
                                            "--model.optimizer.name", "adamw", "--model.optimizer.learning_rate", "6e-4",
                                            "--data.block_size", "1024"],
                                  nodes=4, gpus_per_node=8, time="1-00:00:00", partition="gpu"),
    # CPU: 2 processes (DDP over gloo) on one node; what the tests run on the local cluster
    "cpu.sbatch": dict(fit_args=["--config", "configs/debug.yaml", "--config", "configs/strategy/ddp.yaml"], nodes=1,
                       tasks_per_node=2, cpus_per_task=1, time="00:10:00"),
}


def main() -> None:
    for name, kw in EXAMPLES.items():
        (HERE / name).write_text(render_script(**kw))
        print(f"wrote slurm/{name}")


if __name__ == "__main__":
    main()
