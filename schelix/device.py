"""Which torch device a run uses, and how many CPU threads: one rule for scHelix and every peer."""

from __future__ import annotations

import os

from schelix.errors import SchelixError

__all__ = ["cpu_threads", "limit_cpu_threads", "resolve_device"]


def cpu_threads() -> int | None:
    """The thread limit the user set (``OMP_NUM_THREADS``, a positive integer, at most the
    machine's cores), else ``None``."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value.isdigit() or int(value) < 1:
        return None
    return min(int(value), os.cpu_count() or 1)


def limit_cpu_threads() -> None:
    """Hold torch to ``OMP_NUM_THREADS`` when it is set.

    numba's OpenMP layer, started by scanpy's preprocessing (``prange`` loops), sets the
    process's OpenMP thread count to every core, and torch shares that count: without this,
    training ignores the limit a shared server or a job scheduler sets, and two limited runs
    on the same cores oversubscribe them (measured: 2 runs x 1 thread on 2 cores, each 5x
    slower than alone).
    """
    limit = cpu_threads()
    if limit is None:
        return
    import torch

    if torch.get_num_threads() != limit:
        torch.set_num_threads(limit)


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` if available, then ``"mps"``, else ``"cpu"``."""
    import torch

    from schelix.checks import check_device

    check_device(device)
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if device in ("gpu", "cuda") and not torch.cuda.is_available():
        raise SchelixError(
            "A GPU was requested but CUDA is not available on this machine",
            "choose device 'auto' or 'cpu'",
        )
    return "cuda" if device == "gpu" else device
