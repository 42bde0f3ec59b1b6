"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
import time


def best_of(fn, repeat: int = 3):
    """Smallest wall time of ``repeat`` calls (s) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def machine() -> str:
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        mem = ""
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem}, Python {platform.python_version()}"


def load() -> str:
    """The machine's load as measured now: the 1-minute load average against its cores (other jobs' share)."""
    try:
        one = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "load average not available"
    return f"1-min load average {one:.2f} on {os.cpu_count()} cores"


def table(headers, rows) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
