"""Cell-annotation rules shared by every step: a column must exist, and which labels are missing."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from schelix.errors import SchelixError

__all__ = ["MISSING_LABELS", "label_mask", "require_column"]

#: Label values (compared stripped and lower-cased) that mean "this cell has no label": such
#: cells train without the supervised head and are left out of label-based scores.
MISSING_LABELS = frozenset({"unlabelled", "unlabeled", "unknown", "nan", "none", "na", ""})


def label_mask(labels: pd.Series | np.ndarray) -> np.ndarray:
    """True for cells with a usable label (not NaN and not one of :data:`MISSING_LABELS`)."""
    s = pd.Series(np.asarray(labels, dtype=object))
    return (s.notna() & ~s.astype(str).str.strip().str.lower().isin(MISSING_LABELS)).to_numpy()


def require_column(adata: ad.AnnData, key: str | None, what: str = "Batch") -> None:
    """Raise a :class:`SchelixError` naming the columns there are when ``key`` is not in ``obs``.

    ``None`` (an optional column not given) passes.
    """
    if key is not None and key not in adata.obs:
        raise SchelixError(
            f"{what} column '{key}' is not in adata.obs",
            f"choose one of: {', '.join(map(str, adata.obs.columns))}",
        )
