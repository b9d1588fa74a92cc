"""Reading user data: .h5ad, 10x .h5, 10x mtx folders (or a .zip of one), and checking it.

Every problem raises :class:`~schelix.errors.SchelixError` naming the problem and
the fix; everything done on the user's behalf warns with
:class:`~schelix.errors.SchelixWarning` and is noted in
``adata.uns["schelix"]["input"]["notes"]``.
"""

from __future__ import annotations

import tempfile
import warnings
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from schelix.errors import SchelixError, SchelixWarning

__all__ = ["SUPPORTED", "find_counts", "read", "summarize", "validate"]

SUPPORTED = ".h5ad, 10x .h5, a 10x mtx folder (matrix.mtx[.gz] + features/genes.tsv + barcodes.tsv) or a .zip of one"
_MTX_NAMES = ("matrix.mtx", "matrix.mtx.gz")
_N_SAMPLE = 20_000
LOGNORM_NOTE = (
    "No raw counts found (checked layers['counts'], X and raw): continuing on the "
    "log-normalized X. What changes: normalization is skipped, HVGs use flavor 'seurat' "
    "on log data instead of 'seurat_v3' on counts, and count-based peers (scVI, sysVI) "
    "are unavailable. Provide raw counts for the full pipeline"
)


def _note(notes: list[str], text: str, *, warn: bool = True) -> None:
    notes.append(text)
    if warn:
        warnings.warn(text, SchelixWarning, stacklevel=3)


def _values(m) -> np.ndarray:
    """The stored values of a matrix (non-zeros for sparse), as a flat array."""
    if sp.issparse(m):
        return np.asarray(m.data)
    return np.asarray(m).ravel()


def _check_values(m, where: str) -> None:
    """Raise on NaN/Inf or negative values."""
    v = _values(m)
    bad = int(np.count_nonzero(~np.isfinite(v)))
    if bad:
        raise SchelixError(
            f"{where} contains {bad} NaN/Inf values",
            "fix or remove them upstream (e.g. replace NaN by 0) or provide the raw counts",
        )
    if v.size and v.min() < 0:
        raise SchelixError(
            f"{where} has negative values (min {v.min():.3g}): it looks scaled or centred",
            "provide raw counts (X, layers['counts'] or raw) or log-normalized data, not scaled data",
        )


def _is_counts(m) -> bool:
    """True when a sample of the values is finite, non-negative and integer-valued."""
    v = _values(m)
    if v.size > _N_SAMPLE:
        v = v[np.random.default_rng(0).choice(v.size, _N_SAMPLE, replace=False)]
    v = v.astype(np.float64, copy=False)
    return bool(np.isfinite(v).all() and (v >= 0).all() and np.array_equal(v, np.round(v)))


def _csr32(m) -> sp.csr_matrix:
    return sp.csr_matrix(m, dtype=np.float32)


def find_counts(adata: ad.AnnData) -> tuple[str, object]:
    """Locate raw counts in ``layers["counts"]``, ``X`` or ``raw`` (in that order).

    Returns
    -------
    ``(source, matrix)`` with source in ``"layers/counts"``, ``"X"``, ``"raw"``,
    or ``("none", None)`` when only non-count (e.g. log-normalized) data is present.
    """
    if "counts" in adata.layers and _is_counts(adata.layers["counts"]):
        return "layers/counts", adata.layers["counts"]
    if adata.X is not None and _is_counts(adata.X):
        return "X", adata.X
    if adata.raw is not None and _is_counts(adata.raw.X):
        return "raw", adata.raw.X
    return "none", None


def _dedupe(adata: ad.AnnData, notes: list[str]) -> None:
    for axis, names, fn in (
        ("gene", adata.var_names, adata.var_names_make_unique),
        ("cell", adata.obs_names, adata.obs_names_make_unique),
    ):
        n_dup = int(names.duplicated().sum())
        if n_dup:
            example = str(names[names.duplicated()][0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                fn()
            _note(
                notes,
                f"{n_dup} duplicate {axis} names (e.g. '{example}') were made unique "
                f"by appending '-1', '-2', ...",
            )


def _to_categorical(adata: ad.AnnData, key: str, what: str, notes: list[str]) -> None:
    col = adata.obs[key]
    if isinstance(col.dtype, pd.CategoricalDtype) and col.cat.categories.dtype == object:
        return
    values = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else col
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        _note(notes, f"{what} column '{key}' holds numbers; converted to categorical strings")
    adata.obs[key] = pd.Categorical(col.astype(str).where(col.notna()))


def validate(
    adata: ad.AnnData, *, batch_key: str | None, label_key: str | None = None
) -> list[str]:
    """Check an AnnData for integration; fix harmless things in place and say so.

    Checks size, duplicate names (made unique), NaN/Inf/negative values, the batch
    column (present, no missing values, at least two batches; numbers become
    categorical strings) and the optional label column (missing -> note only).

    Returns
    -------
    The notes (also appended to ``uns["schelix"]["input"]["notes"]``).

    Raises
    ------
    SchelixError
        On any fatal problem.
    """
    notes: list[str] = []
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise SchelixError(
            f"The data has {adata.n_obs} cells and {adata.n_vars} genes",
            "load a non-empty dataset (cells x genes) — check the file or an earlier filter",
        )
    _dedupe(adata, notes)
    _check_values(adata.X, "adata.X")
    cols = ", ".join(f"'{c}'" for c in adata.obs.columns) or "(none: add one to adata.obs)"
    if batch_key is not None:
        if batch_key not in adata.obs:
            raise SchelixError(
                f"Batch column '{batch_key}' is not in adata.obs", f"choose one of: {cols}"
            )
        n_na = int(adata.obs[batch_key].isna().sum())
        if n_na:
            raise SchelixError(
                f"Batch column '{batch_key}' is missing for {n_na} cells",
                "fill in the batch of those cells or remove them",
            )
        _to_categorical(adata, batch_key, "Batch", notes)
        batches = adata.obs[batch_key].cat.remove_unused_categories().cat.categories
        if len(batches) < 2:
            raise SchelixError(
                f"Batch column '{batch_key}' has only one batch ({', '.join(map(str, batches))})",
                f"integration needs at least two batches; choose another column: {cols}",
            )
    if label_key is not None:
        if label_key not in adata.obs:
            _note(
                notes,
                f"Label column '{label_key}' is not in adata.obs: label-based metrics "
                f"will be skipped (available columns: {cols})",
            )
        else:
            _to_categorical(adata, label_key, "Label", notes)
    info = adata.uns.setdefault("schelix", {}).setdefault("input", {})
    info["notes"] = [*list(info.get("notes", [])), *notes]
    return notes


def _read_h5ad(path: Path) -> ad.AnnData:
    try:
        return ad.read_h5ad(path)
    except Exception as e:
        raise SchelixError(
            f"'{path.name}' could not be read as an .h5ad file ({type(e).__name__}: {e}); "
            "it may be truncated, corrupt or another file type",
            "re-download or re-export it (adata.write_h5ad), or upload " + SUPPORTED,
        ) from e


def _hdf5_kind(path: Path) -> str:
    """'10x', 'h5ad' or 'other' for an HDF5 file; raises when it is not readable HDF5."""
    try:
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
            if "matrix" in keys or any(
                "barcodes" in f[k] for k in keys if isinstance(f[k], h5py.Group)
            ):
                return "10x"
            return "h5ad" if {"X", "obs", "var"} <= keys else "other"
    except Exception as e:
        raise SchelixError(
            f"'{path.name}' is not a readable HDF5 file ({type(e).__name__}: {e}); "
            "it may be truncated, corrupt or another file type",
            "re-download it, or upload " + SUPPORTED,
        ) from e


def _read_10x_h5(path: Path) -> tuple[ad.AnnData, str]:
    import scanpy as sc

    kind = _hdf5_kind(path)
    if kind == "h5ad":  # an AnnData file with an .h5 name
        return _read_h5ad(path), "h5ad"
    if kind != "10x":
        raise SchelixError(
            f"'{path.name}' is HDF5 but not in the 10x Cell Ranger layout",
            "upload the filtered_feature_bc_matrix.h5 from Cell Ranger, or " + SUPPORTED,
        )
    try:
        return sc.read_10x_h5(path), "10x-h5"
    except Exception as e:
        raise SchelixError(
            f"'{path.name}' could not be read as a 10x .h5 file ({e})",
            "re-export it from Cell Ranger, or upload " + SUPPORTED,
        ) from e


def _find_one(folder: Path, names: tuple[str, ...], prefix: str) -> Path | None:
    for name in names:
        if (folder / f"{prefix}{name}").is_file():
            return folder / f"{prefix}{name}"
    return None


def _read_mtx_folder(folder: Path) -> ad.AnnData:
    import scanpy as sc

    found = sorted(
        p
        for p in folder.rglob("*matrix.mtx*")
        if p.name.endswith(_MTX_NAMES) and "__MACOSX" not in p.parts
    )
    if not found:
        raise SchelixError(
            f"No matrix.mtx or matrix.mtx.gz found in '{folder.name}'",
            "the folder (or zip) must hold a 10x matrix: " + SUPPORTED,
        )
    if len({p.parent for p in found}) > 1:
        raise SchelixError(
            f"Several 10x matrices in '{folder.name}': "
            + ", ".join(str(p.relative_to(folder)) for p in found),
            "upload one sample at a time (one folder or zip per matrix)",
        )
    mtx = found[0]
    where, prefix = mtx.parent, mtx.name[: mtx.name.index("matrix.mtx")]
    genes = _find_one(
        where, ("features.tsv.gz", "features.tsv", "genes.tsv", "genes.tsv.gz"), prefix
    )
    barcodes = _find_one(where, ("barcodes.tsv.gz", "barcodes.tsv"), prefix)
    if genes is None or barcodes is None:
        missing = "features.tsv/genes.tsv" if genes is None else "barcodes.tsv"
        raise SchelixError(
            f"'{mtx.name}' has no {missing} next to it",
            "put matrix.mtx[.gz], features.tsv[.gz] (or genes.tsv) and "
            "barcodes.tsv[.gz] in one folder, as Cell Ranger writes them",
        )
    try:
        v3 = (
            all(p.name.endswith(".gz") for p in (mtx, genes, barcodes)) and "features" in genes.name
        )
        legacy = (
            not any(p.name.endswith(".gz") for p in (mtx, genes, barcodes))
            and "genes" in genes.name
        )
        if v3 or legacy:
            return sc.read_10x_mtx(where, prefix=prefix, make_unique=False)
        # a non-standard mix (e.g. plain features.tsv): same reading, by hand
        adata = sc.read_mtx(mtx).T
        var = pd.read_csv(genes, sep="\t", header=None, dtype=str)
        obs = pd.read_csv(barcodes, sep="\t", header=None, dtype=str)
        if adata.shape != (len(obs), len(var)):
            raise ValueError(
                f"matrix is {adata.n_vars} x {adata.n_obs} (genes x cells) but "
                f"{genes.name} lists {len(var)} genes and {barcodes.name} {len(obs)} cells"
            )
        adata.obs_names = obs[0].to_numpy()
        adata.var_names = var[1 if var.shape[1] > 1 else 0].to_numpy()
        adata.var["gene_ids"] = var[0].to_numpy()
        if var.shape[1] > 2:
            adata = adata[:, var[2].to_numpy() == "Gene Expression"].copy()
        return adata
    except Exception as e:
        raise SchelixError(
            f"The 10x matrix in '{folder.name}' could not be read ({type(e).__name__}: {e})",
            "check that matrix, features and barcodes belong together and are "
            "complete (re-export from Cell Ranger)",
        ) from e


def _read_zip(path: Path) -> ad.AnnData:
    if not zipfile.is_zipfile(path):
        raise SchelixError(
            f"'{path.name}' is not a valid zip file (truncated or corrupt)",
            "re-create the zip of the 10x folder, or upload " + SUPPORTED,
        )
    with tempfile.TemporaryDirectory(prefix="schelix_zip_") as tmp:
        try:
            with zipfile.ZipFile(path) as z:
                z.extractall(tmp)
        except Exception as e:
            raise SchelixError(
                f"'{path.name}' could not be extracted ({e})", "re-create the zip of the 10x folder"
            ) from e
        adata = _read_mtx_folder(Path(tmp))
        adata.X = _csr32(adata.X)  # fully in memory before the folder goes
    return adata


def _read_any(path: Path) -> tuple[ad.AnnData, str]:
    if not path.exists():
        raise SchelixError(f"'{path}' does not exist", "check the path (or upload the file again)")
    name = path.name.lower()
    if path.is_dir():
        return _read_mtx_folder(path), "10x-mtx"
    if name.endswith(_MTX_NAMES):
        return _read_mtx_folder(path.parent), "10x-mtx"
    if name.endswith(".h5ad"):
        return _read_h5ad(path), "h5ad"
    if name.endswith((".h5", ".hdf5")):
        return _read_10x_h5(path)
    if name.endswith(".zip"):
        return _read_zip(path), "10x-mtx-zip"
    fix = "upload " + SUPPORTED
    if name.endswith((".rds", ".rdata", ".h5seurat", ".loom", ".csv", ".tsv", ".txt")):
        fix = (
            "convert it to .h5ad first (e.g. SeuratDisk/zellkonverter for R objects, "
            "anndata.read_loom/read_csv in Python), or " + fix
        )
    raise SchelixError(f"Unknown file type '{path.suffix or path.name}' for '{path.name}'", fix)


def read(
    path: str | Path, *, batch_key: str | None = None, label_key: str | None = None
) -> ad.AnnData:
    """Read single-cell data and put raw counts in ``X`` and ``layers["counts"]``.

    Parameters
    ----------
    path
        An ``.h5ad`` file, a 10x ``.h5`` file, a 10x mtx folder (or its
        ``matrix.mtx[.gz]``) or a ``.zip`` of such a folder (may be nested).
    batch_key, label_key
        Optional obs columns to check (see :func:`validate`).

    Returns
    -------
    AnnData with float32 CSR counts in ``X`` and ``layers["counts"]`` (found in
    ``layers["counts"]``, ``X`` or ``raw``). With only log-normalized data, ``X``
    keeps it, there is no ``layers["counts"]`` and a :class:`SchelixWarning` says
    which steps change. ``uns["schelix"]["input"]`` = ``{"path", "format",
    "counts_found", "counts_source", "notes"}``.
    """
    path = Path(path)
    adata, fmt = _read_any(path)
    if adata.n_obs == 0 or adata.n_vars == 0:
        validate(adata, batch_key=None)  # raises the clear empty-data error
    notes: list[str] = []
    source, counts = find_counts(adata)
    if source == "none":
        _check_values(adata.X, "adata.X")
        adata.X = _csr32(adata.X)
        adata.layers.pop("counts", None)
        _note(notes, LOGNORM_NOTE)
        if _values(adata.X).max(initial=0) > 50:
            _note(
                notes,
                "X has values above 50 and is not integer: it may be normalized but not "
                "log-transformed; provide raw counts or log1p-transformed data",
            )
    else:
        counts = _csr32(counts)
        if source == "raw" and adata.raw.n_vars != adata.n_vars:
            _note(
                notes,
                f"Counts taken from adata.raw with all {adata.raw.n_vars} genes "
                f"(X had {adata.n_vars}); the processed X is dropped",
                warn=False,
            )
            adata = ad.AnnData(
                X=counts,
                obs=adata.obs,
                var=adata.raw.var.copy(),
                obsm=dict(adata.obsm),
                uns=dict(adata.uns),
            )
        else:
            adata.X = counts
        adata.layers["counts"] = counts.copy()
        if source != "X":
            _note(
                notes,
                f"Raw counts found in {source}; they are now in X and layers['counts']",
                warn=False,
            )
    adata.raw = None
    adata.uns.setdefault("schelix", {})["input"] = {
        "path": str(path),
        "format": fmt,
        "counts_found": source != "none",
        "counts_source": source,
        "notes": notes,
    }
    validate(adata, batch_key=batch_key, label_key=label_key)
    return adata


def summarize(adata: ad.AnnData) -> dict:
    """A small summary for the app: sizes, counts status and obs columns.

    Returns
    -------
    ``{"n_cells", "n_genes", "counts_found", "counts_source", "format",
    "obs_columns": {column: n_unique}, "notes": [...]}``.
    """
    info = adata.uns.get("schelix", {}).get("input", {})
    found = "counts" in adata.layers
    return {
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "counts_found": bool(info.get("counts_found", found)),
        "counts_source": str(info.get("counts_source", "layers/counts" if found else "none")),
        "format": str(info.get("format", "anndata")),
        "obs_columns": {str(c): int(adata.obs[c].nunique()) for c in adata.obs.columns},
        "notes": [str(n) for n in info.get("notes", [])],
    }
