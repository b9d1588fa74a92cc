"""Why a gene sits where it does in the anchor quadrant: its expression per batch and cluster."""

from __future__ import annotations

import difflib

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from schelix.anchors import _SCORE_COLS, _check_batch
from schelix.errors import SchelixError

__all__ = ["gene_profile"]


def _summary(x: np.ndarray, groups: pd.Categorical, name: str) -> pd.DataFrame:
    df = pd.DataFrame({"x": x, name: groups})
    g = df.groupby(name, observed=False)["x"]
    out = pd.DataFrame(
        {
            "n_cells": g.size(),
            "mean": g.mean(),
            "std": g.std(ddof=0),
            "frac_expressing": g.apply(lambda v: float((v > 0).mean()) if len(v) else np.nan),
        }
    )
    return out


def gene_profile(adata: AnnData, gene: str, *, batch_key: str) -> dict[str, pd.DataFrame]:
    """Why a gene sits where it does: its expression per batch and per pseudo-cluster.

    Returns
    -------
    dict with ``"per_batch"`` and ``"per_cluster"`` (n_cells, mean, std, frac_expressing),
    ``"cluster_by_batch"`` (mean expression, pseudo-cluster x batch) and ``"scores"`` (one row:
    the gene's scores, stream and HVG flag).
    """
    names = adata.var_names
    if gene not in names:
        lower = {n.lower(): n for n in names}
        if gene.lower() not in lower:
            close = difflib.get_close_matches(gene, list(names), n=5)
            raise SchelixError(
                f"Gene {gene!r} is not in adata.var_names",
                f"did you mean: {', '.join(close)}" if close else "check the spelling",
            )
        gene = lower[gene.lower()]
    if "schelix_pseudo_cluster" not in adata.obs:
        raise SchelixError("Pseudo-clusters are missing", "run schelix.anchors.score_genes first")
    batch = _check_batch(adata, batch_key)
    col = adata[:, gene].X
    x = np.asarray(col.toarray() if sp.issparse(col) else col, dtype=np.float64).ravel()
    clusters = pd.Categorical(adata.obs["schelix_pseudo_cluster"])
    pivot = pd.DataFrame({"x": x, "cluster": clusters, "batch": batch}).pivot_table(
        index="cluster", columns="batch", values="x", aggfunc="mean", observed=False
    )
    row = {c: float(adata.var.at[gene, c]) for c in _SCORE_COLS if c in adata.var}
    row["stream"] = (
        str(adata.var.at[gene, "schelix_stream"]) if "schelix_stream" in adata.var else ""
    )
    row["highly_variable"] = (
        bool(adata.var.at[gene, "highly_variable"]) if "highly_variable" in adata.var else True
    )
    return {
        "per_batch": _summary(x, batch, "batch"),
        "per_cluster": _summary(x, clusters, "cluster"),
        "cluster_by_batch": pivot,
        "scores": pd.DataFrame([row], index=[gene]),
    }
