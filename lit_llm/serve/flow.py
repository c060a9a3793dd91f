"""What the HTTP front ends and the model workers share across processes: the requests whose clients have gone
(``CancelBoard``), the number of requests admitted to the model workers (``Admission``, for ``--max_queue``),
each client's feedback allowance (``RateLimit``, for ``--max_feedback_per_minute``) and the checkpoint served, with
the reloads that replace it without a restart (``ReloadBoard``).

All live in shared memory made with the ``spawn`` context before LitServe starts its processes: the front ends
(forked by LitServe) inherit it, and the model workers (spawned) receive it with the ``LitAPI`` and its spec.
Plain ``multiprocessing``: no LitServe here.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import secrets
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional, Union

_ctx = mp.get_context("spawn")  # the model workers are spawned: a fork-context lock could not be sent to them


def new_job_id() -> int:
    """A random 63-bit id for one job, the key of its cancellation."""
    return secrets.randbits(63) or 1


class CancelBoard:
    """A ring of the ids of jobs whose clients have gone, written by the front ends and read by the workers.

    Slot 0 counts the ids ever written; id ``n`` goes to slot ``1 + n % size``. A worker remembers the count it
    last read, so a check that finds nothing new costs one read of shared memory. A worker that falls more than
    ``size`` cancellations behind misses the oldest ones, which then decode to their end as before."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._ring = _ctx.Array("q", size + 1, lock=True)
        self._seen = 0
        self._gone: set[int] = set()

    def cancel(self, job_id: int) -> None:
        with self._ring.get_lock():
            ring = self._ring.get_obj()
            n = ring[0]
            ring[1 + n % self.size] = job_id
            ring[0] = n + 1

    def cancelled(self) -> set[int]:
        """The ids cancelled so far (the last ``size`` of them), as this process last read them."""
        ring = self._ring.get_obj()
        n = ring[0]  # one aligned 8-byte read; the lock is taken only when there is something new
        if n != self._seen:
            with self._ring.get_lock():
                n = ring[0]
                start = max(self._seen, n - self.size)
                self._gone.update(ring[1 + k % self.size] for k in range(start, n))
                if len(self._gone) > 4 * self.size:  # forget the oldest: keep what the ring still holds
                    self._gone = {ring[1 + k % self.size] for k in range(max(0, n - self.size), n)}
                self._seen = n
        return self._gone


class Admission:
    """How many requests the front ends have handed to the model workers and not yet finished, across all
    front-end processes, with a bound: ``try_enter`` refuses once ``limit`` are in."""

    def __init__(self, limit: Optional[int]) -> None:
        self.limit = limit
        self._count = _ctx.Value("q", 0, lock=True)

    @property
    def count(self) -> int:
        return self._count.value

    def try_enter(self) -> bool:
        with self._count.get_lock():
            if self.limit is not None and self._count.value >= self.limit:
                return False
            self._count.value += 1
            return True

    def leave(self) -> None:
        with self._count.get_lock():
            self._count.value -= 1


class RateLimit:
    """At most ``per_minute`` requests a minute per client, across all front-end processes: a token bucket per
    client that holds a minute's worth (so a client may send them at once) and refills at ``per_minute / 60``
    a second. ``per_minute`` 0 turns it off.

    The buckets live in shared memory, ``slots`` of them; a client's key (its IP address) hashes to one. Two
    clients that share a slot share an allowance: with 4,096 slots that is rare, and it only ever errs towards
    refusing."""

    def __init__(self, per_minute: float, slots: int = 4096) -> None:
        if per_minute < 0:
            raise ValueError(f"per_minute must be >= 0 (0: no limit), got {per_minute}")
        self.per_minute, self.slots = per_minute, slots
        # per slot: the tokens left and when they were counted (time.monotonic(), the same clock in every process);
        # a time of 0 marks a slot never used
        self._buckets = _ctx.Array("d", 2 * slots, lock=True) if per_minute > 0 else None

    def wait(self, key: str, now: Optional[float] = None) -> float:
        """Take one request from ``key``'s allowance and return 0, or, if none is left, take nothing and return
        the seconds until one is."""
        if self._buckets is None:
            return 0.0
        now = time.monotonic() if now is None else now
        rate, capacity = self.per_minute / 60, max(1.0, self.per_minute)
        i = 2 * (zlib.crc32(key.encode("utf-8", "backslashreplace")) % self.slots)
        with self._buckets.get_lock():
            buckets = self._buckets.get_obj()
            tokens, then = buckets[i], buckets[i + 1]
            tokens = capacity if then == 0 else min(capacity, tokens + max(0.0, now - then) * rate)
            buckets[i + 1] = now
            if tokens >= 1:
                buckets[i] = tokens - 1
                return 0.0
            buckets[i] = tokens
            return (1 - tokens) / rate


# ---------------------------------------------------------------------------------------------- reloads
RELOAD_POLL_S = 0.02  # how often a model worker looks for a reload, and a reload for the workers' answers


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint file as it was when a reload was asked: its absolute path, the identity of the file then
    (device, inode, size, modification time), and the ``system_fingerprint`` that answers from it carry.

    A training run replaces ``last.ckpt`` by renaming a new file over it: a worker that finds another file under
    the path after loading (``unchanged`` is false) refuses it, so that no two workers serve different files."""

    path: str
    identity: tuple[int, int, int, int]
    fingerprint: str

    @classmethod
    def of(cls, path: Union[str, Path]) -> "CheckpointRef":
        """The file at ``path`` now (FileNotFoundError if there is none)."""
        path = os.path.abspath(path)
        st = os.stat(path)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        digest = hashlib.blake2b(f"{path}\0{identity}".encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()
        return cls(path, identity, f"fp_{digest}")

    def unchanged(self) -> bool:
        try:
            return CheckpointRef.of(self.path).identity == self.identity
        except OSError:
            return False

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode("utf-8", "surrogateescape")

    @classmethod
    def from_bytes(cls, data: bytes) -> "CheckpointRef":
        fields = json.loads(data.decode("utf-8", "surrogateescape"))
        return cls(fields["path"], tuple(fields["identity"]), fields["fingerprint"])


ReloadFailure = Literal["busy", "checkpoint", "changed", "worker", "timeout"]


class ReloadError(Exception):
    """A reload that did not happen (the model served before goes on serving): ``reason`` says why."""

    def __init__(self, reason: ReloadFailure, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class Reloaded:
    """A reload carried out: every model worker serves ``checkpoint`` to the requests that start from now on."""

    generation: int
    checkpoint: CheckpointRef
    previous: CheckpointRef
    workers: int


# a worker's answer to a reload it was asked: loaded (ready to swap), or why it could not load the checkpoint
_VOTE_READY, _VOTE_CHECKPOINT, _VOTE_CHANGED, _VOTE_WORKER = 1, 2, 3, 4
_VOTE_REASON: dict[int, ReloadFailure] = {_VOTE_CHECKPOINT: "checkpoint", _VOTE_CHANGED: "changed",
                                          _VOTE_WORKER: "worker"}


class ReloadBoard:
    """The checkpoint the model workers serve, and the reloads that replace it, in memory shared by the front ends,
    ``serve``'s own process and the model workers.

    A reload is asked by ``reload`` (a front end's ``POST /v1/admin/reload``, or ``serve`` on SIGHUP): it takes the
    next *generation* number, and publishes it with the checkpoint. Each model worker watches for a new generation
    (a thread of its own, every ``RELOAD_POLL_S``), loads the checkpoint beside the model it serves, and votes:
    ready, or why not. Once every worker is ready the reload is committed and each worker swaps its model for the
    new one; if any could not load it (or ``timeout`` passes) it is called off and the workers drop what they
    loaded. So either every worker serves the new checkpoint or none does. A swap only changes which model the
    requests that start from then on decode on: the requests in flight hold the model they started on, and finish
    on it.

    One reload at a time: ``reload`` refuses another while one is being carried out (``ReloadError("busy")``)."""

    # slots of ``_ints``: the newest generation asked, the generation committed (served), the newest called off,
    # whether a reload is being carried out, how many workers took a slot; then per worker: its vote (generation,
    # kind) and the generation it serves
    _ASKED, _COMMITTED, _ABORTED, _BUSY, _JOINED, _HEADER = 0, 1, 2, 3, 4, 5
    PER_WORKER = 3
    REF_BYTES, ERROR_BYTES = 8192, 1024

    def __init__(self, workers: int = 1, checkpoint: Optional[CheckpointRef] = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._lock = _ctx.Lock()
        self._ints = _ctx.RawArray("q", self._HEADER + self.PER_WORKER * workers)
        self._asked_ref = _ctx.RawArray("c", self.REF_BYTES)
        self._committed_ref = _ctx.RawArray("c", self.REF_BYTES)
        self._errors = _ctx.RawArray("c", self.ERROR_BYTES * workers)
        if checkpoint is not None:
            self._write(self._committed_ref, checkpoint.to_bytes())

    # -- shared memory
    @staticmethod
    def _write(buffer, data: bytes) -> None:
        if len(data) >= len(buffer):
            raise ValueError(f"A checkpoint path of {len(data)} bytes is too long to share between the server's"
                             " processes; move or link the file to a shorter path")
        buffer[: len(data) + 1] = data + b"\0"

    def _slot(self, worker: int, field: int) -> int:
        return self._HEADER + self.PER_WORKER * worker + field

    # -- the model workers
    def join(self) -> int:
        """A worker's slot (0..workers-1), taken once at its start."""
        with self._lock:
            n = self._ints[self._JOINED]
            self._ints[self._JOINED] = n + 1
        return n % self.workers  # more than ``workers`` only when one process sets up several (tests, benchmarks)

    def current(self) -> tuple[int, Optional[CheckpointRef]]:
        """The generation served (0: the checkpoint ``serve`` started with) and its checkpoint."""
        with self._lock:
            raw = self._committed_ref.value
            return self._ints[self._COMMITTED], CheckpointRef.from_bytes(raw) if raw else None

    def asked(self) -> tuple[int, Optional[CheckpointRef]]:
        """The newest generation asked and its checkpoint; one read of shared memory when nothing is new."""
        if self._ints[self._ASKED] == 0:
            return 0, None
        with self._lock:
            return self._ints[self._ASKED], CheckpointRef.from_bytes(self._asked_ref.value)

    def outcome(self, generation: int) -> Optional[bool]:
        """True once ``generation`` is committed, False once it is called off (or a newer one asked), None meanwhile."""
        with self._lock:
            if self._ints[self._COMMITTED] >= generation:
                return True
            if self._ints[self._ABORTED] >= generation or self._ints[self._ASKED] > generation:
                return False
            return None

    def vote(self, worker: int, generation: int, failure: Optional[ReloadFailure] = None, message: str = "") -> None:
        """A worker's answer: loaded ``generation`` (``failure`` None), or could not, and why."""
        kind = _VOTE_READY if failure is None else {v: k for k, v in _VOTE_REASON.items()}[failure]
        with self._lock:
            if failure is not None:
                data = message.encode("utf-8", "backslashreplace")[: self.ERROR_BYTES - 1]
                start = self.ERROR_BYTES * worker
                self._errors[start : start + len(data) + 1] = data + b"\0"
            self._ints[self._slot(worker, 0)] = generation
            self._ints[self._slot(worker, 1)] = kind

    def serving(self, worker: int, generation: int) -> None:
        """A worker now starts new requests on ``generation``'s model."""
        with self._lock:
            self._ints[self._slot(worker, 2)] = generation

    # -- the front ends and serve's process
    def reload(self, checkpoint: CheckpointRef, timeout: float, poll: float = RELOAD_POLL_S) -> Reloaded:
        """Have every worker load ``checkpoint`` and, once all have, swap to it; wait for it. Raises ``ReloadError``
        when another reload is being carried out, when a worker could not load it, or after ``timeout`` seconds:
        then nothing was swapped."""
        with self._lock:
            if self._ints[self._BUSY]:
                raise ReloadError("busy", "Another reload is being carried out; retry when it has finished")
            self._ints[self._BUSY] = 1
            generation = max(self._ints[self._ASKED], self._ints[self._COMMITTED]) + 1
            previous = CheckpointRef.from_bytes(self._committed_ref.value) if self._committed_ref.value else checkpoint
            self._write(self._asked_ref, checkpoint.to_bytes())
            self._ints[self._ASKED] = generation
        try:
            deadline = time.monotonic() + timeout
            while True:  # every worker's vote
                votes = self._votes(generation)
                failed = [(w, kind) for w, kind in votes.items() if kind not in (None, _VOTE_READY)]
                if failed:
                    worker, kind = failed[0]
                    raise ReloadError(_VOTE_REASON[kind], self._error(worker))
                if all(kind == _VOTE_READY for kind in votes.values()):
                    break
                if time.monotonic() > deadline:
                    waiting = [w for w, kind in votes.items() if kind is None]
                    raise ReloadError("timeout", f"model worker(s) {waiting} did not load {checkpoint.path} within"
                                      f" {timeout:g} s (serve --reload_timeout)")
                time.sleep(poll)
            with self._lock:  # commit: each worker swaps at its next look
                self._write(self._committed_ref, checkpoint.to_bytes())
                self._ints[self._COMMITTED] = generation
            deadline = time.monotonic() + 10  # a worker that has loaded the model swaps within one poll
            while not all(self._ints[self._slot(w, 2)] >= generation for w in range(self.workers)):
                if time.monotonic() > deadline:
                    late = [w for w in range(self.workers) if self._ints[self._slot(w, 2)] < generation]
                    raise ReloadError("worker", f"{checkpoint.path} was loaded by every model worker, but worker(s)"
                                      f" {late} did not confirm the swap; see the server log")
                time.sleep(poll)
            return Reloaded(generation, checkpoint, previous, self.workers)
        except BaseException:
            with self._lock:
                if self._ints[self._COMMITTED] < generation:
                    self._ints[self._ABORTED] = generation
            raise
        finally:
            with self._lock:
                self._ints[self._BUSY] = 0

    def _votes(self, generation: int) -> dict[int, Optional[int]]:
        with self._lock:
            return {w: self._ints[self._slot(w, 1)] if self._ints[self._slot(w, 0)] == generation else None
                    for w in range(self.workers)}

    def _error(self, worker: int) -> str:
        with self._lock:
            start = self.ERROR_BYTES * worker
            raw = bytes(self._errors[start : start + self.ERROR_BYTES])
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
