"""The display sample: which cells the UMAPs, training snapshots and metrics use on large data.

Up to :data:`~schelix.sketch.DISPLAY_CELLS` cells, all of them (nothing changes). Above it, a
batch-stratified sample of that many cells, drawn once and kept in ``obs["schelix_display"]``
(recorded in ``uns["schelix"]["display"]``), so the UMAP, the snapshots and the metrics all
show the same cells. The embeddings themselves are always computed for every cell (``obsm``).

Why 20,000: a UMAP of 20,000 points already shows every population a screen can show (a
population of 0.1 % is still 20 points), and scib-metrics advises subsampling large sets for
its metrics; both grow faster than linearly in cells (kNN graphs, a 20-resolution Leiden
sweep, silhouettes): measured, scoring 50,000 cells took about two minutes here and 30,000
cells 26 s. It is above the largest shared dataset (14k cells), whose results are therefore
unchanged.
"""

from __future__ import annotations

import anndata as ad
import numpy as np

from schelix import sketch
from schelix.sketch import DISPLAY_CELLS, stratified_sample

__all__ = ["DISPLAY_CELLS", "note", "record", "sample"]


def sample(
    adata: ad.AnnData, *, batch_key: str | None = None, seed: int = 0, size: int | None = None
) -> np.ndarray | None:
    """Rows of the display sample, or ``None`` when every cell is shown (``n_obs <= size``).

    Drawn once per AnnData (stratified by ``batch_key`` when given) and kept in
    ``obs["schelix_display"]``; later calls return the same cells. ``size``: ``None`` is
    :data:`schelix.sketch.DISPLAY_CELLS`.
    """
    size = size or sketch.DISPLAY_CELLS
    if adata.n_obs <= size:
        return None
    kept = _kept(adata, size)
    if kept is not None:
        return kept
    groups = (
        adata.obs[batch_key].astype(str).to_numpy()
        if batch_key and batch_key in adata.obs
        else np.zeros(adata.n_obs, dtype=int)
    )
    rows = stratified_sample(groups, size, seed=seed)
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[rows] = True
    adata.obs["schelix_display"] = mask
    adata.uns.setdefault("schelix", {})["display"] = {
        "n_cells": len(rows),
        "n_obs": int(adata.n_obs),
        "threshold": int(size),
        "stratified_by": batch_key or "",
        "seed": int(seed),
        "used_for": "UMAPs, training snapshots and metrics; every embedding in obsm has all cells",
    }
    return rows


def _kept(adata: ad.AnnData, size: int) -> np.ndarray | None:
    """The rows of a sample this module drew earlier, or ``None``. A column of that name in an
    uploaded file is not trusted: it is used only when it is boolean and matches its ``uns``
    record (same cells, same size), else the sample is drawn again."""
    col, rec = adata.obs.get("schelix_display"), record(adata)
    if col is None or rec is None or col.dtype != bool:
        return None
    rows = np.flatnonzero(col.to_numpy())
    ok = rec.get("n_obs") == adata.n_obs and rec.get("threshold") == size
    return rows if ok and len(rows) == rec.get("n_cells") and len(rows) > 0 else None


def record(adata: ad.AnnData) -> dict | None:
    """``uns["schelix"]["display"]`` when a display sample was drawn, else ``None``."""
    rec = adata.uns.get("schelix", {}).get("display")
    return dict(rec) if rec else None


def note(adata: ad.AnnData) -> str | None:
    """One sentence for the app: how many cells the UMAPs and metrics show (``None``: all)."""
    rec = record(adata)
    if rec is None or "schelix_display" not in adata.obs:
        return None
    by = f", stratified by {rec['stratified_by']}" if rec.get("stratified_by") else ""
    return (
        f"Large data: the UMAPs, training snapshots and metrics use a random sample of "
        f"{rec['n_cells']:,} of the {rec['n_obs']:,} cells{by}. Every cell's embedding is "
        "computed and exported (obsm)."
    )
