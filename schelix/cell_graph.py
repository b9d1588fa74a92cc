"""The cell graph of anchor discovery: scaled-HVG PCA -> kNN -> Leiden pseudo-clusters.

On all cells up to :data:`schelix.sketch.SKETCH_CELLS`; above it on a batch-stratified sketch
of that many cells, with the PCA fitted on the sketch and every cell projected onto it, and the
pseudo-cluster of each other cell voted by its 15 nearest sketch cells. The kNN graph then links
sketch cells only (``obsp`` keeps its ``n x n`` shape, other rows are empty) and the neighbours
are kept in ``obsm["schelix_sketch_neighbors"]`` for the gate (:mod:`schelix.gate`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from schelix.groups import EPS, leiden_labels

__all__ = ["N_VOTE", "build"]

#: Sketch cells that vote for the cluster of every other cell.
N_VOTE = 15


def _neighbors(target: AnnData, *, n_neighbors: int, seed: int, exact: bool = True) -> None:
    import scanpy as sc

    # Gaussian kernel weights on exact sklearn kNN: no numba JIT (pynndescent and umap compile
    # for ~20-60 s on first use in every process, which every CLI run and app job would pay).
    # A sketch (large data) pays that compilation anyway for the vote's index, so its graph is
    # scanpy's default (pynndescent search, umap weights): 9.8 -> 3.5 s on a 50,000-cell
    # sketch, where scanpy's Gaussian kernel alone took 6.3 s (a Python loop over cells).
    sc.pp.neighbors(
        target, n_neighbors=n_neighbors, use_rep="X_schelix_pca", key_added="schelix",
        method="gauss" if exact else "umap", transformer="sklearn" if exact else "pynndescent",
        random_state=seed,
    )  # fmt: skip


def build(
    adata: AnnData,
    x: sp.csr_matrix,
    sd: np.ndarray,
    batch: pd.Categorical,
    *,
    n_comps: int,
    n_neighbors: int,
    resolution: float,
    seed: int,
    sketch_cells: int,
) -> tuple[pd.Categorical, np.ndarray, dict]:
    """PCA, kNN graph and pseudo-clusters of ``x`` (cells x HVGs, log-normalized CSR).

    Writes ``obsm["X_schelix_pca"]``, ``obsp["schelix_connectivities"/"schelix_distances"]`` and
    ``obs["schelix_pseudo_cluster"]`` (and, when sketched, ``obs["schelix_sketch"]`` and
    ``obsm["schelix_sketch_neighbors"]``). Returns the pseudo-clusters of the cells they were
    found on, those cells' rows, and the record for ``uns`` (PCA variance ratio, sketch size).
    """
    import scanpy as sc

    from schelix.sketch import sketch_neighbors, stratified_sample, vote

    n = x.shape[0]
    scale = 1.0 / np.maximum(sd, EPS)
    sketched = n > sketch_cells
    rows = stratified_sample(batch.codes, sketch_cells, seed=seed) if sketched else np.arange(n)
    xs = sp.csr_matrix(x[rows].multiply(scale[None, :]), dtype=np.float32)
    tmp = AnnData(X=xs)
    sc.pp.pca(tmp, n_comps=n_comps, zero_center=True, random_state=seed)
    record = {"pca_variance_ratio": np.asarray(tmp.uns["pca"]["variance_ratio"], np.float64)}
    if "schelix_sketch" in adata.obs:
        del adata.obs["schelix_sketch"]
    if "schelix_sketch_neighbors" in adata.obsm:
        del adata.obsm["schelix_sketch_neighbors"]
    if not sketched:
        adata.obsm["X_schelix_pca"] = tmp.obsm["X_pca"].astype(np.float32)
        previous = dict(adata.uns.get("schelix", {}))
        _neighbors(adata, n_neighbors=n_neighbors, seed=seed)
        adata.uns["schelix"] = {**previous, **dict(adata.uns["schelix"])}  # scanpy replaced it
        clusters = leiden_labels(
            adata.obsp["schelix_connectivities"], resolution=resolution, seed=seed
        )
        adata.obs["schelix_pseudo_cluster"] = pd.Series(clusters, index=adata.obs_names)
        return clusters, rows, record
    # sketch: PCA loadings of the sketch, every cell projected (scaling folded into them)
    pcs = np.asarray(tmp.varm["PCs"], dtype=np.float32)
    mean = np.asarray(xs.mean(axis=0), dtype=np.float32).ravel()
    loadings = (pcs * scale[:, None]).astype(np.float32)
    adata.obsm["X_schelix_pca"] = np.asarray(x @ loadings, np.float32) - mean @ pcs
    sub = AnnData(obs=pd.DataFrame(index=rows.astype(str)))
    sub.obsm["X_schelix_pca"] = adata.obsm["X_schelix_pca"][rows]
    _neighbors(sub, n_neighbors=n_neighbors, seed=seed, exact=False)
    for key in ("schelix_connectivities", "schelix_distances"):
        g = sub.obsp[key].tocoo()
        adata.obsp[key] = sp.csr_matrix((g.data, (rows[g.row], rows[g.col])), shape=(n, n))
    adata.uns["schelix"] = {**dict(adata.uns.get("schelix", {})), **dict(sub.uns["schelix"])}
    clusters = leiden_labels(sub.obsp["schelix_connectivities"], resolution=resolution, seed=seed)
    near = sketch_neighbors(adata.obsm["X_schelix_pca"], np.isin(np.arange(n), rows), N_VOTE,
                            seed=seed)  # fmt: skip
    adata.obsm["schelix_sketch_neighbors"] = near
    codes = np.full(n, -1, dtype=np.int64)
    codes[rows] = clusters.codes
    other = codes < 0
    codes[other] = vote(codes[near[other]])
    adata.obs["schelix_pseudo_cluster"] = pd.Categorical.from_codes(codes, clusters.categories)
    adata.obs["schelix_sketch"] = np.isin(np.arange(n), rows)
    record["sketch"] = {
        "n_cells": len(rows),
        "threshold": int(sketch_cells),
        "stratified_by": "batch",
        "placed_by": f"majority of the {N_VOTE} nearest sketch cells in X_schelix_pca (pynndescent)",
    }
    return clusters, rows, record
