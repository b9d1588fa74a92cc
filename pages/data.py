"""Your data: upload a file, see what is in it, choose the batch and cell-type columns."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from schelix import io
from studio import security, ui
from studio import uploads as uploads_mod
from studio.workspace import Workspace

ui.setup("data")
ws = ui.workspace()
ui.sidebar(ws)
ui.title("data", "Your data")

if ws is None:
    if st.button("Start a new workspace to upload into", type="primary"):
        ui.use_workspace(Workspace.create(name="upload"))
        st.rerun()
    ui.require(ws, "data")
assert ws is not None

limit = st.get_option("server.maxUploadSize")
uploads = st.file_uploader(
    "Upload a single-cell dataset (several files: one batch each)",
    # no `type=`: Streamlit would raise on a NUL in a name before this page runs; the file
    # type and name are checked here instead (studio.security.original_name), with a message
    accept_multiple_files=True,
    help="`.h5ad` (AnnData), a 10x Genomics `.h5` file, or a `.zip` of a 10x folder "
    "(matrix.mtx, barcodes.tsv, features.tsv / genes.tsv). Several files at once (e.g. one 10x "
    "`.h5` per sample) become one batch each, named after the file. Files are saved in your "
    f"private workspace on the server, up to {limit:,} MB each. Raw counts are best; "
    "log-normalised data also works (you will be told what changes).",
)
files = list(uploads or [])
if files and st.session_state.get("uploaded_ids") != [f.file_id for f in files]:
    st.session_state["uploaded_ids"] = [f.file_id for f in files]
    what = files[0].name[:80] if len(files) == 1 else f"{len(files)} files"
    with ui.guard(f"Reading {what}", keep="upload_error"), st.spinner(f"Reading {what}…"):
        adata, st.session_state["read_notes"] = uploads_mod.read_uploads(
            ws, [(f.name, f) for f in files]
        )
        if ws.name in ("", "upload"):  # name the workspace after what was uploaded
            ws.rename(files[0].name if len(files) == 1 else f"{len(files)} files: {files[0].name}")
        st.success(f"Read {what}: {adata.n_obs:,} cells × {adata.n_vars:,} genes.")
if security.local_mode():
    with st.expander("Open a large file on this computer by its path (local mode)"):
        where = st.text_input("Path of an .h5ad, 10x .h5, mtx folder or .zip", key="local_path")
        if st.button("Open this file", key="open_path", disabled=not where):
            with ui.guard(f"Opening {where}", keep="upload_error"):
                adata, st.session_state["read_notes"] = uploads_mod.open_path(ws, where)
                st.success(f"Read {where}: {adata.n_obs:,} cells × {adata.n_vars:,} genes.")

ui.kept_error("upload_error")
if not ws.has_adata("data"):
    st.info("Upload a file above, or go back to the home page and use the demo data.")
    st.stop()

adata = ui.load(ws, "data")
info = io.summarize(adata)
for note in st.session_state.get("read_notes", []) + info["notes"]:
    st.info(note)
c1, c2, c3 = st.columns(3)
c1.metric("Cells", f"{info['n_cells']:,}")
c2.metric("Genes", f"{info['n_genes']:,}")
c3.metric(
    "Raw counts",
    "found" if info["counts_found"] else "not found",
    help="Raw UMI counts are used for quality control, gene selection and count-based "
    f"methods. Found in: {info['counts_source']}.",
)

st.subheader("Which columns describe your cells?")
cols = list(info["obs_columns"])
if not cols:
    st.error(
        "The file has no cell annotations (adata.obs is empty), so there is no batch column. "
        "Add a column that says which batch each cell came from, then upload again."
    )
    st.stop()
keys = ws.keys
several = adata.uns.get("schelix", {}).get("input", {}).get("format") == "several files"
guess = next((c for c in ("batch", "tech", "sample", "donor", "condition") if c in cols), cols[0])
if several:
    guess = uploads_mod.MULTI_BATCH_KEY
    with st.expander("Batch names (one per file)", expanded=True):
        batches = list(adata.obs[guess].cat.categories)
        names = {b: st.text_input(f"Batch {i + 1}", b, key=f"batch_name_{i}")
                 for i, b in enumerate(batches)}  # fmt: skip
        if st.button("Rename the batches", key="rename_batches", disabled=all(
                names[b] == b for b in batches)):  # fmt: skip
            with ui.guard("Renaming the batches"):
                uploads_mod.rename_batches(ws, names)
                st.rerun()
batch_key = st.selectbox(
    "Batch column",
    cols,
    index=cols.index(keys.get("batch_key", guess)) if keys.get("batch_key", guess) in cols else 0,
    help="The column that says which experiment, donor, chemistry or lab each cell came from. "
    "scHelix removes the differences between these groups (the paper's 'domains').",
)
label_options = ["(none)", *cols]
label_key = st.selectbox(
    "Cell-type column (optional)",
    label_options,
    index=label_options.index(keys["label_key"]) if keys.get("label_key") in label_options else 0,
    help="Known cell types are only used to score the result (ASW, ARI, NMI …), never to train "
    "by default. Without them you get label-free scores.",
)
label_key = None if label_key == "(none)" else label_key

v1, v2 = st.columns(2)
v1.caption(f"Cells per batch ({info['obs_columns'][batch_key]} values)")
v1.dataframe(adata.obs[batch_key].astype(str).value_counts().rename("cells"), width="stretch")
if label_key:
    v2.caption(f"Cells per type ({info['obs_columns'][label_key]} values)")
    v2.dataframe(adata.obs[label_key].astype(str).value_counts().rename("cells"), width="stretch")

chosen = {"batch_key": batch_key, **({"label_key": label_key} if label_key else {})}
current = ws.status("data") == "done" and ws.keys == chosen
if st.button(
    "Use these columns",
    type="primary",
    disabled=current,
    help="Checks the columns and records them for every later step.",
):
    with ui.guard("Checking the columns"):
        notes = io.validate(adata, batch_key=batch_key, label_key=label_key)
        ws.set_keys(batch_key=batch_key, label_key=label_key)
        ws.mark_done("data", {**chosen, "n_cells": info["n_cells"], "n_genes": info["n_genes"]})
        for note in notes:
            st.info(note)
        st.rerun()
if ws.status("data") == "done":
    st.success(
        f"Batch column **{ws.keys['batch_key']}**, cell types "
        f"**{ws.keys.get('label_key', 'none')}**."
    )
    ui.next_link("qc", "Next: quality control")
elif current is False and ws.keys:
    st.warning("You changed the columns: click **Use these columns** to apply them.")
st.caption(pd.Timestamp.now().strftime("Workspace saved on disk · %H:%M:%S"))
