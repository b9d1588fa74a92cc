"""The reference a saved model carries for mapping: its cells, their obs columns and embeddings.

:meth:`schelix.SCHelix.save` writes ``reference.npz`` (plain arrays, no pickles): the cell
names, every stage embedding of the training cells and their short text ``obs`` columns (the
batch, cell types and any other column with at most :data:`MAX_CATEGORIES` values). Mapping
(:mod:`schelix.mapping`) needs no copy of the training data: query cells are placed beside
these stored embeddings and labels are transferred from these columns.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from schelix.errors import SchelixError

__all__ = ["MAX_CATEGORIES", "REFERENCE_FILE", "read_reference", "write_reference"]

REFERENCE_FILE = "reference.npz"
#: obs columns with more distinct values than this (cell ids, numbers) are not stored.
MAX_CATEGORIES = 500


def _columns(obs: pd.DataFrame, keep: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for col in obs.columns:
        s = obs[col]
        text = isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object
        if col in keep or (
            text and not str(col).startswith("schelix_") and s.nunique() <= MAX_CATEGORIES
        ):
            out[str(col)] = s.astype(str).to_numpy(dtype=str)
    return out


def write_reference(
    path: Path, obs: pd.DataFrame, stages: dict[str, np.ndarray], keep: list[str]
) -> None:
    """Write ``reference.npz`` in the model folder ``path`` (``keep``: columns always stored)."""
    arrays = {"cells": obs.index.to_numpy(dtype=str)}
    arrays.update({f"obs:{k}": v for k, v in _columns(obs, keep).items()})
    arrays.update({f"stage:{k}": np.asarray(v, np.float32) for k, v in stages.items()})
    with open(path / REFERENCE_FILE, "wb") as fh:
        np.savez(fh, **arrays)


def read_reference(path: Path, genes: list[str]) -> tuple[ad.AnnData, dict[str, np.ndarray]]:
    """``(adata, stages)``: the stored reference cells as an AnnData with the model's ``genes``.

    The AnnData holds no expression (an all-zero sparse ``X``): the model's latent
    representation of these cells is ``stages``, never recomputed from ``X``.
    """
    file = path / REFERENCE_FILE
    if not file.is_file():
        raise SchelixError(
            f"The model in {path} holds no reference cells ({REFERENCE_FILE}); it was saved "
            "before mapping new cells was supported",
            "train and save the model again with this version of scHelix",
        )
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:
        raise SchelixError(
            f"{file} cannot be read ({type(err).__name__})", "save the model again"
        ) from None
    cells = arrays.pop("cells", None)
    n = len(cells) if cells is not None and cells.ndim == 1 else -1
    stages = {k[6:]: v for k, v in arrays.items() if k.startswith("stage:")}
    cols = {k[4:]: v for k, v in arrays.items() if k.startswith("obs:")}
    ok = (
        n > 0
        and cells.dtype.kind == "U"
        and "fused" in stages
        and all(v.ndim == 2 and len(v) == n and v.dtype.kind == "f" for v in stages.values())
        and all(v.ndim == 1 and len(v) == n and v.dtype.kind == "U" for v in cols.values())
    )
    if not ok:
        raise SchelixError(f"{file} is damaged or was edited", "save the model again")
    obs = pd.DataFrame({k: pd.Categorical(v) for k, v in cols.items()}, index=cells.astype(str))
    adata = ad.AnnData(sp.csr_matrix((n, len(genes)), dtype=np.float32), obs=obs)
    adata.var_names = list(genes)
    return adata, stages
