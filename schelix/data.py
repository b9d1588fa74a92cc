"""The data step of scHelix: from a split AnnData to the inputs a run reads.

Kept apart from the network (:mod:`schelix.module`) and the user class (:mod:`schelix.model`),
as in scvi-tools. :func:`prepare` keeps the anchor and variant genes sparse and hands them out
as :class:`~schelix.rows.ScaledRows`, which scale the rows a mini-batch asks for and apply the
fitted variant gate to variant rows (anchors are never gated); it encodes batches and labels
and, for training, builds the kNN MixUp neighbours and the cross-batch MNN partners
(:mod:`schelix.neighbors`). :func:`fit_gate` fits the gate once, before the first training
step; the model stores it with its weights.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from schelix.config import SCHelixConfig
from schelix.errors import SchelixError, SchelixWarning
from schelix.gate import VariantGate
from schelix.obs import label_mask
from schelix.rows import ScaledRows, column_moments
from schelix.train import TrainData

__all__ = ["MIN_ANCHOR_OVERLAP", "aligned", "fit_gate", "label_classes", "prepare", "stream_genes"]


def stream_genes(adata: ad.AnnData) -> tuple[list[str], list[str]]:
    """``(variants, anchors)``: gene names of each stream, in ``adata.var`` order."""
    stream = adata.var["schelix_stream"].astype(str)
    return list(adata.var_names[stream == "variant"]), list(adata.var_names[stream == "anchor"])


def label_classes(adata: ad.AnnData, label_key: str) -> list[str]:
    """The sorted label classes of ``obs[label_key]``, without missing labels."""
    values = adata.obs[label_key].astype(str)
    return sorted({str(v) for v in values[label_mask(values)]})


def fit_gate(adata: ad.AnnData, config: SCHelixConfig, *, seed: int = 0) -> VariantGate | None:
    """Fit the variant gate with ``config``'s settings (``None`` when the gate is off).

    Needs the anchor-discovery kNN graph of :func:`schelix.anchors.score_genes`. The gate
    remembers which cells it was fitted on, so it can be applied to them again later, on a
    freshly read copy of the data, without refitting.
    """
    if not config.gate or config.gate_strength <= 0:
        return None
    from schelix import gate

    g = gate.fit_gate(
        adata,
        low_res=config.gate_low_res,
        high_res=config.gate_high_res,
        min_cells=config.gate_min_cells,
        seed=seed,
    )
    anchors = (adata.var["schelix_stream"].astype(str) == "anchor").to_numpy()
    g = g.centroids(adata.X[:, anchors], adata.var_names[anchors].to_numpy(dtype=str))
    return dataclasses.replace(g, cells=adata.obs_names.to_numpy(dtype=str))


#: Mapping refuses a query that holds fewer than this fraction of the model's anchor genes.
MIN_ANCHOR_OVERLAP = 0.5


def _dense(adata: ad.AnnData, genes: list[str]) -> np.ndarray:
    x = adata[:, genes].X
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def aligned(
    adata: ad.AnnData, genes: list[str], fill: np.ndarray, *, anchors: list[str] | None = None
) -> np.ndarray:
    """``adata``'s dense expression of ``genes`` matched by name; a missing gene gets ``fill``.

    ``fill`` is the model's mean of each gene, so a gene the data lacks reads as average (0
    after scaling), never as "not expressed". A :class:`~schelix.errors.SchelixWarning` gives
    the fraction filled; fewer than :data:`MIN_ANCHOR_OVERLAP` of the ``anchors`` present is
    refused.
    """
    idx = pd.Index(adata.var_names).get_indexer(genes)
    missing = idx < 0
    if not missing.any():
        return _dense(adata, genes)
    pos = {g: i for i, g in enumerate(genes)}
    if anchors:
        have = sum(1 for g in anchors if idx[pos[g]] >= 0)
        if have < MIN_ANCHOR_OVERLAP * len(anchors):
            raise SchelixError(
                f"The data holds only {have} of the model's {len(anchors)} anchor genes (below "
                f"{MIN_ANCHOR_OVERLAP:.0%}), too few to place its cells",
                "check that the gene names are of the same kind (symbols vs Ensembl IDs) and "
                "species as the data the model was trained on",
            )
    warnings.warn(
        f"{int(missing.sum())} of the model's {len(genes)} genes "
        f"({missing.mean():.1%}) are missing from the data; they were set to the reference "
        "mean (scaled value 0)",
        SchelixWarning,
        stacklevel=3,
    )
    x = np.broadcast_to(np.asarray(fill, np.float32), (adata.n_obs, len(genes))).copy()
    x[:, ~missing] = _dense(adata, [genes[i] for i in np.flatnonzero(~missing)])
    return x


def _gate_rows(
    gate: VariantGate, adata: ad.AnnData, meta: dict[str, Any], variants: list[str], strength: float
):
    """``rows -> 1 - strength * gamma`` of those cells (columns in ``variants`` order).

    The gate's own cells keep their clusters (found again by name when the rows are in another
    order); cells new to it are placed by :meth:`~schelix.gate.VariantGate.assign`.
    """
    order = pd.Index(gate.variant_genes).get_indexer(variants)
    if len(order) != len(gate.variant_genes) or (order < 0).any():
        raise SchelixError(
            "The variant gate was fitted on other variant genes than the model's",
            "fit the gate and train on the same anchor/variant split",
        )
    same = bool((order == np.arange(len(order))).all())
    low, high = gate.low_labels, gate.high_labels
    names = adata.obs_names.to_numpy(dtype=str)
    if gate.cells is None and len(names) != gate.n_cells:
        raise SchelixError(
            f"The gate was fitted on {gate.n_cells} cells, the data holds {len(names)}",
            "fit the gate on these cells (or save and load the model to keep its cells)",
        )
    if gate.cells is not None and not (
        len(names) == len(gate.cells) and (names == gate.cells).all()
    ):
        idx = pd.Index(gate.cells).get_indexer(names)
        new = idx < 0
        low, high = low[np.maximum(idx, 0)], high[np.maximum(idx, 0)]
        if new.any():
            gate.require_centroids()
            genes = list(gate.anchor_genes)
            scale = pd.Index(meta["variants"] + meta["anchors"]).get_indexer(genes)
            mean = np.asarray(meta["mean"])[scale]
            with warnings.catch_warnings():  # the note on missing genes comes once, from prepare
                warnings.simplefilter("ignore", SchelixWarning)
                x = aligned(adata[new], genes, mean)
            low[new], high[new] = gate.assign(x, mean=mean, std=np.asarray(meta["std"])[scale])

    # one row of damping per (coarse, fine) cluster pair present: a gather per mini-batch
    pairs, pair_of_cell = np.unique(np.stack([low, high], axis=1), axis=0, return_inverse=True)
    gamma = gate.cluster_gamma(pairs[:, 0], pairs[:, 1])
    table = 1.0 - strength * (gamma if same else gamma[:, order])
    pair_of_cell = pair_of_cell.ravel()

    def damp(rows: np.ndarray) -> np.ndarray:
        return table[pair_of_cell[rows]]

    return damp


def _csr(adata: ad.AnnData, genes: list[str]) -> sp.csr_matrix:
    x = adata[:, genes].X
    return sp.csr_matrix(x, dtype=np.float32)


def _sources(adata: ad.AnnData, variants: list[str], anchors: list[str]) -> list[tuple]:
    """``[(matrix, columns), ...]`` of the variant and anchor streams: ``adata.X`` itself (no
    copy) for large data (above the sketch size) when it is float32 CSR and the pool is most of
    its columns, else a copy per stream. Reading through ``adata.X`` changes the embedding in
    the last float digits (``tests/test_pinned.py``), so data below the sketch size keep the
    copy and the results they always had."""
    from schelix import sketch

    x = adata.X
    large = x.shape[0] > sketch.SKETCH_CELLS
    if (
        large
        and sp.isspmatrix_csr(x)
        and x.dtype == np.float32
        and len(variants + anchors) >= x.shape[1] / 2
    ):
        index = pd.Index(adata.var_names)
        return [(x, index.get_indexer(variants)), (x, index.get_indexer(anchors))]
    return [(_csr(adata, variants), None), (_csr(adata, anchors), None)]


def prepare(
    adata: ad.AnnData,
    config: SCHelixConfig,
    *,
    batch_key: str,
    label_key: str | None = None,
    meta: dict[str, Any] | None = None,
    gate: VariantGate | None = None,
    training: bool = True,
    seed: int = 0,
) -> tuple[TrainData, dict[str, Any]]:
    """The inputs of one run and the ``meta`` they were made with.

    The expression stays sparse: the anchor and variant matrices are
    :class:`~schelix.rows.ScaledRows`, which scale (and gate) the rows each mini-batch or
    embedding chunk asks for, bit-identical to scaling the dense matrix. Only genes missing from
    ``adata`` (a query mapped onto a model) make a dense copy, with the missing genes filled.

    Parameters
    ----------
    adata
        Log-normalized AnnData with ``var["schelix_stream"]``.
    config
        The model's settings (gate strength, MixUp, MNN term).
    batch_key, label_key
        ``obs`` columns of batches and (optional) labels; labels are used only with
        ``config.semi_supervised``.
    meta
        Genes, scaling, batch and label categories of a fitted model; ``None`` fits them here
        (the first training run).
    gate
        The fitted :class:`~schelix.gate.VariantGate`, or ``None`` for no gate.
    training
        Also build the MixUp neighbours and the MNN partners (:mod:`schelix.neighbors`;
        embedding needs neither).
    seed
        Random state of the MNN partners' PCA and of the approximate neighbour index.
    """
    from schelix import neighbors as nbrs
    from schelix.sketch import sketch_mask

    fitted = meta is not None
    variants, anchors = (meta["variants"], meta["anchors"]) if fitted else stream_genes(adata)
    present = (pd.Index(adata.var_names).get_indexer(variants + anchors) >= 0).all()
    nv = len(variants)
    if present:  # the streams' sparse rows (adata.X itself when it is mostly the pool)
        sources = _sources(adata, variants, anchors)
    if not fitted:  # per column, so per stream: the same floats as over the pool at once
        mean, std = (np.concatenate(m) for m in zip(*(column_moments(*s) for s in sources)))
        batches = [str(b) for b in adata.obs[batch_key].astype("category").cat.categories]
        labels = label_classes(adata, label_key) if label_key and config.semi_supervised else []
        meta = {"variants": variants, "anchors": anchors, "mean": mean,
                "std": std + 1e-6, "batches": batches, "labels": labels}  # fmt: skip
    mean, std = np.asarray(meta["mean"], np.float32), np.asarray(meta["std"], np.float32)
    damp = None
    if gate is not None:
        damp = _gate_rows(gate, adata, meta, variants, config.gate_strength)
    if present:
        (xv, cv), (xa, ca) = sources
        x_var = ScaledRows(xv, mean[:nv], std[:nv], damp, cols=cv)
        x_anc = ScaledRows(xa, mean[nv:], std[nv:], cols=ca)
    else:  # a query lacking some genes: the (small) dense copy with the reference means
        x = aligned(adata, variants + anchors, meta["mean"], anchors=anchors)
        x = np.clip((x - mean) / std, -10, 10)
        xv = x[:, :nv] if damp is None else x[:, :nv] * damp(np.arange(adata.n_obs))
        x_var = torch.as_tensor(np.ascontiguousarray(xv, dtype=np.float32))
        x_anc = torch.as_tensor(np.ascontiguousarray(x[:, nv:]))
    batch = pd.Categorical(adata.obs[batch_key].astype(str), categories=meta["batches"]).codes
    labels = None
    if meta["labels"]:
        codes = pd.Categorical(adata.obs[label_key].astype(str), categories=meta["labels"]).codes
        labels = torch.as_tensor(codes, dtype=torch.long)  # missing labels -> -1
    neighbors = partners = None
    sketch = sketch_mask(adata)
    if training and config.mixup:
        pca = adata.obsm.get("X_schelix_pca")
        if pca is None:  # not scored here (a model loaded on new data): PCA of the scaled genes
            from sklearn.decomposition import PCA

            x = ScaledRows(_csr(adata, variants + anchors), mean, std)[:].numpy()
            pca = PCA(nbrs.MIXUP_DIMS, random_state=0).fit_transform(x)
        neighbors = nbrs.mixup(pca, config.mixup_k, sketch, batch, seed=seed)
    if training and config.uses_mnn_partners:
        near = adata.obsm["schelix_sketch_neighbors"] if sketch is not None else None
        partners = nbrs.mnn(x_anc, batch, k=config.mnn_k, seed=seed, sketch=sketch, near=near)
    triplets = None
    if training and config.w_triplet > 0:
        from schelix.triplets import triplet_clusters

        triplets = torch.as_tensor(
            triplet_clusters(
                adata, x_anc, batch.astype(np.int64), seed=seed,
                coarse_resolution=config.triplet_coarse_resolution,
                fine_resolution=config.triplet_fine_resolution,
            )
        )  # fmt: skip
    data = TrainData(x_var, x_anc, torch.as_tensor(batch.astype(np.int64)), labels, neighbors,
                     partners, triplets)  # fmt: skip
    return data, meta
