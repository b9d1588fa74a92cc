"""Tests for schelix.preprocess: QC, normalization, HVG pool, the full pipeline (synthetic + demo)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

import schelix.preprocess as pp
from schelix.datasets import DEMO_BATCH_KEY, demo, synthetic
from schelix.errors import SchelixError, SchelixWarning


@pytest.fixture(scope="module")
def base() -> ad.AnnData:
    """Synthetic counts with some low-quality cells (few genes / high mito) and rare genes."""
    a = synthetic(500, 600, n_batches=2, n_cell_types=3, seed=3)
    x = a.X.toarray()
    x[:20, 50:] = 0  # 20 cells with < 200 detected genes
    x[20:35, :5] = 300  # 15 cells with high MT- counts
    x[:, 590:] = 0
    x[:3, 590:] = 1  # 10 genes detected only in 3 cells that fail QC
    a.var_names = [*a.var_names[:4], "mt-Co1", *a.var_names[5:]]  # mouse prefix too
    a.X = sp.csr_matrix(x)
    a.layers["counts"] = a.X.copy()
    return a


def _dense(m) -> np.ndarray:
    return m.toarray() if sp.issparse(m) else np.asarray(m)


def test_qc_metrics_human_and_mouse_mito(base):
    a = base.copy()
    pp.qc_metrics(a)
    assert {"n_genes_by_counts", "total_counts", "pct_counts_mt"} <= set(a.obs.columns)
    assert a.var["mt"].sum() == 5 and a.var.loc["mt-Co1", "mt"]
    x = _dense(a.layers["counts"])
    np.testing.assert_allclose(a.obs["pct_counts_mt"], 100 * x[:, :5].sum(1) / x.sum(1), rtol=1e-5)


def test_qc_masks_match_scanpy_filters(base):
    a = base.copy()
    cells, genes = pp.qc_masks(a, min_genes=200, min_cells=3, max_mito_pct=5.0)
    assert cells.dtype == bool and cells.shape == (a.n_obs,) and genes.shape == (a.n_vars,)
    assert not cells[:35].any() and cells[35:].all()
    # independent reference: scanpy's own filters in the usual order
    ref = a[a.obs["pct_counts_mt"].to_numpy() <= 5.0].copy()
    sc.pp.filter_cells(ref, min_genes=200)
    sc.pp.filter_genes(ref, min_cells=3)
    assert list(a.obs_names[cells]) == list(ref.obs_names)
    assert list(a.var_names[genes]) == list(ref.var_names)


def test_qc_masks_reuse_obs_columns(base):
    a = base.copy()
    pp.qc_metrics(a)
    a.obs["n_genes_by_counts"] = 0  # masks must come from these columns, not a recount
    cells, _ = pp.qc_masks(a)
    assert not cells.any()
    cells, _ = pp.qc_masks(a, min_genes=0, max_mito_pct=100.0)
    assert cells.all()


def test_filter_qc_records_what_was_kept(base):
    out = pp.filter_qc(base.copy(), batch_key="batch")
    rec = out.uns["schelix"]["preprocess"]
    assert (rec["cells_before"], rec["cells_kept"]) == (500, out.n_obs) and out.n_obs == 465
    assert (rec["genes_before"], rec["genes_kept"]) == (600, out.n_vars) and out.n_vars == 590
    per = rec["cells_per_batch"]
    assert sum(per["kept"]) == out.n_obs and sum(per["before"]) == 500
    assert rec["removed_batches"] == [] and rec["mito_genes"] == 5


def test_filter_qc_too_few_cells_or_genes(base):
    with pytest.raises(SchelixError, match=r"only \d+ of 500 cells") as err:
        pp.filter_qc(base.copy(), min_genes=590)
    assert "loosen the thresholds" in str(err.value)
    with pytest.raises(SchelixError, match=r"of 150 genes"):
        pp.filter_qc(base[:, 450:].copy(), min_genes=10)


def test_qc_emptying_a_batch_warns_with_its_name(base):
    a = base.copy()
    x = _dense(a.layers["counts"])
    x[(a.obs["batch"] == "batch1").to_numpy(), :5] = 500  # all of batch1 fails the mito filter
    a.X = sp.csr_matrix(x)
    a.layers["counts"] = a.X.copy()
    with pytest.warns(SchelixWarning, match="every cell of batch.*'batch1'"):
        out = pp.filter_qc(a, batch_key="batch")
    assert out.uns["schelix"]["preprocess"]["removed_batches"] == ["batch1"]
    assert list(out.obs["batch"].cat.categories) == ["batch0"]
    with pytest.warns(SchelixWarning), pytest.raises(SchelixError, match="only batch 'batch0'"):
        pp.preprocess(a, batch_key="batch")


def test_normalize_log1p_from_counts(base):
    a = base.copy()
    pp.normalize(a, target_sum=1e4)
    assert sp.isspmatrix_csr(a.X) and a.X.dtype == np.float32
    np.testing.assert_allclose(np.expm1(_dense(a.X)).sum(1), 1e4, rtol=1e-3)
    np.testing.assert_array_equal(_dense(a.layers["counts"]), _dense(base.layers["counts"]))


@pytest.mark.parametrize(("n_top", "expected"), [(100, 100), (2000, 600)])
def test_highly_variable_batch_aware_and_capped(base, n_top, expected):
    a = base.copy()
    pp.normalize(a)
    pp.highly_variable(a, batch_key="batch", n_top_genes=n_top)
    assert a.var["highly_variable"].sum() == expected
    assert "highly_variable_nbatches" in a.var  # computed per batch
    assert a.uns["schelix"]["preprocess"]["hvg_flavor"] == "seurat_v3"


def test_preprocess_pipeline_and_serialisable(base, tmp_path):
    before = base.copy()
    out = pp.preprocess(base, batch_key="batch", n_top_genes=150)
    np.testing.assert_array_equal(_dense(base.X), _dense(before.X))  # input untouched
    assert out.shape == (465, 590) and out.var["highly_variable"].sum() == 150
    np.testing.assert_array_equal(
        _dense(out.layers["counts"]), _dense(base[out.obs_names, out.var_names].layers["counts"])
    )
    rec = out.uns["schelix"]["preprocess"]
    assert rec["batch_key"] == "batch" and rec["normalized"] and rec["counts_found"]
    out.write_h5ad(tmp_path / "pp.h5ad")  # every recorded value is h5ad-serialisable
    back = ad.read_h5ad(tmp_path / "pp.h5ad")
    assert (
        list(back.uns["schelix"]["preprocess"]["cells_per_batch"]["kept"])
        == rec["cells_per_batch"]["kept"]
    )


def test_preprocess_on_lognormalized_only(base):
    a = base.copy()
    del a.layers["counts"]
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    out = pp.preprocess(a, batch_key="batch", n_top_genes=100, max_mito_pct=100.0)
    rec = out.uns["schelix"]["preprocess"]
    assert "counts" not in out.layers and rec["counts_found"] is False
    assert rec["normalized"] is False and rec["hvg_flavor"] == "seurat"
    assert out.var["highly_variable"].sum() == 100


def test_tiny_batch_rejected_by_highly_variable(base):
    a = base.copy()
    a.obs["batch"] = a.obs["batch"].cat.add_categories("tiny")
    a.obs.iloc[:3, a.obs.columns.get_loc("batch")] = "tiny"
    pp.normalize(a)
    with pytest.raises(SchelixError, match=r"'tiny' \(3 cells\)"):
        pp.highly_variable(a, batch_key="batch")


def test_preprocess_demo():
    a = demo()
    counts = a.X.copy()
    with pytest.warns(SchelixWarning) as rec:  # paper default (5 % mito) all but empties V3
        out = pp.preprocess(a, batch_key=DEMO_BATCH_KEY)
    assert any("'V3'" in str(w.message) for w in rec)
    assert out.var["highly_variable"].sum() == min(2000, out.n_vars)
    assert "V3" in out.uns["schelix"]["preprocess"]["removed_batches"]
    # looser mito threshold keeps all three chemistries and the counts view
    out = pp.preprocess(a, batch_key=DEMO_BATCH_KEY, max_mito_pct=20.0)
    assert out.obs[DEMO_BATCH_KEY].nunique() == 3
    assert out.var["highly_variable"].sum() == min(2000, out.n_vars)
    assert out.uns["schelix"]["preprocess"]["hvg_flavor"] == "seurat_v3"
    assert sp.isspmatrix_csr(out.X) and out.X.dtype == np.float32
    np.testing.assert_allclose(np.expm1(out.X[:50].toarray()).sum(1), 1e4, rtol=1e-3)
    rows = a.obs_names.get_indexer(out.obs_names)
    cols = a.var_names.get_indexer(out.var_names)
    np.testing.assert_array_equal(out.layers["counts"].toarray(), counts[rows][:, cols].toarray())
