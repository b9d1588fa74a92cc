"""Mixing the query into the reference while mapping: query-reference MNN pairs.

Training pulls mutual nearest neighbours across batches together (the ``mnn_variant`` term,
:func:`schelix.neighbors.mnn_partners`): pairs found in the batch-stable anchor space are most
likely the same cell state seen in two batches. Mapping (:func:`schelix.mapping.adapt`) does
the same between each query batch and each reference batch, in the model's own terms:

- pairs are mutual ``mnn_k`` nearest neighbours in the **anchor embedding**: the query's,
  under the frozen network before adaptation, against the reference's stored one (a saved
  model carries the reference's stage embeddings, not its expression, so the anchor-gene PCA
  of training is not available);
- during adaptation each paired query cell's :data:`MIX_STAGE` embedding is pulled toward one
  of its partners' **stored** (fixed) embeddings, ``1 - cos``, with the model's
  ``w_mnn_variant`` weight. Only the query batches' adapter moves; the reference cannot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from schelix.errors import SchelixError
from schelix.module.network import STAGES

if TYPE_CHECKING:
    from schelix.model import SCHelix
    from schelix.train import TrainData

__all__ = ["MIX_STAGE", "prepare", "query_partners", "sample_targets"]

#: The stage the MNN pull acts on: "variant", as training's term. Pulling the fused embedding
#: (what transfer and the UMAP read) mixed far more on CellBench and PBMC but cost label-transfer
#: accuracy (Kang -1.9 points over 3 seeds, PBMC -0.3); the variant pull kept accuracy within a
#: cell: benchmarks/EXPERIMENTS.md, "Issue 13: mixing the query into the reference".
MIX_STAGE = "variant"


def query_partners(
    q_anchor: np.ndarray,
    q_batch: np.ndarray,
    ref_anchor: np.ndarray,
    ref_batch: np.ndarray,
    *,
    k: int,
) -> torch.Tensor:
    """Reference MNN partners of each query cell, per (query batch, reference batch) pair.

    Parameters
    ----------
    q_anchor, ref_anchor
        Anchor embeddings of the query and the reference cells.
    q_batch, ref_batch
        Batch of each query / reference cell (any labels; compared within each side).
    k
        Neighbours searched on each side.

    Returns
    -------
    ``(n_query, k)`` int64 tensor of reference row indices: a cell's partners, repeated to fill
    the row (any column is a real partner); all ``-1`` for a cell without one.
    """
    from sklearn.neighbors import NearestNeighbors

    pairs = []
    for a in np.unique(q_batch):
        ia = np.flatnonzero(q_batch == a)
        for b in np.unique(ref_batch):
            ib = np.flatnonzero(ref_batch == b)
            ka, kb = min(k, len(ib)), min(k, len(ia))
            nab = NearestNeighbors(n_neighbors=ka).fit(ref_anchor[ib])
            nab = nab.kneighbors(q_anchor[ia], return_distance=False)  # (|ia|, ka) into ib
            nba = NearestNeighbors(n_neighbors=kb).fit(q_anchor[ia])
            nba = nba.kneighbors(ref_anchor[ib], return_distance=False)  # (|ib|, kb) into ia
            mutual = (nba[nab] == np.arange(len(ia))[:, None, None]).any(axis=2)
            r, c = np.nonzero(mutual)
            pairs.append(np.stack([ia[r], ib[nab[r, c]]], 1))
    n = len(q_anchor)
    out = np.full((n, k), -1, dtype=np.int64)
    pr = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    if len(pr):
        pr = pr[np.lexsort((pr[:, 1], pr[:, 0]))]
        start = np.searchsorted(pr[:, 0], np.arange(n))
        count = np.minimum(np.searchsorted(pr[:, 0], np.arange(n), side="right") - start, k)
        has = count > 0
        col = np.arange(k)[None, :] % np.maximum(count, 1)[:, None]
        out[has] = pr[(start[:, None] + col)[has], 1]
    return torch.as_tensor(out)


def sample_targets(
    partners: torch.Tensor, ref_stage: torch.Tensor, idx: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(has, targets)`` for the query cells ``idx`` of one step: which have a partner, and
    the stored embedding of one partner (drawn at random) of each that has."""
    rows = partners[idx]
    pick = torch.randint(rows.shape[1], (len(idx),), generator=gen)
    ref = rows[torch.arange(len(idx)), pick]
    has = ref >= 0
    return has, ref_stage[ref[has]]


def prepare(
    model: SCHelix, data: TrainData, q_batch: np.ndarray, *, stage: str = MIX_STAGE
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(partners, ref_stage)`` for :func:`schelix.mapping.adapt`: each query cell's reference
    partners (:func:`query_partners` on the anchor embeddings) and the reference's stored
    ``stage`` embedding. ``None`` when the model's ``w_mnn_variant`` is 0 or no pair is found.

    ``data`` holds the query's inputs without any adaptation (the frozen network's view).
    """
    from schelix.train import embed_all

    if stage not in STAGES:
        raise SchelixError(f"Unknown stage '{stage}'", f"choose one of: {', '.join(STAGES)}")
    c = model.config
    if c.w_mnn_variant <= 0:
        return None
    q_anchor = embed_all(model.module, data, model.device or "cpu", stages=("anchor",))["anchor"]
    ref_batch = model.adata.obs[model.batch_key].astype(str).to_numpy()
    ref_anchor = model.get_latent_representation("anchor")
    partners = query_partners(q_anchor, q_batch, ref_anchor, ref_batch, k=c.mnn_k)
    if not bool((partners[:, 0] >= 0).any()):
        return None
    ref_stage = torch.as_tensor(model.get_latent_representation(stage), dtype=torch.float32)
    return partners, ref_stage
