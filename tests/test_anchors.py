"""Anchor discovery (SPEC §2): scores, quadrant rule, split, guard, gene profiles."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from schelix import anchors
from schelix.datasets import synthetic
from schelix.errors import SchelixError, SchelixWarning
from schelix.gene_profile import gene_profile


def _prep(adata, hvg: np.ndarray | None = None):
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    if hvg is not None:
        adata.var["highly_variable"] = hvg
    return adata


@pytest.fixture(scope="module")
def scored():
    adata = synthetic(seed=0)
    hvg = np.ones(adata.n_vars, dtype=bool)
    hvg[:5] = False  # the MT- genes are not in the HVG pool
    _prep(adata, hvg)
    adata.uns["schelix"] = {"preprocess": {"target_sum": 1e4}}
    anchors.score_genes(adata, batch_key="batch", seed=0)
    return adata


def test_score_slots(scored):
    v = scored.var
    hvg = v["highly_variable"].to_numpy()
    for col in ("schelix_s_dom", "schelix_z_dom", "schelix_s_str", "schelix_z_str"):
        assert v.loc[~hvg, col].isna().all()
        assert np.isfinite(v.loc[hvg, col]).all()
    for col in ("schelix_z_dom", "schelix_z_str"):
        assert abs(v.loc[hvg, col].mean()) < 1e-6
        assert v.loc[hvg, col].std(ddof=0) == pytest.approx(1.0, abs=1e-6)
    assert scored.obs["schelix_pseudo_cluster"].nunique() >= 2
    assert scored.obsm["X_schelix_pca"].shape == (scored.n_obs, 50)
    assert scored.obsp["schelix_connectivities"].shape == (scored.n_obs, scored.n_obs)
    assert "schelix_distances" in scored.obsp
    rec = scored.uns["schelix"]
    assert rec["preprocess"] == {"target_sum": 1e4}  # scanpy's neighbors must not wipe it
    assert rec["connectivities_key"] == "schelix_connectivities"
    assert rec["anchor_scores"]["batch_key"] == "batch"
    assert rec["anchor_scores"]["n_hvg"] == int(hvg.sum())


def test_scores_follow_ground_truth(scored):
    v = scored.var[scored.var["highly_variable"]]
    stable_marker = v["is_marker"] & ~v["is_batch_affected"]
    is_anchor = anchors.quadrant(v["schelix_z_dom"], v["schelix_z_str"])
    # anchors are enriched for batch-stable markers, far above chance
    assert stable_marker[is_anchor].mean() > 2 * stable_marker.mean()
    assert (
        v.loc[v["is_batch_affected"], "schelix_z_dom"].mean()
        > v.loc[~v["is_batch_affected"], "schelix_z_dom"].mean() + 1.0
    )
    assert (
        v.loc[v["is_marker"], "schelix_z_str"].mean()
        > v.loc[~v["is_marker"], "schelix_z_str"].mean()
    )


def test_quadrant_is_the_manual_rule(scored):
    zd, zs = scored.var["schelix_z_dom"].to_numpy(), scored.var["schelix_z_str"].to_numpy()
    mask = anchors.quadrant(zd, zs)
    assert mask.dtype == bool
    with np.errstate(invalid="ignore"):
        manual = np.array([d <= 0 and s >= 0 for d, s in zip(zd, zs)])
    np.testing.assert_array_equal(mask, manual)
    assert not mask[~scored.var["highly_variable"].to_numpy()].any()  # NaN scores never anchor
    np.testing.assert_array_equal(
        anchors.quadrant(zd, zs, tau_dom=0.5, tau_str=-0.3), (zd <= 0.5) & (zs >= -0.3)
    )


def test_thresholds_move_counts_monotonically(scored):
    zd, zs = scored.var["schelix_z_dom"].to_numpy(), scored.var["schelix_z_str"].to_numpy()
    grid = np.linspace(-2, 2, 21)
    by_dom = [anchors.quadrant(zd, zs, tau_dom=t).sum() for t in grid]
    by_str = [anchors.quadrant(zd, zs, tau_str=t).sum() for t in grid]
    assert np.all(np.diff(by_dom) >= 0) and by_dom[-1] > by_dom[0]
    assert np.all(np.diff(by_str) <= 0) and by_str[0] > by_str[-1]


def test_boundary_band_property(scored):
    """App. H.2: a gene flips only if a score lies within |delta| of its threshold."""
    zd, zs = scored.var["schelix_z_dom"].to_numpy(), scored.var["schelix_z_str"].to_numpy()
    rng = np.random.default_rng(1)
    n_flipped = 0
    for _ in range(300):
        td, ts = rng.uniform(-1.5, 1.5, 2)
        dd, ds = rng.normal(0, 0.4, 2)
        before = anchors.quadrant(zd, zs, tau_dom=td, tau_str=ts)
        after = anchors.quadrant(zd, zs, tau_dom=td + dd, tau_str=ts + ds)
        flipped = before ^ after
        band = (np.abs(zd - td) <= abs(dd)) | (np.abs(zs - ts) <= abs(ds))
        assert not (flipped & ~band).any()
        n_flipped += flipped.sum()
    assert n_flipped > 0  # the property was actually exercised


def test_split_writes_stream(scored):
    stream = anchors.split_anchors(scored)
    assert list(stream.cat.categories) == ["anchor", "variant", "unused"]
    hvg = scored.var["highly_variable"].to_numpy()
    assert (stream[~hvg] == "unused").all() and (stream[hvg] != "unused").all()
    expected = anchors.quadrant(scored.var["schelix_z_dom"], scored.var["schelix_z_str"])
    np.testing.assert_array_equal((stream == "anchor").to_numpy(), expected)
    rec = scored.uns["schelix"]["anchor_split"]
    assert rec["n_anchor"] == expected.sum() and rec["n_variant"] == hvg.sum() - expected.sum()
    assert rec["random"] is False and rec["tau_dom"] == 0.0


def test_random_split_same_size_and_seeded(scored):
    quad = (anchors.split_anchors(scored) == "anchor").to_numpy()
    a = (anchors.split_anchors(scored, random=True, seed=3) == "anchor").to_numpy()
    b = (anchors.split_anchors(scored, random=True, seed=3) == "anchor").to_numpy()
    c = (anchors.split_anchors(scored, random=True, seed=4) == "anchor").to_numpy()
    assert a.sum() == b.sum() == c.sum() == quad.sum()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != quad).any()
    assert not a[~scored.var["highly_variable"].to_numpy()].any()
    assert scored.uns["schelix"]["anchor_split"]["random"] is True
    anchors.split_anchors(scored)  # leave the quadrant split for the other tests


def test_guard_names_counts_and_suggests(scored):
    zd, zs = scored.var["schelix_z_dom"].to_numpy(), scored.var["schelix_z_str"].to_numpy()
    n_anchor = int(anchors.quadrant(zd, zs, tau_dom=-1.2, tau_str=2.0).sum())
    n_pool = int(scored.var["highly_variable"].sum())
    with pytest.raises(SchelixError) as err:
        anchors.split_anchors(scored, tau_dom=-1.2, tau_str=2.0)
    msg = str(err.value)
    assert f"{n_anchor} anchors" in msg and f"{n_pool - n_anchor} variants" in msg
    assert "tau_dom=" in msg and "tau_str=" in msg
    td, ts, na, nv = anchors.suggest_thresholds(zd, zs, tau_dom=-1.2, tau_str=2.0)
    assert na >= 20 and nv >= 20
    stream = anchors.split_anchors(scored, tau_dom=td, tau_str=ts)
    assert (stream == "anchor").sum() == na
    assert f"tau_dom={td:g}" in msg
    anchors.split_anchors(scored)


def test_user_errors(scored):
    with pytest.raises(SchelixError, match=r"not in adata\.obs"):
        anchors.score_genes(scored, batch_key="donor")
    one = scored[:50].copy()
    one.obs["one"] = "b0"
    with pytest.raises(SchelixError, match="only one batch"):
        anchors.score_genes(one, batch_key="one")
    bare = scored.copy()
    del bare.var["schelix_z_dom"]
    with pytest.raises(SchelixError, match="score_genes"):
        anchors.split_anchors(bare)


def test_missing_hvg_column_uses_all_genes():
    adata = _prep(synthetic(n_cells=300, n_genes=120, seed=2))
    with pytest.warns(SchelixWarning, match="highly_variable"):
        anchors.score_genes(adata, batch_key="batch", n_pcs=20)
    assert adata.var["schelix_z_dom"].notna().all()


def test_gene_profile(scored):
    gene = scored.var_names[10]
    prof = gene_profile(scored, gene, batch_key="batch")
    assert set(prof) == {"per_batch", "per_cluster", "cluster_by_batch", "scores"}
    x = scored[:, gene].X.toarray().ravel()
    b = scored.obs["batch"].to_numpy()
    pb = prof["per_batch"]
    for name in pb.index:
        assert pb.loc[name, "mean"] == pytest.approx(x[b == name].mean(), rel=1e-5)
        assert pb.loc[name, "frac_expressing"] == pytest.approx((x[b == name] > 0).mean())
    assert pb["n_cells"].sum() == scored.n_obs
    assert len(prof["per_cluster"]) == scored.obs["schelix_pseudo_cluster"].nunique()
    assert prof["scores"].loc[gene, "schelix_z_dom"] == scored.var.loc[gene, "schelix_z_dom"]
    assert isinstance(prof["cluster_by_batch"], pd.DataFrame)
    assert gene_profile(scored, gene.lower(), batch_key="batch")["scores"].index[0] == gene
    with pytest.raises(SchelixError, match="did you mean: Gene0010"):
        gene_profile(scored, "Gene0010x", batch_key="batch")


@pytest.mark.slow
def test_demo_split_has_both_sides():
    from schelix.datasets import DEMO_BATCH_KEY, DEMO_PATH, demo

    if not DEMO_PATH.exists():
        pytest.skip("bundled demo missing")
    adata = demo()
    sc.pp.filter_genes(adata, min_cells=3)
    adata.layers["counts"] = adata.X.copy()
    _prep(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(
            adata, n_top_genes=2000, flavor="seurat_v3", layer="counts", batch_key=DEMO_BATCH_KEY
        )
    anchors.score_genes(adata, batch_key=DEMO_BATCH_KEY)
    stream = anchors.split_anchors(adata)
    counts = stream.value_counts()
    assert counts["anchor"] >= 20 and counts["variant"] >= 20
    assert counts["anchor"] + counts["variant"] == 2000
