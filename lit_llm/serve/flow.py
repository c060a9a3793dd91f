"""What the HTTP front ends and the model workers share across processes: the requests whose clients have gone
(``CancelBoard``) and the number of requests admitted to the model workers (``Admission``, for ``--max_queue``).

Both live in shared memory made with the ``spawn`` context before LitServe starts its processes: the front ends
(forked by LitServe) inherit it, and the model workers (spawned) receive it with the ``LitAPI`` and its spec.
Plain ``multiprocessing``: no LitServe here.
"""

from __future__ import annotations

import multiprocessing as mp
import secrets
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
