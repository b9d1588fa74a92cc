"""Checking an AnnData for integration: size, names, values, batch and label columns.

Harmless problems are fixed in place and said (:class:`~schelix.errors.SchelixWarning`,
``uns["schelix"]["input"]["notes"]``); fatal ones raise :class:`~schelix.errors.SchelixError`
naming the problem and the fix.
"""

from __future__ import annotations

import warnings

import anndata as ad
import pandas as pd

from schelix.errors import SchelixError, SchelixWarning
from schelix.input_type import detect, value_problem

__all__ = ["note", "validate"]


def note(notes: list[str], text: str, *, warn: bool = True) -> None:
    """Append ``text`` to ``notes`` and (with ``warn``) emit it as a SchelixWarning."""
    notes.append(text)
    if warn:
        warnings.warn(text, SchelixWarning, stacklevel=3)


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
            note(
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
        note(notes, f"{what} column '{key}' holds numbers; converted to categorical strings")
    adata.obs[key] = pd.Categorical(col.astype(str).where(col.notna()))


def validate(
    adata: ad.AnnData, *, batch_key: str | None, label_key: str | None = None
) -> list[str]:
    """Check an AnnData for integration; fix harmless things in place and say so.

    Checks size, duplicate names (made unique), NaN/Inf/negative values in X (unless
    ``layers["counts"]`` or ``raw`` are usable, see :func:`schelix.input_type.detect`), the batch
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
    if adata.X is None or value_problem(adata.X) is not None:
        detect(adata)  # raises, naming the fix, unless layers["counts"] or raw are usable
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
            note(
                notes,
                f"Label column '{label_key}' is not in adata.obs: label-based metrics "
                f"will be skipped (available columns: {cols})",
            )
        else:
            _to_categorical(adata, label_key, "Label", notes)
    info = adata.uns.setdefault("schelix", {}).setdefault("input", {})
    info["notes"] = [*list(info.get("notes", [])), *notes]
    return notes
