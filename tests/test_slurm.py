"""Jobs on a real SLURM: a single-host cluster (slurmctld + 2 slurmd faking 2 nodes, munge) started by
slurm/local_cluster.sh, which installs Debian's slurm-wlm and munge when they are missing.

(a) 2 tasks DDP on one node, (b) 2 nodes x 1 task, (c) pre-emption: USR1 mid-run -> checkpoint at a step
boundary, requeue, resume -> the same final weights as the uninterrupted run (a), and the same W&B run id.
Faults around pre-emption: (d) a killed pre-emption save left its temporaries beside a real hpc checkpoint,
(e) a requeue that the callback did not start (no USR1, no hpc checkpoint), (f) one rank SIGKILLed mid-run
and the job resubmitted: each resumes from the newest complete checkpoint and ends as the uninterrupted run.
(g) the parallel prepare as a chain of jobs with two arrays, one task killed once.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_llm.commands.submit import render_script
from tests.helpers.paths import REPO, cli_env
from tests.helpers.wandb_offline import config as wandb_config
from tests.helpers.wandb_offline import history as wandb_history

SCRIPT = REPO / "slurm" / "local_cluster.sh"
pytestmark = pytest.mark.skipif(
    shutil.which("slurmctld") is None and (shutil.which("apt-get") is None or os.geteuid() != 0),
    reason="needs slurm-wlm and munge, or root with apt-get to install them (slurm/local_cluster.sh)",
)
STEPS = 300  # long enough (a few seconds) for the signal to land mid-run


def _free_port_base(nodes: int) -> int:
    """A base port such that the controller's port and every fake node's (base + i) are free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1] // 10 * 10
        try:
            for port in range(base, base + nodes + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free run of ports for the local SLURM cluster")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local cluster of 2 fake nodes. A start that fails (a port taken between the check and the bind, a
    slow machine) is retried on new ports; the script prints the daemons' logs when it gives up."""
    state = tmp_path_factory.mktemp("slurm")
    env = cli_env(state)
    env["LIT_LLM_SLURM_DIR"] = str(state)
    for _attempt in range(3):
        env["LIT_LLM_SLURM_PORT"] = str(_free_port_base(2))
        up = subprocess.run(["bash", str(SCRIPT), "start", "2"], env=env, capture_output=True, text=True, timeout=600)
        if up.returncode == 0:
            break
    assert up.returncode == 0, f"local SLURM cluster did not start:\n{up.stdout}\n{up.stderr}"
    env["SLURM_CONF"] = str(state / "slurm.conf")
    yield env
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def submit(env, tmp_path, name, *extra, wait=True, nodes=1, tasks=2):
    """``python -m lit_llm submit`` of the debug config (DDP over gloo), output under tmp_path/name."""
    out = tmp_path / name
    args = [sys.executable, "-m", "lit_llm", "submit", "--config", f"{REPO}/configs/debug.yaml", "--config",
            f"{REPO}/configs/strategy/ddp.yaml", "--nodes", str(nodes), "--tasks_per_node", str(tasks),
            "--cpus_per_task", "1", "--time", "00:05:00", "--job_name", name, "--output_dir", str(tmp_path / "logs"),
            "--master_addr", "127.0.0.1", "--python", sys.executable, "--trainer.default_root_dir", str(out),
            "--trainer.max_steps", str(STEPS), "--data.data_dir", str(REPO.parent / "shared" / "data")]
    proc = subprocess.run(args + list(extra) + (["--wait", "true"] if wait else []), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    job = re.search(r"submitted job (\d+)", proc.stdout)
    log = tmp_path / "logs" / f"{name}-{job.group(1)}.out" if job else None
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{log.read_text() if log and log.exists() else ''}"
    return job.group(1), out, log


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _wandb_runs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("a")
    return submit(cluster, tmp, "ddp2")


@pytest.mark.slow
def test_a_two_task_ddp_job(uninterrupted):
    job, out, log = uninterrupted
    text = log.read_text()
    assert f"job {job} (restart 0)" in text
    assert (out / "checkpoints" / "last.ckpt").is_file()
    runs = _wandb_runs(out)
    assert len(runs) == 1 and runs[0].name == f"run-slurm-{job}.wandb"  # one offline run, id from the job
    meta = wandb_config(runs[0])["run"]
    hw = meta["hardware"]
    assert hw["world_size"] == 2 and hw["slurm_job_id"] == job and hw["slurm_restart_count"] == 0
    assert meta["code"]["git_sha"] and meta["data"]["tokenizer_hash"] and meta["data"]["cache_key"]
    assert any("val_loss" in row for row in wandb_history(runs[0]))


@pytest.mark.slow
def test_b_two_fake_nodes_one_task_each(cluster, tmp_path, uninterrupted):
    job, out, log = submit(cluster, tmp_path, "nodes2", nodes=2, tasks=1)
    text = log.read_text()
    assert re.search(r"on node\[1-2\]", text), text[-2000:]
    # same global batch and seed as (a): 2 nodes x 1 process trains exactly like 1 node x 2 processes
    a = _weights(uninterrupted[1] / "checkpoints" / "last.ckpt")
    b = _weights(out / "checkpoints" / "last.ckpt")
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


def _job_state(env, job) -> tuple[str, int]:
    info = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    state = re.search(r"JobState=(\w+)", info)
    restarts = re.search(r"Restarts=(\d+)", info)
    return (state.group(1) if state else "UNKNOWN"), int(restarts.group(1)) if restarts else 0


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY")


def _wait_for(env, job, path: Path, deadline: float) -> None:
    """Until ``path`` exists (a checkpoint written mid-run) while the job is queued or running."""
    while not path.exists():
        assert time.time() < deadline and _job_state(env, job)[0] in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.2)


def _await_requeue(env, job, log: Path, deadline: float) -> None:
    """Until the requeued job waits in the queue (slurmctld holds it back, BeginTime about 2 minutes on)."""
    while True:
        state, restarts = _job_state(env, job)
        if state == "PENDING" and restarts >= 1:
            return
        assert time.time() < deadline, f"job {job} still {state} after {restarts} restarts:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def _hurry(env, job) -> None:
    """Start a requeued job now; a test need not wait out its BeginTime."""
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)


def _await_end(env, job, log: Path, deadline: float, restarts: int = 1, while_running=None) -> str:
    """The job's final state once it ended after ``restarts`` restarts; ``while_running()`` is called each poll."""
    while True:
        state, n = _job_state(env, job)
        if state in ENDED and n >= restarts:
            return state
        if while_running is not None:
            while_running()
        assert time.time() < deadline, f"job {job} still {state} after {n} restarts:\n{log.read_text()[-3000:]}"
        time.sleep(1)


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def _complete_checkpoints(out: Path) -> dict[Path, int]:
    """Every complete checkpoint a resume could take (hpc_ckpt_N.ckpt, checkpoints/*.ckpt): its global step."""
    steps = {}
    for p in [*out.glob("hpc_ckpt_*.ckpt"), *(out / "checkpoints").glob("*.ckpt")]:
        if not p.name.startswith("."):
            steps[p] = _step(p)
    return steps


def _resumed_from(text: str) -> Path:
    found = re.findall(r"resuming from the newest complete checkpoint, (\S+)", text)
    assert len(found) == 1, text[-3000:]
    return Path(found[0])


def _same_weights_as(uninterrupted, out: Path) -> bool:
    a = _weights(uninterrupted[1] / "checkpoints" / "last.ckpt")
    b = _weights(out / "checkpoints" / "last.ckpt")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_c_preemption_requeues_and_resumes_exactly(cluster, tmp_path, uninterrupted):
    job, out, log = submit(cluster, tmp_path, "preempt", wait=False)
    deadline = time.time() + 300
    _wait_for(cluster, job, out / "checkpoints" / "step10.ckpt", deadline)  # mid-run
    subprocess.run(["scancel", "--signal=USR1", job], env=cluster, check=True)
    _await_requeue(cluster, job, log, deadline)
    _hurry(cluster, job)
    state = _await_end(cluster, job, log, deadline)
    text = log.read_text()
    assert state == "COMPLETED", text[-3000:]
    assert "Pre-emption: saved" in text and f"Pre-emption: requeued SLURM job {job}" in text
    assert f"job {job} (restart 1)" in text and "Restoring states from the checkpoint path" in text
    hpc = out / "hpc_ckpt_1.ckpt"
    assert hpc.is_file() and not list(out.glob(".hpc_ckpt_*"))
    stopped_at = _step(hpc)
    assert 10 <= stopped_at < STEPS
    # the resumed job ends with exactly the weights of the uninterrupted run
    assert _same_weights_as(uninterrupted, out)
    # both parts of the job logged to one W&B run id
    runs = _wandb_runs(out)
    assert len(runs) == 2 and {r.name for r in runs} == {f"run-slurm-{job}.wandb"}
    steps = [row.get("trainer/global_step") for r in runs for row in wandb_history(r) if "val_loss" in row]
    assert steps and max(steps) >= STEPS - 1


@pytest.mark.slow
def test_d_a_killed_preemption_save_does_not_block_the_requeue(cluster, tmp_path, uninterrupted):
    job, out, log = submit(cluster, tmp_path, "killedsave", wait=False)
    deadline = time.time() + 300
    _wait_for(cluster, job, out / "checkpoints" / "step10.ckpt", deadline)
    subprocess.run(["scancel", "--signal=USR1", job], env=cluster, check=True)
    _await_requeue(cluster, job, log, deadline)
    # while the requeued job waits: what a save killed half-way leaves beside the real hpc_ckpt_1.ckpt, under the
    # old name (whose "hpc_ckpt_2" pointed Lightning's SLURM resume at a file that does not exist) and the new one
    hpc = out / "hpc_ckpt_1.ckpt"
    half = hpc.read_bytes()[: hpc.stat().st_size // 2]
    stale = [out / ".hpc_ckpt_2.ckpt.partial", out / ".lit_llm-tmp-preemption-2.ckpt"]
    for p in stale:
        p.write_bytes(half)
    candidates = _complete_checkpoints(out)
    newest = max(candidates.values())
    assert newest == _step(hpc) >= 10
    _hurry(cluster, job)
    state = _await_end(cluster, job, log, deadline)
    text = log.read_text()
    assert state == "COMPLETED", text[-3000:]
    assert f"job {job} (restart 1)" in text
    for p in stale:
        assert not p.exists() and f"removed {p}, left by an interrupted checkpoint save" in text
    assert candidates[_resumed_from(text)] == newest  # hpc_ckpt_1.ckpt, or a step checkpoint of the same step
    assert _step(out / "checkpoints" / "last.ckpt") == STEPS
    assert _same_weights_as(uninterrupted, out)


@pytest.mark.slow
def test_e_a_requeue_without_usr1_resumes_from_the_newest_step_checkpoint(cluster, tmp_path, uninterrupted):
    job, out, log = submit(cluster, tmp_path, "requeue", wait=False)
    deadline = time.time() + 300
    _wait_for(cluster, job, out / "checkpoints" / "step20.ckpt", deadline)
    # what a node failure or an administrator does: SLURM kills the running job (SIGTERM, then SIGKILL) and requeues it
    subprocess.run(["scontrol", "requeue", job], env=cluster, check=True)
    _await_requeue(cluster, job, log, deadline)
    assert not list(out.glob("hpc_ckpt_*"))  # the callback saw no USR1
    candidates = _complete_checkpoints(out)
    newest = max(candidates.values())
    assert newest >= 20
    last = out / "checkpoints" / "last.ckpt"
    # last.ckpt as the kill left it: behind the newest step checkpoint when the kill fell between the two saves
    before = _step(last) if last.exists() else 0
    last_steps = []  # last.ckpt's step, polled while the requeued job runs: it must never go back
    _hurry(cluster, job)
    state = _await_end(cluster, job, log, deadline, while_running=lambda: last_steps.append(_step(last)))
    text = log.read_text()
    assert state == "COMPLETED", text[-3000:]
    assert f"job {job} (restart 1)" in text and "Pre-emption: saved" not in text
    assert candidates[_resumed_from(text)] == newest
    assert last_steps and last_steps == sorted(last_steps) and min(last_steps) >= before, last_steps
    assert all(step >= newest for step in last_steps if step != before), last_steps  # every save after the resume
    assert _step(last) == STEPS
    assert _same_weights_as(uninterrupted, out)
    # the requeued part of the W&B run starts where the checkpoint left off, not at step 0
    runs = _wandb_runs(out)
    assert len(runs) == 2 and {r.name for r in runs} == {f"run-slurm-{job}.wandb"}
    resumed = [row["trainer/global_step"] for row in wandb_history(runs[-1]) if "train_loss" in row]
    assert resumed and min(resumed) >= newest


def _rank_process(job: str, rank: int) -> int:
    """The pid of the job's training process of global rank ``rank`` (not a child it forked)."""
    def env_of(pid):
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        env = dict(kv.split(b"=", 1) for kv in raw.split(b"\0") if b"=" in kv)
        if env.get(b"SLURM_JOB_ID") == job.encode() and b"lit_llm" in cmd and b"fit" in cmd:
            return env
        return None

    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (env := env_of(d.name)) and env.get(b"SLURM_PROCID") == str(rank).encode():
            ppid = Path(f"/proc/{d.name}/stat").read_text().rsplit(")", 1)[1].split()[1]
            if env_of(ppid) is None:
                found.append(int(d.name))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_f_a_rank_killed_mid_run_then_resubmitted_resumes(cluster, tmp_path, uninterrupted):
    job, out, log = submit(cluster, tmp_path, "rankdies", wait=False)
    deadline = time.time() + 300
    _wait_for(cluster, job, out / "checkpoints" / "step20.ckpt", deadline)
    os.kill(_rank_process(job, 1), 9)  # the node of rank 1 is gone: no signal handler, no save
    state = _await_end(cluster, job, log, deadline, restarts=0)
    assert state != "COMPLETED", log.read_text()[-3000:]
    assert not list(out.glob("hpc_ckpt_*"))
    candidates = _complete_checkpoints(out)
    newest = max(candidates.values())
    assert 20 <= newest < STEPS
    # the same job script, submitted again
    again = subprocess.run(["sbatch", "--parsable", "--wait", str(tmp_path / "logs" / "rankdies.sbatch")], env=cluster,
                           capture_output=True, text=True, timeout=300, check=False)
    job2 = again.stdout.strip().split(";")[0]
    text = (tmp_path / "logs" / f"rankdies-{job2}.out").read_text()
    assert again.returncode == 0, f"{again.stderr}\n{text[-3000:]}"
    assert candidates[_resumed_from(text)] == newest
    assert _step(out / "checkpoints" / "last.ckpt") == STEPS
    assert _same_weights_as(uninterrupted, out)


@pytest.mark.slow
def test_g_a_prepare_as_array_jobs_writes_the_one_process_bytes_and_retries_a_failed_task_alone(cluster, tmp_path):
    """``submit --job prepare``: read, clean (an array of 2 tasks, one per fake node), dedup, tokenize (2 tasks),
    split (2 tasks writing one set of split files), merge, chained by afterok. Task 1's first clean attempt is killed (the interpreter the jobs start is a wrapper
    that does it once); that task alone runs again, and the token folder is the one-process prepare's, byte for
    byte. (benchmarks/prepare_slurm.py runs 4 tasks.)"""
    import yaml

    from lit_llm.data.prepare import prepare
    from lit_llm.data.sources import Source
    from lit_llm.data.tokenizer import TokenizerSpec
    from tests.helpers.corpora import CLEANING, planted_duplicates

    corpus = planted_duplicates(tmp_path / "corpus.jsonl")
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "sources": [{"path": str(corpus)}], "cleaning": CLEANING, "tokenizer": {"kind": "bpe", "vocab_size": 300},
        "val_fraction": 0.1, "test_fraction": 0.05, "shard_docs": 30}}))
    reference = prepare([Source(path=str(corpus))], tmp_path / "one", CLEANING, TokenizerSpec(kind="bpe", vocab_size=300),
                        val_fraction=0.1, test_fraction=0.05, progress=False)  # one process, as the data module calls it
    marker = tmp_path / "killed_once"
    wrapper = tmp_path / "python"
    wrapper.write_text(f"""#!/bin/bash
if [[ " $* " == *" --stage clean "* && "${{SLURM_ARRAY_TASK_ID:-}}" == 1 && ! -e {marker} ]]; then
  touch {marker}; kill -9 $$
fi
exec {sys.executable} "$@"
""")
    wrapper.chmod(0o755)
    logs = tmp_path / "logs"
    proc = subprocess.run([sys.executable, "-m", "lit_llm", "submit", "--job", "prepare", "--config", str(config),
                           "--data.cache_dir", str(tmp_path / "array"), "--array_tasks", "2", "--cpus_per_task", "1",
                           "--time", "00:05:00", "--job_name", "prep", "--output_dir", str(logs), "--python",
                           str(wrapper), "--wait", "true"], cwd=REPO, env=cluster, capture_output=True, text=True,
                          timeout=600)
    every_log = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(logs.glob("*.out")))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{every_log}"
    assert re.findall(r"submitted job \d+ \((\w+)", proc.stdout) == ["read", "clean", "dedup", "tokenize", "split",
                                                                     "merge"]
    (out,) = [p.parent for p in (tmp_path / "array").glob("*/manifest.json")]
    for name in ("manifest.json", "tokenizer.json", "train.bin", "test.bin", "val.bin", "doc_lengths.npy"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not [p for p in (tmp_path / "array").glob("*.shards*") if p.is_dir()]  # the work folder is gone (its
    # lock file stays)
    clean_logs = {int(p.stem.rsplit("_", 1)[1]): p.read_text() for p in logs.glob("prep-clean-*_*.out")}
    assert sorted(clean_logs) == [0, 1] and marker.exists()
    assert [i for i, text in clean_logs.items() if "attempt 1 of 3 failed" in text] == [1]
    assert "stage clean (part 2 of 2) done" in clean_logs[1] and "attempt 2 of 3 failed" not in clean_logs[1]


def test_rendered_examples_are_current():
    sys.path.insert(0, str(REPO / "slurm"))
    from render_examples import EXAMPLES

    for name, kw in EXAMPLES.items():
        assert (REPO / "slurm" / name).read_text() == render_script(**kw), f"run python slurm/render_examples.py ({name})"


def test_submit_dry_run_and_bad_input(tmp_path):
    env = cli_env(tmp_path)
    cfg = str(REPO / "configs" / "debug.yaml")
    proc = subprocess.run([sys.executable, "-m", "lit_llm", "submit", "--config", cfg, "--nodes", "2",
                           "--gpus_per_node", "4", "--partition", "p", "--account", "acc", "--dry_run", "true"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "#SBATCH --time=01:00:00",
                 "#SBATCH --partition=p", "#SBATCH --account=acc", "#SBATCH --signal=USR1@90", "#SBATCH --requeue"):
        assert line in text
    assert "--trainer.num_nodes 2 --trainer.devices 4 --trainer.accelerator gpu" in text
    assert not (tmp_path / "slurm_logs").exists()  # a dry run writes nothing
    with pytest.raises(ValueError, match="turns off Lightning's SLURM detection"):
        render_script(["--config", cfg], job_name="bash")
    bad = subprocess.run([sys.executable, "-m", "lit_llm", "submit", "--config", "missing.yaml", "--dry_run", "true"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr and "does not exist" in bad.stderr


@pytest.mark.slow
def test_submit_prepare_dry_run_and_a_stage_out_of_order(tmp_path):
    """The prepare chain's scripts (arrays for read, clean, tokenize and split, each job retrying in place), and a stage run
    before the one it needs is one error line naming the stage to run first."""
    env = cli_env(tmp_path)
    cfg = str(REPO / "configs" / "data" / "tinyshakespeare.yaml")
    proc = subprocess.run([sys.executable, "-m", "lit_llm", "submit", "--job", "prepare", "--config", cfg,
                           "--array_tasks", "8", "--cpus_per_task", "16", "--retries", "1", "--dry_run", "true"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    scripts = dict(re.findall(r"# ---- (\w+)\.sbatch\n(.*?)(?=# ---- |\Z)", proc.stdout, re.S))
    assert list(scripts) == ["read", "clean", "dedup", "tokenize", "split", "merge"]
    for stage, text in scripts.items():
        array = stage in ("read", "clean", "tokenize", "split")
        assert ("#SBATCH --array=0-7" in text) == array and "#SBATCH --cpus-per-task=16" in text
        assert f"--data.workers 16 --stage {stage}" in text and "for attempt in $(seq 1 2)" in text
        assert ('--task "$SLURM_ARRAY_TASK_ID" --tasks 8' in text) == array
    assert not (tmp_path / "slurm_logs").exists()
    out = subprocess.run([sys.executable, "-m", "lit_llm", "prepare", "--config", cfg, "--data.cache_dir",
                          str(tmp_path / "cache"), "--stage", "clean", "--task", "0", "--tasks", "2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and lines[-1].startswith("error: ") and "Traceback" not in out.stderr
    assert "the read stage (prepare --stage read) has not finished" in lines[-1]
