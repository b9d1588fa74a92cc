"""Every input type on files made from real shared data: read -> preprocess, never a traceback.

pbmc_3chem given as raw counts, CPM, log1p-normalized, counts in layers["counts"] with a
scaled X, a scaled X with log-normalized raw, ambient-style corrected (non-integer) counts,
log values exported with rounding, and scaled only; plus a 2,000-gene panel of Kang.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from conftest import shared_data

import schelix
from schelix import pp
from schelix.cli import main
from schelix.errors import SchelixError, SchelixWarning
from schelix.input_type import detect, recover_counts

BATCH = "tech"


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    return ad.read_h5ad(shared_data("pbmc_3chem.h5ad"))


@pytest.fixture(scope="module")
def reference(pbmc) -> ad.AnnData:
    """The raw-count run: what every recoverable form must reproduce."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SchelixWarning)
        return pp.preprocess(pbmc, batch_key=BATCH)


def _lognorm(a: ad.AnnData) -> ad.AnnData:
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


def _make(pbmc: ad.AnnData, kind: str) -> ad.AnnData:
    a = pbmc.copy()
    if kind == "cpm":
        sc.pp.normalize_total(a, target_sum=1e6)
    elif kind == "log1p":
        _lognorm(a)
    elif kind == "layers":
        a.layers["counts"] = a.X.copy()
        sc.pp.scale(_lognorm(a), max_value=10)
    elif kind == "raw_lognorm_x_scaled":
        _lognorm(a)
        a.raw = a
        sc.pp.scale(a, max_value=10)
    return a


def _write_read(a: ad.AnnData, tmp_path, name: str = "in.h5ad") -> ad.AnnData:
    a.write_h5ad(tmp_path / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scanpy's own, on scaling sparse data
        return schelix.read(tmp_path / name, batch_key=BATCH)


@pytest.mark.parametrize("kind", ["cpm", "log1p", "layers", "raw_lognorm_x_scaled"])
def test_recoverable_forms_give_the_counts_run(pbmc, reference, kind, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        made = _make(pbmc, kind)
    a = _write_read(made, tmp_path)
    info = a.uns["schelix"]["input"]
    assert info["kind"] == "counts" and info["counts_found"] is True
    assert info["recovered"] is (kind not in ("layers",))
    np.testing.assert_array_equal(a.layers["counts"].toarray(), pbmc.X.toarray())
    out = pp.preprocess(a, batch_key=BATCH)
    assert out.uns["schelix"]["input"]["recovered"] is info["recovered"]  # provenance kept
    assert list(out.obs_names) == list(reference.obs_names)  # the same cells kept
    assert out.uns["schelix"]["preprocess"]["hvg_flavor"] == "seurat_v3"
    assert list(out.var_names[out.var["highly_variable"]]) == list(
        reference.var_names[reference.var["highly_variable"]]
    )


def test_count_like_values_are_normalized_and_said(pbmc, tmp_path):
    a = pbmc.copy()
    x = sp.csr_matrix(a.X, dtype=np.float32)
    x.data *= np.random.default_rng(0).uniform(0.6, 1.0, x.nnz).astype(np.float32)
    a.X = x  # ambient-RNA-style correction: non-integer, not logged, not recoverable
    a.write_h5ad(tmp_path / "corrected.h5ad")
    with pytest.warns(SchelixWarning, match="not log-transformed.*normalized.*log1p"):
        b = schelix.read(tmp_path / "corrected.h5ad", batch_key=BATCH)
    assert b.uns["schelix"]["input"]["kind"] == "count-like" and "counts" not in b.layers
    out = pp.preprocess(b, batch_key=BATCH)
    rec = out.uns["schelix"]["preprocess"]
    assert rec["normalized"] and rec["hvg_flavor"] == "seurat" and rec["input_kind"] == "count-like"
    assert np.isfinite(out.X.data).all()
    np.testing.assert_allclose(np.expm1(out.X[:20].toarray()).sum(1), 1e4, rtol=1e-3)
    per = rec["qc"]["per_batch"]
    assert all(k >= 0.85 * c for k, c in zip(per["kept"], per["cells"]))


def test_rounded_log_values_are_used_as_given(pbmc, reference, tmp_path):
    a = _lognorm(pbmc.copy())
    a.X.data = np.round(a.X.data, 3)  # a CSV-style export: counts cannot be recovered
    del a.uns["log1p"]
    assert recover_counts(a.X, log=True) is None
    a.write_h5ad(tmp_path / "log.h5ad")
    with pytest.warns(SchelixWarning, match="No raw counts"):
        b = schelix.read(tmp_path / "log.h5ad", batch_key=BATCH)
    out = pp.preprocess(b, batch_key=BATCH)
    rec = out.uns["schelix"]["preprocess"]
    assert rec["input_kind"] == "log-normalized" and not rec["normalized"]
    assert rec["hvg_flavor"] == "seurat"
    # QC on expm1(X): same genes and mito fractions, constant totals -> nearly the same cells
    shared = len(set(out.obs_names) & set(reference.obs_names))
    assert shared >= 0.97 * reference.n_obs


def test_scaled_only_is_refused_naming_the_fix(pbmc, tmp_path):
    a = _lognorm(pbmc[:400].copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sc.pp.scale(a, max_value=10)
    with pytest.raises(SchelixError, match="scaled or centred") as err:
        detect(a)
    assert "raw counts" in err.value.fix and "log-normalized" in err.value.fix
    a.write_h5ad(tmp_path / "scaled.h5ad")
    code = main(["run", str(tmp_path / "scaled.h5ad"), "--batch-key", BATCH, "-o",
                 str(tmp_path / "o.h5ad"), "--quiet"])  # fmt: skip
    assert code == 2


def test_kang_2000_gene_panel_keeps_its_cells():
    a = ad.read_h5ad(shared_data("kang_ifnb_pbmc.h5ad"))
    rng = np.random.default_rng(0)
    panel = a[:, np.sort(rng.choice(a.n_vars, 2000, replace=False))].copy()
    summary = pp.qc_summary(panel, batch_key="condition")
    assert all(
        k >= 0.95 * c for k, c in zip(summary["per_batch"]["kept"], summary["per_batch"]["cells"])
    )
    assert summary["per_batch"]["gene_floor"] == [20, 20]  # 200 x 2,000 / 20,000
    assert "No mitochondrial genes" in summary["mito_note"]
    with pytest.raises(SchelixError, match=r"'ctrl' keeps \d+ of 6548 .*fewer than 200 genes"):
        pp.preprocess(panel, batch_key="condition", qc="fixed")
