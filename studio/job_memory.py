"""A memory limit for one background job, so that one user's job cannot starve a shared server.

The job process (:mod:`studio.jobs`) watches its own resident memory in a thread
(:func:`guard`); past the limit it fails the job with a message that names the limit and what
to do, and ends at once. A watchdog rather than ``RLIMIT_AS``: address-space limits also count
the large virtual reservations of CUDA and of thread stacks, which are not memory in use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from schelix.errors import SchelixError

__all__ = ["MEMORY_SHARE", "POLL_S", "guard", "limit_bytes", "over_limit_message"]

#: Share of the machine's memory (or of its cgroup's limit, when smaller) one job may hold.
MEMORY_SHARE = 0.75
#: Seconds between two looks at the job's resident memory.
POLL_S = 0.25


def limit_bytes() -> int | None:
    """Bytes one job may keep resident.

    ``SCHELIX_JOB_MEMORY_GB`` when the server sets it, else :data:`MEMORY_SHARE` of the
    machine's memory (or of its cgroup's limit, when smaller); ``None`` where neither can be
    read (no limit).
    """
    env = os.environ.get("SCHELIX_JOB_MEMORY_GB", "").strip()
    if env:
        try:
            gb = float(env)
        except ValueError:
            gb = float("nan")
        if not gb > 0:
            raise SchelixError(
                f"SCHELIX_JOB_MEMORY_GB is {env!r}",
                "set it to the gigabytes one job may use, e.g. SCHELIX_JOB_MEMORY_GB=16",
            )
        return int(gb * 2**30)
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        cap = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        total = min(total, int(cap)) if cap.isdigit() else total
    except OSError:
        pass
    return int(total * MEMORY_SHARE)


def resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def over_limit_message(limit: int) -> str:
    return (
        f"This step needed more than {limit / 2**30:.1f} GB of memory, the limit for one job on "
        "this server, and was stopped. Earlier results are kept; try fewer cells (subsample in "
        "the QC step) or fewer highly variable genes, or ask the server's administrator to raise "
        "SCHELIX_JOB_MEMORY_GB"
    )


def guard(limit: int, on_exceeded: Callable[[str], None]) -> None:
    """Poll the resident memory; past ``limit`` call ``on_exceeded(message)`` and end the
    process (exit code 3). Returns at once where the memory cannot be read."""
    while True:
        rss = resident_bytes()
        if rss is None:
            return
        if rss > limit:
            on_exceeded(over_limit_message(limit))
            os._exit(3)
        time.sleep(POLL_S)
