"""Shared preprocessing (paper Appendix B.1): QC, normalization and the batch-aware HVG pool.

:func:`preprocess` takes any input type (:mod:`schelix.input_type`), runs QC
(:mod:`schelix.qc`: adaptive per-batch outliers by default), normalizes and selects
HVGs. Its output is the input of every later step: all QC-passing genes, ``X`` =
log-normalized float32 CSR, ``layers["counts"]`` = raw counts (when the input had or
gave them), ``var["highly_variable"]`` = the shared HVG pool, ``obs[batch_key]``
categorical, and ``uns["schelix"]["preprocess"]`` = parameters, the input kind and
the per-batch QC record (``qc``).
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

from schelix import qc as qc_mod
from schelix.errors import SchelixError, SchelixWarning
from schelix.input_type import apply, detect, kind_of
from schelix.qc import (
    MITO_PREFIXES,
    QC_MODES,
    check_batches,
    qc_masks,
    qc_metrics,
    qc_summary,
    summary_frame,
)
from schelix.validate import validate

__all__ = [
    "MITO_PREFIXES",
    "QC_MODES",
    "check_batches",
    "hvg_mask",
    "filter_qc",
    "highly_variable",
    "normalize",
    "preprocess",
    "qc_masks",
    "qc_metrics",
    "qc_summary",
    "summary_frame",
]

MIN_CELLS_AFTER_QC = 50
MIN_GENES_AFTER_QC = 200
MIN_CELLS_PER_BATCH = 10  # seurat_v3's loess fails (or crashes) on smaller batches


def _record(adata: ad.AnnData) -> dict:
    return adata.uns.setdefault("schelix", {}).setdefault("preprocess", {})


def _drop_tiny(adata, summary: dict, batch_key: str) -> list[str]:
    """Leave out batches that QC leaves with fewer than MIN_CELLS_PER_BATCH cells; warn by name."""
    per = summary["per_batch"]
    tiny = [(b, k, n) for b, k, n in zip(per["batch"], per["kept"], per["cells"])
            if k < MIN_CELLS_PER_BATCH]  # fmt: skip
    if tiny:
        warnings.warn(
            "QC leaves fewer than "
            f"{MIN_CELLS_PER_BATCH} cells in batch(es) {', '.join(f'{b!r} ({k} of {n})' for b, k, n in tiny)}; "
            "they are left out (too small for batch-aware HVGs): merge them with another batch "
            "to keep them",
            SchelixWarning,
            stacklevel=3,
        )
        drop = np.isin(adata.obs[batch_key].astype(str).to_numpy(), [b for b, _, _ in tiny])
        summary["cell_mask"] = summary["cell_mask"] & ~drop
    return [str(b) for b, _, _ in tiny]


def filter_qc(
    adata: ad.AnnData,
    *,
    batch_key: str | None = None,
    qc: str = "adaptive",
    min_genes: int | None = None,
    min_cells: int = 3,
    max_mito_pct: float | None = None,
    n_mads: float = qc_mod.N_MADS,
    mito_floor_pct: float = qc_mod.MITO_FLOOR_PCT,
    copy: bool = True,
) -> ad.AnnData:
    """Remove low-quality cells and rarely detected genes; return a filtered copy.

    With ``copy=False`` the cells and genes are removed from ``adata`` itself (anndata's
    in-place subsetting, as scanpy's filters do), which is then returned: the unfiltered
    matrices are released as soon as the filtered ones exist (about half the peak memory of
    a copy on large data).

    ``qc="adaptive"`` (default): per-batch MAD outliers; ``qc="fixed"``: the paper's
    200 genes / 5 % mitochondrial (see :mod:`schelix.qc` for every rule and option).
    Records :func:`schelix.qc.qc_summary` (``per_batch``: cells, kept, count per reason,
    thresholds) and what was kept in ``uns["schelix"]["preprocess"]``. A batch that QC
    leaves with fewer than 10 cells is left out with a :class:`SchelixWarning`.

    Raises
    ------
    SchelixError
        When a batch would lose more than half its cells, or fewer than 50 cells or
        200 genes remain.
    """
    summary = qc_mod.qc_summary(
        adata, batch_key=batch_key, qc=qc, min_cells=min_cells, min_genes=min_genes,
        max_mito_pct=max_mito_pct, n_mads=n_mads, mito_floor_pct=mito_floor_pct,
    )  # fmt: skip
    check_batches(summary)
    removed = _drop_tiny(adata, summary, batch_key) if batch_key is not None else []
    cell_mask = summary.pop("cell_mask")
    gene_mask = qc_mod.detected_genes(adata, cell_mask, min_cells)
    summary.pop("gene_mask")
    n_cells, n_genes = int(cell_mask.sum()), int(gene_mask.sum())
    n_mito = int(adata.var["mt"].sum())
    if n_cells < MIN_CELLS_AFTER_QC or n_genes < MIN_GENES_AFTER_QC:
        raise SchelixError(
            f"After QC only {n_cells} of {adata.n_obs} cells and {n_genes} of {adata.n_vars} genes "
            f"remain (need at least {MIN_CELLS_AFTER_QC} cells and {MIN_GENES_AFTER_QC} genes)",
            "provide more cells or genes (a whole-transcriptome matrix), or loosen QC: lower "
            f"min_cells (now {min_cells}) or, with qc='fixed', min_genes and max_mito_pct",
        )
    out = _subset(adata, cell_mask, gene_mask, copy=copy)
    rec = _record(out)
    rec.update(
        qc=summary,
        min_cells=int(min_cells),
        cells_before=len(cell_mask),
        cells_kept=n_cells,
        genes_before=len(gene_mask),
        genes_kept=n_genes,
        mito_genes=n_mito,
        removed_batches=removed,
    )
    notes = rec.setdefault("notes", [])
    if summary["mito_note"] and not rec["mito_genes"]:
        notes.append(summary["mito_note"])
    if batch_key is not None and hasattr(out.obs[batch_key], "cat"):
        out.obs[batch_key] = out.obs[batch_key].cat.remove_unused_categories()
    qc_metrics(out)  # gene-level metrics now refer to the kept cells
    return out


def _subset(adata: ad.AnnData, cells: np.ndarray, genes: np.ndarray, *, copy: bool) -> ad.AnnData:
    """``adata[cells, genes]``: a copy, or ``adata`` itself subset in place (``copy=False``)."""
    if copy or adata.is_view or adata.isbacked:
        return adata[cells, genes].copy()
    if not cells.all():
        adata._inplace_subset_obs(cells)  # anndata's in-place subsetting (scanpy's filters use it)
    if not genes.all():
        adata._inplace_subset_var(genes)
    return adata


def normalize(adata: ad.AnnData, *, target_sum: float = 1e4) -> None:
    """``X := log1p(normalize_total(values, target_sum))`` as float32 CSR, in place.

    The values are ``layers["counts"]`` when present, else a count-like ``X``
    (normalized or corrected, not logged); a log-normalized ``X`` (see
    :mod:`schelix.input_type`) is left as it is (noted in uns).
    """
    rec = _record(adata)
    rec["target_sum"] = float(target_sum)
    kind = kind_of(adata)
    if kind == "log-normalized":
        rec["normalized"] = False
        rec.setdefault("notes", []).append(
            "No raw counts: normalization skipped, X used as given (log-normalized)"
        )
        adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
        return
    source = adata.layers["counts"] if "counts" in adata.layers else adata.X
    adata.X = sp.csr_matrix(source, dtype=np.float32, copy=True)
    adata.uns.pop("log1p", None)
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    rec["normalized"] = True
    if kind == "count-like":
        rec.setdefault("notes", []).append(
            "X held count-like values (not integer, not logged): normalized and log1p-transformed"
        )


#: loess spans tried in turn by ``seurat_v3``: scanpy's default first; a small batch can make
#: its loess fit near-singular (Kang's 272-cell donor at 0.3 and 0.4), which a wider span fixes
HVG_SPANS = (0.3, 0.5, 1.0)


def _seurat_v3(adata: ad.AnnData, *, batch_key: str, n_top_genes: int) -> float:
    """Run ``seurat_v3`` with the first span of :data:`HVG_SPANS` whose loess fits.

    Returns the span used; the widest span's ``ValueError`` propagates when none fits.
    """
    *narrow, widest = HVG_SPANS

    def fit(span: float) -> float:
        sc.pp.highly_variable_genes(
            adata, flavor="seurat_v3", layer="counts", batch_key=batch_key,
            n_top_genes=n_top_genes, span=span,
        )  # fmt: skip
        return span

    for span in narrow:
        try:
            return fit(span)
        except ValueError:  # loess fit failure in a degenerate batch: try a wider span
            continue
    return fit(widest)


def highly_variable(adata: ad.AnnData, *, batch_key: str, n_top_genes: int = 2000) -> None:
    """The shared, batch-aware HVG pool in ``var["highly_variable"]``.

    ``seurat_v3`` on ``layers["counts"]`` with ``batch_key`` (needs scikit-misc); when its
    loess fit fails on a batch, the wider spans of :data:`HVG_SPANS` are tried in turn (the
    span used is recorded as ``hvg_span``). Without counts (or without scikit-misc, or when
    every span fails) falls back to ``seurat`` on the log-normalized ``X``, with a
    :class:`SchelixWarning`. ``n_top_genes`` is capped at the number of genes.
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
    span = None
    if flavor == "seurat_v3":
        try:
            span = _seurat_v3(adata, batch_key=batch_key, n_top_genes=n)
        except ValueError as e:  # no span fits
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
        hvg_span=span,
        n_top_genes=int(n_top_genes),
        n_hvg=int(adata.var["highly_variable"].sum()),
    )


def preprocess(
    adata: ad.AnnData,
    *,
    batch_key: str,
    qc: str = "adaptive",
    min_genes: int | None = None,
    min_cells: int = 3,
    max_mito_pct: float | None = None,
    n_mads: float = qc_mod.N_MADS,
    target_sum: float = 1e4,
    n_top_genes: int = 2000,
    copy: bool = True,
) -> ad.AnnData:
    """The full shared pipeline: input type, QC, normalize + log1p, batch-aware HVGs.

    Parameters
    ----------
    adata
        Raw counts (in ``X``, ``layers["counts"]`` or ``raw``), count-like or
        log-normalized values; scaled data is refused (:mod:`schelix.input_type`).
    batch_key
        obs column with the batch of each cell.
    qc
        ``"adaptive"`` (default: per-batch MAD outliers) or ``"fixed"`` (the paper's
        200 genes / 5 % mitochondrial); see :mod:`schelix.qc`.
    min_genes, max_mito_pct, n_mads
        Override the mode's thresholds (``None``: the mode's defaults).
    min_cells
        Genes must be detected in this many kept cells (paper: 3).
    target_sum, n_top_genes
        Library size for normalization and size of the HVG pool.
    copy
        ``True`` (default): the input is not changed. ``False``: the input is consumed, its
        matrices filtered and replaced in place and released as the pipeline goes (what
        ``schelix run`` does: on a million cells this is 3 GB less peak memory); use the
        returned AnnData, which is then ``adata`` itself unless the values came from a
        ``raw`` with other genes.

    Returns
    -------
    The preprocessed AnnData, see the module docstring.
    """
    in_place = not copy and not (adata.is_view or adata.isbacked)  # a view or backed: copied
    out = adata if in_place else _detached(adata)
    out = apply(out, detect(out))
    # counts: X holds the same values as layers["counts"]; QC and filter one matrix, not two
    counts = kind_of(out) == "counts"
    if counts:
        del out.layers["counts"]
    validate(out, batch_key=batch_key)
    out.uns.setdefault("schelix", {})["preprocess"] = {}
    qc_metrics(out)  # fresh: columns from an earlier run may be stale
    out = filter_qc(
        out, batch_key=batch_key, qc=qc, min_genes=min_genes, min_cells=min_cells,
        max_mito_pct=max_mito_pct, n_mads=n_mads, copy=False,  # out is this call's own object
    )  # fmt: skip
    if counts:
        out.layers["counts"] = out.X  # normalize() writes X anew, from a copy
    left = out.obs[batch_key].cat.categories
    if len(left) < 2:
        raise SchelixError(
            f"After QC only batch '{left[0]}' is left in '{batch_key}'",
            "integration needs two batches with at least 10 cells each after QC",
        )
    normalize(out, target_sum=target_sum)
    highly_variable(out, batch_key=batch_key, n_top_genes=n_top_genes)
    rec = _record(out)
    rec.update(
        batch_key=str(batch_key), counts_found="counts" in out.layers, input_kind=kind_of(out)
    )
    return out


def _detached(adata: ad.AnnData) -> ad.AnnData:
    """A new AnnData sharing ``adata``'s matrices (no copy of the data: every step of
    :func:`preprocess` makes new matrices and never writes into these), with its own obs, var,
    uns and mappings, so the input is never changed. With ``raw``, a full copy."""
    import copy

    if adata.raw is not None or adata.is_view or adata.isbacked:
        return adata.copy()
    return ad.AnnData(
        X=adata.X,
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        uns=copy.deepcopy(dict(adata.uns)),
        obsm=dict(adata.obsm),
        varm=dict(adata.varm),
        obsp=dict(adata.obsp),
        varp=dict(adata.varp),
        layers=dict(adata.layers),
    )


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
