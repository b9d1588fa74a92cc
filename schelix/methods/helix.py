"""scHelix itself behind the shared method interface (so comparisons treat it like any peer)."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np

from schelix.methods.base import ProgressCallback, register
from schelix.train import Callback, StepRecord


class _Progress(Callback):
    def __init__(self, progress: ProgressCallback) -> None:
        self.progress = progress

    def on_step(self, record: StepRecord) -> None:
        if record.step % 25 == 0 or record.step == record.total_steps:
            self.progress(record.step / record.total_steps, f"{record.phase} step {record.step}")


@register("schelix", label="scHelix", uses_gpu=True)
def schelix(
    adata: ad.AnnData,
    *,
    batch_key: str,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    **params: Any,
) -> np.ndarray:
    """scHelix on a copy of the HVG pool (the input AnnData is not modified).

    ``params`` are :class:`schelix.SCHelixConfig` fields (and ``max_steps``).
    """
    from schelix.pipeline import integrate
    from schelix.preprocess import hvg_mask

    work = adata[:, hvg_mask(adata)].copy()
    for key in [k for k in work.var if k.startswith("schelix_")]:
        del work.var[key]  # re-score on this copy: no state leaks between runs
    cbs = [_Progress(progress)] if progress is not None else []
    model = integrate(work, batch_key=batch_key, seed=seed, device=device, callbacks=cbs, **params)
    return model.get_latent_representation("fused")
