"""Per-group statistics and seeded Leiden clustering shared by anchor discovery and the gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

__all__ = ["EPS", "group_moments", "indicator", "leiden_labels"]

#: added to every denominator of the anchor scores and the gate
EPS = 1e-8
#: sparse matrices with more rows are summed in chunks of this many rows (float64 copies)
MOMENT_ROWS = 65_536


def indicator(codes: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """Sparse ``n_groups x n_cells`` one-hot matrix of integer group codes (for group sums)."""
    n = len(codes)
    return sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(n_groups, n))


def group_moments(
    x: sp.spmatrix | np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group cell counts, sums and sums of squares of every column, sparse-aware.

    Returns ``(n, s1, s2)`` with shapes ``(n_groups,)``, ``(n_groups, G)``, ``(n_groups, G)``
    in float64. Only indicator-matrix products are used, so a sparse ``x`` stays sparse.
    """
    if sp.issparse(x) and x.shape[0] > MOMENT_ROWS:  # bounded memory: float64 copies per chunk
        parts = [
            group_moments(x[s : s + MOMENT_ROWS], codes[s : s + MOMENT_ROWS], n_groups)
            for s in range(0, x.shape[0], MOMENT_ROWS)
        ]
        return tuple(sum(p[i] for p in parts) for i in range(3))  # type: ignore[return-value]
    ind = indicator(codes, n_groups)
    x = sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else np.asarray(x, np.float64)
    sq = x.multiply(x) if sp.issparse(x) else x * x
    s1, s2 = ind @ x, ind @ sq
    s1 = s1.toarray() if sp.issparse(s1) else np.asarray(s1)
    s2 = s2.toarray() if sp.issparse(s2) else np.asarray(s2)
    return np.asarray(ind.sum(axis=1)).ravel(), s1, s2


def leiden_labels(conn: sp.spmatrix, *, resolution: float, seed: int) -> pd.Categorical:
    """Leiden (igraph flavour, seeded) on a connectivity graph; labels ``"0", "1", ...``."""
    import scanpy as sc

    tmp = AnnData(obs=pd.DataFrame(index=[str(i) for i in range(conn.shape[0])]))
    sc.tl.leiden(
        tmp,
        resolution=resolution,
        adjacency=conn,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
        key_added="c",
    )
    return pd.Categorical(
        tmp.obs["c"].astype(str), categories=sorted(tmp.obs["c"].astype(str).unique(), key=int)
    )
