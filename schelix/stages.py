"""The stage embeddings scHelix writes (Align -> Refine -> Fuse), their snapshots and UMAPs."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np

__all__ = ["STAGES", "add_umaps", "snapshot_keys", "stage_keys", "umap_key"]

#: Stage label -> obsm key written by :func:`schelix.pipeline.integrate`.
STAGES = {
    "Variant": "X_schelix_variant",
    "Variant, aligned": "X_schelix_variant_aligned",
    "Anchor": "X_schelix_anchor",
    "Anchor, refined": "X_schelix_anchor_refined",
    "Fused": "X_schelix",
}
_SNAPSHOT = re.compile(r"^X_schelix_snapshot_(\d+)$")


def stage_keys(adata: ad.AnnData) -> dict[str, str]:
    """The stage embeddings present in ``adata.obsm`` (label -> key), in pipeline order."""
    return {label: key for label, key in STAGES.items() if key in adata.obsm}


def snapshot_keys(adata: ad.AnnData) -> dict[int, str]:
    """Training step -> obsm key of each fused-embedding snapshot, by step."""
    found = {int(m.group(1)): k for k in adata.obsm if (m := _SNAPSHOT.match(k))}
    return dict(sorted(found.items()))


def umap_key(key: str) -> str:
    """Where the UMAP of ``obsm[key]`` is stored: ``obsm["<key>_umap"]``."""
    return f"{key}_umap"


#: Below this many cells umap-learn finds the neighbours exactly, by all pairwise distances
#: (its own constant).
UMAP_EXACT_BELOW = 4096


def _exact_knn(emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | tuple[None, None, None]:
    """The exact k nearest neighbours (each cell among its own) that umap-learn uses on small data.

    Below :data:`UMAP_EXACT_BELOW` cells umap-learn computes every pairwise distance with a
    Python callback per pair (about 4 s at 2,000 cells, most of a small UMAP's time).
    scikit-learn's exact search gives the same neighbours in a fraction of that, and
    umap-learn takes them as ``precomputed_knn``. On larger data umap-learn's own approximate
    search (NNDescent) is kept: ``(None, None, None)``.
    """
    if len(emb) >= UMAP_EXACT_BELOW:
        return None, None, None
    from sklearn.neighbors import NearestNeighbors

    # a tree computes each distance directly, so a cell's distance to itself is exactly 0, as
    # umap-learn's own path has it (its rho, the distance to the nearest other cell, reads it)
    tree = NearestNeighbors(n_neighbors=k, algorithm="kd_tree").fit(emb)
    dist, idx = tree.kneighbors(emb)
    return idx.astype(np.int32), dist.astype(np.float32)


def add_umaps(
    adata: ad.AnnData,
    keys: Sequence[str] | Mapping[str, str],
    *,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.5,
    n_epochs: int = 200,
    progress: Any = None,
) -> list[str]:
    """UMAP (umap-learn) of each ``obsm[key]`` into ``obsm["<key>_umap"]``; skips existing ones.

    On large data only the display sample is laid out (:func:`schelix.display.sample`; other
    rows are NaN and not drawn); ``uns["schelix"]["umap"]["n_cells"]`` says how many cells.

    The fused embedding's UMAP is also written as ``obsm["X_umap"]`` (cellxgene's default).
    ``progress(fraction, message)`` is called before each one.
    """
    import umap

    from schelix import display

    keys = list(keys.values()) if isinstance(keys, Mapping) else list(keys)
    batch_key = adata.uns.get("schelix", {}).get("setup", {}).get("batch_key")
    rows = display.sample(adata, batch_key=batch_key)
    done = []
    for i, key in enumerate(keys):
        out = umap_key(key)
        if progress is not None:
            progress(i / max(1, len(keys)), f"UMAP {i + 1} of {len(keys)} ({key})")
        if out not in adata.obsm:
            emb = np.asarray(adata.obsm[key], dtype=np.float32)
            if rows is not None:
                emb = emb[rows]
            k = min(n_neighbors, len(emb) - 1)
            reducer = umap.UMAP(
                n_neighbors=k,
                min_dist=min_dist,
                n_epochs=n_epochs,
                random_state=seed,
                n_jobs=1,
                precomputed_knn=_exact_knn(emb, k),
            )
            with warnings.catch_warnings():  # no new data is ever transformed with it
                warnings.filterwarnings("ignore", message="precomputed_knn.*transform")
                layout = reducer.fit_transform(emb).astype(np.float32)
            if rows is not None:  # the display sample only; other cells NaN (not drawn)
                full = np.full((adata.n_obs, 2), np.nan, dtype=np.float32)
                full[rows] = layout
                layout = full
            adata.obsm[out] = layout
        if key == "X_schelix":
            adata.obsm["X_umap"] = adata.obsm[out]
        done.append(out)
    adata.uns.setdefault("schelix", {})["umap"] = {
        "n_neighbors": int(n_neighbors),
        "min_dist": float(min_dist),
        "n_epochs": int(n_epochs),
        "seed": int(seed),
        "package": "umap-learn",
        "n_cells": int(adata.n_obs if rows is None else len(rows)),
    }
    return done
