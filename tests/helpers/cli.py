"""``python -m lit_llm`` from a test: in this process (``call``, ``error_line``) or in a subprocess (``run_cli``)."""

import subprocess
import sys

from lit_llm.cli import main
from tests.helpers.paths import cli_env


def call(args, capsys) -> tuple[int, str, str]:
    """``python -m lit_llm *args`` in this process: (exit code, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    out, err = capsys.readouterr()
    return code, out, err


def error_line(code: int, err: str) -> str:
    """The one ``error:`` line a refused command prints last (exit code 2, no traceback). In this process
    stderr may also hold Lightning's log lines, and logging's own complaints about an earlier test's closed
    capture stream ("--- Logging error ---" and its traceback)."""
    lines = err.splitlines()
    assert code == 2 and [line for line in lines if line.startswith("error:")] == lines[-1:], err
    assert err.count("Traceback (most recent call last)") == err.count("--- Logging error ---"), err
    return lines[-1]


def run_cli(args, cwd, tmp_path, timeout=600):
    """``python -m lit_llm *args`` in a subprocess in ``cwd``; raises with the output's tail when it fails."""
    proc = subprocess.run([sys.executable, "-m", "lit_llm", *args], cwd=cwd, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"lit_llm {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
