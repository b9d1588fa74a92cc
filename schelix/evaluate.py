"""Evaluation protocol of the scHelix paper (App. C, SPEC §5) on scib-metrics.

For every embedding:

1. embeddings wider than 64 dims are reduced by PCA to 64 (narrower ones are used as is);
2. one exact kNN graph (k = 15, self included, UMAP connectivities as in scanpy) is built
   and reused by every graph metric and by the Leiden sweep (resolutions 0.1..2.0, step 0.1,
   igraph Leiden on modularity, seeded);
3. cells whose label is ``unlabelled`` / ``unknown`` / NaN stay in the graph but are left out
   of every label metric.

``ASW_ct = (silhouette + 1) / 2`` (``scib_metrics.silhouette_label``); ``ASW_batch`` is scIB's
per-cell-type ``1 - |s_batch|`` (``scib_metrics.silhouette_batch``); ``GC`` is
``scib_metrics.graph_connectivity`` on the k = 15 graph (directed kNN graph, strongly connected
components, as scib-metrics does); ``ARI`` / ``NMI`` are the best values over the Leiden sweep
(each maximised separately).
``BioMean`` and ``Overall`` are :data:`OVERALL_FORMULA` (:func:`overall`). The scib-metrics
``Benchmarker`` table is :func:`schelix.benchmarker.scib_benchmark`.

Without labels, :func:`label_free_score` follows the scCRAFT paper: each batch is clustered on
its own (scaled-HVG PCA of that batch alone, Leiden 0.5) and the integrated Leiden clustering,
restricted to the batch, is compared with it (ARI / NMI, averaged over batches, best over the
sweep); batch mixing is scIB's scaled iLISI (k = 90). ``LabelFree = 0.4 iLISI + 0.6 mean(ARI_batch,
NMI_batch)``.
"""

from __future__ import annotations

import random
import time
import warnings
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd

from schelix.errors import SchelixError, SchelixWarning
from schelix.obs import label_mask, require_column
from schelix.pca import scaled_pca
from schelix.preprocess import hvg_mask

__all__ = [
    "EVAL_DIMS",
    "N_NEIGHBORS",
    "OVERALL_FORMULA",
    "RESOLUTIONS",
    "anchor_diagnostic",
    "batch_clusters",
    "eval_space",
    "evaluate",
    "label_free_score",
    "label_mask",
    "overall",
    "score",
]

EVAL_DIMS = 64
N_NEIGHBORS = 15
RESOLUTIONS = tuple(round(0.1 * i, 1) for i in range(1, 21))
LABEL_METRICS = ("ASW_ct", "GC", "ARI", "NMI", "BioMean", "ASW_batch", "Overall")
#: The paper's aggregate score, in words (recorded with every metrics table).
OVERALL_FORMULA = "Overall = 0.4 ASW_batch + 0.6 BioMean, BioMean = mean(ASW_ct, ARI, NMI, GC)"


def overall(asw_batch: float, bio_mean: float) -> float:
    """The paper's aggregate score (:data:`OVERALL_FORMULA`)."""
    return 0.4 * asw_batch + 0.6 * bio_mean


LABEL_FREE_METRICS = ("iLISI", "ARI_batch", "NMI_batch", "BioBatch", "LabelFree")

# ----------------------------------------------------------------------------- helpers


def _embedding(adata: ad.AnnData, embedding: str | np.ndarray) -> np.ndarray:
    if isinstance(embedding, str):
        if embedding not in adata.obsm:
            raise SchelixError(
                f"Embedding '{embedding}' is not in adata.obsm",
                f"choose one of: {', '.join(adata.obsm.keys()) or '(none yet: run a method first)'}",
            )
        embedding = adata.obsm[embedding]
    x = np.asarray(embedding, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != adata.n_obs:
        raise SchelixError(
            f"The embedding has shape {x.shape}, expected ({adata.n_obs}, d)",
            "pass one row per cell of adata",
        )
    if not np.isfinite(x).all():
        raise SchelixError("The embedding contains NaN or infinite values", "re-run the method")
    return x


def _obs(adata: ad.AnnData, key: str, what: str) -> np.ndarray:
    require_column(adata, key, what)
    return np.asarray(adata.obs[key].astype(str))


def eval_space(x: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """The evaluation representation: PCA to 64 dims when wider, else ``x`` unchanged."""
    if x.shape[1] <= EVAL_DIMS:
        return np.ascontiguousarray(x, dtype=np.float32)
    import scanpy as sc

    n = min(EVAL_DIMS, x.shape[0] - 1)
    return np.asarray(
        sc.pp.pca(x.astype(np.float32), n_comps=n, svd_solver="arpack", random_state=seed),
        dtype=np.float32,
    )


def _knn(x: np.ndarray, k: int):
    """Exact kNN (self first) as a ``scib_metrics.nearest_neighbors.NeighborsResults``."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    k = int(min(k, x.shape[0]))
    dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    return NeighborsResults(indices=idx.astype(np.int64), distances=dist.astype(np.float32))


class _Graph:
    """kNN graph of one embedding with a seeded, cached Leiden sweep on it."""

    def __init__(self, x: np.ndarray, *, seed: int, n_neighbors: int = N_NEIGHBORS, k_max: int = 0):
        import igraph

        self.seed = seed
        self.wide = _knn(x, max(n_neighbors, k_max))
        self.nn = self.wide.subset_neighbors(min(n_neighbors, self.wide.n_neighbors))
        g = igraph.Graph.Weighted_Adjacency(self.nn.knn_graph_connectivities, mode="directed")
        g.to_undirected(mode="each")  # as scib-metrics / scanpy do
        self.igraph = g
        self._cache: dict[float, np.ndarray] = {}

    def leiden(self, resolution: float) -> np.ndarray:
        if resolution not in self._cache:
            import igraph

            igraph.set_random_number_generator(random.Random(self.seed))
            part = self.igraph.community_leiden(
                objective_function="modularity", weights="weight", resolution=resolution
            )
            igraph.set_random_number_generator(random)
            self._cache[resolution] = np.asarray(part.membership)
        return self._cache[resolution]

    def best_agreement(self, truth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
        """Best ARI and best NMI (each maximised separately) of the sweep vs ``truth[mask]``."""
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

        ari, nmi = [], []
        for r in RESOLUTIONS:
            pred = self.leiden(r)[mask]
            ari.append(adjusted_rand_score(truth, pred))
            nmi.append(normalized_mutual_info_score(truth, pred, average_method="arithmetic"))
        return float(max(ari)), float(max(nmi))


# ----------------------------------------------------------------------------- scores
def _label_scores(x: np.ndarray, graph: _Graph, batch: np.ndarray, labels: np.ndarray) -> dict:
    import scib_metrics

    mask = label_mask(labels)
    lab = labels[mask]
    if np.unique(lab).size < 2:
        raise SchelixError(
            f"Label metrics need at least 2 labelled cell types; found {np.unique(lab).size}",
            "choose another label column, or evaluate without labels (label-free)",
        )
    xs = x[mask]
    out = {"ASW_ct": float(scib_metrics.silhouette_label(xs, lab, rescale=True))}
    # per-label subgraphs of the k = 15 graph, as scib-metrics builds them (directed kNN
    # graph, strongly connected components); restricting to labelled cells first changes none
    sub = SimpleNamespace(knn_graph_distances=graph.nn.knn_graph_distances[mask][:, mask])
    out["GC"] = float(scib_metrics.graph_connectivity(sub, lab))
    out["ARI"], out["NMI"] = graph.best_agreement(lab, mask)
    out["BioMean"] = float(np.mean([out["ASW_ct"], out["ARI"], out["NMI"], out["GC"]]))
    shared = pd.crosstab(lab, batch[mask]).gt(0).sum(axis=1).gt(1).any()
    if shared:
        out["ASW_batch"] = float(scib_metrics.silhouette_batch(xs, lab, batch[mask], rescale=True))
    else:
        warnings.warn(
            "No cell type occurs in 2+ batches; ASW_batch is NaN", SchelixWarning, stacklevel=3
        )
        out["ASW_batch"] = float("nan")
    out["Overall"] = overall(out["ASW_batch"], out["BioMean"])
    return {k: out[k] for k in LABEL_METRICS}


def score(
    adata: ad.AnnData, embedding: str | np.ndarray, *, batch_key: str, label_key: str, seed: int = 0
) -> dict[str, float]:
    """Paper metrics of one embedding: ``ASW_ct, GC, ARI, NMI, BioMean, ASW_batch, Overall``.

    Parameters
    ----------
    adata
        AnnData with ``obs[batch_key]`` and ``obs[label_key]``.
    embedding
        An ``obsm`` key or a ``(n_cells, d)`` array.
    batch_key, label_key
        Batch and cell-type columns of ``adata.obs``; unlabelled cells are excluded from label metrics.
    seed
        Seed of the evaluation PCA and the Leiden sweep (the result is deterministic).
    """
    batch, labels = _obs(adata, batch_key, "Batch"), _obs(adata, label_key, "Label")
    x = eval_space(_embedding(adata, embedding), seed=seed)
    return _label_scores(x, _Graph(x, seed=seed), batch, labels)


def batch_clusters(
    adata: ad.AnnData, *, batch_key: str, resolution: float = 0.5, seed: int = 0
) -> pd.Series:
    """Each batch's own Leiden clusters (scaled-HVG PCA of the batch alone, k = 15).

    Cached in ``obs["schelix_batch_leiden"]`` (``"<batch>|<cluster>"``; NaN for batches with
    fewer than 30 cells) with its parameters in ``uns["schelix"]["batch_clusters"]``.
    """
    params = {"batch_key": batch_key, "resolution": float(resolution), "seed": int(seed)}
    cached = adata.uns.get("schelix", {}).get("batch_clusters")
    if "schelix_batch_leiden" in adata.obs and cached is not None and dict(cached) == params:
        return adata.obs["schelix_batch_leiden"]
    batch = _obs(adata, batch_key, "Batch")
    hvg = hvg_mask(adata)
    out = pd.Series(np.nan, index=adata.obs_names, dtype=object)
    for b in np.unique(batch):
        idx = np.flatnonzero(batch == b)
        if idx.size < 30:
            continue
        pcs = scaled_pca(adata.X[idx][:, hvg], n_comps=50, seed=seed)
        cl = _Graph(pcs, seed=seed).leiden(float(resolution))
        out.iloc[idx] = [f"{b}|{c}" for c in cl]
    adata.obs["schelix_batch_leiden"] = pd.Categorical(out)
    adata.uns.setdefault("schelix", {})["batch_clusters"] = params
    return adata.obs["schelix_batch_leiden"]


def label_free_score(
    adata: ad.AnnData, embedding: str | np.ndarray, *, batch_key: str, seed: int = 0
) -> dict[str, float]:
    """Label-free quality (scCRAFT's proxy): ``iLISI, ARI_batch, NMI_batch, BioBatch, LabelFree``.

    ``iLISI`` is scIB's scaled iLISI on a k = 90 graph (1 = perfectly mixed). ``ARI_batch`` /
    ``NMI_batch``: for each resolution of the sweep, ARI / NMI between the integrated clustering
    restricted to a batch and that batch's own clusters (:func:`batch_clusters`), averaged over
    batches; best over the sweep. ``BioBatch = mean(ARI_batch, NMI_batch)`` and
    ``LabelFree = 0.4 iLISI + 0.6 BioBatch``.
    """
    import scib_metrics
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    batch = _obs(adata, batch_key, "Batch")
    own = np.asarray(batch_clusters(adata, batch_key=batch_key, seed=seed).astype(object))
    x = eval_space(_embedding(adata, embedding), seed=seed)
    graph = _Graph(x, seed=seed, k_max=90)
    out = {"iLISI": float(scib_metrics.ilisi_knn(graph.wide, batch, scale=True))}
    groups = [np.flatnonzero((batch == b) & pd.notna(own)) for b in np.unique(batch)]
    groups = [g for g in groups if g.size and np.unique(own[g]).size > 1]
    ari = np.zeros(len(RESOLUTIONS))
    nmi = np.zeros(len(RESOLUTIONS))
    for i, r in enumerate(RESOLUTIONS):
        pred = graph.leiden(r)
        for g in groups:
            ari[i] += adjusted_rand_score(own[g], pred[g]) / max(len(groups), 1)
            nmi[i] += normalized_mutual_info_score(own[g], pred[g]) / max(len(groups), 1)
    out["ARI_batch"], out["NMI_batch"] = float(ari.max()), float(nmi.max())
    out["BioBatch"] = (out["ARI_batch"] + out["NMI_batch"]) / 2
    out["LabelFree"] = 0.4 * out["iLISI"] + 0.6 * out["BioBatch"]
    return out


# ----------------------------------------------------------------------------- tables
def evaluate(
    adata: ad.AnnData,
    keys: list[str],
    *,
    batch_key: str,
    label_key: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Score several ``obsm`` embeddings; one row per key, written to ``uns["schelix"]["metrics"]``.

    With ``label_key=None`` the label-free score is used (column ``mode`` says which).
    ``uns["schelix"]["metrics"]`` = ``{mode, batch_key, label_key ("" if none), seed, n_cells,
    note, table: {column: array}}``. On large data the metrics are computed on the display
    sample (:func:`schelix.display.sample`), and ``n_cells`` says how many cells were scored.
    """
    from schelix import display

    sample = display.sample(adata, batch_key=batch_key)
    target = adata
    if sample is not None:  # large data: the display sample (every key checked on all cells)
        target = ad.AnnData(
            X=adata.X[sample] if label_key is None else None,
            obs=adata.obs.iloc[sample].copy(),
            var=adata.var if label_key is None else None,
            obsm={k: _embedding(adata, k)[sample] for k in keys},
        )
    rows = []
    for key in keys:
        t0 = time.perf_counter()
        if label_key is None:
            res = label_free_score(target, key, batch_key=batch_key, seed=seed)
        else:
            res = score(target, key, batch_key=batch_key, label_key=label_key, seed=seed)
        rows.append({"embedding": key, **res, "seconds": time.perf_counter() - t0})
    mode = "label-free" if label_key is None else "labels"
    df = pd.DataFrame(rows)
    df.insert(1, "mode", mode)
    note = (
        "label-free (no label_key): LabelFree = 0.4 iLISI + 0.6 mean(ARI_batch, NMI_batch)"
        if label_key is None
        else f"{OVERALL_FORMULA}; PCA-64 cap, k=15, Leiden 0.1..2.0"
    )
    adata.uns.setdefault("schelix", {})["metrics"] = {
        "mode": mode,
        "batch_key": batch_key,
        "label_key": label_key or "",
        "seed": int(seed),
        "n_cells": int(target.n_obs),
        "note": note,
        "table": {
            c: df[c].to_numpy() if df[c].dtype != object else df[c].astype(str).to_numpy()
            for c in df.columns
        },
    }
    return df


def anchor_diagnostic(
    adata: ad.AnnData, *, batch_key: str, label_key: str, seed: int = 0, n_random: int = 3
) -> pd.DataFrame:
    """Paper Diagnostic I: PCA-64 of the scaled anchor genes vs all HVGs vs random same-size sets.

    Needs ``var["schelix_stream"]`` (:func:`schelix.anchors.split_anchors`). Each gene set's
    scaled log-expression is reduced to 64 PCs (seeded randomized SVD: several times faster than
    ARPACK for 64 components) and scored with :func:`score`; the random row is
    the mean over ``n_random`` gene sets of the anchors' size drawn from the HVG pool
    (``Overall_std`` is their spread). Columns: ``gene_set, n_genes, n_sets``, the metrics,
    ``Overall_std``.
    """
    if "schelix_stream" not in adata.var:
        raise SchelixError(
            "No anchor split found (var['schelix_stream'] is missing)",
            "run schelix.anchors.score_genes and split_anchors first",
        )
    stream = np.asarray(adata.var["schelix_stream"].astype(str))
    anchors, pool = stream == "anchor", np.isin(stream, ["anchor", "variant"])
    n_anchor = int(anchors.sum())
    rng = np.random.default_rng(seed)

    def run(mask: np.ndarray) -> dict[str, float]:
        x = scaled_pca(adata.X[:, mask], n_comps=EVAL_DIMS, seed=seed, svd_solver="randomized")
        return score(adata, x, batch_key=batch_key, label_key=label_key, seed=seed)

    rows = [
        {"gene_set": "Anchors", "n_genes": n_anchor, "n_sets": 1, **run(anchors)},
        {"gene_set": "All HVGs", "n_genes": int(pool.sum()), "n_sets": 1, **run(pool)},
    ]
    randoms = []
    for _ in range(max(int(n_random), 0)):
        mask = np.zeros(adata.n_vars, dtype=bool)
        mask[rng.choice(np.flatnonzero(pool), size=n_anchor, replace=False)] = True
        randoms.append(run(mask))
    if randoms:
        rnd = pd.DataFrame(randoms)
        rows.append(
            {
                "gene_set": "Random (same size)",
                "n_genes": n_anchor,
                "n_sets": len(randoms),
                **rnd.mean().to_dict(),
                "Overall_std": float(rnd["Overall"].std(ddof=0)),
            }
        )
    df = pd.DataFrame(rows)
    df["Overall_std"] = df.get("Overall_std", pd.Series(dtype=float)).fillna(0.0)
    return df[["gene_set", "n_genes", "n_sets", *LABEL_METRICS, "Overall_std"]]
