"""``python -m lit_llm serve`` in a subprocess on a free loopback port: the harness of tests/test_serve.py and
benchmarks/serve_load.py (as ``tests.helpers.server_process``). Not part of the library."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Optional


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m lit_llm serve`` in a subprocess on a free loopback port, for tests and benchmarks.

    LitServe runs the front end and the model workers as child processes. The server stops them itself on
    SIGTERM (``test_serve.py::test_a_signal_drains_in_flight_requests_then_stops_every_child_and_frees_the_port``);
    it starts in a process group of its own all the same, and ``stop`` signals the whole group, so that a test
    leaves no process behind even when the server's own shutdown fails.

    Args:
        checkpoint: the .ckpt to serve.
        args: more ``serve`` flags, e.g. ``["--max_batch_size", "4"]``.
        env: the environment (default: this one).
        log: file that receives the server's stdout and stderr (default: discarded).
        cwd: the server's working directory (a relative ``--feedback_store`` is found there).
        startup_timeout: seconds to wait for /health to answer 200.
    """

    def __init__(self, checkpoint: str | Path, args: Optional[list[str]] = None, env: Optional[dict] = None,
                 log: Optional[str | Path] = None, cwd: Optional[str | Path] = None,
                 startup_timeout: float = 180.0) -> None:
        self.checkpoint, self.args, self.env, self.log, self.cwd = str(checkpoint), list(args or []), env, log, cwd
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.proc = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        import subprocess
        import sys
        import urllib.request

        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "lit_llm", "serve", "--checkpoint", self.checkpoint, "--host", "127.0.0.1",
               "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                     start_new_session=True)  # its own process group: stop() ends it whole
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = Path(self.log).read_text(errors="replace")[-3000:] if self.log else ""
                raise RuntimeError(f"lit_llm serve exited with {self.proc.returncode} before it was ready:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"lit_llm serve did not answer /health within {self.startup_timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after 15 s."""
        import signal

        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _group_alive(self.proc.pid):
                self.proc.poll()  # reap the leader, or it lingers as a zombie in the group
                time.sleep(0.2)
            if not _group_alive(self.proc.pid):
                break
        self.proc.wait(timeout=5)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
