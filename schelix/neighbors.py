"""The cell neighbours training reads: kNN MixUp partners and cross-batch MNN partners.

Up to :data:`schelix.sketch.SKETCH_CELLS` cells both are exact, on every cell, as SPEC §4 and
:func:`mixup_neighbors` and :func:`mnn_partners` define them. Above it (the anchor scores then used a sketch:
``obs["schelix_sketch"]``) both come from the sketch, so memory stays linear in cells:

- MixUp: each cell is mixed with one of its :data:`MIXUP_KEEP` (32) nearest cells in a
  batch-stratified pool of ``m = n * 32 / mixup_k`` cells, found with an approximate index
  (pynndescent) in the same PCA space. A pool of ``m`` cells holds about ``k * m / n`` of a
  cell's ``k`` nearest cells, so the neighbourhood has the same reach as ``mixup_k`` neighbours
  among all cells, and memory is 32 indices per cell. (A cell is drawn only a few times in a
  run of 2,000 steps on large data, so 32 candidates lose nothing.)
- MNN: mutual nearest neighbours across batches are found among the sketch cells (anchor-gene
  PCA, as on small data); every other cell takes the partners of its nearest sketch cell of
  its own batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from schelix.sketch import sketch_neighbors, stratified_sample

__all__ = ["MIXUP_DIMS", "MIXUP_KEEP", "mixup", "mixup_neighbors", "mnn", "mnn_partners"]

#: PCA components MixUp neighbours are searched in.
MIXUP_DIMS = 30
#: Large data: MixUp neighbours kept per cell (from a pool sized to keep the reach of mixup_k).
MIXUP_KEEP = 32


def mixup_neighbors(pca: np.ndarray, k: int, *, chunk: int = 2048) -> torch.Tensor:
    """Indices of each cell's ``k`` nearest neighbours (Euclidean, PCA space) for kNN MixUp."""
    x = torch.as_tensor(np.ascontiguousarray(pca, dtype=np.float32))
    k = min(k, len(x) - 1)
    sq = (x * x).sum(1)
    out = []
    for s in range(0, len(x), chunk):
        d = sq[s : s + chunk, None] - 2 * x[s : s + chunk] @ x.T + sq[None, :]
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = float("inf")
        out.append(torch.topk(d, k, dim=1, largest=False).indices.to(torch.int32))
    return torch.cat(out)


def mnn_partners(
    x_anchor: np.ndarray, batch: np.ndarray, *, k: int = 10, seed: int = 0
) -> torch.Tensor:
    """Mutual nearest neighbours across batches in the PCA (30 components) of the anchor genes.

    Anchors are batch-stable, so a cross-batch MNN pair there is most likely the same cell state
    seen in two batches (the MNN idea of Haghverdi et al. 2018, on the scaffold). ``x_anchor`` is
    already the scaled matrix the model trains on, so it is not re-scaled here
    (:func:`schelix.pca.scaled_pca` would scale and clip it again).

    Parameters
    ----------
    x_anchor
        Cells x anchor genes (scaled).
    batch
        Integer batch code of each cell.
    k
        Neighbours searched in each other batch.
    seed
        Random state of the PCA.

    Returns
    -------
    ``(n_cells, k)`` int64 tensor of partner indices: the first ones are a cell's partners, the
    rest repeat them, so any column is a real partner; all ``-1`` for a cell without one.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    n = len(x_anchor)
    z = PCA(max(1, min(30, x_anchor.shape[1] - 1, n - 1)), random_state=seed).fit_transform(
        x_anchor
    )
    pairs = []
    codes = np.unique(batch)
    for i, a in enumerate(codes):
        for b in codes[i + 1 :]:
            ia, ib = np.flatnonzero(batch == a), np.flatnonzero(batch == b)
            ka, kb = min(k, len(ib)), min(k, len(ia))
            nab = (
                NearestNeighbors(n_neighbors=ka).fit(z[ib]).kneighbors(z[ia], return_distance=False)
            )
            nba = (
                NearestNeighbors(n_neighbors=kb).fit(z[ia]).kneighbors(z[ib], return_distance=False)
            )
            mutual = (nba[nab] == np.arange(len(ia))[:, None, None]).any(axis=2)  # (|ia|, ka)
            r, c = np.nonzero(mutual)
            u, v = ia[r], ib[nab[r, c]]
            pairs += [np.stack([u, v], 1), np.stack([v, u], 1)]
    out = np.full((n, k), -1, dtype=np.int64)
    if pairs:
        pr = np.concatenate(pairs)
        pr = pr[np.lexsort((pr[:, 1], pr[:, 0]))]
        start = np.searchsorted(pr[:, 0], np.arange(n))
        count = np.minimum(np.searchsorted(pr[:, 0], np.arange(n), side="right") - start, k)
        has = count > 0
        col = np.arange(k)[None, :] % np.maximum(count, 1)[:, None]  # repeat to fill the row
        out[has] = pr[(start[:, None] + col)[has], 1]
    return torch.as_tensor(out)


def mixup(
    pca: np.ndarray, k: int, sketch: np.ndarray | None, batch: np.ndarray, *, seed: int = 0
) -> torch.Tensor:
    """``(n_cells, k')`` neighbour indices to mix each cell with; exact when ``sketch`` is None.

    Large data: the ``k' = MIXUP_KEEP`` nearest cells in a batch-stratified pool of
    ``n * MIXUP_KEEP / k`` cells (approximate index), the same reach as ``k`` among all cells.
    """
    pca = np.asarray(pca)[:, :MIXUP_DIMS]
    if sketch is None:
        return mixup_neighbors(pca, k)
    n = len(pca)
    size = min(n, math.ceil(n * MIXUP_KEEP / k))
    pool = np.zeros(n, dtype=bool)
    pool[stratified_sample(batch, size, seed=seed)] = True
    k_pool = max(1, round(k * size / n))
    return torch.as_tensor(sketch_neighbors(pca, pool, k_pool, seed=seed))


def mnn(
    x_anchor_rows,
    batch: np.ndarray,
    *,
    k: int,
    seed: int,
    sketch: np.ndarray | None,
    near: np.ndarray | None = None,
) -> torch.Tensor:
    """``(n_cells, k)`` MNN partner indices (``-1``: none), see the module docstring.

    ``x_anchor_rows`` gives the scaled anchor rows of any cells (``rows[idx]``); ``near`` are
    each cell's nearest sketch cells, nearest first (needed when ``sketch`` is given).
    """
    if sketch is None:
        return mnn_partners(x_anchor_rows[:].numpy(), batch, k=k, seed=seed)
    ref = np.flatnonzero(sketch)
    local = mnn_partners(x_anchor_rows[ref].numpy(), batch[ref], k=k, seed=seed).numpy()
    table = np.where(local >= 0, ref[np.maximum(local, 0)], -1)
    out = np.full((len(sketch), k), -1, dtype=np.int64)
    out[ref] = table
    pos = np.full(len(sketch), -1, dtype=np.int64)
    pos[ref] = np.arange(len(ref))
    other = np.flatnonzero(~sketch)
    nb = np.asarray(near)[other]
    same = batch[nb] == batch[other][:, None]
    first = same.argmax(axis=1)
    has = same[np.arange(len(other)), first]
    donor = nb[np.arange(len(other)), first]
    out[other[has]] = table[pos[donor[has]]]
    return torch.as_tensor(out)
