"""Tests for schelix.io: real round trips through every input format, and clear errors."""

from __future__ import annotations

import gzip
import shutil
import warnings
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from schelix.datasets import synthetic
from schelix.errors import SchelixError, SchelixWarning
from schelix.input_type import recover_counts
from schelix.io import read, summarize, validate


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    return synthetic(120, 80, n_batches=2, n_cell_types=3, seed=1)


def _dense(m) -> np.ndarray:
    return m.toarray() if sp.issparse(m) else np.asarray(m)


def _write_mtx(adata: ad.AnnData, folder: Path, *, gz: bool = True, legacy: bool = False) -> Path:
    """Write a 10x mtx folder: matrix.mtx (genes x cells), features/genes.tsv, barcodes.tsv."""
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.mmwrite(folder / "matrix.mtx", sp.coo_matrix(adata.X.T).astype(np.int64))
    genes = pd.DataFrame(
        {"id": [f"ENSG{i:05d}" for i in range(adata.n_vars)], "name": adata.var_names}
    )
    if not legacy:
        genes["type"] = "Gene Expression"
    genes.to_csv(
        folder / ("genes.tsv" if legacy else "features.tsv"), sep="\t", header=False, index=False
    )
    pd.Series(adata.obs_names).to_csv(folder / "barcodes.tsv", header=False, index=False)
    if gz:
        for f in list(folder.iterdir()):
            with open(f, "rb") as src, gzip.open(f"{f}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            f.unlink()
    return folder


def _write_10x_h5(adata: ad.AnnData, path: Path) -> Path:
    """Write the Cell Ranger v3 HDF5 layout (matrix stored genes x cells, CSC)."""
    x = sp.csr_matrix(adata.X)  # cells x genes CSR == genes x cells CSC
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"] = x.data.astype(np.int32)
        m["indices"] = x.indices.astype(np.int64)
        m["indptr"] = x.indptr.astype(np.int64)
        m["shape"] = np.array([adata.n_vars, adata.n_obs], dtype=np.int32)
        m["barcodes"] = np.array(adata.obs_names, dtype="S")
        feats = m.create_group("features")
        feats["id"] = np.array([f"ENSG{i:05d}" for i in range(adata.n_vars)], dtype="S")
        feats["name"] = np.array(adata.var_names, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * adata.n_vars, dtype="S")
        feats["genome"] = np.array(["GRCh38"] * adata.n_vars, dtype="S")
        feats["_all_tag_keys"] = np.array([b"genome"])
    return path


def _assert_same_counts(out: ad.AnnData, src: ad.AnnData) -> None:
    assert sp.isspmatrix_csr(out.X) and out.X.dtype == np.float32
    assert list(out.obs_names) == list(src.obs_names)
    assert list(out.var_names) == list(src.var_names)
    np.testing.assert_array_equal(_dense(out.X), _dense(src.X))
    np.testing.assert_array_equal(_dense(out.layers["counts"]), _dense(src.X))
    assert out.uns["schelix"]["input"]["counts_found"] is True


def test_read_h5ad_roundtrip(small, tmp_path):
    small.write_h5ad(tmp_path / "d.h5ad")
    out = read(tmp_path / "d.h5ad", batch_key="batch", label_key="cell_type")
    _assert_same_counts(out, small)
    info = out.uns["schelix"]["input"]
    assert info["format"] == "h5ad" and info["counts_source"] == "layers/counts"
    assert out.obs["batch"].dtype == "category"
    # the record survives another h5ad round trip (serialisable)
    out.write_h5ad(tmp_path / "again.h5ad")
    assert ad.read_h5ad(tmp_path / "again.h5ad").uns["schelix"]["input"]["format"] == "h5ad"


@pytest.mark.parametrize(("gz", "legacy"), [(True, False), (False, True), (False, False)])
def test_read_mtx_folder_roundtrip(small, tmp_path, gz, legacy):
    folder = _write_mtx(small, tmp_path / "filtered_feature_bc_matrix", gz=gz, legacy=legacy)
    out = read(folder)
    _assert_same_counts(out, small)
    assert out.uns["schelix"]["input"]["format"] == "10x-mtx"
    # the matrix file itself is accepted too
    mtx = next(folder.glob("matrix.mtx*"))
    assert read(mtx).shape == small.shape


def test_read_zip_with_nested_folder(small, tmp_path):
    folder = _write_mtx(small, tmp_path / "src" / "sample1" / "filtered_feature_bc_matrix")
    zpath = tmp_path / "sample1.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.relative_to(tmp_path / "src"))
    out = read(zpath)
    _assert_same_counts(out, small)
    assert out.uns["schelix"]["input"]["format"] == "10x-mtx-zip"


def test_read_10x_h5_roundtrip(small, tmp_path):
    out = read(_write_10x_h5(small, tmp_path / "filtered_feature_bc_matrix.h5"))
    _assert_same_counts(out, small)
    assert out.uns["schelix"]["input"]["format"] == "10x-h5"


def test_h5ad_named_h5_is_read_as_h5ad(small, tmp_path):
    small.write_h5ad(tmp_path / "d.h5")
    out = read(tmp_path / "d.h5")
    _assert_same_counts(out, small)
    assert out.uns["schelix"]["input"]["format"] == "h5ad"


def _lognorm(adata: ad.AnnData) -> sp.csr_matrix:
    x = sp.csr_matrix(adata.X, dtype=np.float32, copy=True)
    x = sp.diags(1e4 / np.asarray(x.sum(1)).ravel()) @ x
    return sp.csr_matrix(np.log1p(x), dtype=np.float32)


def test_counts_found_in_raw_and_layers(small, tmp_path):
    a = small.copy()
    a.raw = a.copy()
    a.X = _lognorm(a)
    del a.layers["counts"]
    a.write_h5ad(tmp_path / "raw.h5ad")
    out = read(tmp_path / "raw.h5ad")
    assert out.uns["schelix"]["input"]["counts_source"] == "raw"
    np.testing.assert_array_equal(_dense(out.X), _dense(small.X))
    assert out.raw is None

    b = small.copy()
    b.X = _lognorm(b)
    b.write_h5ad(tmp_path / "layer.h5ad")
    out = read(tmp_path / "layer.h5ad")
    assert out.uns["schelix"]["input"]["counts_source"] == "layers/counts"
    np.testing.assert_array_equal(_dense(out.X), _dense(small.X))


def test_counts_recovered_from_normalized_values(small, tmp_path):
    for name, values in (("log", _lognorm(small)), ("cpm", np.expm1(_lognorm(small)) * 100)):
        a = small.copy()
        a.X = sp.csr_matrix(values)
        del a.layers["counts"]
        a.write_h5ad(tmp_path / f"{name}.h5ad")
        with pytest.warns(SchelixWarning, match="recovered exactly"):
            out = read(tmp_path / f"{name}.h5ad", batch_key="batch")
        info = out.uns["schelix"]["input"]
        assert info["kind"] == "counts" and info["recovered"] is True
        np.testing.assert_array_equal(_dense(out.layers["counts"]), _dense(small.X))


def test_recover_counts_needs_every_value_on_a_whole_multiple():
    counts = sp.csr_matrix(np.array([[2, 3, 6, 0], [3, 0, 4, 11], [1, 5, 0, 7]], dtype=float))
    scaled = sp.diags([0.5, 10.0, 3.0]) @ counts  # deep cells: smallest count 2 or 3
    np.testing.assert_array_equal(recover_counts(scaled).toarray(), counts.toarray())
    noisy = scaled.copy()
    noisy.data = noisy.data * 1.013
    noisy[0, 0] = 1.0
    assert recover_counts(noisy) is None
    assert recover_counts(sp.csr_matrix(np.ones((3, 3)))) is None  # all ones: nothing to recover


def test_lognormalized_only_warns_and_continues(small, tmp_path):
    a = small.copy()
    a.X = _lognorm(a)
    a.X.data = np.round(a.X.data, 2)  # rounded on export: counts cannot be recovered
    del a.layers["counts"]
    a.write_h5ad(tmp_path / "log.h5ad")
    with pytest.warns(SchelixWarning, match="No raw counts"):
        out = read(tmp_path / "log.h5ad", batch_key="batch")
    info = out.uns["schelix"]["input"]
    assert info["counts_found"] is False and info["counts_source"] == "none"
    assert any("seurat" in n and "scVI" in n for n in info["notes"])
    assert "counts" not in out.layers
    np.testing.assert_allclose(_dense(out.X), _dense(a.X), rtol=1e-6)


@pytest.mark.parametrize("kind", ["text", "truncated", "unknown", "badzip", "missing", "not10x"])
def test_wrong_or_corrupt_file(small, tmp_path, kind):
    if kind == "text":
        path = tmp_path / "notes.h5ad"
        path.write_text("cell,gene\n1,2\n")
        match = "h5ad"
    elif kind == "truncated":
        small.write_h5ad(tmp_path / "full.h5ad")
        data = (tmp_path / "full.h5ad").read_bytes()
        path = tmp_path / "cut.h5ad"
        path.write_bytes(data[: len(data) // 2])
        match = "truncated"
    elif kind == "unknown":
        path = tmp_path / "data.xyz"
        path.write_text("x")
        match = "Unknown file type"
    elif kind == "badzip":
        path = tmp_path / "data.zip"
        path.write_bytes(b"PK\x03\x04 not really a zip")
        match = "not a valid zip"
    elif kind == "missing":
        path, match = tmp_path / "nope.h5ad", "does not exist"
    else:
        path = tmp_path / "other.h5"
        with h5py.File(path, "w") as f:
            f["something"] = np.arange(3)
        match = "not in the 10x"
    with pytest.raises(SchelixError, match=match) as err:
        read(path)
    assert "Fix:" in str(err.value)


def test_zip_without_matrix(tmp_path):
    zpath = tmp_path / "empty.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("readme.txt", "nothing here")
    with pytest.raises(SchelixError, match=r"No matrix\.mtx"):
        read(zpath)


@pytest.mark.parametrize("axis", ["cells", "genes"])
def test_no_cells_or_genes(small, tmp_path, axis):
    a = small[:0].copy() if axis == "cells" else small[:, :0].copy()
    a.write_h5ad(tmp_path / "empty.h5ad")
    with pytest.raises(SchelixError, match=r"0 (cells|genes)"):
        read(tmp_path / "empty.h5ad")


def test_batch_column_missing_lists_columns(small):
    with pytest.raises(SchelixError, match=r"'donor' is not in adata\.obs") as err:
        validate(small.copy(), batch_key="donor")
    assert "'batch'" in str(err.value) and "'cell_type'" in str(err.value)


def test_only_one_batch(small):
    a = small.copy()
    a.obs["batch"] = "b0"
    with pytest.raises(SchelixError, match="only one batch"):
        validate(a, batch_key="batch")


def test_label_missing_is_a_note(small):
    a = small.copy()
    with pytest.warns(SchelixWarning, match="label-based metrics will be skipped"):
        notes = validate(a, batch_key="batch", label_key="celltype")
    assert any("celltype" in n for n in notes)
    assert notes[0] in a.uns["schelix"]["input"]["notes"]


@pytest.mark.parametrize(
    ("value", "match"), [(np.nan, "NaN/Inf"), (np.inf, "NaN/Inf"), (-1.0, "negative")]
)
def test_bad_values(small, tmp_path, value, match):
    a = small.copy()
    del a.layers["counts"]
    x = a.X.toarray()
    x[3, 5] = value
    a.X = sp.csr_matrix(x)
    a.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(SchelixError, match=match):
        read(tmp_path / "bad.h5ad")
    with pytest.raises(SchelixError, match=match):
        validate(a, batch_key="batch")


def test_duplicate_names_made_unique(small):
    a = small.copy()
    a.var_names = [*a.var_names[:-1], a.var_names[10]]
    a.obs_names = [*a.obs_names[:-1], a.obs_names[0]]
    with pytest.warns(SchelixWarning) as rec:
        notes = validate(a, batch_key="batch")
    messages = [str(w.message) for w in rec]
    assert any("1 duplicate gene names (e.g. 'Gene0010')" in m for m in messages)
    assert any("duplicate cell names" in m for m in messages)
    assert a.var_names.is_unique and a.obs_names.is_unique and len(notes) == 2


def test_numeric_batch_and_label_become_categorical_strings(small, tmp_path):
    a = small.copy()
    a.obs["batch"] = a.obs["batch"].cat.codes.astype(int) + 1
    a.obs["cell_type"] = a.obs["cell_type"].cat.codes.astype("category")  # int categories
    a.write_h5ad(tmp_path / "num.h5ad")
    with pytest.warns(SchelixWarning, match="holds numbers") as rec:
        out = read(tmp_path / "num.h5ad", batch_key="batch", label_key="cell_type")
    assert any("Label column 'cell_type'" in str(w.message) for w in rec)
    assert isinstance(out.obs["batch"].dtype, pd.CategoricalDtype)
    assert set(out.obs["batch"].cat.categories) == {"1", "2"}
    assert all(isinstance(c, str) for c in out.obs["cell_type"].cat.categories)


def test_summarize(small, tmp_path):
    small.write_h5ad(tmp_path / "d.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SchelixWarning)  # clean data: nothing to warn about
        out = read(tmp_path / "d.h5ad", batch_key="batch")
    s = summarize(out)
    assert (s["n_cells"], s["n_genes"]) == small.shape
    assert s["counts_found"] is True and s["format"] == "h5ad"
    assert s["obs_columns"] == {"batch": 2, "cell_type": 3}
