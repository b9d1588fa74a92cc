"""Which torch device a run uses: one rule for scHelix and every peer."""

from __future__ import annotations

from schelix.errors import SchelixError

__all__ = ["resolve_device"]


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
