"""Variant-only layered gate (SPEC §3): cluster statistics, gamma, apply."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from schelix import anchors, gate
from schelix.datasets import synthetic
from schelix.errors import SchelixError


@pytest.fixture(scope="module")
def fitted():
    # a mild batch effect, so that clusters of the uncorrected graph mix batches (with the
    # default strength every type x batch pair is its own island and nothing is gated)
    adata = synthetic(n_cells=1000, n_genes=500, batch_strength=0.4, seed=1)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.var["highly_variable"] = True
    anchors.score_genes(adata, batch_key="batch", n_pcs=30)
    anchors.split_anchors(adata)
    return adata, gate.fit_gate(adata, seed=0)


def _naive_gamma(x, clusters, batches, min_cells, weights):
    """Loop reference of App. F.1 (per cluster, per gene)."""
    n_c, n_g = clusters.max() + 1, x.shape[1]
    sd_all = x.std(axis=0)
    s = np.zeros((n_c, n_g))
    for c in range(n_c):
        in_c = clusters == c
        bs = [
            b
            for b in np.unique(batches[in_c])
            if (in_c & (batches == b)).sum() >= gate.MIN_BATCH_CELLS
        ]
        if in_c.sum() < min_cells or len(bs) < 2:
            continue
        for g in range(n_g):
            vals = [x[in_c & (batches == b), g] for b in bs]
            d_mu = np.std([v.mean() for v in vals])
            d_sd = np.std([v.std() for v in vals])
            d_var = np.std([v.var() for v in vals])
            s[c, g] = max(
                (weights[0] * d_mu + weights[1] * d_sd + weights[2] * d_var) / (sd_all[g] + 1e-8),
                0.0,
            )
    return s / (s.max(axis=1, keepdims=True) + 1e-8)


def test_cluster_gamma_matches_loop_reference():
    rng = np.random.default_rng(0)
    x = rng.gamma(1.0, 1.0, (400, 12)) * (rng.random((400, 12)) < 0.6)
    clusters = rng.integers(0, 6, 400)
    batches = rng.integers(0, 3, 400)
    batches[clusters == 0] = 1  # one batch only -> gamma 0
    clusters[:15] = 5  # cluster 5 grows; cluster 4 shrinks below min_cells
    clusters[(clusters == 4)] = np.where(rng.random((clusters == 4).sum()) < 0.8, 3, 4)
    weights = (0.5, 0.3, 0.2)
    got, gated = gate.cluster_gamma(
        sp.csr_matrix(x), clusters, batches, min_cells=20, weights=weights
    )
    want = _naive_gamma(x, clusters, batches, 20, weights)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert not gated[0] and (got[0] == 0).all()
    assert not gated[4] and (got[4] == 0).all()
    assert gated[[1, 2, 3, 5]].all()
    np.testing.assert_allclose(got[gated].max(axis=1), 1.0, atol=1e-5)


def test_gate_values_and_slots(fitted):
    adata, g = fitted
    variant = (adata.var["schelix_stream"] == "variant").to_numpy()
    assert list(g.variant_genes) == list(adata.var_names[variant])
    gam = g.gamma()
    assert gam.shape == (adata.n_obs, variant.sum()) and gam.dtype == np.float32
    assert gam.min() >= 0.0 and gam.max() <= 1.0 and gam.max() > 0.0
    assert g.gamma_low.shape[0] == adata.obs["schelix_gate_low"].nunique()
    assert g.gamma_high.shape[0] == adata.obs["schelix_gate_high"].nunique()
    assert g.gamma_high.shape[0] > g.gamma_low.shape[0]  # finer clustering at resolution 2.0
    rec = adata.uns["schelix"]["gate"]
    assert rec["low_res"] == 0.5 and rec["high_res"] == 2.0 and rec["min_cells"] == 20
    assert rec["batch_key"] == "batch" and rec["n_low_gated"] >= 1


def test_gate_zero_where_cluster_has_one_batch(fitted):
    adata, _ = fitted
    adata = adata.copy()
    one_type = (adata.obs["cell_type"] == "type0").to_numpy()
    adata.obs["batch_mod"] = adata.obs["batch"].astype(str).where(~one_type, "batch0")
    g = gate.fit_gate(adata, batch_key="batch_mod")
    batch = adata.obs["batch_mod"].to_numpy()
    n_single = 0
    for name, gam in (("low", g.gamma_low), ("high", g.gamma_high)):
        labels = adata.obs[f"schelix_gate_{name}"]
        for code, c in enumerate(labels.cat.categories):
            in_c = (labels == c).to_numpy()
            counts = np.unique(batch[in_c], return_counts=True)[1]
            if (counts >= gate.MIN_BATCH_CELLS).sum() < 2 or in_c.sum() < 20:
                assert (gam[code] == 0).all()
                n_single += 1
            else:
                assert gam[code].max() > 0.99
    assert n_single >= 1  # type0 now sits in batch0 only


def test_gate_larger_on_batch_affected_variants(fitted):
    adata, g = fitted
    affected = adata.var.loc[list(g.variant_genes), "is_batch_affected"].to_numpy()
    mean_gamma = g.gamma().mean(axis=0)
    assert affected.sum() >= 5 and (~affected).sum() >= 5
    assert mean_gamma[affected].mean() > 1.2 * mean_gamma[~affected].mean()


def test_apply(fitted):
    adata, g = fitted
    x_var = adata[:, list(g.variant_genes)].X
    dense = x_var.toarray().astype(np.float32)
    np.testing.assert_array_equal(g.apply(x_var, strength=0.0), dense)
    full = g.apply(x_var, strength=1.0)
    np.testing.assert_allclose(full, dense * (1 - g.gamma()), rtol=1e-6)
    assert (np.abs(g.apply(dense, strength=0.5)) <= np.abs(dense) + 1e-6).all()
    idx = np.arange(10, 60)
    np.testing.assert_allclose(
        g.apply(dense[idx], strength=0.5, idx=idx), g.apply(dense, strength=0.5)[idx], rtol=1e-6
    )
    with pytest.raises(SchelixError, match="shape"):  # the gate never sees anchors
        g.apply(adata[:, adata.var["schelix_stream"] != "unused"].X, strength=0.5)
    with pytest.raises(SchelixError, match="outside"):
        g.apply(dense, strength=1.5)


def test_h5ad_roundtrip(fitted, tmp_path):
    adata, g = fitted
    path = tmp_path / "gated.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    g2 = gate.VariantGate.from_adata(back)
    np.testing.assert_array_equal(g2.gamma(), g.gamma())
    assert (
        back.uns["schelix"]["anchor_split"]["n_anchor"]
        == adata.uns["schelix"]["anchor_split"]["n_anchor"]
    )
    assert back.uns["schelix"]["anchor_scores"]["batch_key"] == "batch"


def test_fit_gate_needs_previous_steps():
    adata = synthetic(n_cells=60, n_genes=40, seed=1)
    with pytest.raises(SchelixError, match="score_genes"):
        gate.fit_gate(adata)
    with pytest.raises(SchelixError, match="No fitted gate"):
        gate.VariantGate.from_adata(adata)
