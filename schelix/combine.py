"""Several files, one batch each: a biologist's data usually comes as one 10x output per sample.

:func:`read_many` reads each file with :func:`schelix.io.read`, names each file's batch after
the file (``sampleA.h5`` -> ``sampleA``; the sample folder for Cell Ranger's
``<sample>/outs/filtered_feature_bc_matrix.h5``), joins the genes by name
(:func:`anndata.concat`, inner join) and says which genes were dropped and from which file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import pandas as pd

from schelix.errors import SchelixError
from schelix.validate import note, validate

__all__ = ["batch_names", "read_many"]

_GENERIC = {"outs", "filtered_feature_bc_matrix", "raw_feature_bc_matrix", "matrix", "data"}
_SUFFIXES = (".h5ad", ".h5", ".hdf5", ".zip", ".mtx.gz", ".mtx", ".gz")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def batch_names(paths: Sequence[str | Path]) -> list[str]:
    """A short, distinct batch name per file: its name without the extension, else its folder.

    ``["a/outs/filtered_feature_bc_matrix.h5", "b/outs/filtered_feature_bc_matrix.h5"]`` ->
    ``["a", "b"]``; still equal names get ``-2``, ``-3``, ...
    """
    paths = [Path(p) for p in paths]
    names = [_stem(p) for p in paths]
    if len(set(names)) < len(names):

        def sample_dir(p: Path) -> str:
            parts = [
                q for q in reversed(p.parent.parts) if q not in _GENERIC and q not in ("/", "")
            ]
            return parts[0] if parts else _stem(p)

        candidates = [sample_dir(p) if _stem(p) in _GENERIC or names.count(_stem(p)) > 1 else _stem(p)
                      for p in paths]  # fmt: skip
        names = candidates
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def read_many(
    paths: Sequence[str | Path],
    *,
    batch_key: str = "sample",
    label_key: str | None = None,
    names: Sequence[str] | None = None,
    workdir: str | Path | None = None,
    shown: Sequence[str] | None = None,
) -> ad.AnnData:
    """Read several files into one AnnData, one batch per file, genes joined by name.

    Parameters
    ----------
    paths
        Two or more files or folders :func:`schelix.io.read` can open.
    batch_key
        The obs column that gets each file's batch name (it replaces a column of that name,
        with a note).
    names
        Batch names, one per file (default :func:`batch_names`).
    shown
        The names to show in messages (the app passes the names of the uploaded files).

    Returns
    -------
    AnnData (cell names made unique with the batch name), the genes common to every file;
    ``uns["schelix"]["input"]`` records every file, its batch name, cells and genes, and the
    notes (which genes were dropped, from which file).

    Raises
    ------
    SchelixError
        Fewer than two files; names not distinct; files of different kinds (counts in one,
        log-normalized values in another); no gene in common.
    """
    from schelix import io

    paths = [Path(p) for p in paths]
    shown = list(shown) if shown is not None else [p.name for p in paths]
    if len(paths) < 2:
        raise SchelixError(
            "One file gives one batch; integration needs at least two",
            "give several files (one per sample), or one file with a batch column",
        )
    names = list(names) if names is not None else batch_names(paths)
    if len(names) != len(paths) or len(set(map(str, names))) < len(names) or not all(names):
        raise SchelixError(
            f"Batch names must be one per file, distinct and not empty, got {names}",
            "give each file its own name",
        )
    parts, notes, files = [], [], []
    for path, name, label in zip(paths, names, shown, strict=True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                one = io.read(path, workdir=workdir)
            except SchelixError as err:
                raise SchelixError(f"{label}: {err.problem}", err.fix) from None
        notes += [f"{label}: {w.message}" for w in caught if issubclass(w.category, UserWarning)]
        if batch_key in one.obs:
            notes.append(f"{label}: its column '{batch_key}' was replaced by the file's batch name")
        one.obs[batch_key] = str(name)
        info = one.uns.get("schelix", {}).get("input", {})
        files.append({"file": label, "batch": str(name), "cells": one.n_obs, "genes": one.n_vars,
                      "kind": str(info.get("kind", "")), "format": str(info.get("format", ""))})  # fmt: skip
        parts.append(one)
    kinds = {f["kind"] for f in files}
    if len(kinds) > 1:
        listing = ", ".join(f"{f['file']}: {f['kind']}" for f in files)
        raise SchelixError(
            f"The files hold different kinds of values ({listing}); joining them would mix "
            "counts with normalized values",
            "give every file as raw counts (e.g. each sample's filtered_feature_bc_matrix.h5)",
        )
    common = set(parts[0].var_names).intersection(*(set(p.var_names) for p in parts[1:]))
    if not common:
        raise SchelixError(
            "The files have no gene name in common",
            "check that every file uses the same gene names (symbols or Ensembl IDs, not a mix)",
        )
    dropped = {f["file"]: p.n_vars - len(common) for f, p in zip(files, parts, strict=True)}
    if any(dropped.values()):
        per_file = ", ".join(f"{k}: {v:,}" for k, v in dropped.items() if v)
        notes.append(f"Genes joined by name: the {len(common):,} genes present in every file are "
                     f"kept; genes missing from some file were dropped ({per_file})")  # fmt: skip
    adata = ad.concat(
        {str(n): p for n, p in zip(names, parts, strict=True)},
        join="inner",
        merge="same",
        index_unique="-",
    )
    adata.obs[batch_key] = pd.Categorical(
        adata.obs[batch_key].astype(str), categories=list(map(str, names))
    )
    first = parts[0].uns.get("schelix", {}).get("input", {})
    adata.uns["schelix"] = {
        "input": {
            **{k: v for k, v in first.items() if k != "notes"},
            "path": [str(p) for p in paths],
            "format": "several files",
            "files": pd.DataFrame(files).to_dict(orient="list"),
            "batch_key": batch_key,
            "notes": [],
        }
    }
    for text in notes:
        note(adata.uns["schelix"]["input"]["notes"], text, warn=True)
    validate(adata, batch_key=batch_key, label_key=label_key)
    return adata
