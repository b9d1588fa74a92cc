"""Bringing data into a workspace: uploads (one file, or several as one batch each) and, in
local mode, a file opened by its path on this computer.

Every upload is stored under a server-made name (:func:`studio.security.save_upload`); a zip
is unpacked inside the workspace (:func:`schelix.archive.extract_zip` via
:func:`schelix.io.read`), never in a shared temporary folder.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import anndata as ad
import pandas as pd

from schelix import io, pp
from schelix.combine import read_many
from schelix.errors import SchelixError
from studio.security import local_mode, save_upload
from studio.workspace import Workspace

__all__ = ["MULTI_BATCH_KEY", "open_path", "read_uploads", "rename_batches"]

#: The obs column that holds each file's batch when several files are uploaded together.
MULTI_BATCH_KEY = "sample"


def _store(ws: Workspace, adata: ad.AnnData, caught: list[Any]) -> list[str]:
    pp.qc_metrics(adata)
    ws.save_adata("data", adata)
    ws.invalidate("data")
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def read_uploads(
    ws: Workspace, files: Sequence[tuple[str, BinaryIO]]
) -> tuple[ad.AnnData, list[str]]:
    """Save ``files`` (``(name the browser sent, stream)``) in ``ws`` and read them as ``data``.

    One file is read as it is; several become one batch each in ``obs["sample"]`` (named after
    the files, genes joined by name). Returns the AnnData and the notes to show.
    """
    folder = ws.subdir("uploads")
    stored = [save_upload(folder, stream, name) for name, stream in files]
    shown = [meta["original"] for _, meta in stored]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if len(stored) == 1:
                adata = io.read(stored[0][0], workdir=folder)
            else:
                adata = read_many(
                    [p for p, _ in stored],
                    batch_key=MULTI_BATCH_KEY,
                    names=_names(shown),  # after the user's names, not the stored ones
                    shown=shown,
                    workdir=folder,
                )
        except SchelixError as err:
            # the stored name is the server's: say the user's name instead
            text = str(err)
            for path, meta in stored:
                text = text.replace(path.name, meta["original"])
            raise SchelixError(text) from None
    info = adata.uns.setdefault("schelix", {}).setdefault("input", {})
    info["original_names"] = shown
    return adata, _store(ws, adata, caught)


def _names(shown: list[str]) -> list[str]:
    from schelix.combine import batch_names

    return batch_names(shown)


def open_path(ws: Workspace, path: str) -> tuple[ad.AnnData, list[str]]:
    """Local mode only: read a file or folder on this computer by its path (no upload, no copy)."""
    if not local_mode():
        raise SchelixError(
            "Opening files by path is only possible in local mode",
            "upload the file, or start the app with SCHELIX_LOCAL_MODE=1 on your own computer",
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adata = io.read(Path(path).expanduser(), workdir=ws.subdir("uploads"))
    return adata, _store(ws, adata, caught)


def rename_batches(
    ws: Workspace, names: dict[str, str], *, batch_key: str = MULTI_BATCH_KEY
) -> None:
    """Rename the batches of an upload of several files (``{old: new}``); names stay distinct."""
    new = [str(v).strip() for v in names.values()]
    if any(not n for n in new) or len(set(new)) < len(new):
        raise SchelixError(
            "Batch names must be distinct and not empty", "give each file its own name"
        )
    adata = ws.load_adata("data")
    col = adata.obs[batch_key].astype(str).map(lambda b: names.get(b, b).strip())
    adata.obs[batch_key] = pd.Categorical(col, categories=[names.get(b, b).strip() for b in
                                                           adata.obs[batch_key].cat.categories])  # fmt: skip
    ws.save_adata("data", adata)
    ws.invalidate("data")
