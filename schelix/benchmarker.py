"""The standard scib-metrics ``Benchmarker`` table beside the paper's scores.

It reads the same evaluation space as :mod:`schelix.evaluate` (64-dim PCA cap, exact kNN,
unlabelled cells dropped), so the two tables score the same thing.
"""

from __future__ import annotations

from dataclasses import fields

import anndata as ad
import pandas as pd

from schelix.evaluate import _embedding, _knn, _obs, eval_space
from schelix.obs import label_mask
from schelix.pca import scaled_hvg_pca

__all__ = ["scib_benchmark"]


def _metric_config(cls: type, **flags: bool):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in flags.items() if k in names})


def scib_benchmark(
    adata: ad.AnnData,
    keys: list[str],
    *,
    batch_key: str,
    label_key: str,
    fast: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """The scib-metrics ``Benchmarker`` table, tidy: ``embedding, metric, metric_type, value``.

    Embeddings are capped at 64 dims as in :func:`score`; unlabelled cells are dropped; the
    pre-integration reference for PCR is the scaled-HVG PCA; neighbours are exact. ``fast=True``
    switches off kBET, BRAS and the Leiden NMI/ARI sweep (k-means NMI/ARI stay on).
    Aggregate rows (``Batch correction``, ``Bio conservation``, ``Total``) have metric_type
    ``Aggregate score``.
    """
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    batch, labels = _obs(adata, batch_key, "Batch"), _obs(adata, label_key, "Label")
    mask = label_mask(labels)
    obs = pd.DataFrame({"_batch": batch[mask], "_label": labels[mask]}, index=adata.obs_names[mask])
    pre = scaled_hvg_pca(adata, n_comps=50, seed=seed)[mask]
    tmp = ad.AnnData(X=pre, obs=obs)
    tmp.obsm["_unintegrated"] = pre
    for key in keys:
        tmp.obsm[key] = eval_space(_embedding(adata, key), seed=seed)[mask]
    bio = _metric_config(
        BioConservation,
        isolated_labels=True,
        nmi_ari_cluster_labels_leiden=not fast,
        nmi_ari_cluster_labels_kmeans=True,
        silhouette_label=True,
        clisi_knn=True,
    )
    bat = _metric_config(
        BatchCorrection,
        bras=not fast,
        silhouette_batch=True,
        ilisi_knn=True,
        kbet_per_label=not fast,
        graph_connectivity=True,
        pcr_comparison=True,
    )
    bm = Benchmarker(
        tmp,
        batch_key="_batch",
        label_key="_label",
        embedding_obsm_keys=list(keys),
        bio_conservation_metrics=bio,
        batch_correction_metrics=bat,
        pre_integrated_embedding_obsm_key="_unintegrated",
        n_jobs=1,
        progress_bar=False,
    )
    bm.prepare(neighbor_computer=_knn)
    bm.benchmark()
    res = bm.get_results(min_max_scale=False)
    types = res.loc["Metric Type"]
    res = res.drop(index="Metric Type")
    long = res.reset_index(names="embedding").melt(
        id_vars="embedding", var_name="metric", value_name="value"
    )
    long["metric_type"] = long["metric"].map(types)
    long["value"] = long["value"].astype(float)
    return long[["embedding", "metric", "metric_type", "value"]]
