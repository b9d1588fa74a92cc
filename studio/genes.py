"""Gene names as a biologist knows them: symbols beside Ensembl IDs, and gene search."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import pandas as pd

from schelix.qc import SYMBOL_COLUMNS

__all__ = ["find", "symbol_column", "with_symbols"]


def symbol_column(adata: ad.AnnData) -> str | None:
    """The ``var`` column holding gene symbols (``gene_symbols``, ``feature_name`` ...), if any.

    Only a column of text that differs from ``var_names`` counts (a copy of the IDs is no help).
    """
    for col in SYMBOL_COLUMNS:
        if col in adata.var:
            values = adata.var[col].astype(str)
            if values.str.len().gt(0).any() and not (values == adata.var_names).all():
                return col
    return None


def with_symbols(table: pd.DataFrame, adata: ad.AnnData) -> pd.DataFrame:
    """``table`` (a ``gene`` column of var names) with a ``symbol`` column next to it, if known."""
    col = symbol_column(adata)
    if col is None or "symbol" in table:
        return table
    symbols = adata.var[col].astype(str).reindex(table["gene"].astype(str)).to_numpy()
    out = table.copy()
    out.insert(1, "symbol", symbols)
    return out


def find(table: pd.DataFrame, terms: Sequence[str], *, limit: int = 30) -> list[str]:
    """Genes (``gene`` column values) whose name or symbol contains one of ``terms``."""
    terms = [t.strip().lower() for t in terms if t.strip()]
    if not terms:
        return []
    names = table["gene"].astype(str).str.lower()
    if "symbol" in table:
        names = names + " " + table["symbol"].astype(str).str.lower()
    hit = names.map(lambda n: any(t in n for t in terms))
    return list(table.loc[hit.to_numpy(), "gene"].astype(str))[:limit]
