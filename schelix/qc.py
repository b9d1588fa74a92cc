"""Quality control of cells and genes: adaptive per-batch outliers (default) or fixed thresholds.

``qc="adaptive"`` (default) flags, within each batch, the cells that are outliers by
median absolute deviations (MADs) — the approach of the single-cell best-practices book
(Heumos et al. 2023, Nat Rev Genet; "Quality control" chapter), one-sided as in scater's
``quickPerCellQC`` (OSCA, "Quality Control"):

- ``log1p(total counts)`` or ``log1p(genes detected)`` more than ``n_mads`` (5) MADs
  *below* the batch median (empty or broken droplets). Cells far *above* it are kept:
  on Kang et al. those are monocytes, DCs and megakaryocytes (cell types with more RNA),
  and removing them cost scHelix 0.01-0.02 Overall (``benchmarks/EXPERIMENTS.md``);
  doublets are a doublet detector's job, not a count cut-off's;
- mitochondrial % above ``max(median + n_mads MADs, 10 %)``: the 10 % floor (Osorio &
  Cai 2021, Bioinformatics 37:963, human tissues) keeps a clean batch whole;
- fewer detected genes than ``200 x panel size / 20,000`` (at most 200): a hard floor
  that scales with the number of genes measured.

``qc="fixed"`` uses the paper's thresholds: at least 200 genes, at most 5 %
mitochondrial. Either way genes seen in fewer than ``min_cells`` kept cells are
dropped, and a batch that would lose more than half its cells stops the run with a
:class:`~schelix.errors.SchelixError` naming the batch, the count per reason and the fix.
"""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from scipy.stats import median_abs_deviation

from schelix.errors import SchelixError
from schelix.input_type import kind_of

__all__ = [
    "MITO_PREFIXES",
    "QC_MODES",
    "SYMBOL_COLUMNS",
    "cell_flags",
    "check_batches",
    "default_min_genes",
    "detected_genes",
    "mito_genes",
    "qc_masks",
    "qc_metrics",
    "qc_summary",
    "summary_frame",
]

QC_MODES = ("adaptive", "fixed")
MITO_PREFIXES = ("MT-", "mt-")  # human, mouse
SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "feature_name", "gene_name", "gene_names",
                  "symbol", "symbols")  # fmt: skip
N_MADS = 5.0
MITO_FLOOR_PCT = 10.0
PAPER_MIN_GENES = 200
PAPER_MAX_MITO_PCT = 5.0
PANEL_GENES = 20_000  # a whole transcriptome; smaller panels get a proportionally lower floor
MAX_BATCH_LOSS = 0.5
_MIN_LOG_MAD = 0.01  # normalized data has near-constant totals: no cell is an outlier by them
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}")
QC_OBS = ("n_genes_by_counts", "total_counts", "pct_counts_mt")
#: per-cell flag column -> what the summary calls it
REASONS = {
    "low": "few counts/genes",
    "mito": "high mito %",
    "min_genes": "< min genes",
}


def mito_genes(adata: ad.AnnData) -> tuple[np.ndarray, str]:
    """Mitochondrial genes by symbol (``MT-``/``mt-``), in var_names or a symbol column.

    Returns
    -------
    ``(mask, note)``: the boolean mask over genes and one sentence saying where they
    were found, or why there are none (Ensembl IDs without symbols, none present).
    """
    names = adata.var_names.astype(str)
    mask = np.asarray(names.str.startswith(MITO_PREFIXES))
    if mask.any():
        return mask, f"{int(mask.sum())} mitochondrial genes (MT-/mt-) found"
    for col in SYMBOL_COLUMNS:
        if col in adata.var:
            sym = adata.var[col].astype(str)
            mask = np.asarray(sym.str.startswith(MITO_PREFIXES))
            if mask.any():
                return (
                    mask,
                    f"{int(mask.sum())} mitochondrial genes found by symbol in var['{col}']",
                )
    if np.mean([bool(_ENSEMBL.match(n)) for n in names[:1000]]) > 0.5:
        return mask, (
            "Gene names are Ensembl IDs and var has no gene-symbol column ("
            + ", ".join(SYMBOL_COLUMNS[:4])
            + "): mitochondrial genes cannot be found, so QC does not use mitochondrial reads. "
            "Add a symbol column to use them"
        )
    return mask, (
        "No mitochondrial genes (MT-/mt-) in the data (often removed upstream): QC does not "
        "use mitochondrial reads"
    )


def _linear(adata: ad.AnnData):
    """The non-log values QC counts on: counts, count-like X, or expm1 of log-normalized X."""
    if "counts" in adata.layers:
        return adata.layers["counts"]
    if kind_of(adata) == "log-normalized":
        x = sp.csr_matrix(adata.X, dtype=np.float32, copy=True)
        x.data = np.expm1(x.data)
        return x
    return adata.X


def qc_metrics(adata: ad.AnnData) -> None:
    """Per-cell and per-gene QC metrics (scanpy ``calculate_qc_metrics``), in place.

    Writes ``var["mt"]`` (see :func:`mito_genes`), ``obs["n_genes_by_counts"]``,
    ``obs["total_counts"]``, ``obs["pct_counts_mt"]`` and ``var["n_cells_by_counts"]``,
    computed on ``layers["counts"]`` when present, else on ``X`` (``expm1`` of it when
    log-normalized), and ``uns["schelix"]["qc_mito_note"]``.
    """
    mask, note = mito_genes(adata)
    adata.var["mt"] = mask
    tmp = ad.AnnData(X=_linear(adata), obs=pd.DataFrame(index=adata.obs_names),
                     var=pd.DataFrame({"mt": mask}, index=adata.var_names))  # fmt: skip
    sc.pp.calculate_qc_metrics(tmp, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    for col in ("n_genes_by_counts", "total_counts", "total_counts_mt", "pct_counts_mt"):
        adata.obs[col] = tmp.obs[col].to_numpy()
    for col in tmp.var.columns.drop("mt"):
        adata.var[col] = tmp.var[col].to_numpy()
    adata.uns.setdefault("schelix", {})["qc_mito_note"] = note


def default_min_genes(n_genes: int, qc: str = "adaptive") -> int:
    """The hard floor on detected genes: 200 (fixed), or 200 scaled by panel size (adaptive)."""
    if qc == "fixed":
        return PAPER_MIN_GENES
    return max(1, round(PAPER_MIN_GENES * min(1.0, n_genes / PANEL_GENES)))


def _check_mode(qc: str) -> None:
    if qc not in QC_MODES:
        raise SchelixError(f"Unknown QC mode {qc!r}", f"use one of {', '.join(QC_MODES)}")


def _batches(adata: ad.AnnData, batch_key: str | None) -> tuple[np.ndarray, list[str]]:
    """Each cell's batch as a string, and the batches present in category order."""
    if batch_key is None:
        return np.full(adata.n_obs, "all cells"), ["all cells"]
    col = adata.obs[batch_key]
    batch = col.astype(str).to_numpy()
    order = [str(c) for c in col.cat.categories] if hasattr(col, "cat") else sorted(set(batch))
    return batch, [b for b in order if b in set(batch)]


def _lower_bound(x: np.ndarray, n_mads: float, min_mad: float = 0.0) -> float:
    return float(np.median(x)) - n_mads * max(float(median_abs_deviation(x)), min_mad)


def _upper_bound(x: np.ndarray, n_mads: float) -> float:
    return float(np.median(x)) + n_mads * float(median_abs_deviation(x))


def cell_flags(
    adata: ad.AnnData,
    *,
    batch_key: str | None = None,
    qc: str = "adaptive",
    min_genes: int | None = None,
    max_mito_pct: float | None = None,
    n_mads: float = N_MADS,
    mito_floor_pct: float = MITO_FLOOR_PCT,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Why each cell fails QC, and each batch's thresholds (see the module docstring).

    ``min_genes`` replaces the default floor (:func:`default_min_genes`);
    ``max_mito_pct`` is the cut-off in ``"fixed"`` mode (default 5) and an extra cap in
    ``"adaptive"`` mode (default none). Reuses the obs columns of :func:`qc_metrics`
    (computed when missing).

    Returns
    -------
    ``(flags, thresholds)``: per cell the booleans of :data:`REASONS` and ``keep``; per
    batch ``gene_floor``, ``mito_cutoff`` (NaN without mitochondrial genes) and
    (adaptive) the lower bounds ``counts_low`` and ``genes_low``.
    """
    _check_mode(qc)
    if not all(c in adata.obs for c in QC_OBS):
        qc_metrics(adata)
    obs = adata.obs
    genes = obs["n_genes_by_counts"].to_numpy(dtype=float)
    total = obs["total_counts"].to_numpy(dtype=float)
    mito = obs["pct_counts_mt"].to_numpy(dtype=float)
    has_mito = bool(adata.var["mt"].any()) if "mt" in adata.var else bool(mito.any())
    floor = int(min_genes) if min_genes is not None else default_min_genes(adata.n_vars, qc)
    batch, names = _batches(adata, batch_key)
    flags = pd.DataFrame(False, index=obs.index, columns=list(REASONS))
    flags["min_genes"] = genes < floor
    rows = []
    for b in names:
        idx = batch == b
        row: dict = {"batch": str(b), "gene_floor": floor}
        if qc == "fixed":
            cut = PAPER_MAX_MITO_PCT if max_mito_pct is None else float(max_mito_pct)
        else:
            low = np.zeros(int(idx.sum()), dtype=bool)
            for name, x in (("counts", np.log1p(total[idx])), ("genes", np.log1p(genes[idx]))):
                lo = _lower_bound(x, n_mads, _MIN_LOG_MAD)
                low |= x < lo
                row[f"{name}_low"] = float(np.expm1(lo))
            flags.loc[idx, "low"] = low
            cut = max(_upper_bound(mito[idx], n_mads), mito_floor_pct)
            if max_mito_pct is not None:
                cut = min(cut, float(max_mito_pct))
        row["mito_cutoff"] = float(cut) if has_mito else float("nan")
        if has_mito:
            flags.loc[idx, "mito"] = mito[idx] > cut
        rows.append(row)
    flags["keep"] = ~flags[list(REASONS)].any(axis=1)
    return flags, pd.DataFrame(rows).set_index("batch")


def detected_genes(adata: ad.AnnData, cell_mask: np.ndarray, min_cells: int) -> np.ndarray:
    """Genes detected in at least ``min_cells`` of the masked cells (one pass over non-zeros)."""
    m = sp.csr_matrix(adata.layers["counts"] if "counts" in adata.layers else adata.X)
    row_kept = np.repeat(cell_mask, np.diff(m.indptr)) & (m.data != 0)
    return np.bincount(m.indices[row_kept], minlength=adata.n_vars) >= min_cells


def qc_masks(adata: ad.AnnData, *, min_cells: int = 3, **options) -> tuple[np.ndarray, np.ndarray]:
    """Which cells and genes pass QC, cheaply (for a live "cells kept" count).

    ``options`` are those of :func:`cell_flags` (``batch_key``, ``qc``, ``min_genes``,
    ``max_mito_pct``, ``n_mads``, ``mito_floor_pct``); a gene passes when detected in at
    least ``min_cells`` of the *passing* cells.

    Returns
    -------
    ``(cell_mask, gene_mask)``, boolean arrays of length n_obs and n_vars.
    """
    cell_mask = cell_flags(adata, **options)[0]["keep"].to_numpy()
    return cell_mask, detected_genes(adata, cell_mask, min_cells)


def qc_summary(adata: ad.AnnData, *, batch_key: str | None = None, qc: str = "adaptive",
               min_cells: int = 3, **options) -> dict:  # fmt: skip
    """What QC would do, per batch: the record that :func:`schelix.pp.filter_qc` stores.

    Returns
    -------
    ``{"qc", "options", "per_batch": {column: list}, "cells_before", "cells_kept",
    "genes_before", "genes_kept", "mito_note", "cell_mask", "gene_mask"}``; ``per_batch``
    has ``batch``, ``cells``, ``kept``, a count per reason (cells may have several) and
    the thresholds. :func:`summary_frame` turns it into a table.
    """
    flags, thr = cell_flags(adata, batch_key=batch_key, qc=qc, **options)
    batch, names = _batches(adata, batch_key)
    per = flags.groupby(batch).sum().reindex(names)
    per.insert(0, "cells", pd.Series(batch).value_counts().reindex(per.index).to_numpy())
    per = per.rename(columns={"keep": "kept"}).join(thr)
    cell_mask = flags["keep"].to_numpy()
    gene_mask = detected_genes(adata, cell_mask, min_cells)
    return {
        "qc": qc,
        "options": {k: v for k, v in options.items() if v is not None},
        "per_batch": {"batch": [str(b) for b in per.index]}
        | {c: per[c].to_numpy().tolist() for c in per.columns},
        "cells_before": int(adata.n_obs),
        "cells_kept": int(cell_mask.sum()),
        "genes_before": int(adata.n_vars),
        "genes_kept": int(gene_mask.sum()),
        "mito_note": str(adata.uns.get("schelix", {}).get("qc_mito_note", "")),
        "cell_mask": cell_mask,
        "gene_mask": gene_mask,
    }


def summary_frame(summary: dict) -> pd.DataFrame:
    """The per-batch QC table shown by the CLI and the app (from :func:`qc_summary`)."""
    per = pd.DataFrame(summary["per_batch"]).set_index("batch")
    out = pd.DataFrame(index=per.index)
    out["cells"] = per["cells"].astype(int)
    out["kept"] = per["kept"].astype(int)
    out["% kept"] = (100 * per["kept"] / per["cells"].clip(lower=1)).round(1)
    for col, label in REASONS.items():
        if col in per and (summary["qc"] == "adaptive" or col in ("mito", "min_genes")):
            out[label] = per[col].astype(int)
    # a cell needs at least each batch's lower MAD bound and the hard floor
    floor = per["gene_floor"].astype(float)
    if "genes_low" in per:
        floor = np.maximum(floor, np.ceil(per["genes_low"]))
        out["min counts"] = np.ceil(per["counts_low"]).clip(lower=0).astype(int)
    out["min genes"] = floor.astype(int)
    out["max mito %"] = per["mito_cutoff"].round(1)
    return out


def _reason(col: str, row: dict) -> str:
    if col == "mito":
        return f"above {row['mito_cutoff']:.3g} % mitochondrial reads"
    if col == "min_genes":
        return f"with fewer than {int(row['gene_floor'])} genes"
    return "with " + REASONS[col] + " (outliers in their batch)"


def check_batches(summary: dict) -> None:
    """Stop when QC would remove more than half of some batch: name it, the reasons, the fix."""
    per = pd.DataFrame(summary["per_batch"])
    lost = per[per["cells"] - per["kept"] > MAX_BATCH_LOSS * per["cells"]]
    if lost.empty:
        return
    parts = []
    for r in lost.to_dict("records"):
        why = ", ".join(f"{int(r[c])} {_reason(c, r)}" for c in REASONS if r.get(c, 0))
        parts.append(f"batch '{r['batch']}' keeps {int(r['kept'])} of {int(r['cells'])} ({why})")
    if summary["qc"] == "fixed":
        fix = ("use the adaptive QC (the default: --qc adaptive, API qc='adaptive'), which sets "
               "thresholds per batch, or loosen the fixed ones (--max-mito-pct, --min-genes)")  # fmt: skip
    else:
        fix = ("check that batch: most of its cells are outliers against its own median, so it may "
               "be failed or empty droplets; remove it, or set thresholds yourself with --qc fixed "
               "--min-genes N --max-mito-pct P (API qc='fixed', min_genes=, max_mito_pct=)")  # fmt: skip
    raise SchelixError(
        "QC would remove more than half of a batch: " + "; ".join(parts) + " (a cell may "
        "fail for several reasons)",
        fix,
    )
