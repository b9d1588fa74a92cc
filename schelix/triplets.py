"""Anchor-guided within-batch triplets: the clusters they are drawn from, and the loss.

scCRAFT (He et al. 2025) keeps each batch's own topology with a dual-resolution triplet loss:
inside one batch, a cell is pulled towards a cell of its fine Leiden cluster and pushed away
from a cell of another coarse cluster. scHelix applies it to the fused embedding during the
fusion phase (``w_triplet``), with one change that the anchors make possible: **the coarse
clusters that decide the negatives come from the batch-stable anchor genes**, clustered over
all cells at once, rather than from each batch's own HVGs. A group counts as different
biology only where the anchors separate it, so a within-batch split that the anchors do not
carry (stimulated against control cells inside one donor, T against NK cells at a label's
coarse grain) is never pushed apart. With scCRAFT's own HVG clusters as negatives (weight 1),
Kang with the donor as the batch lost 0.02-0.05 (seed 0); with anchor clusters it stays within
its seed spread. The term is off by default (``w_triplet = 0``): it lifts data of 1,000+ cells whose
cell types are well apart (CellBench +0.020 over five seeds) but costs 300-cell data
0.03-0.045, and makes random anchors (ablation S1) nearly as good (``benchmarks/EXPERIMENTS.md``,
"Issue 17, session 13").

For every cell (:func:`triplet_clusters`):

- **anchor cluster**: Leiden at ``coarse_resolution`` on the kNN graph (k = 15) of the
  30-PC PCA of the scaled anchor genes, all batches together;
- **fine cluster**: inside each batch alone, Leiden at ``coarse_resolution`` on the PCA of the
  batch's log-normalized HVGs, then Leiden at ``fine_resolution`` inside each of those clusters
  (scCRAFT's nesting, :func:`within_batch_clusters`).

Above :data:`schelix.sketch.SKETCH_CELLS` cells both clusterings run on the sketch and every
other cell takes the majority cluster of its nearest sketch cells (as the gate does); where
that fine cluster belongs to another batch, the cell has no positive and draws no triplet.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["anchor_clusters", "triplet_clusters", "triplet_loss", "within_batch_clusters"]

#: PCs and neighbours of the anchor-space graph
ANCHOR_PCS, N_NEIGHBORS = 30, 15


def within_batch_clusters(
    X: np.ndarray | sp.spmatrix,
    batches: np.ndarray,
    low_resolution: float,
    high_resolution: float,
    *,
    n_pcs: int = 50,
    n_neighbors: int = N_NEIGHBORS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` Leiden clusters computed inside each batch alone (scCRAFT's nesting).

    For every batch: PCA of its rows of ``X`` (log-normalized HVGs; a sparse ``X`` is made
    dense one batch at a time), a kNN graph, Leiden at ``low_resolution``, then Leiden at
    ``high_resolution`` inside each low-resolution cluster (scanpy's ``restrict_to``), so
    high-resolution clusters nest in low-resolution ones. Codes are unique across batches; a
    batch of fewer than 10 cells is one cluster.
    """
    import scanpy as sc

    low = np.zeros(len(batches), dtype=np.int64)
    high = np.zeros(len(batches), dtype=np.int64)
    n_low = n_high = 0
    opts = {"flavor": "igraph", "n_iterations": 2, "directed": False, "random_state": seed}
    for b in pd.unique(batches):
        idx = np.flatnonzero(batches == b)
        if len(idx) < 10:  # too few cells to cluster: one cluster
            low[idx], high[idx] = n_low, n_high
            n_low, n_high = n_low + 1, n_high + 1
            continue
        xb = X[idx]
        xb = xb.toarray() if sp.issparse(xb) else np.asarray(xb)
        sub = ad.AnnData(np.ascontiguousarray(xb, dtype=np.float32))
        sc.pp.pca(sub, n_comps=min(n_pcs, len(idx) - 1, X.shape[1] - 1), random_state=seed)
        sc.pp.neighbors(
            sub, n_neighbors=min(n_neighbors, len(idx) - 1), method="gauss", random_state=seed
        )
        sc.tl.leiden(sub, resolution=low_resolution, key_added="low", **opts)
        cats = list(sub.obs["low"].cat.categories)
        sc.tl.leiden(
            sub, resolution=high_resolution, restrict_to=("low", cats), key_added="high", **opts
        )
        lo = sub.obs["low"].cat.codes.to_numpy().astype(np.int64)
        hi = sub.obs["high"].cat.codes.to_numpy().astype(np.int64)
        low[idx], high[idx] = lo + n_low, hi + n_high
        n_low, n_high = n_low + lo.max() + 1, n_high + hi.max() + 1
    return low, high


def anchor_clusters(x_anchor: np.ndarray, *, resolution: float, seed: int = 0) -> np.ndarray:
    """Leiden clusters of the scaled anchor genes over all cells (integer codes).

    ``x_anchor`` is the cells x anchor-genes matrix as the anchor stream reads it (scaled,
    clipped); PCA to :data:`ANCHOR_PCS` components, a kNN graph of :data:`N_NEIGHBORS`.
    """
    import scanpy as sc

    from schelix.groups import leiden_labels

    n = x_anchor.shape[0]
    if n < 10:
        return np.zeros(n, dtype=np.int64)
    sub = ad.AnnData(np.ascontiguousarray(x_anchor, dtype=np.float32))
    sc.pp.pca(sub, n_comps=min(ANCHOR_PCS, n - 1, x_anchor.shape[1] - 1), random_state=seed)
    sc.pp.neighbors(sub, n_neighbors=min(N_NEIGHBORS, n - 1), random_state=seed)
    lab = leiden_labels(sub.obsp["connectivities"], resolution=resolution, seed=seed)
    return lab.codes.astype(np.int64)


def triplet_clusters(
    adata: ad.AnnData,
    x_anchor,
    batch: np.ndarray,
    *,
    coarse_resolution: float,
    fine_resolution: float,
    seed: int = 0,
) -> np.ndarray:
    """``(n_cells, 2)`` int64: each cell's anchor cluster (negatives) and fine cluster (positives).

    Parameters
    ----------
    adata
        The training AnnData (log-normalized; the HVG pool of
        :func:`schelix.preprocess.hvg_mask`, and the sketch of :mod:`schelix.cell_graph` when
        the data are large).
    x_anchor
        The scaled anchor matrix (``TrainData.x_anchor``: indexing rows gives a tensor).
    batch
        Integer batch code of every cell.
    coarse_resolution, fine_resolution
        Leiden resolutions of the anchor clustering (and of the within-batch clusters the fine
        ones nest in) and of the fine within-batch clusters.
    seed
        Seed of the PCAs, graphs and Leiden runs.
    """
    from schelix.preprocess import hvg_mask
    from schelix.sketch import sketch_mask, vote

    sk = sketch_mask(adata)
    rows = slice(None) if sk is None else np.flatnonzero(sk)
    anchor = anchor_clusters(x_anchor[rows].numpy(), resolution=coarse_resolution, seed=seed)
    x = adata.X if sk is None else adata.X[rows]  # rows first: no copy of every cell
    _, fine = within_batch_clusters(
        x[:, hvg_mask(adata)], batch[rows], coarse_resolution, fine_resolution, seed=seed
    )
    codes = np.stack([anchor, fine], axis=1)
    if sk is None:
        return codes
    full = np.full((adata.n_obs, 2), -1, dtype=np.int64)
    full[rows] = codes
    near = np.asarray(adata.obsm["schelix_sketch_neighbors"])[~sk]
    for j in range(2):
        full[~sk, j] = vote(full[:, j][near])
    return full


def triplet_loss(z, batch, negative_groups, positive_groups, margin: float, generator=None):
    """Within-batch triplet loss on a mini-batch (scCRAFT's form, squared distances).

    Reference: every cell; positive: a random other cell of the same batch and the same
    ``positive_groups`` code; negative: a random cell of the same batch with a different
    ``negative_groups`` code. ``relu(|z_a - z_p|^2 - |z_a - z_n|^2 + margin)``, averaged over
    the cells that have both (0 with a gradient when none has).
    """
    import torch

    same_b = batch[:, None] == batch[None, :]
    pos = same_b & (positive_groups[:, None] == positive_groups[None, :])
    pos.fill_diagonal_(False)
    neg = same_b & (negative_groups[:, None] != negative_groups[None, :])
    ok = pos.any(1) & neg.any(1)
    if not bool(ok.any()):
        return z.sum() * 0.0
    r = torch.rand(pos.shape, generator=generator, device=z.device)
    p_idx = torch.where(pos, r, -1.0).argmax(1)[ok]
    n_idx = torch.where(neg, r, -1.0).argmax(1)[ok]
    za = z[ok]
    d_pos = (za - z[p_idx]).pow(2).sum(1)
    d_neg = (za - z[n_idx]).pow(2).sum(1)
    return torch.relu(d_pos - d_neg + margin).mean()
