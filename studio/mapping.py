"""The "Map new data" step's backend: the model to map onto, the query upload, the background
task and its results. The science is :mod:`schelix.mapping`; nothing is computed here.

Files live in ``<workspace>/map/``: ``model/`` (an uploaded saved model, unpacked safely),
``uploads/`` (the query files, under server-made names), ``joint.h5ad`` (reference and query
together, with the joint UMAP) and ``labels.csv`` (the transferred labels).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import anndata as ad
import numpy as np
import pandas as pd

from schelix.errors import SchelixError
from studio.jobs import JobContext, task
from studio.security import save_upload
from studio.workspace import Workspace

__all__ = ["UNKNOWN", "model_columns", "results", "store_model_zip", "store_query", "trained_model"]

UNKNOWN = "Unknown"
ONE_BATCH = "(the whole upload is one batch)"
_QUERY_BATCH = "schelix_query_batch"


def trained_model(ws: Workspace) -> Path | None:
    """The workspace's own trained model folder (Train step done), else ``None``."""
    folder = ws.path / "model"
    return folder if ws.status("train") == "done" and (folder / "model.json").is_file() else None


def store_model_zip(ws: Workspace, upload: BinaryIO, name: str) -> Path:
    """Unpack an uploaded ``.zip`` of a saved model into ``map/model`` (safely); its folder."""
    from schelix.archive import extract_zip

    if not name.lower().endswith(".zip"):
        raise SchelixError(f"'{name}' is not a .zip", "zip the saved model folder and upload it")
    base = ws.subdir("map")
    stored, meta = save_upload(base / "model_upload", upload, name)
    dest = base / "model"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    extract_zip(stored, dest, name=meta["original"])
    found = [p.parent for p in dest.rglob("model.json") if not p.is_symlink()]
    if len(found) != 1:
        raise SchelixError(
            f"'{meta['original']}' holds {len(found)} saved models (model.json files)",
            "zip exactly one folder written by model.save() or schelix run --save-model",
        )
    return found[0]


def model_columns(model_dir: Path) -> list[str]:
    """The reference ``obs`` columns stored with a saved model (labels to transfer)."""
    from schelix.reference import REFERENCE_FILE

    file = model_dir / REFERENCE_FILE
    if not file.is_file():
        raise SchelixError(
            "This model was saved before mapping new cells was supported (no reference cells)",
            "train and save the model again with this version of scHelix",
        )
    with np.load(file, allow_pickle=False) as z:
        return [k[4:] for k in z.files if k.startswith("obs:")]


def store_query(ws: Workspace, files: Sequence[tuple[str, BinaryIO]]) -> dict[str, Any]:
    """Save the query uploads; return ``{"paths", "names", "columns"}`` (columns of one file)."""
    from schelix import io

    folder = ws.subdir("map") / "uploads"
    shutil.rmtree(folder, ignore_errors=True)
    stored = [save_upload(folder, stream, name) for name, stream in files]
    paths = [str(p) for p, _ in stored]
    columns: list[str] = []
    if len(stored) == 1:
        adata = io.read(stored[0][0], workdir=folder)
        columns = [c for c in adata.obs.columns if adata.obs[c].nunique() <= 500]
    return {"paths": paths, "names": [m["original"] for _, m in stored], "columns": columns}


def _read_query(p: dict[str, Any]) -> tuple[ad.AnnData, str]:
    from schelix import io
    from schelix.combine import read_many

    paths, names, key = p["paths"], p["names"], p.get("batch_key") or ONE_BATCH
    folder = Path(paths[0]).parent
    if len(paths) > 1:
        stems = [Path(n).name.split(".")[0] or f"query{i}" for i, n in enumerate(names)]
        return read_many(paths, batch_key=_QUERY_BATCH, names=stems, workdir=folder), _QUERY_BATCH
    adata = io.read(paths[0], workdir=folder)
    if key == ONE_BATCH:
        adata.obs[_QUERY_BATCH] = Path(names[0]).name.split(".")[0] or "query"
        return adata, _QUERY_BATCH
    return adata, key


@task("map")
def map_task(ctx: JobContext) -> str:
    """Map the uploaded query onto the chosen model; save ``joint.h5ad`` and ``labels.csv``."""
    from schelix import jit_cache, mapping, stages

    jit_cache.enable()
    p = ctx.params
    ws = Workspace(Path(p["workspace"]))
    ctx.set_status(message="loading the model and the query")
    model = mapping.load_reference(p["model_dir"], device=p.get("device", "auto"))
    raw, batch_key = _read_query(p)
    query = mapping.prepare_query(raw, batch_key=batch_key)

    def progress(frac: float, msg: str) -> None:
        ctx.check_cancel()
        ctx.progress(fraction=frac, message=msg)

    labels = [p["label"]] if p.get("label") else []
    joint = mapping.map_query(
        model, query, batch_key=batch_key, transfer=labels,
        adapt_steps=int(p.get("adapt_steps", mapping.DEFAULT_ADAPT_STEPS)),
        seed=int(p.get("seed", 0)), progress=progress,
    )  # fmt: skip
    ctx.check_cancel()
    ctx.set_status(message="computing the joint UMAP")
    stages.add_umaps(joint, ["X_schelix"], seed=int(p.get("seed", 0)))
    out = ws.subdir("map")
    joint.write_h5ad(out / "joint.h5ad")
    mapping.labels_frame(joint, labels).to_csv(out / "labels.csv")
    n_q = joint.uns["schelix"]["map"]["n_query"]
    return f"Mapped {n_q:,} query cells onto the reference"


def results(ws: Workspace) -> dict[str, Any] | None:
    """What the last mapping wrote: the joint AnnData, the label column and the file paths."""
    folder = ws.path / "map"
    if not (folder / "joint.h5ad").is_file():
        return None
    joint = ad.read_h5ad(folder / "joint.h5ad")
    rec = joint.uns["schelix"]["map"]
    label = next(iter(rec.get("transfer", [])), None)
    frame = pd.read_csv(folder / "labels.csv", index_col=0) if label else None
    return {"joint": joint, "label": label, "labels": frame,
            "h5ad": folder / "joint.h5ad", "csv": folder / "labels.csv"}  # fmt: skip


def uncertainty_figure(frame: pd.DataFrame, label: str) -> Any:
    """Histogram of the query cells' label uncertainty, coloured by transferred label."""
    import plotly.express as px

    fig = px.histogram(
        frame, x=f"{label}_uncertainty", color=f"{label}_transferred", nbins=40,
        labels={f"{label}_uncertainty": "uncertainty (1 - probability of the label)"},
    )  # fmt: skip
    fig.update_layout(height=320, bargap=0.05, margin={"t": 30, "b": 10, "l": 10, "r": 10})
    return fig
