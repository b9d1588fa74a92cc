"""Anchor discovery: the discriminability–sensitivity quadrant (SPEC §2, paper §3.2, Alg. 1).

``score_genes`` computes, on the HVG pool, a domain-sensitivity score (Eq. 1) and a
structure-separability score over pseudo-clusters (Eq. 2), both z-scored.
``quadrant`` is the pure anchor rule of Eq. 3 (a mask over cached scores, cheap
enough for a slider) and ``split_anchors`` writes the anchor/variant split.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from schelix import cell_graph, sketch
from schelix.errors import SchelixError, SchelixWarning
from schelix.groups import EPS, group_moments
from schelix.obs import require_column
from schelix.preprocess import hvg_mask

__all__ = [
    "STREAMS",
    "domain_sensitivity",
    "gene_table",
    "has_split",
    "quadrant",
    "score_genes",
    "split_anchors",
    "structure_separability",
    "suggest_thresholds",
]

STREAMS = ("anchor", "variant", "unused")
_SCORE_COLS = ("schelix_s_dom", "schelix_z_dom", "schelix_s_str", "schelix_z_str")


def _uns(adata: AnnData) -> dict:
    if not isinstance(adata.uns.get("schelix"), dict):
        adata.uns["schelix"] = {}
    return adata.uns["schelix"]


def _check_batch(adata: AnnData, batch_key: str) -> pd.Categorical:
    require_column(adata, batch_key)
    batch = pd.Categorical(adata.obs[batch_key].astype(str))
    if len(batch.categories) < 2:
        raise SchelixError(
            f"Batch column {batch_key!r} has only one batch",
            "anchor discovery needs at least two batches; pick another batch column",
        )
    return batch


def _zscore(s: np.ndarray) -> np.ndarray:
    sd = s.std()
    return (s - s.mean()) / sd if sd > 0 else np.zeros_like(s)


def _moments(x: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every gene over all cells."""
    n, tot1, tot2 = group_moments(x, np.zeros(x.shape[0], dtype=int), 1)
    mu = tot1[0] / n[0]
    return mu, np.sqrt(np.maximum(tot2[0] / n[0] - mu**2, 0.0))


def domain_sensitivity(x: sp.spmatrix, batch: np.ndarray, n_batches: int) -> np.ndarray:
    """Eq. 1: ``s_dom(g) = mean_b |mu_b(g) - mu(g)| / (sd(g) + eps)`` over the batches present.

    ``x`` is cells x genes (log-normalized, sparse), ``batch`` each cell's integer batch code.
    Indicator-matrix products only, so ``x`` stays sparse.
    """
    mu_all, sd_all = _moments(x)
    nb, sb, _ = group_moments(x, batch, n_batches)
    mu_b = sb / np.maximum(nb, 1)[:, None]
    return np.abs(mu_b[nb > 0] - mu_all).mean(axis=0) / (sd_all + EPS)


def structure_separability(x: sp.spmatrix, clusters: np.ndarray, n_clusters: int) -> np.ndarray:
    """Eq. 2: one-way ANOVA variance ratio (mean squares) of every gene across pseudo-clusters.

    ``s_str(g) = [SS_between / (K - 1)] / [SS_within / (N - K) + eps]`` with ``K`` clusters
    (integer codes ``clusters``) and ``N`` cells.
    """
    n_cells, k = x.shape[0], n_clusters
    mu_all, _ = _moments(x)
    nc, sc1, sc2 = group_moments(x, clusters, k)
    mu_c = sc1 / np.maximum(nc, 1)[:, None]
    ss_between = (nc[:, None] * (mu_c - mu_all) ** 2).sum(axis=0)
    ss_within = np.maximum(sc2 - sc1 * mu_c, 0.0).sum(axis=0)
    var_between = ss_between / max(k - 1, 1)
    var_within = ss_within / max(n_cells - k, 1)
    return var_between / (var_within + EPS)


def score_genes(
    adata: AnnData,
    *,
    batch_key: str,
    n_pcs: int = 50,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    seed: int = 0,
    sketch_cells: int | None = None,
) -> None:
    """Score every HVG for domain sensitivity (Eq. 1) and structure separability (Eq. 2).

    Pseudo-clusters come from PCA -> kNN -> Leiden on the HVG matrix. The PCA runs on the
    HVGs *scaled to unit variance* (centering is implicit, so the sparse matrix is never
    densified): unscaled, a handful of highly expressed genes dominate the PCs and the
    pseudo-clusters mostly reflect them; scaled, every HVG gets an equal vote, which is what
    the per-gene separability score then judges, and it is the same view as SPEC's
    Diagnostic I (PCA on scaled genes) and scanpy's standard workflow.

    Parameters
    ----------
    adata
        Preprocessed AnnData: log-normalized ``X`` over all QC genes, ``var["highly_variable"]``
        marks the HVG pool (all genes are used if it is missing).
    batch_key
        Column of ``adata.obs`` with the batch (domain) labels.
    n_pcs, n_neighbors, resolution
        PCA components, kNN neighbours and Leiden resolution of the pseudo-clusters.
    seed
        Seed of PCA, Leiden and the sketch.
    sketch_cells
        ``None``: :data:`schelix.sketch.SKETCH_CELLS`. Above this many cells, PCA, kNN graph and pseudo-clusters (so ``s_str``) come from a
        batch-stratified sample of this size (:mod:`schelix.cell_graph`); ``s_dom`` always uses
        every cell.

    Writes ``var["schelix_s_dom"/"schelix_z_dom"/"schelix_s_str"/"schelix_z_str"]`` (NaN outside
    the HVG pool), ``obs["schelix_pseudo_cluster"]``, ``obsm["X_schelix_pca"]``, the kNN graph
    ``obsp["schelix_connectivities"/"schelix_distances"]`` (scanpy neighbors,
    ``key_added="schelix"``; its keys are merged into ``uns["schelix"]`` so that
    ``neighbors_key="schelix"`` works) and ``uns["schelix"]["anchor_scores"]``.
    """
    batch = _check_batch(adata, batch_key)
    hvg = hvg_mask(adata)
    x = adata.X if hvg.all() else adata.X[:, hvg]  # every gene an HVG: no copy
    x = (
        sp.csr_matrix(x, dtype=np.float32)
        if sp.issparse(x)
        else sp.csr_matrix(np.asarray(x, np.float32))
    )
    if x.nnz and x.data.max() > 50 and np.all(np.mod(x.data[:1000], 1) == 0):
        warnings.warn(
            "adata.X looks like raw counts; anchor scores expect log-normalized X "
            "(run schelix.pp.normalize first)",
            SchelixWarning,
            stacklevel=2,
        )
    n_cells, n_hvg = x.shape
    if n_hvg < 3 or n_cells < 3:
        raise SchelixError(
            f"Only {n_cells} cells x {n_hvg} HVGs to score",
            "use more cells/genes (anchor discovery needs a real HVG pool)",
        )

    sd_all = _moments(x)[1]  # per-gene SD: scales the PCA input below
    s_dom = domain_sensitivity(x, batch.codes.astype(int), len(batch.categories))

    # pseudo-clusters: PCA (scaled HVGs) -> kNN -> Leiden
    n_comps = int(min(n_pcs, n_hvg - 1, n_cells - 1))
    if n_comps < n_pcs:
        warnings.warn(
            f"n_pcs lowered from {n_pcs} to {n_comps} (data too small)",
            SchelixWarning,
            stacklevel=2,
        )
    clusters, _, graph_record = cell_graph.build(
        adata, x, sd_all, batch, n_comps=n_comps, n_neighbors=n_neighbors,
        resolution=resolution, seed=seed, sketch_cells=sketch_cells or sketch.SKETCH_CELLS,
    )  # fmt: skip
    k = len(clusters.categories)  # s_str over every cell (sketch: clusters placed by the vote)
    codes = adata.obs["schelix_pseudo_cluster"].cat.codes.to_numpy()
    s_str = structure_separability(x, codes.astype(int), k)

    z_dom, z_str = _zscore(s_dom), _zscore(np.log(s_str + EPS))
    for col, vals in zip(_SCORE_COLS, (s_dom, z_dom, s_str, z_str)):
        full = np.full(adata.n_vars, np.nan)
        full[hvg] = vals
        adata.var[col] = full
    _uns(adata)["anchor_scores"] = {
        "batch_key": batch_key,
        "n_pcs": n_comps,
        "n_neighbors": int(n_neighbors),
        "resolution": float(resolution),
        "seed": int(seed),
        "scaled_pca": True,
        "n_hvg": int(n_hvg),
        "n_pseudo_clusters": int(k),
        "eps": EPS,
        **graph_record,
    }


def quadrant(
    z_dom: np.ndarray, z_str: np.ndarray, *, tau_dom: float = 0.0, tau_str: float = 0.0
) -> np.ndarray:
    """Anchor mask of Eq. 3: ``z_dom <= tau_dom and z_str >= tau_str`` (NaN -> False).

    Pure and vectorised (no re-clustering), so the app can call it on every slider move.
    """
    z_dom = np.asarray(z_dom, dtype=np.float64)
    z_str = np.asarray(z_str, dtype=np.float64)
    return (z_dom <= tau_dom) & (z_str >= tau_str)


def suggest_thresholds(
    z_dom: np.ndarray,
    z_str: np.ndarray,
    *,
    tau_dom: float = 0.0,
    tau_str: float = 0.0,
    min_genes: int = 20,
) -> tuple[float, float, int, int] | None:
    """Thresholds closest to ``(tau_dom, tau_str)`` giving >= ``min_genes`` genes on each side.

    Candidates are the 5 %..95 % quantiles of each score (plus 0 and the current values).
    Returns ``(tau_dom, tau_str, n_anchor, n_variant)`` or ``None`` if no candidate works.
    """
    z_dom, z_str = np.asarray(z_dom, float), np.asarray(z_str, float)
    pool = np.isfinite(z_dom) & np.isfinite(z_str)
    zd, zs = z_dom[pool], z_str[pool]
    if len(zd) < 2 * min_genes:
        return None
    qs = np.linspace(0.05, 0.95, 19)
    cd = np.unique(np.round(np.r_[np.quantile(zd, qs), tau_dom, 0.0], 3))
    cs = np.unique(np.round(np.r_[np.quantile(zs, qs), tau_str, 0.0], 3))
    n_anchor = (
        (zd[:, None, None] <= cd[None, :, None]) & (zs[:, None, None] >= cs[None, None, :])
    ).sum(0)
    valid = (n_anchor >= min_genes) & (len(zd) - n_anchor >= min_genes)
    if not valid.any():
        return None
    dist = (cd[:, None] - tau_dom) ** 2 + (cs[None, :] - tau_str) ** 2
    i, j = np.unravel_index(np.argmin(np.where(valid, dist, np.inf)), dist.shape)
    return float(cd[i]), float(cs[j]), int(n_anchor[i, j]), int(len(zd) - n_anchor[i, j])


def _scores(adata: AnnData) -> tuple[np.ndarray, np.ndarray]:
    if any(c not in adata.var for c in _SCORE_COLS):
        raise SchelixError(
            "Anchor scores are missing from adata.var",
            "run schelix.anchors.score_genes(adata, batch_key=...) first",
        )
    return (
        adata.var["schelix_z_dom"].to_numpy(np.float64),
        adata.var["schelix_z_str"].to_numpy(np.float64),
    )


def split_anchors(
    adata: AnnData,
    *,
    tau_dom: float = 0.0,
    tau_str: float = 0.0,
    random: bool = False,
    seed: int = 0,
    min_genes: int = 20,
) -> pd.Series:
    """Split the HVG pool into anchors and variants with the quadrant rule (Eq. 3).

    Parameters
    ----------
    adata
        AnnData scored by :func:`score_genes`.
    tau_dom, tau_str
        Thresholds on ``z_dom`` (anchors at or below) and ``z_str`` (anchors at or above).
    random
        Ablation S1: as many anchors as the quadrant gives, but drawn at random from the HVGs.
    seed
        Seed of the random draw (``random=True`` only).
    min_genes
        Fewest genes allowed on either side.

    Returns
    -------
    ``var["schelix_stream"]``, categorical in ``{"anchor", "variant", "unused"}`` (unused = not
    an HVG); parameters and counts go to ``uns["schelix"]["anchor_split"]``.
    """
    z_dom, z_str = _scores(adata)
    pool = np.isfinite(z_dom) & np.isfinite(z_str)
    anchor = quadrant(z_dom, z_str, tau_dom=tau_dom, tau_str=tau_str) & pool
    n_anchor, n_variant = int(anchor.sum()), int(pool.sum() - anchor.sum())
    if n_anchor < min_genes or n_variant < min_genes:
        hint = suggest_thresholds(
            z_dom, z_str, tau_dom=tau_dom, tau_str=tau_str, min_genes=min_genes
        )
        fix = (
            f"try tau_dom={hint[0]:g}, tau_str={hint[1]:g} ({hint[2]} anchors, {hint[3]} variants)"
            if hint
            else f"use more HVGs (the pool has {int(pool.sum())} genes) or lower min_genes"
        )
        raise SchelixError(
            f"The split at tau_dom={tau_dom:g}, tau_str={tau_str:g} gives {n_anchor} "
            f"anchors and {n_variant} variants; each side needs at least {min_genes}",
            fix,
        )
    if random:
        rng = np.random.default_rng(seed)
        anchor = np.zeros_like(pool)
        anchor[rng.choice(np.flatnonzero(pool), n_anchor, replace=False)] = True
    stream = np.where(anchor, "anchor", np.where(pool, "variant", "unused"))
    adata.var["schelix_stream"] = pd.Categorical(stream, categories=list(STREAMS))
    _uns(adata)["anchor_split"] = {
        "tau_dom": float(tau_dom),
        "tau_str": float(tau_str),
        "random": bool(random),
        "seed": int(seed),
        "min_genes": int(min_genes),
        "n_anchor": n_anchor,
        "n_variant": n_variant,
    }
    return adata.var["schelix_stream"]


def has_split(
    adata: AnnData,
    *,
    tau_dom: float = 0.0,
    tau_str: float = 0.0,
    random: bool = False,
    seed: int = 0,
) -> bool:
    """Whether ``adata`` holds the split :func:`split_anchors` makes with these settings.

    The stored split (``var["schelix_stream"]`` and its record in ``uns``) is then read as it
    is, never recomputed. ``seed`` matters only for a random split.
    """
    rec = _uns(adata).get("anchor_split")
    if "schelix_stream" not in adata.var or not rec:
        return False
    same = (
        float(rec["tau_dom"]) == float(tau_dom)
        and float(rec["tau_str"]) == float(tau_str)
        and bool(rec["random"]) == bool(random)
    )
    return same and (not random or int(rec["seed"]) == int(seed))


def gene_table(adata: AnnData) -> pd.DataFrame:
    """One row per scored gene: stream, z-scores and raw scores (from :func:`score_genes`)."""
    var = adata.var
    cols = {
        "schelix_z_dom": "z_dom",
        "schelix_z_str": "z_str",
        "schelix_s_dom": "s_dom",
        "schelix_s_str": "s_str",
    }
    table = var[[c for c in cols if c in var]].rename(columns=cols)
    table = table[np.isfinite(table["z_dom"]) & np.isfinite(table["z_str"])]
    table.insert(0, "gene", table.index.astype(str))
    if "schelix_stream" in var:
        table.insert(1, "stream", var.loc[table.index, "schelix_stream"].astype(str))
    return table.reset_index(drop=True)
