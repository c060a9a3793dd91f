"""Kill -9 anywhere: SIGKILL a CPU ``fit`` at random moments, rerun the same command, and check that the run
that finally completes has the weights of an uninterrupted one, bit for bit.

Every rerun is the same command, ``fit ... --ckpt_path newest``: no hand-picked checkpoint. Before each rerun
the newest checkpoint on disk must load. A kill that lands inside a checkpoint write is seen at the next start
(the run reports the temporary file it swept). Prints one JSON line, e.g.
``{"kills": 20, "survived": 20, "inside_a_save": 3, "restarts": 21, "bit_identical": true, ...}``.

    python benchmarks/kill_resume.py --kills 20                 # one process
    python benchmarks/kill_resume.py --kills 20 --devices 2     # DDP on 2 processes (gloo)
    python benchmarks/kill_resume.py --kills 20 --stream        # the streaming loader (litdata, the stream extra)

``tests/test_kill_resume.py`` runs it with a few kills in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lit_llm.checkpoint import newest_checkpoint, read_info  # noqa: E402


def fit_command(out: Path, corpus: Path, steps: int, devices: int, stream: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "lit_llm", "fit", "--config", "configs/debug.yaml", "--data.corpus", str(corpus),
           "--trainer.max_steps", str(steps), "--checkpoint.every_n_train_steps", "2",
           "--trainer.val_check_interval", str(steps), "--trainer.limit_val_batches", "1",
           "--model.model_args", "{dropout: 0.1}",  # dropout: the RNG state must resume too
           "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
           "--trainer.default_root_dir", str(out), "--ckpt_path", "newest"]
    if devices > 1:
        cmd += ["--config", "configs/strategy/ddp.yaml", "--trainer.devices", str(devices),
                "--data.batch_size", str(8 // devices)]
    if stream:  # litdata's StreamingDataLoader, whose position travels in the checkpoint
        cmd += ["--data.stream", "true"]
    return cmd


def run(cmd: list[str], env: dict, kill_after: float | None, log, watch: Path | None = None,
        kill_at: tuple[Path, int, float] | None = None) -> tuple[int, float, float]:
    """Run ``cmd`` in its own process group; SIGKILL the whole group after ``kill_after`` seconds, or
    ``kill_at = (folder, step, delay)``: ``delay`` seconds after a checkpoint of that step or later appears in
    ``folder``, whichever comes first. Returns the exit code, the wall time and when ``watch`` (a first
    checkpoint) appeared."""
    t0 = time.monotonic()
    seen = float("nan")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
    while proc.poll() is None:
        now = time.monotonic() - t0
        if watch is not None and seen != seen and watch.exists():
            seen = now
        if kill_at is not None and any(_step_of(p) >= kill_at[1] for p in kill_at[0].glob("step*.ckpt")):
            kill_after = min(kill_after if kill_after is not None else float("inf"), now + kill_at[2])
            kill_at = None
        if kill_after is not None and now >= kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.01)
    return proc.returncode, time.monotonic() - t0, seen


def _step_of(path: Path) -> int:
    digits = path.stem.removeprefix("step")
    return int(digits) if digits.isdigit() else -1


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def kill_and_resume(work: Path, corpus: Path, kills: int, devices: int = 1, steps: int = 30, seed: int = 0,
                    stream: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1",
               LIT_LLM_CACHE_DIR=str(work / "cache"))
    log = open(work / "runs.log", "ab")
    reference = work / "reference"
    code, t_full, t_first = run(fit_command(reference, corpus, steps, devices, stream), env, None, log,
                                watch=reference / "checkpoints" / "step2.ckpt")
    if code != 0:
        raise RuntimeError(f"the uninterrupted run failed ({code}); see {work / 'runs.log'}")
    t_train = max(t_full - t_first, 0.5)  # start-up (imports, data, model) is the rest
    out = work / "killed"
    rng = random.Random(seed)
    done, survived, restarts, inside = False, 0, 0, 0
    while not done:
        newest = newest_checkpoint(out, out / "checkpoints")
        step = 0
        if newest is not None:
            read_info(newest)  # the newest checkpoint on disk always loads
            step = torch.load(newest, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        kill_after, kill_at = None, None
        if survived < kills and step + 6 <= steps:
            # anywhere from the middle of start-up on, and at the latest a moment (up to one step's time, so
            # inside a save too) after a random later checkpoint appears: every rerun is killed before its end
            kill_after = rng.uniform(0.5 * t_first, t_first + t_train * (steps - step) / steps)
            # the kills left share the steps left, so each one has room
            last = step + 2 + max(1, (steps - 6 - step) // (kills - survived))
            kill_at = (out / "checkpoints", rng.randrange(step + 2, last), rng.uniform(0, t_train / steps))
        code, _, _ = run(fit_command(out, corpus, steps, devices, stream), env, kill_after, log, kill_at=kill_at)
        restarts += 1
        if code == -signal.SIGKILL:
            survived += 1
            inside += bool(list(out.glob(".lit_llm-tmp-*")) + list((out / "checkpoints").glob(".lit_llm-tmp-*")))
        elif code == 0:  # the end
            done = True
        else:
            raise RuntimeError(f"a resumed run failed with exit code {code}; see {work / 'runs.log'}")
        if restarts > 4 * kills + 10:
            raise RuntimeError("the run does not get to the end between kills")
    final = f"step{steps}.ckpt"
    ref, got = weights(reference / "checkpoints" / final), weights(out / "checkpoints" / final)
    identical = ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    # a kill is survived when the reruns got past it to a run whose weights equal the uninterrupted one's
    return {"kills": survived, "survived": survived if identical else 0, "asked": kills, "inside_a_save": inside, "restarts": restarts,
            "bit_identical": identical, "devices": devices, "stream": stream, "steps": steps, "uninterrupted_s": round(t_full, 1), "startup_s": round(t_first, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stream", action="store_true", help="train from streaming chunks (--data.stream true)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt")
    args = parser.parse_args()
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="kill_resume"))
    work.mkdir(parents=True, exist_ok=True)
    result = kill_and_resume(work, args.corpus, args.kills, args.devices, args.steps, args.seed, args.stream)
    print(json.dumps(result))
    print(f"kills survived: {result['survived']}/{result['kills']}", file=sys.stderr)


if __name__ == "__main__":
    main()
