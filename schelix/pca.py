"""The scaled PCA of the HVG pool: one recipe for the unintegrated baseline, the PCA-based peers
(Harmony, scBIOT) and the evaluation's pre-integration references."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from schelix.errors import SchelixError
from schelix.preprocess import hvg_mask

__all__ = ["scaled_hvg_pca", "scaled_pca"]


def scaled_pca(
    x: np.ndarray | sp.spmatrix, *, n_comps: int = 50, seed: int = 0, svd_solver: str = "arpack"
) -> np.ndarray:
    """Scale genes to unit variance (clipped at 10, as scanpy does) and run PCA.

    Parameters
    ----------
    x
        Cells x genes log-normalized expression (dense or sparse).
    n_comps
        Number of principal components; capped at ``min(n_cells, n_genes) - 1``.
    seed
        Random state of the solver.
    svd_solver
        ``"arpack"`` (scanpy's exact default) or ``"randomized"`` (several times faster on
        thousands of genes; the leading components agree closely).

    Returns
    -------
    ``(n_cells, n_comps)`` float32 array.
    """
    import scanpy as sc

    dense = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)
    n_comps = int(min(n_comps, min(dense.shape) - 1))
    if n_comps < 1:
        raise SchelixError(
            f"Cannot run PCA on a {dense.shape[0]} x {dense.shape[1]} matrix",
            "use at least 2 cells and 2 genes",
        )
    scaled = sc.pp.scale(dense, max_value=10, copy=True)
    scaled = np.nan_to_num(scaled, copy=False)  # constant genes scale to NaN
    emb = sc.pp.pca(scaled, n_comps=n_comps, svd_solver=svd_solver, random_state=seed)
    return np.asarray(emb, dtype=np.float32)


def scaled_hvg_pca(adata: ad.AnnData, *, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """PCA of the scaled, log-normalized HVGs of ``adata`` (``X`` restricted to the HVG pool)."""
    return scaled_pca(adata.X[:, hvg_mask(adata)], n_comps=n_comps, seed=seed)
