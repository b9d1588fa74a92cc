"""Reading user data: .h5ad, 10x .h5, 10x mtx folders (or a .zip of one), and checking it.

Every problem raises :class:`~schelix.errors.SchelixError` naming the problem and
the fix; everything done on the user's behalf warns with
:class:`~schelix.errors.SchelixWarning` and is noted in
``adata.uns["schelix"]["input"]["notes"]``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from schelix.archive import check_gzip, extract_zip
from schelix.checks import check_counts_layer
from schelix.errors import SchelixError
from schelix.input_type import LOGNORM_NOTE, apply, detect, find_counts
from schelix.validate import note, validate

__all__ = ["LOGNORM_NOTE", "SUPPORTED", "find_counts", "read", "summarize", "validate"]

SUPPORTED = ".h5ad, 10x .h5, a 10x mtx folder (matrix.mtx[.gz] + features/genes.tsv + barcodes.tsv) or a .zip of one"
_MTX_NAMES = ("matrix.mtx", "matrix.mtx.gz")


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


def _read_mtx_folder(folder: Path, name: str | None = None) -> ad.AnnData:
    import scanpy as sc

    name = name or folder.name  # the user's file or folder, never a temporary one

    found = sorted(
        p
        for p in folder.rglob("*matrix.mtx*")
        if p.name.endswith(_MTX_NAMES) and "__MACOSX" not in p.parts
    )
    if not found:
        raise SchelixError(
            f"No matrix.mtx or matrix.mtx.gz found in '{name}'",
            "the folder (or zip) must hold a 10x matrix: " + SUPPORTED,
        )
    if len({p.parent for p in found}) > 1:
        raise SchelixError(
            f"Several 10x matrices in '{name}': "
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
    for part in (mtx, genes, barcodes):
        if part.name.endswith(".gz"):
            check_gzip(part, name=name)
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
            f"The 10x matrix in '{name}' could not be read ({type(e).__name__}: {e})",
            "check that matrix, features and barcodes belong together and are "
            "complete (re-export from Cell Ranger)",
        ) from e


def _read_zip(path: Path, workdir: Path | None = None) -> ad.AnnData:
    """Extract safely (:func:`schelix.archive.extract_zip`) into a private folder in ``workdir``."""
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="unzipped_", dir=workdir) as tmp:
        extract_zip(path, tmp, name=path.name)
        adata = _read_mtx_folder(Path(tmp), name=path.name)
        adata.X = sp.csr_matrix(adata.X, dtype=np.float32)  # fully in memory before the folder goes
    return adata


def _read_any(path: Path, workdir: Path | None = None) -> tuple[ad.AnnData, str]:
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
        return _read_zip(path, workdir), "10x-mtx-zip"
    fix = "upload " + SUPPORTED
    if name.endswith((".rds", ".rdata", ".h5seurat", ".loom", ".csv", ".tsv", ".txt")):
        fix = (
            "convert it to .h5ad first (e.g. SeuratDisk/zellkonverter for R objects, "
            "anndata.read_loom/read_csv in Python), or " + fix
        )
    raise SchelixError(f"Unknown file type '{path.suffix or path.name}' for '{path.name}'", fix)


def read(
    path: str | Path,
    *,
    batch_key: str | None = None,
    label_key: str | None = None,
    workdir: str | Path | None = None,
) -> ad.AnnData:
    """Read single-cell data; put the values to use in ``X`` (counts also in ``layers["counts"]``).

    Parameters
    ----------
    path
        An ``.h5ad`` file, a 10x ``.h5`` file, a 10x mtx folder (or its
        ``matrix.mtx[.gz]``) or a ``.zip`` of such a folder (may be nested).
    batch_key, label_key
        Optional obs columns to check (see :func:`validate`).
    workdir
        Where a ``.zip`` is unpacked (a private temporary folder inside it, removed after
        reading; the app passes the workspace). Default: the system's temporary folder.

    Returns
    -------
    AnnData with float32 CSR values in ``X``, chosen by
    :func:`schelix.input_type.detect`: raw counts (from ``layers["counts"]``, ``X`` or
    ``raw``, or recovered exactly from normalized values; then also in
    ``layers["counts"]``), else count-like or log-normalized values (no
    ``layers["counts"]``; a :class:`SchelixWarning` says what changes). Scaled data
    is refused. ``uns["schelix"]["input"]`` = ``{"path", "format", "kind",
    "counts_found", "counts_source", "values_source", "recovered", "notes"}``.
    """
    path = Path(path)
    adata, fmt = _read_any(path, Path(workdir) if workdir is not None else None)
    if adata.n_obs == 0 or adata.n_vars == 0:
        validate(adata, batch_key=None)  # raises the clear empty-data error
    check_counts_layer(adata)
    notes: list[str] = []
    found = detect(adata)
    n_x = adata.n_vars
    adata = apply(adata, found)
    if found.note:
        note(notes, found.note, warn=found.kind != "counts" or found.recovered)
    elif found.source != "X":
        note(notes, f"Raw counts found in {found.source}; they are now in X and "
             "layers['counts']", warn=False)  # fmt: skip
    if found.source == "raw" and adata.n_vars != n_x:
        note(notes, f"Values taken from adata.raw with all {adata.n_vars} genes (X had "
             f"{n_x}); the processed X is dropped", warn=False)  # fmt: skip
    adata.uns["schelix"]["input"].update(path=str(path), format=fmt, notes=notes)
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
