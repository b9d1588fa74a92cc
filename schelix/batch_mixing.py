"""Where batch mixing is lost: scIB's batch silhouette of each embedding, one cell type at a time.

``ASW_batch`` (:func:`schelix.evaluate.score`, 0.4 of the paper's Overall) is the mean over cell
types of ``1 - |s|``, ``s`` the silhouette of the batch labels among the cells of one type
(``scib_metrics.silhouette_batch``). One number hides whether every type is a little less
mixed than a peer's or one type is not mixed at all; :func:`batch_mixing_by_label` gives the
per-type values, in the same evaluation space as :func:`~schelix.evaluate.score` (PCA to 64
dims for wider embeddings), so that their mean is that ``ASW_batch``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from schelix.errors import SchelixError
from schelix.evaluate import _embedding, _obs, eval_space
from schelix.obs import label_mask

__all__ = ["batch_mixing_by_label"]


def batch_mixing_by_label(
    adata: ad.AnnData,
    keys: list[str],
    *,
    batch_key: str,
    label_key: str,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-cell-type batch mixing (scIB's ``1 - |silhouette|``) of each ``obsm`` embedding.

    Parameters
    ----------
    adata
        AnnData with ``obs[batch_key]``, ``obs[label_key]`` and the embeddings in ``obsm``.
    keys
        ``obsm`` keys to compare (e.g. every scHelix stage and a peer's embedding).
    batch_key, label_key
        Batch and cell-type columns; unlabelled cells are left out, as in the paper metrics.
    seed
        Seed of the evaluation PCA (embeddings wider than 64 dims).

    Returns
    -------
    One row per cell type that occurs in 2+ batches (types in one batch have no batch mixing to
    measure, as in scib-metrics), then a row ``"mean"`` (each column's ``ASW_batch``). Columns:
    one per key (higher = better mixed), ``n_cells`` and ``n_batches`` of the type.
    """
    if not keys:
        raise SchelixError("No embeddings to compare", "pass one or more obsm keys")
    import scib_metrics

    batch, labels = _obs(adata, batch_key, "Batch"), _obs(adata, label_key, "Label")
    keep = label_mask(labels)
    batch, labels = batch[keep], labels[keep]
    masks = {t: labels == t for t in np.unique(labels)}
    n_batches = {t: np.unique(batch[m]).size for t, m in masks.items()}
    types = [t for t, m in masks.items() if 1 < n_batches[t] < int(m.sum())]
    if not types:
        raise SchelixError(
            "No cell type occurs in 2 or more batches, so there is no batch mixing to measure",
            "check batch_key and label_key",
        )
    table: dict[str, list[float]] = {}
    for key in keys:
        x = eval_space(_embedding(adata, key), seed=seed)[keep]
        table[key] = [
            float(
                scib_metrics.silhouette_batch(
                    x[masks[t]], labels[masks[t]], batch[masks[t]], rescale=True
                )
            )
            for t in types
        ]
    df = pd.DataFrame(table, index=pd.Index(types, name=label_key))
    df["n_cells"] = [int(masks[t].sum()) for t in types]
    df["n_batches"] = [int(n_batches[t]) for t in types]
    mean = df[list(keys)].mean().to_frame("mean").T
    mean["n_cells"], mean["n_batches"] = int(df["n_cells"].sum()), int(np.unique(batch).size)
    return pd.concat([df, mean])
