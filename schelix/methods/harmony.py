"""Harmony (Korsunsky et al. 2019) via ``harmonypy`` on the scaled-HVG PCA.

Defaults follow the scHelix paper's Table 8: ``theta=2, lambda=1, sigma=0.1,
nclust=50, max_iter=10, epsilon=1e-5``. The PCA (see :mod:`schelix.methods.pca`)
is computed inside the method, so it counts towards Harmony's runtime.
"""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import numpy as np

from schelix.errors import SchelixError
from schelix.methods.base import ProgressCallback, register
from schelix.obs import require_column
from schelix.pca import scaled_hvg_pca

__all__ = ["harmony"]


@register("harmony", label="Harmony")
def harmony(
    adata: ad.AnnData,
    *,
    batch_key: str,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    n_comps: int = 50,
    theta: float = 2.0,
    lamb: float = 1.0,
    sigma: float = 0.1,
    nclust: int = 50,
    max_iter: int = 10,
    epsilon: float = 1e-5,
    use_rep: str | None = None,
    **params: Any,
) -> np.ndarray:
    """Harmony-corrected PCA embedding.

    Parameters
    ----------
    adata
        Preprocessed AnnData (log-normalized ``X``, ``var["highly_variable"]``).
    batch_key
        Column of ``adata.obs`` with the batches to correct.
    seed
        Random state of the PCA and of Harmony's k-means initialisation.
    device
        Unused (harmonypy runs on the CPU).
    progress
        Optional ``progress(fraction, message)`` callback.
    n_comps
        Number of principal components Harmony corrects.
    theta, lamb, sigma, nclust, max_iter, epsilon
        Diversity penalty, ridge penalty, soft-clustering bandwidth, number of
        clusters (capped at a fifth of the cells), Harmony iterations and the
        convergence threshold (harmonypy's ``epsilon_harmony``).
    use_rep
        An ``obsm`` key holding the PCA to correct (e.g. ``"X_schelix_pca"``, the scaled-HVG
        PCA of anchor discovery); ``None`` computes the scaled-HVG PCA here (dense: small data).

    Returns
    -------
    ``(n_cells, n_comps)`` float32 embedding.
    """
    import harmonypy

    if params:
        raise SchelixError(
            f"Unknown option(s) for Harmony: {', '.join(sorted(params))}",
            "choose from n_comps, theta, lamb, sigma, nclust, max_iter, epsilon, use_rep",
        )
    require_column(adata, batch_key)
    if progress is not None:
        progress(0.0, "PCA of the scaled HVGs")
    if use_rep is not None:
        if use_rep not in adata.obsm:
            raise SchelixError(
                f"obsm[{use_rep!r}] is missing", "pass use_rep=None to compute the PCA here"
            )
        emb = np.asarray(adata.obsm[use_rep])[:, :n_comps]
    else:
        emb = scaled_hvg_pca(adata, n_comps=n_comps, seed=seed)
    if progress is not None:
        progress(0.3, "Harmony")
    meta = adata.obs[[batch_key]].astype(str)
    # harmonypy logs every iteration at INFO; keep the console quiet
    logging.getLogger("harmonypy").setLevel(logging.WARNING)
    result = harmonypy.run_harmony(
        emb.astype(np.float64),
        meta,
        batch_key,
        theta=theta,
        lamb=lamb,
        sigma=sigma,
        nclust=int(max(2, min(nclust, adata.n_obs // 5))),
        max_iter_harmony=max_iter,
        epsilon_harmony=epsilon,
        random_state=seed,
        verbose=False,
    )
    corrected = np.asarray(result.Z_corr, dtype=np.float32)
    if corrected.shape[0] != adata.n_obs:  # older harmonypy returned d x N
        corrected = corrected.T
    if progress is not None:
        progress(1.0, "done")
    return np.ascontiguousarray(corrected)
