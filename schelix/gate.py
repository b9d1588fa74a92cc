"""Variant-only layered domain gate (SPEC §3, paper Eq. 4 and App. F.1).

Two Leiden clusterings (coarse and fine) of the anchor-discovery kNN graph define, for each
cell, the clusters it sits in. Inside every cluster that holds enough cells from at least two
batches, each variant gene gets a local domain-sensitivity score from how much its per-batch
mean, std and variance disagree; normalised per cluster, mixed over the two resolutions, this is
the gate ``gamma_i(g)`` in [0, 1]. :meth:`VariantGate.apply` damps variant values only:
``x_tilde = x * (1 - strength * gamma)``. It only ever sees the variant matrix, so anchors can
never be modified (the hard information barrier).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from schelix.anchors import _uns
from schelix.errors import SchelixError
from schelix.groups import EPS, group_moments, leiden_labels
from schelix.obs import require_column
from schelix.sketch import sketch_mask, vote

__all__ = ["MIN_BATCH_CELLS", "VariantGate", "cluster_gamma", "fit_gate"]

#: a batch counts as present in a cluster only with at least this many cells there
#: (fewer give no usable per-batch std / variance)
MIN_BATCH_CELLS = 3


@dataclass(frozen=True, eq=False)
class VariantGate:
    """A fitted gate: per-cluster gammas at two resolutions and every cell's clusters.

    Attributes
    ----------
    variant_genes
        Names of the variant genes, in ``adata.var`` order (the columns of the variant matrix).
    gamma_low, gamma_high
        ``(n_clusters x n_variant_genes)`` float32 gammas of the coarse / fine clustering.
    low_labels, high_labels
        Integer cluster of each cell in the coarse / fine clustering.
    w_low, w_high
        Mixing weights of the two resolutions.
    cells
        Names of the cells, in row order (optional): lets a stored gate find its cells again in
        a freshly read AnnData (see :func:`schelix.data.prepare`).
    anchor_genes, low_centroids, high_centroids
        Names of the anchor genes and the mean log-normalized anchor expression of every coarse
        / fine cluster (optional): cells the gate never saw (a mapped query) are put in the
        cluster with the nearest centroid in the model's scaled anchor space
        (:meth:`assign`). Anchors are the batch-stable genes, so a new batch lands by biology.
    """

    variant_genes: np.ndarray
    gamma_low: np.ndarray
    gamma_high: np.ndarray
    low_labels: np.ndarray
    high_labels: np.ndarray
    w_low: float = 0.5
    w_high: float = 0.5
    cells: np.ndarray | None = None
    anchor_genes: np.ndarray | None = None
    low_centroids: np.ndarray | None = None
    high_centroids: np.ndarray | None = None

    def save(self, path: str | Path) -> Path:
        """Write the gate as an ``.npz`` of plain arrays (no pickles)."""
        arrays = {
            f.name: np.asarray(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) is not None
        }
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> VariantGate:
        """Read a gate written by :meth:`save` (refuses pickled objects)."""
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        names = {f.name for f in fields(cls)}
        if (
            not {"variant_genes", "gamma_low", "gamma_high", "low_labels", "high_labels"} <= set(a)
            or not set(a) <= names
        ):
            raise SchelixError(f"{path} is not a saved variant gate", "save the model again")
        return cls(
            variant_genes=a["variant_genes"].astype(str),
            gamma_low=a["gamma_low"].astype(np.float32),
            gamma_high=a["gamma_high"].astype(np.float32),
            low_labels=a["low_labels"].astype(np.int64),
            high_labels=a["high_labels"].astype(np.int64),
            w_low=float(a.get("w_low", 0.5)),
            w_high=float(a.get("w_high", 0.5)),
            cells=a["cells"].astype(str) if "cells" in a else None,
            anchor_genes=a["anchor_genes"].astype(str) if "anchor_genes" in a else None,
            low_centroids=a["low_centroids"].astype(np.float32) if "low_centroids" in a else None,
            high_centroids=(
                a["high_centroids"].astype(np.float32) if "high_centroids" in a else None
            ),
        )

    @property
    def n_cells(self) -> int:
        return len(self.low_labels)

    def gamma(self, idx: np.ndarray | slice | None = None) -> np.ndarray:
        """Per-cell gate ``clip(w_low*gamma_low[c_low(i)] + w_high*gamma_high[c_high(i)], 0, 1)``.

        ``idx`` selects cells (indices, boolean mask or slice); ``None`` means all cells.
        Returns a dense float32 ``(n x n_variant_genes)`` array.
        """
        sel = slice(None) if idx is None else idx
        return self.cluster_gamma(self.low_labels[sel], self.high_labels[sel])

    def cluster_gamma(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """The gate of cells in coarse clusters ``low`` and fine clusters ``high``."""
        g = self.w_low * self.gamma_low[low] + self.w_high * self.gamma_high[high]
        return np.clip(g, 0.0, 1.0).astype(np.float32)

    @property
    def can_assign(self) -> bool:
        """Whether the gate stores the centroids that place unseen cells (:meth:`assign`)."""
        return self.anchor_genes is not None and self.low_centroids is not None

    def require_centroids(self) -> None:
        """Refuse, with the fix, a gate saved before mapping existed (no centroids)."""
        if not self.can_assign:
            raise SchelixError(
                "This model was saved before mapping new cells was supported: its variant gate "
                "has no cluster centroids to place cells it never saw",
                "train and save the model again with this version of scHelix",
            )

    def assign(
        self, x_anchor: np.ndarray, *, mean: np.ndarray, std: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` clusters of unseen cells: the nearest centroid in scaled anchor space.

        ``x_anchor`` is the cells' log-normalized expression of :attr:`anchor_genes`; ``mean`` and
        ``std`` the model's scaling of those genes (both cells and centroids are scaled by it).
        """
        self.require_centroids()
        from sklearn.metrics import pairwise_distances_argmin

        x = (np.asarray(x_anchor, dtype=np.float32) - mean) / std
        out = []
        for cent in (self.low_centroids, self.high_centroids):
            out.append(pairwise_distances_argmin(x, (cent - mean) / std).astype(np.int64))
        return out[0], out[1]

    def apply(
        self,
        x_var: np.ndarray | sp.spmatrix,
        *,
        strength: float = 0.5,
        idx: np.ndarray | slice | None = None,
    ) -> np.ndarray:
        """Gate a variant matrix (paper Eq. 4): ``x_var * (1 - strength * gamma)``.

        Parameters
        ----------
        x_var
            ``(n x n_variant_genes)`` variant expression of the cells ``idx`` (all cells if
            ``idx`` is None); dense or sparse. Anchors are never passed in.
        strength
            Gate strength lambda in [0, 1]; 0 returns the input unchanged.
        idx
            Which cells the rows of ``x_var`` are (for minibatches).
        """
        if not 0.0 <= strength <= 1.0:
            raise SchelixError(
                f"Gate strength {strength} is outside [0, 1]",
                "choose a strength between 0 (off) and 1 (full)",
            )
        x = x_var.toarray() if sp.issparse(x_var) else np.asarray(x_var)
        x = x.astype(np.float32, copy=False)
        n_rows = self.n_cells if idx is None else len(np.arange(self.n_cells)[idx])
        if x.shape != (n_rows, len(self.variant_genes)):
            raise SchelixError(
                f"Variant matrix has shape {x.shape}, the gate expects "
                f"({n_rows}, {len(self.variant_genes)})",
                "pass only the variant genes (var['schelix_stream'] == 'variant') "
                "of the cells the gate was fitted on",
            )
        if strength == 0.0:
            return x.copy()
        return x * (1.0 - strength * self.gamma(idx))

    def centroids(
        self, x_anchor: np.ndarray | sp.spmatrix, anchor_genes: np.ndarray
    ) -> VariantGate:
        """A copy that stores each cluster's mean ``x_anchor`` (rows = the gate's cells)."""
        from schelix.groups import group_moments

        out = {}
        for name, lab, gam in (
            ("low", self.low_labels, self.gamma_low),
            ("high", self.high_labels, self.gamma_high),
        ):
            n, s1, _ = group_moments(x_anchor, lab, len(gam))
            out[f"{name}_centroids"] = (s1 / np.maximum(n, 1)[:, None]).astype(np.float32)
        return replace(self, anchor_genes=np.asarray(anchor_genes, dtype=str), **out)

    @classmethod
    def from_adata(cls, adata: AnnData) -> VariantGate:
        """Rebuild the gate that :func:`fit_gate` recorded in ``adata`` (e.g. after reading h5ad)."""
        rec = adata.uns.get("schelix", {}).get("gate")
        if rec is None or "schelix_gate_low" not in adata.obs:
            raise SchelixError("No fitted gate in this AnnData", "run schelix.gate.fit_gate first")
        return cls(
            variant_genes=np.asarray(rec["variant_genes"], dtype=str),
            gamma_low=np.asarray(rec["gamma_low"], np.float32),
            gamma_high=np.asarray(rec["gamma_high"], np.float32),
            low_labels=pd.Categorical(adata.obs["schelix_gate_low"]).codes.astype(np.int64),
            high_labels=pd.Categorical(adata.obs["schelix_gate_high"]).codes.astype(np.int64),
            w_low=float(rec["w_low"]),
            w_high=float(rec["w_high"]),
        )


def cluster_gamma(
    x: np.ndarray | sp.spmatrix,
    clusters: np.ndarray,
    batches: np.ndarray,
    *,
    min_cells: int = 20,
    weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster gate ``gamma(c, g)`` from cluster x batch sufficient statistics (App. F.1).

    Parameters
    ----------
    x
        ``(n x G)`` variant expression (log-normalized; sparse stays sparse).
    clusters, batches
        Integer codes (0..C-1, 0..B-1) of each cell's cluster and batch.
    min_cells
        Clusters with fewer cells, or with fewer than two batches holding at least
        :data:`MIN_BATCH_CELLS` cells, get gamma 0.
    weights
        ``(w_mu, w_sigma, w_var)`` of the three dispersion terms.

    Returns
    -------
    ``(gamma, gated)``: ``(C x G)`` float32 gammas in [0, 1] and the boolean mask of clusters
    that passed the size/batch rule.
    """
    n_c, n_b = int(clusters.max()) + 1, int(batches.max()) + 1
    n_all, t1, t2 = group_moments(x, np.zeros(len(clusters), dtype=int), 1)
    mu_all = t1[0] / n_all[0]
    sd_all = np.sqrt(np.maximum(t2[0] / n_all[0] - mu_all**2, 0.0))
    n, s1, s2 = group_moments(x, clusters.astype(int) * n_b + batches.astype(int), n_c * n_b)
    n = n.reshape(n_c, n_b)
    s1, s2 = s1.reshape(n_c, n_b, -1), s2.reshape(n_c, n_b, -1)
    mu = s1 / np.maximum(n, 1)[:, :, None]
    var = np.maximum(s2 / np.maximum(n, 1)[:, :, None] - mu**2, 0.0)
    present = (n >= MIN_BATCH_CELLS).astype(np.float64)[:, :, None]
    k = np.maximum(present.sum(axis=1), 1.0)

    def spread(a: np.ndarray) -> np.ndarray:  # std across the batches present in each cluster
        m = (a * present).sum(axis=1) / k
        return np.sqrt((((a - m[:, None, :]) ** 2) * present).sum(axis=1) / k)

    w_mu, w_sigma, w_var = weights
    s = (w_mu * spread(mu) + w_sigma * spread(np.sqrt(var)) + w_var * spread(var)) / (sd_all + EPS)
    gated = (n.sum(axis=1) >= min_cells) & (present[:, :, 0].sum(axis=1) >= 2)
    s = np.maximum(s, 0.0)
    s[~gated] = 0.0
    gamma = s / (s.max(axis=1, keepdims=True) + EPS)
    return np.clip(gamma, 0.0, 1.0).astype(np.float32), gated


def fit_gate(
    adata: AnnData,
    *,
    low_res: float = 0.5,
    high_res: float = 2.0,
    min_cells: int = 20,
    weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
    w_low: float = 0.5,
    w_high: float = 0.5,
    seed: int = 0,
    batch_key: str | None = None,
) -> VariantGate:
    """Fit the layered variant gate on the kNN graph of :func:`schelix.anchors.score_genes`.

    Parameters
    ----------
    adata
        AnnData after ``score_genes`` and ``split_anchors``.
    low_res, high_res
        Leiden resolutions of the coarse and fine clusterings (``obs["schelix_gate_low"]``,
        ``obs["schelix_gate_high"]``), both on ``obsp["schelix_connectivities"]`` (when scoring
        used a sketch, on the sketch, with the gammas from its cells and every other cell in the
        majority cluster of its nearest sketch cells).
    min_cells
        Smallest cluster that is gated (others get gamma 0).
    weights
        ``(w_mu, w_sigma, w_var)`` of the mean / std / variance dispersion terms.
    w_low, w_high
        Mixing weights of the two resolutions.
    seed
        Leiden seed.
    batch_key
        Batch column; defaults to the one ``score_genes`` used.

    Returns
    -------
    The :class:`VariantGate`; its parameters, gammas and variant genes are also recorded in
    ``uns["schelix"]["gate"]`` (see :meth:`VariantGate.from_adata`).
    """
    if "schelix_connectivities" not in adata.obsp:
        raise SchelixError(
            "The anchor-discovery kNN graph is missing",
            "run schelix.anchors.score_genes(adata, batch_key=...) first",
        )
    if "schelix_stream" not in adata.var:
        raise SchelixError("No anchor/variant split", "run schelix.anchors.split_anchors first")
    if len(weights) != 3 or min(weights) < 0:
        raise SchelixError(
            f"Gate weights {tuple(weights)} are not three non-negative numbers",
            "pass weights=(w_mu, w_sigma, w_var), e.g. (1/3, 1/3, 1/3)",
        )
    batch_key = batch_key or _uns(adata).get("anchor_scores", {}).get("batch_key")
    if batch_key is None:
        raise SchelixError("No batch column given", "pass batch_key= (the obs column of batches)")
    require_column(adata, batch_key)
    variant = (adata.var["schelix_stream"] == "variant").to_numpy()
    batches = pd.Categorical(adata.obs[batch_key].astype(str)).codes
    conn = adata.obsp["schelix_connectivities"]
    sk = sketch_mask(adata)  # large data: cluster the sketch, place every other cell by vote
    rows = np.flatnonzero(sk) if sk is not None else slice(None)
    x = (adata.X[rows] if sk is not None else adata.X)[:, variant]
    if sk is not None:
        conn, batches = conn[rows][:, rows], batches[rows]
    labels, gammas, n_gated = {}, {}, {}
    for name, res in (("low", low_res), ("high", high_res)):
        lab = leiden_labels(conn, resolution=res, seed=seed)
        codes = lab.codes.astype(np.int64)
        gammas[name], ok = cluster_gamma(
            x, codes, batches, min_cells=min_cells, weights=tuple(weights)
        )
        if sk is not None:
            codes = np.full(adata.n_obs, -1, dtype=np.int64)
            codes[rows] = lab.codes
            near = adata.obsm["schelix_sketch_neighbors"][~sk]
            codes[~sk] = vote(codes[near])
            lab = pd.Categorical.from_codes(codes, lab.categories)
        adata.obs[f"schelix_gate_{name}"] = pd.Series(lab, index=adata.obs_names)
        labels[name] = codes
        n_gated[name] = int(ok.sum())
    gate = VariantGate(
        variant_genes=adata.var_names[variant].to_numpy(dtype=str),
        gamma_low=gammas["low"],
        gamma_high=gammas["high"],
        low_labels=labels["low"],
        high_labels=labels["high"],
        w_low=float(w_low),
        w_high=float(w_high),
    )
    _uns(adata)["gate"] = {
        "low_res": float(low_res),
        "high_res": float(high_res),
        "min_cells": int(min_cells),
        "min_batch_cells": MIN_BATCH_CELLS,
        "weights": [float(w) for w in weights],
        "w_low": float(w_low),
        "w_high": float(w_high),
        "seed": int(seed),
        "batch_key": batch_key,
        "n_low_clusters": len(gammas["low"]),
        "n_high_clusters": len(gammas["high"]),
        "n_low_gated": n_gated["low"],
        "n_high_gated": n_gated["high"],
        "variant_genes": [str(g) for g in gate.variant_genes],
        "gamma_low": gammas["low"],
        "gamma_high": gammas["high"],
    }
    return gate
