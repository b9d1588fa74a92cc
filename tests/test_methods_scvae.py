"""scVAE (schelix.methods.scvae): connection updates, scScore, and that it integrates."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import torch

from schelix.datasets import synthetic
from schelix.errors import SchelixError
from schelix.methods import get_method
from schelix.methods.scvae import _update_connections, fit_scvae, scscore

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def adata():
    adata = synthetic(600, 300, seed=0)  # counts in X and layers["counts"]
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.var["highly_variable"] = True  # scVAE ignores it: it uses every gene
    return adata


def test_registered_needs_counts_and_gpu_flag():
    spec = get_method("scvae")
    assert spec.label == "scVAE (sparse)" and spec.uses_gpu and spec.needs_counts


def test_connection_update_keeps_total_and_limits():
    gen = torch.Generator().manual_seed(0)
    G, H, n_min, n_max = 200, 20, 2, 10
    mask = torch.rand(G, H, generator=gen).argsort(1) < 4  # 4 connections per gene
    w = torch.randn(G, H, generator=gen)
    mse = torch.arange(G, dtype=torch.float32)  # gene 0 best reconstructed, gene 199 worst
    before = mask.clone()
    for _ in range(30):
        _update_connections(
            mask,
            w,
            mse,
            n_min=n_min,
            n_max=n_max,
            n_al=12,
            n_pl=16,
            n_pw=4,
            q_w=0.001,
            v_w=1e-5,
            gen=gen,
        )
    n = mask.sum(1)
    assert int(mask.sum()) == int(before.sum())  # random adjustment refills what was removed
    assert int(n.min()) >= n_min and int(n.max()) <= n_max
    assert n[:16].float().mean() < 4 < n[-12:].float().mean()  # loss-based adjustment
    assert not torch.equal(mask, before)


def test_scscore_at_initialisation_is_the_paper_value(adata):
    # no training: every gene keeps n_init connections -> (0.2 - 0.05) / (0.5 - 0.05)
    ad = adata.copy()
    s = scscore(ad, batch_key="batch", epochs=0, n_hidden=40, device="cpu")
    assert s.index.equals(ad.var_names) and np.allclose(s, 6 / 18)
    assert np.allclose(ad.var["scvae_scscore"], 6 / 18)
    assert ad.uns["schelix"]["scscore"]["n_repeats"] == 1


def test_missing_counts_is_a_clear_error(adata):
    ad = adata.copy()
    del ad.layers["counts"]
    with pytest.raises(SchelixError, match="counts"):
        fit_scvae(ad, batch_key="batch", epochs=1)


def test_scvae_mixes_batches_better_than_pca_and_scores_markers(adata):
    import scib_metrics

    progress = []
    res = fit_scvae(
        adata,
        batch_key="batch",
        seed=0,
        device="cpu",
        epochs=60,
        batch_size=64,
        n_hidden=128,
        progress=lambda f, m: progress.append(f),
    )
    emb = res.embedding
    assert emb.shape == (adata.n_obs, 10) and np.isfinite(emb).all()
    assert len(progress) == 60 and progress[-1] == pytest.approx(1.0)

    labels, batch = adata.obs["cell_type"].to_numpy(), adata.obs["batch"].to_numpy()
    hvg = adata.copy()
    sc.pp.pca(hvg, n_comps=10, random_state=0)
    asw_b_pca = float(scib_metrics.silhouette_batch(hvg.obsm["X_pca"], labels, batch))
    asw_b = float(scib_metrics.silhouette_batch(emb, labels, batch))
    asw_l = float(scib_metrics.silhouette_label(emb, labels))
    assert asw_b > asw_b_pca + 0.05, (asw_b, asw_b_pca)
    assert asw_l > 0.6, asw_l
    # the connections kept per gene favour the cell-type markers (paper §3.2)
    s = res.scscore
    assert (
        s[adata.var["is_marker"].to_numpy()].mean() > s[~adata.var["is_marker"].to_numpy()].mean()
    )
    assert s.between(0, 1).all()
