"""A memory limit for one background job, so that one user's job cannot starve a shared server.

The job process (:mod:`studio.jobs`) watches its own resident memory in a thread
(:func:`guard`); past the limit it fails the job with a message that names the limit and what
to do, and ends at once. A watchdog rather than ``RLIMIT_AS``: address-space limits also count
the large virtual reservations of CUDA and of thread stacks, which are not memory in use.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from schelix.errors import SchelixError

__all__ = [
    "CGROUP_ROOT", "MEMORY_SHARE", "POLL_S", "guard", "limit_bytes", "over_limit_message",
    "own_cgroup",
]  # fmt: skip

#: Share of the machine's memory (or of its cgroup's limit, when smaller) one job may hold.
MEMORY_SHARE = 0.75
#: Seconds between two looks at the job's resident memory.
POLL_S = 0.25


#: Where the kernel's control groups are mounted.
CGROUP_ROOT = Path("/sys/fs/cgroup")


def own_cgroup() -> Path | None:
    """This process's memory control-group folder (cgroup v2's, or v1's memory controller's);
    ``None`` where ``/proc/self/cgroup`` cannot be read. A server under systemd or in a
    container with a nested group keeps its memory limit and its OOM count there."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if controllers == "memory":  # v1: the memory controller's own hierarchy
                return CGROUP_ROOT / "memory" / rel.lstrip("/")
            if controllers == "":  # v2: one hierarchy
                return CGROUP_ROOT / rel.lstrip("/")
    except (OSError, ValueError):
        pass
    return None


def _cgroup_limit() -> int | None:
    """The smallest memory limit of this process's control group and of the mount's root
    (v2 ``memory.max``, v1 ``memory.limit_in_bytes``); ``None`` where none is set."""
    own = own_cgroup()
    caps = []
    for folder in (own, CGROUP_ROOT, CGROUP_ROOT / "memory") if own else (CGROUP_ROOT,):
        for name in ("memory.max", "memory.limit_in_bytes"):
            try:
                cap = (folder / name).read_text().strip()
            except OSError:
                continue
            if cap.isdigit():  # v2 "max" = no limit (v1 writes a huge number, min() drops it)
                caps.append(int(cap))
    return min(caps) if caps else None


def limit_bytes() -> int | None:
    """Bytes one job may keep resident.

    ``SCHELIX_JOB_MEMORY_GB`` when the server sets it, else :data:`MEMORY_SHARE` of the
    machine's memory (or of its control group's limit, when smaller); ``None`` where neither
    can be read (no limit).
    """
    env = os.environ.get("SCHELIX_JOB_MEMORY_GB", "").strip()
    if env:
        try:
            gb = float(env)
        except ValueError:
            gb = float("nan")
        if not (math.isfinite(gb) and gb > 0):
            raise SchelixError(
                f"SCHELIX_JOB_MEMORY_GB is {env!r}",
                "set it to the gigabytes one job may use, e.g. SCHELIX_JOB_MEMORY_GB=16",
            )
        return int(gb * 2**30)
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    cap = _cgroup_limit()
    return int(min(total, cap if cap is not None else total) * MEMORY_SHARE)


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
