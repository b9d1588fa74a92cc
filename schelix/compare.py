"""Every integration method side by side: run, score, tabulate (paper Table 1 protocol).

:func:`compare` runs registered methods (:mod:`schelix.methods`) on the same
preprocessed AnnData for one or more seeds, scores each embedding with
:func:`schelix.evaluate.score` (or :func:`~schelix.evaluate.label_free_score`
without labels) and returns one tidy row per method x seed, with runtime and
peak memory. A method that fails (e.g. scVI without raw counts) gives a row
with its error message instead of stopping the comparison. :func:`summarize`
aggregates the seeds into mean ± std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from schelix.errors import SchelixError
from schelix.methods.base import ProgressCallback, get_method, run_method
from schelix.obs import require_column

__all__ = ["INFO_COLUMNS", "compare", "comparison_table", "obsm_key", "summarize"]

#: Columns of the tidy table that are not metrics.
INFO_COLUMNS = (
    "method",
    "label",
    "seed",
    "obsm_key",
    "status",
    "error",
    "seconds",
    "peak_memory_mb",
)
_NUMERIC_INFO = ("seconds", "peak_memory_mb")


def obsm_key(method: str, seed: int, n_seeds: int) -> str:
    """``X_<method>`` for a single seed, ``X_<method>_seed<seed>`` when several run."""
    return f"X_{method}" if n_seeds == 1 else f"X_{method}_seed{seed}"


def _error_text(err: BaseException) -> str:
    if isinstance(err, SchelixError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def compare(
    adata: ad.AnnData,
    *,
    batch_key: str,
    label_key: str | None = None,
    methods: Sequence[str] = ("pca", "harmony", "schelix"),
    seeds: Sequence[int] = (0,),
    device: str = "auto",
    progress: ProgressCallback | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    csv: str | Path | None = None,
) -> pd.DataFrame:
    """Run and score every method in ``methods`` for every seed.

    Parameters
    ----------
    adata
        The preprocessed AnnData (see :func:`schelix.pp.preprocess`). Each run
        writes ``obsm[obsm_key(method, seed, len(seeds))]``; the table is stored
        in ``uns["schelix"]["comparison"]`` (read it back with
        :func:`comparison_table`).
    batch_key, label_key
        Batch and cell-type columns of ``adata.obs``. Without ``label_key`` the
        label-free score is used.
    methods
        Registered method names (:func:`schelix.methods.available_methods`).
    seeds
        One run per seed; the same seed is used for scoring.
    device
        Passed to every method (``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``).
    progress
        ``progress(fraction, message)`` over the whole comparison; raising from
        it cancels the comparison (the exception propagates).
    params
        Extra keyword arguments per method, e.g. ``{"scvi": {"max_epochs": 50}}``.
    csv
        If given, the tidy table is also written there as CSV.

    Returns
    -------
    One row per method x seed: ``method, label, seed, obsm_key, status ("ok" |
    "error"), error, seconds, peak_memory_mb`` and one column per metric (NaN
    for failed runs).
    """
    from schelix import evaluate

    methods, seeds = list(methods), [int(s) for s in seeds]
    if not methods or not seeds:
        raise SchelixError("compare() got no methods or no seeds", "pass at least one of each")
    require_column(adata, batch_key, "Batch")
    require_column(adata, label_key, "Label")
    specs = {name: get_method(name) for name in methods}  # unknown names fail up front
    params = {k: dict(v) for k, v in (params or {}).items()}
    unknown = sorted(set(params) - set(methods))
    if unknown:
        raise SchelixError(
            f"params given for methods that are not compared: {', '.join(unknown)}",
            f"use names from: {', '.join(methods)}",
        )

    runs = [(name, seed) for name in methods for seed in seeds]
    cancel: list[BaseException] = []  # what the caller's progress raised, if anything

    def report(done: float, message: str) -> None:
        if progress is not None:
            progress(min(max(done, 0.0), 1.0), message)

    rows: list[dict[str, Any]] = []
    for i, (name, seed) in enumerate(runs):
        spec = specs[name]
        key = obsm_key(name, seed, len(seeds))
        prefix = f"[{i + 1}/{len(runs)}] {spec.label} (seed {seed})"

        def step(fraction: float, message: str, _i: int = i, _p: str = prefix) -> None:
            try:
                report((_i + min(max(fraction, 0.0), 1.0)) / len(runs), f"{_p}: {message}")
            except Exception as err:
                cancel.append(err)
                raise

        row: dict[str, Any] = {
            "method": name,
            "label": spec.label,
            "seed": seed,
            "obsm_key": key,
            "status": "ok",
            "error": "",
            "seconds": np.nan,
            "peak_memory_mb": np.nan,
        }
        report(i / len(runs), f"{prefix}: starting")
        try:
            result = run_method(
                adata,
                name,
                batch_key=batch_key,
                seed=seed,
                device=device,
                progress=step,
                key_added=key,
                **params.get(name, {}),
            )
            row["seconds"], row["peak_memory_mb"] = result.seconds, result.peak_memory_mb
            if label_key is None:
                scores = evaluate.label_free_score(adata, key, batch_key=batch_key, seed=seed)
            else:
                scores = evaluate.score(
                    adata, key, batch_key=batch_key, label_key=label_key, seed=seed
                )
            row.update({m: float(v) for m, v in scores.items()})
        except Exception as err:  # a failing peer is a row, not a crash; a cancel propagates
            if cancel:
                raise cancel[0] from None
            row["status"], row["error"] = "error", _error_text(err)
        rows.append(row)
        report(
            (i + 1) / len(runs),
            f"{prefix}: "
            + (
                f"finished in {row['seconds']:.1f} s"
                if row["status"] == "ok"
                else f"failed: {row['error']}"
            ),
        )

    df = pd.DataFrame(rows)
    _store(
        adata,
        df,
        batch_key=batch_key,
        label_key=label_key,
        device=device,
        methods=list(methods),
        seeds=list(seeds),
    )
    if csv is not None:
        Path(csv).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(csv, index=False)
    return df


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a :func:`compare` table, in order."""
    return [c for c in df.columns if c not in INFO_COLUMNS]


def summarize(df: pd.DataFrame, *, formatted: bool = False, digits: int = 3) -> pd.DataFrame:
    """Aggregate a :func:`compare` table over seeds: mean ± std per method.

    Parameters
    ----------
    df
        Output of :func:`compare` (or :func:`comparison_table`).
    formatted
        ``False``: numeric columns ``<metric>_mean`` / ``<metric>_std``.
        ``True``: one string column per metric, ``"0.567 ± 0.003"`` (just the mean
        for a single seed), as in the paper's Table 1.
    digits
        Decimals of the formatted strings (runtime and memory use 1).

    Returns
    -------
    One row per method (index: method name, in the order of ``df``) with
    ``label``, ``n_seeds`` (successful runs), ``n_failed``, ``error`` (first
    message of a failed run, else ""), and runtime / memory / metric columns.
    Failed runs are left out of the means.
    """
    values = [*metric_columns(df), *_NUMERIC_INFO]
    out = []
    for name, group in df.groupby("method", sort=False):
        ok = group[group["status"] == "ok"]
        errors = group.loc[group["status"] != "ok", "error"]
        row: dict[str, Any] = {
            "method": name,
            "label": group["label"].iloc[0],
            "n_seeds": len(ok),
            "n_failed": len(group) - len(ok),
            "error": str(errors.iloc[0]) if len(errors) else "",
        }
        for col in values:
            vals = pd.to_numeric(ok[col], errors="coerce").dropna() if col in ok else pd.Series()
            mean = float(vals.mean()) if len(vals) else np.nan
            std = float(vals.std(ddof=1)) if len(vals) > 1 else (0.0 if len(vals) else np.nan)
            if formatted:
                d = 1 if col in _NUMERIC_INFO else digits
                row[col] = (
                    "n/a"
                    if np.isnan(mean)
                    else f"{mean:.{d}f}"
                    if len(vals) == 1
                    else f"{mean:.{d}f} ± {std:.{d}f}"
                )
            else:
                row[f"{col}_mean"], row[f"{col}_std"] = mean, std
        out.append(row)
    return pd.DataFrame(out).set_index("method")


def _store(adata: ad.AnnData, df: pd.DataFrame, **params: Any) -> None:
    """Write the table to ``uns["schelix"]["comparison"]`` as h5ad-safe column arrays."""
    table = {}
    for col in df.columns:
        values = df[col].to_numpy()
        if df[col].dtype == object:
            values = np.asarray([str(v) for v in values], dtype=object)
        table[str(col)] = values
    adata.uns.setdefault("schelix", {})["comparison"] = {
        "columns": np.asarray(list(map(str, df.columns)), dtype=object),
        "table": table,
        "params": {k: v for k, v in params.items() if v is not None},
    }


def comparison_table(adata: ad.AnnData) -> pd.DataFrame:
    """The tidy table that :func:`compare` stored in ``uns["schelix"]["comparison"]``."""
    stored = adata.uns.get("schelix", {}).get("comparison")
    if stored is None:
        raise SchelixError("No comparison stored in this AnnData", "run schelix.compare.compare")
    columns = [str(c) for c in stored["columns"]]
    df = pd.DataFrame({c: np.asarray(stored["table"][c]) for c in columns}, columns=columns)
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].astype(str)
    return df
