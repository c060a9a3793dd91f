"""What the HTTP front ends and the model workers share across processes: the requests whose clients have gone
(``CancelBoard``), the number of requests admitted to the model workers (``Admission``, for ``--max_queue``) and
each client's feedback allowance (``RateLimit``, for ``--max_feedback_per_minute``).

Both live in shared memory made with the ``spawn`` context before LitServe starts its processes: the front ends
(forked by LitServe) inherit it, and the model workers (spawned) receive it with the ``LitAPI`` and its spec.
Plain ``multiprocessing``: no LitServe here.
"""

from __future__ import annotations

import multiprocessing as mp
import secrets
import time
import zlib
from typing import Optional

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
