"""Shared preprocessing (paper Appendix B.1): QC, normalization and the batch-aware HVG pool.

The output of :func:`preprocess` is the input of every later step: all QC-passing
genes, ``X`` = log-normalized float32 CSR, ``layers["counts"]`` = raw counts (when
the input had them), ``var["highly_variable"]`` = the shared HVG pool,
``obs[batch_key]`` categorical, and ``uns["schelix"]["preprocess"]`` = parameters
and what QC kept.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

from schelix.errors import SchelixError, SchelixWarning
from schelix.io import find_counts, validate

__all__ = [
    "MITO_PREFIXES",
    "hvg_mask",
    "filter_qc",
    "highly_variable",
    "normalize",
    "preprocess",
    "qc_masks",
    "qc_metrics",
]

MITO_PREFIXES = ("MT-", "mt-")  # human, mouse
MIN_CELLS_AFTER_QC = 50
MIN_GENES_AFTER_QC = 200
MIN_CELLS_PER_BATCH = 10  # seurat_v3's loess fails (or crashes) on smaller batches
_QC_OBS = ("n_genes_by_counts", "total_counts", "pct_counts_mt")


def _record(adata: ad.AnnData) -> dict:
    return adata.uns.setdefault("schelix", {}).setdefault("preprocess", {})


def _counts(adata: ad.AnnData):
    return adata.layers["counts"] if "counts" in adata.layers else adata.X


def qc_metrics(adata: ad.AnnData) -> None:
    """Per-cell and per-gene QC metrics (scanpy ``calculate_qc_metrics``), computed once.

    Writes ``var["mt"]`` (human ``MT-`` / mouse ``mt-`` prefixes),
    ``obs["n_genes_by_counts"]``, ``obs["total_counts"]``, ``obs["pct_counts_mt"]``
    and ``var["n_cells_by_counts"]``, computed on ``layers["counts"]`` when present
    (otherwise on ``X``).
    """
    adata.var["mt"] = np.asarray(adata.var_names.str.startswith(MITO_PREFIXES))
    layer = "counts" if "counts" in adata.layers else None
    sc.pp.calculate_qc_metrics(
        adata, qc_vars=["mt"], layer=layer, percent_top=None, log1p=False, inplace=True
    )


def _gene_mask(adata: ad.AnnData, cell_mask: np.ndarray, min_cells: int) -> np.ndarray:
    """Genes detected in at least ``min_cells`` of the masked cells (one pass over non-zeros)."""
    m = sp.csr_matrix(_counts(adata))
    row_kept = np.repeat(cell_mask, np.diff(m.indptr)) & (m.data != 0)
    return np.bincount(m.indices[row_kept], minlength=adata.n_vars) >= min_cells


def qc_masks(
    adata: ad.AnnData, *, min_genes: int = 200, min_cells: int = 3, max_mito_pct: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """Which cells and genes pass QC, cheaply (for a live "cells kept" count).

    Reuses the obs QC columns of :func:`qc_metrics` (computed only if missing). A
    cell passes with at least ``min_genes`` detected genes and at most
    ``max_mito_pct`` % mitochondrial counts; a gene passes when detected in at
    least ``min_cells`` of the *passing* cells.

    Returns
    -------
    ``(cell_mask, gene_mask)``, boolean arrays of length n_obs and n_vars.
    """
    if not all(c in adata.obs for c in _QC_OBS):
        qc_metrics(adata)
    obs = adata.obs
    cell_mask = (obs["n_genes_by_counts"].to_numpy() >= min_genes) & (
        obs["pct_counts_mt"].to_numpy() <= max_mito_pct
    )
    return cell_mask, _gene_mask(adata, cell_mask, min_cells)


def _batch_losses(adata, cell_mask, batch_key, max_mito_pct) -> tuple[np.ndarray, dict]:
    """Drop batches that QC leaves with fewer than MIN_CELLS_PER_BATCH cells; warn by name."""
    batch = adata.obs[batch_key].astype(str).to_numpy()
    names, before = np.unique(batch, return_counts=True)
    kept = np.array([int(cell_mask[batch == b].sum()) for b in names])
    tiny = [str(b) for b, k in zip(names, kept) if 0 < k < MIN_CELLS_PER_BATCH]
    gone = [str(b) for b, k in zip(names, kept) if k == 0]
    loosen = f"loosen the thresholds (e.g. raise max_mito_pct from {max_mito_pct}) to keep"
    if gone:
        warnings.warn(
            f"QC removed every cell of batch(es) {', '.join(map(repr, gone))}; they are "
            f"left out of integration: {loosen} them",
            SchelixWarning,
            stacklevel=3,
        )
    if tiny:
        warnings.warn(
            f"QC leaves fewer than {MIN_CELLS_PER_BATCH} cells in batch(es) "
            f"{', '.join(f'{b!r} ({kept[names == b][0]} of {before[names == b][0]})' for b in tiny)}; "
            f"they are left out (too small for batch-aware HVGs): {loosen} them",
            SchelixWarning,
            stacklevel=3,
        )
        cell_mask = cell_mask & ~np.isin(batch, tiny)
    for b, n0, k in zip(names, before, kept):
        if k >= MIN_CELLS_PER_BATCH and k < 0.1 * n0:
            warnings.warn(
                f"QC keeps only {k} of {n0} cells of batch '{b}': {loosen} more",
                SchelixWarning,
                stacklevel=3,
            )
    kept = np.array([int(cell_mask[batch == b].sum()) for b in names])
    return cell_mask, {
        "cells_per_batch": {
            "batch": [str(b) for b in names],
            "before": [int(v) for v in before],
            "kept": [int(v) for v in kept],
        },
        "removed_batches": gone + tiny,
    }


def filter_qc(
    adata: ad.AnnData,
    *,
    min_genes: int = 200,
    min_cells: int = 3,
    max_mito_pct: float = 5.0,
    batch_key: str | None = None,
) -> ad.AnnData:
    """Remove low-quality cells and rarely detected genes; return a filtered copy.

    Records parameters and what was kept in ``uns["schelix"]["preprocess"]``
    (cells and genes before/kept; with ``batch_key`` also ``cells_per_batch`` =
    ``{"batch", "before", "kept"}`` lists and ``removed_batches``). A batch that QC
    empties, or leaves with fewer than 10 cells, is left out with a
    :class:`SchelixWarning` naming it.

    Raises
    ------
    SchelixError
        When fewer than 50 cells or 200 genes remain.
    """
    cell_mask, gene_mask = qc_masks(
        adata, min_genes=min_genes, min_cells=min_cells, max_mito_pct=max_mito_pct
    )
    per_batch: dict = {}
    if batch_key is not None:
        cell_mask, per_batch = _batch_losses(adata, cell_mask, batch_key, max_mito_pct)
        gene_mask = _gene_mask(adata, cell_mask, min_cells)
    n_cells, n_genes = int(cell_mask.sum()), int(gene_mask.sum())
    if n_cells < MIN_CELLS_AFTER_QC or n_genes < MIN_GENES_AFTER_QC:
        n_mt = int((adata.obs["pct_counts_mt"].to_numpy() > max_mito_pct).sum())
        n_low = int((adata.obs["n_genes_by_counts"].to_numpy() < min_genes).sum())
        raise SchelixError(
            f"After QC only {n_cells} of {adata.n_obs} cells and {n_genes} of {adata.n_vars} genes "
            f"remain (need at least {MIN_CELLS_AFTER_QC} cells and {MIN_GENES_AFTER_QC} genes; "
            f"{n_low} cells have < {min_genes} genes, {n_mt} cells > {max_mito_pct}% mitochondrial)",
            f"loosen the thresholds: lower min_genes (now {min_genes}) or min_cells (now "
            f"{min_cells}), or raise max_mito_pct (now {max_mito_pct})",
        )
    out = adata[cell_mask, gene_mask].copy()
    rec = _record(out)
    rec.update(
        min_genes=int(min_genes),
        min_cells=int(min_cells),
        max_mito_pct=float(max_mito_pct),
        cells_before=int(adata.n_obs),
        cells_kept=n_cells,
        genes_before=int(adata.n_vars),
        genes_kept=n_genes,
        mito_genes=int(adata.var["mt"].sum()),
        **per_batch,
    )
    notes = rec.setdefault("notes", [])
    if "counts" not in adata.layers:
        notes.append("No raw counts: QC metrics (genes detected, mitochondrial %) use X as given")
    if rec["mito_genes"] == 0:
        notes.append("No MT-/mt- genes found: the mitochondrial filter had no effect")
    if batch_key is not None and hasattr(out.obs[batch_key], "cat"):
        out.obs[batch_key] = out.obs[batch_key].cat.remove_unused_categories()
    qc_metrics(out)  # gene-level metrics now refer to the kept cells
    return out


def normalize(adata: ad.AnnData, *, target_sum: float = 1e4) -> None:
    """``X := log1p(normalize_total(counts, target_sum))`` as float32 CSR, in place.

    Without ``layers["counts"]`` the data is taken to be log-normalized already
    (see :func:`schelix.io.read`) and ``X`` is left as it is (noted in uns).
    """
    rec = _record(adata)
    rec["target_sum"] = float(target_sum)
    if "counts" not in adata.layers:
        rec["normalized"] = False
        rec.setdefault("notes", []).append(
            "No raw counts: normalization skipped, X used as given (log-normalized)"
        )
        adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
        return
    adata.X = sp.csr_matrix(adata.layers["counts"], dtype=np.float32, copy=True)
    adata.uns.pop("log1p", None)
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    rec["normalized"] = True


def highly_variable(adata: ad.AnnData, *, batch_key: str, n_top_genes: int = 2000) -> None:
    """The shared, batch-aware HVG pool in ``var["highly_variable"]``.

    ``seurat_v3`` on ``layers["counts"]`` with ``batch_key`` (needs scikit-misc);
    without counts (or without scikit-misc) falls back to ``seurat`` on the
    log-normalized ``X``, with a :class:`SchelixWarning`. ``n_top_genes`` is capped
    at the number of genes.
    """
    n = int(min(n_top_genes, adata.n_vars))
    rec = _record(adata)
    flavor = "seurat_v3" if "counts" in adata.layers else "seurat"
    if flavor == "seurat_v3":
        try:
            import skmisc  # noqa: F401  (seurat_v3's loess)
        except ImportError:
            flavor = "seurat"
            warnings.warn(
                "scikit-misc is not installed: HVGs use flavor 'seurat' on log data "
                "instead of 'seurat_v3' on counts (pip install scikit-misc)",
                SchelixWarning,
                stacklevel=2,
            )
    sizes = adata.obs[batch_key].value_counts()
    small = sizes[(sizes > 0) & (sizes < MIN_CELLS_PER_BATCH)]
    if len(small):
        raise SchelixError(
            f"Batch(es) {', '.join(f'{b!r} ({k} cells)' for b, k in small.items())} are too small "
            f"for batch-aware HVGs (need {MIN_CELLS_PER_BATCH} cells each)",
            "remove or merge those batches (filter_qc with batch_key drops them for you)",
        )
    if flavor == "seurat_v3":
        try:
            sc.pp.highly_variable_genes(
                adata, flavor="seurat_v3", layer="counts", batch_key=batch_key, n_top_genes=n
            )
        except ValueError as e:  # loess fit failure in a degenerate batch
            flavor = "seurat"
            warnings.warn(
                f"HVG flavor 'seurat_v3' failed ({e}); using 'seurat' on log data",
                SchelixWarning,
                stacklevel=2,
            )
    if flavor == "seurat":
        sc.pp.highly_variable_genes(adata, flavor="seurat", batch_key=batch_key, n_top_genes=n)
    if n < n_top_genes:
        rec.setdefault("notes", []).append(f"n_top_genes capped at the {n} genes available")
    rec.update(
        hvg_flavor=flavor,
        n_top_genes=int(n_top_genes),
        n_hvg=int(adata.var["highly_variable"].sum()),
    )


def preprocess(
    adata: ad.AnnData,
    *,
    batch_key: str,
    min_genes: int = 200,
    min_cells: int = 3,
    max_mito_pct: float = 5.0,
    target_sum: float = 1e4,
    n_top_genes: int = 2000,
) -> ad.AnnData:
    """The full shared pipeline: QC filters, normalize + log1p, batch-aware HVGs.

    Parameters
    ----------
    adata
        Raw counts in ``X``/``layers["counts"]`` (as :func:`schelix.io.read` gives),
        or log-normalized data only (then normalization is skipped).
    batch_key
        obs column with the batch of each cell.
    min_genes, min_cells, max_mito_pct
        QC thresholds (paper: 200, 3, 5 %).
    target_sum, n_top_genes
        Library size for normalization and size of the HVG pool.

    Returns
    -------
    A new AnnData (the input is not changed), see the module docstring.
    """
    out = adata.copy()
    validate(out, batch_key=batch_key)
    out.uns.setdefault("schelix", {})["preprocess"] = {}
    if "counts" not in out.layers:
        source, counts = find_counts(out)
        if source != "none":
            out.layers["counts"] = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    qc_metrics(out)  # fresh: columns from an earlier run may be stale
    out = filter_qc(
        out,
        min_genes=min_genes,
        min_cells=min_cells,
        max_mito_pct=max_mito_pct,
        batch_key=batch_key,
    )
    left = out.obs[batch_key].cat.categories
    if len(left) < 2:
        raise SchelixError(
            f"After QC only batch '{left[0]}' is left in '{batch_key}'",
            "integration needs two batches: loosen the QC thresholds (e.g. raise max_mito_pct)",
        )
    normalize(out, target_sum=target_sum)
    highly_variable(out, batch_key=batch_key, n_top_genes=n_top_genes)
    rec = _record(out)
    rec.update(batch_key=str(batch_key), counts_found="counts" in out.layers)
    return out


def hvg_mask(adata: ad.AnnData) -> np.ndarray:
    """Boolean mask of the shared HVG pool (``var["highly_variable"]``).

    Falls back to every gene, with a :class:`~schelix.errors.SchelixWarning`,
    when the AnnData was not run through :func:`schelix.pp.preprocess`.
    """
    if "highly_variable" in adata.var:
        mask = np.asarray(adata.var["highly_variable"], dtype=bool)
        if mask.sum() >= 2:
            return mask
    warnings.warn(
        "var['highly_variable'] is missing or empty; using every gene "
        "(run schelix.pp.preprocess first to select the shared HVG pool)",
        SchelixWarning,
        stacklevel=2,
    )
    return np.ones(adata.n_vars, dtype=bool)
