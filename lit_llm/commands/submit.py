"""``python -m lit_llm submit``: write the SLURM job script for a config and submit it with sbatch.

One task per GPU (``--ntasks-per-node`` = GPUs per node), ``srun`` starting ``python -m lit_llm fit`` in each
with the arguments given to ``submit`` (``--config FILE`` ..., overrides) and the job's layout after them,
and Lightning's SLURM environment taking ranks and the rendezvous from SLURM's variables. The job asks for
the warning signal ``--signal=USR1@<seconds>`` and is requeueable. On the signal,
``lit_llm.callbacks.Preemption`` checkpoints and requeues it, and the requeued job resumes from that
checkpoint with the same W&B run. The scripts in ``slurm/`` are this function's output for three layouts,
and a test keeps them in step.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Literal, Optional

from lit_llm.errors import UsageError
from lit_llm.io import write_text_atomic

FIRST_NODE = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
# the values written into the script unquoted (#SBATCH lines), with the characters each may hold: nothing that
# ends a line, starts a shell expansion or a second command, or is a SLURM filename pattern (%)
SAFE_VALUES = {
    "job_name": ("A-Za-z0-9._-", "letters, digits, '.', '_' and '-'"),
    "time": ("A-Za-z0-9:-", "letters, digits, ':' and '-', e.g. 04:00:00 or 1-00:00:00"),
    "partition": ("A-Za-z0-9._,-", "letters, digits, '.', '_', '-' and ',' between partitions"),
    "account": ("A-Za-z0-9._-", "letters, digits, '.', '_' and '-'"),
    "output_dir": ("A-Za-z0-9._/+-", "letters, digits, '.', '_', '-', '+' and '/'"),
}


def check_safe(**values: Optional[str]) -> None:
    """Refuse a value that the script would hold unquoted and that has a character outside its field's safe set
    (a newline would add a line to the script; ``$(...)``, backticks or ``;`` would run a command)."""
    for field, value in values.items():
        chars, allowed = SAFE_VALUES[field]
        if value is None or re.fullmatch(f"[{chars}]+", value):
            continue
        bad = sorted({c for c in value if not re.fullmatch(f"[{chars}]", c)})
        listed = " ".join(map(repr, bad))
        problem = f"has characters that are not allowed in a job script: {listed}" if bad else "is empty"
        raise UsageError(f"--{field} {value!r} {problem}; use only {allowed}")


def job_fit_args(fit_args: list[str], nodes: int, gpus_per_node: int, tasks_per_node: int) -> list[str]:
    """The arguments of the job's ``fit``: the given ones, then the layout (last, so that no config can ask for
    another number of devices than the tasks SLURM starts)."""
    layout = ["--trainer.num_nodes", str(nodes), "--trainer.devices", str(gpus_per_node or tasks_per_node)]
    # the job's output is a file: progress as a line every 50 steps instead of a bar (the fit_args may override)
    log_file = ["--trainer.enable_progress_bar", "false", "--log_lines.every_n_steps", "50"]
    return [*log_file, *fit_args, *layout, *(["--trainer.accelerator", "gpu"] if gpus_per_node else [])]


def render_script(fit_args: list[str], nodes: int = 1, gpus_per_node: int = 0, tasks_per_node: int = 1,
                  cpus_per_task: int = 8, time: str = "01:00:00", partition: Optional[str] = None,
                  account: Optional[str] = None, job_name: str = "lit_llm", output_dir: str = "slurm_logs",
                  signal_seconds: int = 90, master_addr: Optional[str] = None, python: str = "python") -> str:
    """The sbatch script text (see ``submit`` for the arguments; ``fit_args`` as for ``fit``)."""
    if nodes < 1 or gpus_per_node < 0 or tasks_per_node < 1 or cpus_per_task < 1:
        raise UsageError("nodes, tasks_per_node and cpus_per_task must be >= 1 and gpus_per_node >= 0")
    if not 1 <= signal_seconds <= 65535:  # sbatch --signal's range
        raise UsageError(f"--signal_seconds {signal_seconds}: the warning signal must come 1 to 65535 seconds before the"
                         " time limit (default 90: enough for a checkpoint)")
    check_safe(job_name=job_name, time=time, partition=partition or None, account=account or None,
               output_dir=output_dir)
    if job_name in ("bash", "interactive"):
        raise UsageError(f"job name {job_name!r} turns off Lightning's SLURM detection; choose another --job_name")
    tasks = gpus_per_node or tasks_per_node  # one process per GPU, or per requested CPU task
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={tasks}",  # Lightning checks it against trainer.devices
        f"#SBATCH --cpus-per-task={cpus_per_task}",
    ]
    if gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={gpus_per_node}")
    lines += [f"#SBATCH --time={time}"]  # always set: a hung job cannot outlive it
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    lines += [
        f"#SBATCH --signal=USR1@{signal_seconds}",  # the warning before the time limit: checkpoint and requeue
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",  # a requeued job appends to the same log
        f"#SBATCH --output={output_dir}/%x-%j.out",
        "",
        "set -euo pipefail",
        "# rendezvous: the first node of the allocation (Lightning reads MASTER_ADDR / MASTER_PORT)",
        f"export MASTER_ADDR={shlex.quote(master_addr) if master_addr else FIRST_NODE}",
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        'echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, rendezvous $MASTER_ADDR:$MASTER_PORT"',
        "",
    ]
    cmd = [python, "-m", "lit_llm", "fit", *job_fit_args(fit_args, nodes, gpus_per_node, tasks_per_node)]
    lines.append("srun " + " ".join(shlex.quote(c) for c in cmd))
    return "\n".join(lines) + "\n"


PREPARE_JOBS = ("read", "clean", "dedup", "tokenize", "split", "merge")  # in order, each after the one before succeeded
ARRAY_JOBS = ("read", "clean", "tokenize", "split")  # one array task per part of the file groups or shards


def render_prepare_scripts(prepare_args: list[str], array_tasks: int = 4, cpus_per_task: int = 8,
                           time: str = "01:00:00", partition: Optional[str] = None, account: Optional[str] = None,
                           job_name: str = "lit_llm", output_dir: str = "slurm_logs", python: str = "python",
                           retries: int = 2) -> list[tuple[str, str]]:
    """The sbatch scripts of a parallel ``prepare``, ``[(stage, text)]`` in the order they run: ``read`` the
    documents into shards (an array: each task reads its part of the file groups of a source of many files, and
    task 0 the whole read of any other source, ``shards.read_plan``); ``clean`` them as an array of ``array_tasks`` tasks, each a contiguous part of the
    shards in ``cpus_per_task`` processes; ``dedup`` (global deduplication and the tokenizer); ``tokenize`` as an
    array; ``split`` as an array (each task writes its shards' tokens into the shared split files); ``merge`` the
    token folder, manifest and report. Every job runs ``prepare --stage`` on the same
    arguments, so they share one work folder; a job that fails is run again up to ``retries`` times in place,
    and only what it left unfinished is redone (a task's finished shards are kept, the other tasks are not
    touched)."""
    if array_tasks < 1 or cpus_per_task < 1 or retries < 0:
        raise UsageError("array_tasks and cpus_per_task must be >= 1 and retries >= 0")
    check_safe(job_name=job_name, time=time, partition=partition or None, account=account or None,
               output_dir=output_dir)
    scripts = []
    for stage in PREPARE_JOBS:
        array = stage in ARRAY_JOBS
        lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}-{stage}", "#SBATCH --nodes=1", "#SBATCH --ntasks=1",
                 f"#SBATCH --cpus-per-task={cpus_per_task}", f"#SBATCH --time={time}"]
        lines += [f"#SBATCH --partition={partition}"] if partition else []
        lines += [f"#SBATCH --account={account}"] if account else []
        lines += [f"#SBATCH --array=0-{array_tasks - 1}"] if array else []
        lines += [f"#SBATCH --output={output_dir}/%x-{'%A_%a' if array else '%j'}.out", "",
                  "set -uo pipefail", "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}"]
        cmd = [python, "-m", "lit_llm", "prepare", *prepare_args, "--data.workers", str(cpus_per_task),
               "--stage", stage]
        task = ' --task "$SLURM_ARRAY_TASK_ID" --tasks ' + str(array_tasks) if array else ""
        lines += [
            f"for attempt in $(seq 1 {retries + 1}); do",
            "  " + " ".join(shlex.quote(c) for c in cmd) + task + " && exit 0",
            f'  echo "{stage}{" task $SLURM_ARRAY_TASK_ID" if array else ""}: attempt $attempt of {retries + 1}'
            ' failed; what it finished is kept" >&2',
            "done",
            "exit 1",
        ]
        scripts.append((stage, "\n".join(lines) + "\n"))
    return scripts


def submit_prepare(scripts: list[tuple[str, str]], output_dir: str, job_name: str, wait: bool) -> str:
    """Write the scripts and sbatch them in order, each job depending on the one before (``afterok``; a job whose
    dependency failed is cancelled, not left pending). Returns the merge job's id."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    job, submitted = None, []
    for i, (stage, text) in enumerate(scripts):
        path = write_text_atomic(Path(output_dir) / f"{job_name}-{stage}.sbatch", text)
        last = i == len(scripts) - 1
        cmd = ["sbatch", "--parsable", *([f"--dependency=afterok:{job}", "--kill-on-invalid-dep=yes"] if job else []),
               *(["--wait"] if wait and last else []), str(path)]
        job, code, err = _sbatch(cmd)
        if code != 0 and not (wait and last and job):
            if submitted:  # a chain cut short: the jobs already queued would run half of it
                subprocess.run(["scancel", *submitted], capture_output=True)
            raise RuntimeError(f"sbatch of the {stage} job failed ({code}): {err}"
                               + (f"; cancelled the jobs queued before it ({', '.join(submitted)})" if submitted else ""))
        submitted.append(job)
        print(f"submitted job {job} ({stage}{', an array' if stage in ARRAY_JOBS else ''}): {path}")
        if wait and last and code != 0:
            raise RuntimeError(f"the prepare jobs failed (the merge job {job} did not succeed: sbatch --wait exited"
                               f" {code}); see the logs in {output_dir}")
    return job


def _sbatch(cmd: list[str]) -> tuple[str, int, str]:
    """Run sbatch; (job id, exit code, stderr)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UsageError("sbatch was not found: submit runs on a SLURM login node (or see slurm/local_cluster.sh);"
                         " --dry_run true prints the script") from None
    return out.stdout.strip().split(";")[0], out.returncode, out.stderr.strip()


def submit(fit_args: list[str], nodes: int = 1, gpus_per_node: int = 0, tasks_per_node: int = 1,
           cpus_per_task: int = 8, time: str = "01:00:00", partition: Optional[str] = None,
           account: Optional[str] = None, job_name: str = "lit_llm", output_dir: str = "slurm_logs",
           signal_seconds: int = 90, master_addr: Optional[str] = None, python: str = "python",
           script: Optional[str] = None, dry_run: bool = False, wait: bool = False, job: Literal["fit", "prepare"] = "fit",
           array_tasks: int = 4, retries: int = 2) -> Optional[str]:
    """Write the SLURM job script that runs ``fit`` on a config, and submit it with sbatch.

    The fit arguments are checked here with fit's parser (config files, keys, values) before anything is
    written or submitted, and the job runs ``fit`` with exactly them. With ``--job prepare`` it submits the
    config's parallel data stage instead: six jobs in a chain, four of them arrays (docs/data.md#slurm).

    Args:
        fit_args: fit's arguments: ``--config FILE`` (repeatable, composed in order) and overrides such as
            ``--trainer.max_steps 5000``.
        nodes: number of nodes.
        gpus_per_node: GPUs per node; one task (process) each. 0 makes a CPU job with ``tasks_per_node``.
        tasks_per_node: processes per node of a CPU job (DDP over gloo).
        cpus_per_task: CPU cores per process (also OMP_NUM_THREADS).
        time: time limit, ``HH:MM:SS`` or ``D-HH:MM:SS``.
        partition: SLURM partition.
        account: SLURM account.
        job_name: job name (not ``bash`` or ``interactive``, which hide SLURM from Lightning).
        output_dir: folder of the job's log (``<job_name>-<job id>.out``).
        signal_seconds: seconds before the time limit at which SLURM sends USR1 (checkpoint and requeue).
        master_addr: rendezvous address; default the first node of the allocation.
        python: the Python that has lit_llm installed.
        script: where to write the job script (default ``<output_dir>/<job_name>.sbatch``).
        dry_run: print the script and submit nothing.
        wait: wait for the job to end (``sbatch --wait``).
        job: ``fit`` (one job), or ``prepare``: read (an array), clean (an array), dedup, tokenize (an array), split (an array), merge, each job
            on one node with ``cpus_per_task`` cores (``nodes``, ``gpus_per_node`` and the signal do not apply).
        array_tasks: tasks of the prepare arrays, each a contiguous part of the shards.
        retries: times a failed prepare job (or array task) runs again in place, redoing only what it left.
    """
    from lit_llm.lightning_cli import resolve_config

    if job == "prepare":
        resolve_config(prepare_args := list(fit_args))  # a config that does not parse fails before any job
        scripts = render_prepare_scripts(prepare_args, array_tasks, cpus_per_task, time, partition, account,
                                         job_name, output_dir, python, retries)
        if dry_run:
            print("".join(f"# ---- {stage}.sbatch\n{text}" for stage, text in scripts), end="")
            return None
        return submit_prepare(scripts, output_dir, job_name, wait)

    text = render_script(fit_args, nodes, gpus_per_node, tasks_per_node, cpus_per_task, time, partition, account,
                         job_name, output_dir, signal_seconds, master_addr, python)
    # a config that does not parse fails here, not after the job waited in the queue
    resolve_config(job_fit_args(fit_args, nodes, gpus_per_node, tasks_per_node))
    if dry_run:
        print(text, end="")
        return None
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    path = write_text_atomic(script or Path(output_dir) / f"{job_name}.sbatch", text)
    job_id, code, err = _sbatch(["sbatch", "--parsable"] + (["--wait"] if wait else []) + [str(path)])
    if code != 0 and not (wait and job_id):
        raise RuntimeError(f"sbatch failed ({code}): {err}")
    print(f"submitted job {job_id}: {path}; log {output_dir}/{job_name}-{job_id}.out")
    if wait and code != 0:
        raise RuntimeError(f"job {job_id} failed (sbatch --wait exited {code}); see its log")
    return job_id
