"""What the values of an upload are: raw counts, count-like, log-normalized or scaled.

:func:`detect` looks at ``layers["counts"]``, ``X`` and ``raw`` and decides which
matrix the pipeline uses and how:

========================  ============================================================
kind                      what the pipeline does
========================  ============================================================
``"counts"``              integer counts (found, or recovered exactly from normalized
                          or log-normalized values): normalize + log1p, HVGs
                          ``seurat_v3`` on the counts
``"count-like"``          non-negative, non-integer, not logged (CPM, ambient-corrected
                          or converted "counts"): normalize + log1p, HVGs ``seurat``
``"log-normalized"``      used as given, HVGs ``seurat``
scaled / centred          refused (:class:`~schelix.errors.SchelixError`)
========================  ============================================================

Counts are *recovered* when every cell's values are whole multiples of that cell's
smallest non-zero value (after ``expm1`` for log data): per-cell scaling (CPM,
``normalize_total``, size factors) keeps that structure, so ``value / smallest`` gives
back the integer counts exactly. Any value off a whole multiple (rounding, ambient
correction) means no recovery.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import scipy.sparse as sp

from schelix.errors import SchelixError

__all__ = [
    "InputType",
    "KINDS",
    "apply",
    "detect",
    "find_counts",
    "is_counts",
    "kind_of",
    "recover_counts",
    "value_problem",
]

KINDS = ("counts", "count-like", "log-normalized")
_N_SAMPLE = 20_000
_MAX_SMALLEST = 4
_LOG_MAX = 30.0  # log1p values above this are not expression (expm1(30) ~ 1e13)
_WHY_NOT_COUNTS = "count-based peers (scVI, sysVI) are unavailable"
LOGNORM_NOTE = (
    "No raw counts found (checked layers['counts'], X and raw): continuing on the "
    "log-normalized X. What changes: normalization is skipped, HVGs use flavor 'seurat' "
    f"on log data instead of 'seurat_v3' on counts, and {_WHY_NOT_COUNTS}. Provide raw "
    "counts for the full pipeline"
)
COUNTLIKE_NOTE = (
    "{where} holds non-integer values that are not log-transformed (normalized or corrected "
    "counts, e.g. CPM, ambient-RNA-corrected or converted from Seurat) and whole counts could "
    "not be recovered from them: they are normalized (per 10,000) and log1p-transformed, HVGs "
    f"use flavor 'seurat' on the log data, and {_WHY_NOT_COUNTS}. Provide raw integer counts "
    "for the full pipeline"
)


@dataclass(frozen=True)
class InputType:
    """What :func:`detect` found.

    Attributes
    ----------
    kind
        One of :data:`KINDS`.
    source
        Where the values come from: ``"layers/counts"``, ``"X"`` or ``"raw"``.
    values
        The matrix to use (float32 CSR): counts, count-like or log-normalized values.
    recovered
        True when integer counts were recovered from normalized values.
    note
        One plain sentence for the user when anything was done on their behalf.
    """

    kind: str
    source: str
    values: sp.csr_matrix
    recovered: bool = False
    note: str | None = None


def _data(m) -> np.ndarray:
    """The stored values of a matrix (non-zeros for sparse), as a flat array."""
    return np.asarray(m.data) if sp.issparse(m) else np.asarray(m).ravel()


def _sample(v: np.ndarray) -> np.ndarray:
    if v.size > _N_SAMPLE:
        v = v[np.random.default_rng(0).choice(v.size, _N_SAMPLE, replace=False)]
    return v.astype(np.float64, copy=False)


def value_problem(m) -> str | None:
    """'nan' for NaN/Inf, 'negative' for negative values, else None (all stored values)."""
    v = _data(m)
    if not np.isfinite(v).all():
        return "nan"
    if v.size and v.min() < 0:
        return "negative"
    return None


def is_counts(m) -> bool:
    """True when a sample of the values is finite, non-negative and integer-valued."""
    v = _sample(_data(m))
    return bool(np.isfinite(v).all() and (v >= 0).all() and np.array_equal(v, np.round(v)))


def recover_counts(m, *, log: bool = False) -> sp.csr_matrix | None:
    """Integer counts behind per-cell-scaled values, or None when there are none.

    Each cell's values are divided by its smallest non-zero value over ``k`` (after
    ``expm1`` when ``log``), with the smallest ``k`` in 1..4 that gives whole numbers
    for every stored value of the cell (within float32 round-off); every cell must
    fit, and not all values may be ones.
    """
    x = sp.csr_matrix(m, dtype=np.float64, copy=True)
    x.eliminate_zeros()
    if x.nnz == 0 or not np.isfinite(x.data).all() or x.data.min() < 0:
        return None
    if log:
        if x.data.max() > _LOG_MAX:
            return None
        x.data = np.expm1(x.data)
    lengths = np.diff(x.indptr)
    nonempty = lengths > 0
    starts, lengths = x.indptr[:-1][nonempty], lengths[nonempty]
    smallest = np.minimum.reduceat(x.data, starts)
    unit = np.full(len(starts), np.nan)
    for k in range(1, _MAX_SMALLEST + 1):  # a deep cell's smallest count may be 2, 3 or 4
        ratio = x.data * (k / np.repeat(smallest, lengths))
        off = np.abs(ratio - np.rint(ratio)) > 0.01 + 1e-5 * ratio
        fits = np.isnan(unit) & ~np.logical_or.reduceat(off, starts)
        unit[fits] = smallest[fits] / k
    if np.isnan(unit).any():
        return None
    whole = np.rint(x.data / np.repeat(unit, lengths))
    if whole.max() <= 1:
        return None
    x.data = whole
    return sp.csr_matrix(x, dtype=np.float32)


def _looks_log(m, uns) -> bool:
    """Log-normalized rather than count-like: scanpy's ``uns['log1p']`` mark, or values that
    stay small (max <= 30) without rows summing to one constant (normalized, not logged)."""
    if "log1p" in uns:
        return True
    v = _data(m)
    if v.size and v.max() > _LOG_MAX:
        return False
    sums = np.asarray(m.sum(axis=1)).ravel()
    sums = sums[sums > 0]
    return not (sums.size > 1 and sums.std() <= 1e-3 * sums.mean())


def _candidates(adata: ad.AnnData) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    if "counts" in adata.layers:
        out.append(("layers/counts", adata.layers["counts"]))
    if adata.X is not None:
        out.append(("X", adata.X))
    if adata.raw is not None:
        out.append(("raw", adata.raw.X))
    return out


def detect(adata: ad.AnnData) -> InputType:
    """Find the matrix to use and what kind of values it holds (see the module docstring).

    Order: integer counts in ``layers["counts"]``, ``X`` or ``raw``; counts recovered
    from one of them; the non-negative values of ``X`` (else ``raw``) as count-like or
    log-normalized.

    Raises
    ------
    SchelixError
        When no candidate is usable: NaN/Inf values, or negative (scaled/centred) values.
    """
    cands = _candidates(adata)
    for source, m in cands:
        if value_problem(m) is None and is_counts(m):
            return InputType("counts", source, sp.csr_matrix(m, dtype=np.float32))
    usable = [(s, m) for s, m in cands if value_problem(m) is None]
    for source, m in usable:
        for log in (False, True):
            counts = recover_counts(m, log=log)
            if counts is not None:
                how = "expm1 of the log-normalized values" if log else "the normalized values"
                return InputType(
                    "counts",
                    source,
                    counts,
                    recovered=True,
                    note=f"{where(source)} holds normalized values, not counts, but every "
                    f"cell's values ({how}) are whole multiples of its smallest one: the "
                    "integer counts were recovered exactly and the full pipeline runs on them",
                )
    usable = [(s, m) for s, m in usable if s != "layers/counts"]
    if not usable:
        _refuse(adata)
    source, m = usable[0]
    values = sp.csr_matrix(m, dtype=np.float32)
    if _looks_log(values, adata.uns):
        note = LOGNORM_NOTE if source == "X" else f"X is not usable; {LOGNORM_NOTE} (from raw)"
        return InputType("log-normalized", source, values, note=note)
    return InputType("count-like", source, values, note=COUNTLIKE_NOTE.format(where=where(source)))


def where(source: str) -> str:
    """``"X"`` -> ``"X"``, ``"raw"`` -> ``"adata.raw"``, ``"layers/counts"`` -> ``"layers['counts']"``."""
    return {"raw": "adata.raw", "layers/counts": "layers['counts']"}.get(source, source)


def _refuse(adata: ad.AnnData) -> None:
    x = adata.X
    if x is None:
        raise SchelixError("The data has no X matrix", "store the expression values in adata.X")
    v = _data(x)
    bad = int(np.count_nonzero(~np.isfinite(v)))
    if bad:
        raise SchelixError(
            f"adata.X contains {bad} NaN/Inf values",
            "fix or remove them upstream (e.g. replace NaN by 0) or provide the raw counts",
        )
    raise SchelixError(
        f"adata.X has negative values (min {np.nanmin(v):.3g}): it looks scaled or centred "
        "(e.g. sc.pp.scale or Seurat's ScaleData), and no counts were found in "
        "layers['counts'] or adata.raw",
        "provide the raw counts (in X, layers['counts'] or adata.raw) or the log-normalized "
        "values from before scaling (e.g. Seurat's 'data' slot, or adata.raw of a scanpy object)",
    )


def find_counts(adata: ad.AnnData) -> tuple[str, object]:
    """Raw counts (found or recovered) as ``(source, matrix)``, or ``("none", None)``."""
    try:
        found = detect(adata)
    except SchelixError:
        return "none", None
    return (found.source, found.values) if found.kind == "counts" else ("none", None)


def apply(adata: ad.AnnData, found: InputType) -> ad.AnnData:
    """Put ``found.values`` in ``X`` (and counts in ``layers["counts"]``); drop ``raw``.

    Returns ``adata`` itself, or a new AnnData with raw's genes when the values come
    from a ``raw`` with other genes than ``X``. Records ``kind``, ``counts_found``,
    ``counts_source`` and ``recovered`` in ``uns["schelix"]["input"]``.
    """
    if found.source == "raw" and adata.raw is not None and adata.raw.n_vars != adata.n_vars:
        adata = ad.AnnData(
            X=found.values,
            obs=adata.obs,
            var=adata.raw.var.copy(),
            obsm=dict(adata.obsm),
            uns=dict(adata.uns),
        )
    else:
        adata.X = found.values
    if found.kind == "counts":
        adata.layers["counts"] = found.values.copy()
    else:
        adata.layers.pop("counts", None)
    adata.raw = None
    info = adata.uns.setdefault("schelix", {}).setdefault("input", {})
    if not found.recovered and info.get("kind") == found.kind and "values_source" in info:
        return adata  # applied before (e.g. by schelix.read): keep where the values came from
    info.update(
        kind=found.kind,
        counts_found=found.kind == "counts",
        counts_source=found.source if found.kind == "counts" else "none",
        values_source=found.source,
        recovered=bool(found.recovered),
    )
    return adata


def kind_of(adata: ad.AnnData) -> str:
    """The recorded input kind (``uns["schelix"]["input"]["kind"]``), detected when absent."""
    kind = adata.uns.get("schelix", {}).get("input", {}).get("kind")
    if kind in KINDS:
        return str(kind)
    if "counts" in adata.layers:
        return "counts"
    return detect(adata).kind
