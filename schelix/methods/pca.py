"""Unintegrated baseline: PCA of the scaled highly variable genes (no batch correction).

The recipe (:func:`schelix.pca.scaled_hvg_pca`) is shared with the PCA-based peers and the
scorer's pre-integration references, so it lives outside the peers, in :mod:`schelix.pca`.
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np

from schelix.errors import SchelixError
from schelix.methods.base import ProgressCallback, register
from schelix.pca import scaled_hvg_pca

__all__ = ["pca"]


@register("pca", label="Unintegrated (PCA)")
def pca(
    adata: ad.AnnData,
    *,
    batch_key: str,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    n_comps: int = 50,
    **params: Any,
) -> np.ndarray:
    """Unintegrated baseline: 50-component PCA of the scaled HVGs; ignores the batches.

    Parameters
    ----------
    adata
        Preprocessed AnnData (log-normalized ``X``, ``var["highly_variable"]``).
    batch_key
        Unused (the baseline does not correct batches); kept for the shared interface.
    seed
        Random state of the PCA solver.
    device
        Unused (CPU only).
    progress
        Optional ``progress(fraction, message)`` callback.
    n_comps
        Number of principal components.

    Returns
    -------
    ``(n_cells, n_comps)`` float32 embedding.
    """
    if params:
        raise SchelixError(
            f"Unknown option(s) for PCA: {', '.join(sorted(params))}", "the only option is n_comps"
        )
    if progress is not None:
        progress(0.0, "PCA of the scaled HVGs")
    emb = scaled_hvg_pca(adata, n_comps=n_comps, seed=seed)
    if progress is not None:
        progress(1.0, "done")
    return emb
