"""Tests for schelix.preprocess: QC, normalization, HVG pool, the full pipeline (synthetic + demo)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from conftest import shared_data

import schelix.preprocess as pp
from schelix import qc
from schelix.datasets import DEMO_BATCH_KEY, DEMO_LABEL_KEY, demo, synthetic
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
    cells, genes = pp.qc_masks(a, qc="fixed", min_genes=200, min_cells=3, max_mito_pct=5.0)
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
    cells, _ = pp.qc_masks(a, qc="fixed")
    assert not cells.any()
    cells, _ = pp.qc_masks(a, qc="fixed", min_genes=0, max_mito_pct=100.0)
    assert cells.all()


def test_filter_qc_records_what_was_kept(base):
    out = pp.filter_qc(base.copy(), batch_key="batch")
    rec = out.uns["schelix"]["preprocess"]
    assert (rec["cells_before"], rec["cells_kept"]) == (500, out.n_obs)
    assert 460 <= out.n_obs <= 465  # the 35 planted bad cells and at most a few true outliers
    assert (rec["genes_before"], rec["genes_kept"]) == (600, out.n_vars) and out.n_vars == 590
    per = rec["qc"]["per_batch"]
    assert sum(per["kept"]) == out.n_obs and sum(per["cells"]) == 500
    assert sum(per["low"]) >= 20 and sum(per["mito"]) == 15  # the planted bad cells, by reason
    assert rec["qc"]["qc"] == "adaptive" and rec["removed_batches"] == []
    assert rec["mito_genes"] == 5
    assert not out.obs_names.isin(base.obs_names[:35]).any()


def test_filter_qc_too_few_cells_or_genes(base):
    with pytest.raises(SchelixError, match=r"only \d+ of 500 cells") as err:
        pp.filter_qc(base.copy(), min_genes=50, min_cells=400)
    assert "min_cells" in str(err.value)
    with pytest.raises(SchelixError, match=r"of 150 genes"):
        pp.filter_qc(base[:, 450:].copy(), min_genes=10)


def test_qc_losing_most_of_a_batch_stops_with_its_name_reasons_and_fix(base):
    a = base.copy()
    x = _dense(a.layers["counts"])
    in_b1 = (a.obs["batch"] == "batch1").to_numpy()
    x[in_b1, :5] = 500  # batch1: every cell has ~45 % mitochondrial reads
    a.X = sp.csr_matrix(x)
    a.layers["counts"] = a.X.copy()
    with pytest.raises(SchelixError) as err:  # the paper's 5 % would drop the whole batch
        pp.filter_qc(a, batch_key="batch", qc="fixed")
    msg = str(err.value)
    assert "'batch1' keeps 0 of" in msg and f"{in_b1.sum()} above 5 % mitochondrial" in msg
    assert "--qc adaptive" in msg and "'batch0'" not in msg
    out = pp.filter_qc(a, batch_key="batch")  # adaptive: judged against its own median
    per = out.uns["schelix"]["preprocess"]["qc"]["per_batch"]
    i = per["batch"].index("batch1")
    assert per["kept"][i] >= 0.85 * per["cells"][i] and per["mito_cutoff"][i] > 40


def test_adaptive_qc_flags_outliers_within_each_batch():
    a = synthetic(600, 400, n_batches=2, n_cell_types=3, seed=4)
    x = _dense(a.X)
    b0 = np.flatnonzero((a.obs["batch"] == "batch0").to_numpy())
    x[b0] *= 4  # batch0 sequenced 4x deeper: no outlier by that alone
    x[b0[:6]] = np.round(x[b0[:6]] / 40)  # 6 near-empty droplets in the deep batch
    a.X = sp.csr_matrix(x)
    a.layers["counts"] = a.X.copy()
    flags, thr = qc.cell_flags(a, batch_key="batch")
    low = set(np.flatnonzero(flags["low"].to_numpy()))
    assert set(b0[:6]) <= low and len(low) <= 8  # the planted droplets (and a natural one)
    assert "high" not in flags and not flags["mito"].any()
    assert thr.loc["batch0", "counts_low"] > 2 * thr.loc["batch1", "counts_low"]
    assert (thr["mito_cutoff"] == qc.MITO_FLOOR_PCT).all()  # clean batches: the floor
    summary = pp.qc_summary(a, batch_key="batch")
    table = pp.summary_frame(summary)
    assert list(table.index) == ["batch0", "batch1"]
    assert table.loc["batch0", "kept"] == len(b0) - flags["keep"].iloc[b0].eq(False).sum()
    assert table.loc["batch1", "% kept"] >= 99


def test_adaptive_qc_keeps_cells_with_much_rna():
    """Large cells (monocytes, DCs, megakaryocytes) far above the batch median are kept."""
    a = synthetic(600, 400, n_batches=2, n_cell_types=3, seed=4)
    x = _dense(a.X)
    big = np.flatnonzero((a.obs["batch"] == "batch1").to_numpy())[:8]
    x[big] *= 60  # far more than 5 MADs above the batch median in counts
    a.X = sp.csr_matrix(x)
    a.layers["counts"] = a.X.copy()
    total = np.log1p(x.sum(axis=1))[a.obs["batch"].to_numpy() == "batch1"]
    mad = np.median(np.abs(total - np.median(total)))
    assert (np.log1p(x[big].sum(axis=1)) > np.median(total) + 5 * mad).all()
    flags, _ = qc.cell_flags(a, batch_key="batch")
    assert flags["keep"].iloc[big].all()


@pytest.mark.parametrize(("n_genes", "floor"), [(30_000, 200), (20_000, 200), (2_000, 20)])
def test_gene_floor_scales_with_panel_size(n_genes, floor):
    assert qc.default_min_genes(n_genes) == floor
    assert qc.default_min_genes(n_genes, "fixed") == 200


def test_mito_genes_by_symbol_or_said_absent():
    a = synthetic(60, 50, n_cell_types=2, seed=0)
    mask, note = qc.mito_genes(a)
    assert mask.sum() == 5 and "5 mitochondrial" in note
    ens = a.copy()
    ens.var_names = [f"ENSG{i:011d}" for i in range(ens.n_vars)]
    mask, note = qc.mito_genes(ens)
    assert not mask.any() and "Ensembl IDs" in note and "symbol" in note
    ens.var["feature_name"] = list(a.var_names)
    mask, note = qc.mito_genes(ens)
    assert mask.sum() == 5 and "var['feature_name']" in note
    none = a[:, 5:].copy()
    assert "No mitochondrial genes" in qc.mito_genes(none)[1]


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
    assert out.n_vars == 590 and out.var["highly_variable"].sum() == 150
    np.testing.assert_array_equal(
        _dense(out.layers["counts"]), _dense(base[out.obs_names, out.var_names].layers["counts"])
    )
    rec = out.uns["schelix"]["preprocess"]
    assert rec["batch_key"] == "batch" and rec["normalized"] and rec["counts_found"]
    out.write_h5ad(tmp_path / "pp.h5ad")  # every recorded value is h5ad-serialisable
    back = ad.read_h5ad(tmp_path / "pp.h5ad")
    assert (
        list(back.uns["schelix"]["preprocess"]["qc"]["per_batch"]["kept"])
        == (rec["qc"]["per_batch"]["kept"])
    )


def test_preprocess_in_place_gives_the_same_result(base):
    """copy=False (what ``schelix run`` uses) filters the input itself, with the same output."""
    ref = pp.preprocess(base, batch_key="batch", n_top_genes=150)
    own = base.copy()
    out = pp.preprocess(own, batch_key="batch", n_top_genes=150, copy=False)
    assert out is own and out.shape == ref.shape and out.n_obs < base.n_obs and out.n_vars == 590
    assert out.obs_names.equals(ref.obs_names) and out.var.equals(ref.var)
    np.testing.assert_array_equal(_dense(out.X), _dense(ref.X))
    np.testing.assert_array_equal(_dense(out.layers["counts"]), _dense(ref.layers["counts"]))
    rec, ref_rec = out.uns["schelix"]["preprocess"], ref.uns["schelix"]["preprocess"]
    assert (rec["cells_before"], rec["genes_before"]) == (base.n_obs, base.n_vars)
    assert rec["qc"]["per_batch"] == ref_rec["qc"]["per_batch"]
    before = base.copy()  # a view is copied, never written through to its parent
    view = pp.preprocess(base[:400], batch_key="batch", n_top_genes=150, copy=False)
    assert view.n_obs < 400 and not view.is_view
    np.testing.assert_array_equal(_dense(base.X), _dense(before.X))
    assert base.obs.columns.equals(before.obs.columns)


def test_preprocess_on_lognormalized_only(base):
    a = base.copy()
    del a.layers["counts"]
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    a.X.data = np.round(a.X.data, 2)  # exported with 2 decimals: counts cannot be recovered
    out = pp.preprocess(a, batch_key="batch", n_top_genes=100)
    rec = out.uns["schelix"]["preprocess"]
    assert "counts" not in out.layers and rec["counts_found"] is False
    assert rec["input_kind"] == "log-normalized"
    assert rec["normalized"] is False and rec["hvg_flavor"] == "seurat"
    assert out.var["highly_variable"].sum() == 100
    ref = pp.preprocess(base, batch_key="batch", n_top_genes=100)
    assert list(out.obs_names) == list(ref.obs_names)  # QC on expm1(X): the same cells as counts


def test_tiny_batch_rejected_by_highly_variable(base):
    a = base.copy()
    a.obs["batch"] = a.obs["batch"].cat.add_categories("tiny")
    a.obs.iloc[:3, a.obs.columns.get_loc("batch")] = "tiny"
    pp.normalize(a)
    with pytest.raises(SchelixError, match=r"'tiny' \(3 cells\)"):
        pp.highly_variable(a, batch_key="batch")


def test_seurat_v3_retries_a_wider_span_on_a_small_batch():
    """Kang's 272-cell donor makes scanpy's loess near-singular at span 0.3: a wider span fits.

    Before, this fell back to 'seurat' on log data for the whole file (every Kang donor run).
    """
    a = ad.read_h5ad(shared_data("kang_ifnb_pbmc.h5ad"))
    a = a[a.obs["donor"].isin(["1039", "107"])].copy()  # 272 + 661 cells
    raw = a.copy()
    raw.layers["counts"] = raw.X.copy()
    sc.pp.filter_genes(raw, min_cells=3)
    with pytest.raises(ValueError):  # the failure this guards against is still scanpy's
        sc.pp.highly_variable_genes(
            raw, flavor="seurat_v3", layer="counts", batch_key="donor", n_top_genes=2000
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", SchelixWarning)  # no fallback warning
        out = pp.preprocess(a, batch_key="donor")
    rec = out.uns["schelix"]["preprocess"]
    assert rec["hvg_flavor"] == "seurat_v3" and rec["hvg_span"] == 0.5
    assert out.var["highly_variable"].sum() == 2000


def test_seurat_fallback_when_no_span_fits(base, monkeypatch):
    """Every span of HVG_SPANS tried, widest last; then 'seurat' on log data, with a warning."""
    real, spans = sc.pp.highly_variable_genes, []

    def loess_fails(adata, *, flavor="seurat", span=0.3, **kw):
        if flavor == "seurat_v3":
            spans.append(span)
            raise ValueError("reciprocal condition number 1e-15")
        return real(adata, flavor=flavor, **kw)

    monkeypatch.setattr(sc.pp, "highly_variable_genes", loess_fails)
    a = base.copy()
    pp.normalize(a)
    with pytest.warns(SchelixWarning, match="seurat_v3' failed .*reciprocal condition"):
        pp.highly_variable(a, batch_key="batch", n_top_genes=100)
    rec = a.uns["schelix"]["preprocess"]
    assert spans == list(pp.HVG_SPANS) and rec["hvg_flavor"] == "seurat"
    assert rec["hvg_span"] is None and a.var["highly_variable"].sum() == 100


def test_preprocess_pbmc_3chem():
    a = ad.read_h5ad(shared_data("pbmc_3chem.h5ad"))  # three chemistries, V3 with more mito reads
    out = pp.preprocess(a, batch_key="tech")  # the defaults, as for any upload
    per = out.uns["schelix"]["preprocess"]["qc"]["per_batch"]
    assert per["batch"] == ["V2", "V3", "VDJ"]
    assert all(k >= 0.85 * c for k, c in zip(per["kept"], per["cells"]))
    assert out.var["highly_variable"].sum() == min(2000, out.n_vars)
    assert out.uns["schelix"]["preprocess"]["hvg_flavor"] == "seurat_v3"
    assert sp.isspmatrix_csr(out.X) and out.X.dtype == np.float32
    np.testing.assert_allclose(np.expm1(out.X[:50].toarray()).sum(1), 1e4, rtol=1e-3)
    with pytest.raises(SchelixError, match="'V3' keeps 1 of 865"):  # the paper's 5 %
        pp.preprocess(a, batch_key="tech", qc="fixed")


def test_the_demo_has_the_usual_markers_and_finer_types():
    a = demo()
    assert a.obs[DEMO_LABEL_KEY].nunique() == 8 and "source" in a.uns and "Kang" in a.uns["source"]
    out = pp.preprocess(a, batch_key=DEMO_BATCH_KEY)
    hvg = out.var_names[out.var["highly_variable"]]
    assert {"LYZ", "MS4A1", "NKG7"} <= set(hvg)
