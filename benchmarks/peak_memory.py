"""Peak resident memory of a block of code, from the kernel (the CPU allocator keeps no peak counter)."""

from __future__ import annotations

import contextlib


def status_kib(key: str) -> int:
    """A field of /proc/self/status in KiB, e.g. VmRSS (now) or VmHWM (high-water mark)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


@contextlib.contextmanager
def peak_rss_mb(result: dict):
    """Store in ``result["peak_mb"]`` how far resident memory rose above its level at entry (Linux >= 4.0:
    the high-water mark is reset by writing 5 to /proc/self/clear_refs)."""
    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    yield result
    result["peak_mb"] = round((status_kib("VmHWM") - before) / 1024, 1)
