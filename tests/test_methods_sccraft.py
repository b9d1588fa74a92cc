"""scCRAFT (schelix.methods.sccraft): clusters, triplets, and that it integrates."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scanpy as sc
import torch

from schelix.datasets import synthetic
from schelix.errors import SchelixWarning
from schelix.methods import get_method, run_method
from schelix.methods.sccraft import dual_resolution_clusters, sccraft

torch.set_num_threads(1)
SMALL = {"hidden": (128, 64), "n_latent": 16, "batch_size": 300}


def _preprocessed(n_cells: int = 600, n_genes: int = 300, seed: int = 0):
    adata = synthetic(n_cells, n_genes, seed=seed)  # counts in X and layers["counts"]
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(
        adata, n_top_genes=200, flavor="seurat_v3", layer="counts", batch_key="batch"
    )
    return adata


@pytest.fixture(scope="module")
def adata():
    return _preprocessed()


def test_registered_with_label_and_gpu_flag():
    spec = get_method("sccraft")
    assert spec.label == "scCRAFT" and spec.uses_gpu and not spec.needs_counts


def test_dual_resolution_clusters_nest_within_batches(adata):
    cl = dual_resolution_clusters(adata, batch_key="batch", seed=0)
    batch = adata.obs["batch"].to_numpy()
    for col in ("low", "high"):  # a cluster never spans two batches
        per_cluster = cl.groupby(cl[col].to_numpy())[col].size().index
        for c in per_cluster:
            assert len(set(batch[cl[col].to_numpy() == c])) == 1
    # every high-resolution cluster lies inside one low-resolution cluster
    assert (cl.groupby("high")["low"].nunique() == 1).all()
    assert cl["high"].nunique() > cl["low"].nunique() >= adata.obs["batch"].nunique()


def _asw(adata, emb):
    import scib_metrics

    labels = adata.obs["cell_type"].to_numpy()
    batch = adata.obs["batch"].to_numpy()
    return (
        float(scib_metrics.silhouette_batch(emb, labels, batch)),
        float(scib_metrics.silhouette_label(emb, labels)),
    )


def test_sccraft_mixes_batches_better_than_pca_and_keeps_labels(adata):
    progress = []
    ad = adata.copy()
    res = run_method(
        ad,
        "sccraft",
        batch_key="batch",
        seed=0,
        device="cpu",
        progress=lambda f, m: progress.append((f, m)),
        epochs=12,
        warmup_epochs=4,
        **SMALL,
    )
    emb = ad.obsm["X_sccraft"]
    assert emb.shape == (ad.n_obs, 16) and np.isfinite(emb).all()
    assert res.seconds > 0 and ad.uns["schelix"]["methods"]["sccraft"]["obsm_key"] == "X_sccraft"
    assert len(progress) == 12 and progress[-1][0] == pytest.approx(1.0)
    assert "warm-up" in progress[0][1] and "adversarial" in progress[-1][1]

    hvg = adata[:, adata.var["highly_variable"]].copy()
    sc.pp.pca(hvg, n_comps=16, random_state=0)
    asw_b_pca, asw_l_pca = _asw(adata, hvg.obsm["X_pca"])
    asw_b, asw_l = _asw(adata, emb)
    assert asw_b > asw_b_pca + 0.1, (asw_b, asw_b_pca)  # batches mixed
    assert asw_l > 0.6 and asw_l > asw_l_pca - 0.1, (asw_l, asw_l_pca)  # labels kept apart


def test_seed_is_reproducible_and_missing_hvgs_warn(adata):
    ad = adata.copy()
    del ad.var["highly_variable"]
    opts = {"batch_key": "batch", "device": "cpu", "epochs": 1, "warmup_epochs": 0, **SMALL}
    with pytest.warns(SchelixWarning, match="highly_variable"):
        a = sccraft(ad, seed=3, **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SchelixWarning)
        b = sccraft(ad, seed=3, **opts)
    np.testing.assert_array_equal(a, b)
    assert "highly_variable" not in ad.var  # the input is not modified
