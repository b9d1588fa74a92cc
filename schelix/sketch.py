"""Large data: a batch-stratified sketch of the cells and each cell's nearest sketch cells.

Above :data:`SKETCH_CELLS` cells, the gene-level work (anchor scores, the gate's clusters) runs
on a sample of that many cells drawn within each batch (:func:`stratified_sample`), and every
cell is placed by its nearest sketch cells in the scaled-HVG PCA (:func:`sketch_neighbors`,
an approximate pynndescent index over the sketch: memory linear in cells). Below it nothing
changes: every cell is used, exactly as before.

Why 25,000 (50,000 until session 10): the shared datasets (at most 14k cells) are below it, so
their results are untouched; the scores are per-gene means and variances, whose sampling error
over 25,000 cells is small next to the between-gene spread the quadrant thresholds (a forced
7,000-cell sketch of Kang already keeps 93 % of the anchor set, two seeds of the full data
97 %); and the Leiden clusters of a 25,000-cell kNN graph still resolve a population of 0.1 %
(25 cells), above the gate's ``gate_min_cells`` of 20. Halving it from 50,000 took 100k cells
from 131 to 114 s end to end (``benchmarks/SCALE_RESULTS.md``, "Session 10"), where the
measured agreement with the full-data split is too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "DISPLAY_CELLS",
    "SKETCH_CELLS",
    "sketch_mask",
    "sketch_neighbors",
    "stratified_sample",
    "vote",
]

#: Above this many cells the anchor scores and the gate's clusters use a sketch of this size.
SKETCH_CELLS = 25_000
#: Above this many cells the display UMAPs, snapshots and metrics use a sample of this size.
DISPLAY_CELLS = 20_000


def stratified_sample(groups: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` cells drawn without replacement within each group.

    Each group gets its share of ``n`` in proportion to its size (largest remainders), so a
    batch with 2 % of the cells keeps 2 % of the sample; all cells when ``n >= len(groups)``.
    """
    groups = np.asarray(groups)
    if n >= len(groups):
        return np.arange(len(groups))
    codes, uniques = pd.factorize(pd.Series(groups.astype(str)), sort=True)
    sizes = np.bincount(codes, minlength=len(uniques))
    share = sizes * n / len(groups)
    take = np.floor(share).astype(int)
    left = n - take.sum()
    take[np.argsort(-(share - take), kind="stable")[:left]] += 1
    rng = np.random.default_rng(seed)
    order = np.argsort(codes, kind="stable")
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    picked = [
        rng.choice(order[s : s + size], t, replace=False)
        for s, size, t in zip(starts, sizes, take)
        if t
    ]
    return np.sort(np.concatenate(picked))


def sketch_mask(adata) -> np.ndarray | None:
    """Boolean mask of the sketch cells (``obs["schelix_sketch"]``), ``None`` if not sketched.

    The mask and ``obsm["schelix_sketch_neighbors"]`` are written together by
    :mod:`schelix.cell_graph`; a file that carries one without a consistent other (an uploaded
    or edited AnnData) counts as not sketched, so training never indexes out of range.
    """
    col, near = adata.obs.get("schelix_sketch"), adata.obsm.get("schelix_sketch_neighbors")
    if col is None or near is None or col.dtype != bool:
        return None
    mask, near = col.to_numpy(), np.asarray(near)
    if near.ndim != 2 or len(near) != len(mask) or near.size == 0 or not mask.any():
        return None
    in_range = near.min() >= 0 and near.max() < len(mask)
    return mask if in_range and mask[near].all() else None


def sketch_neighbors(
    pca: np.ndarray, sketch: np.ndarray, k: int, *, seed: int = 0, chunk: int = 100_000
) -> np.ndarray:
    """Each cell's ``k`` nearest sketch cells (global row indices, nearest first, self left out).

    An approximate nearest-neighbour index (pynndescent) over the sketch rows of ``pca``,
    queried by every cell in chunks: ``(n_cells, k)`` int32, memory linear in cells.
    """
    from pynndescent import NNDescent

    pca = np.ascontiguousarray(pca, dtype=np.float32)
    ref = np.flatnonzero(sketch)
    k = int(min(k, len(ref) - 1))
    index = NNDescent(pca[ref], n_neighbors=max(15, min(k + 1, 64)), random_state=seed, n_jobs=1)
    index.prepare()
    out = np.empty((len(pca), k), dtype=np.int32)
    for s in range(0, len(pca), chunk):
        found, _ = index.query(pca[s : s + chunk], k=k + 1)
        found = ref[found]
        own = found == np.arange(s, s + len(found))[:, None]
        # drop the cell itself when it is a sketch cell, else the farthest of the k + 1
        keep = ~own
        keep[~own.any(axis=1), -1] = False
        out[s : s + len(found)] = found[keep].reshape(len(found), k)
    return out


def vote(neighbor_labels: np.ndarray, *, chunk: int = 50_000) -> np.ndarray:
    """Majority label of each row of integer labels (ties go to the nearer neighbour's label)."""
    n, k = neighbor_labels.shape
    n_labels = int(neighbor_labels.max()) + 1
    weight = (1.0 + 1e-3 * (k - np.arange(k)) / k)[None, :]
    out = np.empty(n, dtype=np.int64)
    for s in range(0, n, chunk):
        lab = neighbor_labels[s : s + chunk]
        flat = (np.arange(len(lab))[:, None] * n_labels + lab).ravel()
        w = np.broadcast_to(weight, lab.shape).ravel()
        counts = np.bincount(flat, weights=w, minlength=len(lab) * n_labels)
        out[s : s + len(lab)] = counts.reshape(len(lab), n_labels).argmax(axis=1)
    return out
