"""Map new data: place new samples beside a trained reference and transfer its labels."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from schelix.mapping import DEFAULT_ADAPT_STEPS
from studio import jobs, plots, ui
from studio import mapping as mapping_step
from studio.workspace import Workspace

ui.setup("map")
ws = ui.workspace()
ui.sidebar(ws)
ui.title("map", "Map new data onto a trained model")
st.markdown(
    "New samples keep arriving after the reference was integrated. Map them **without "
    "retraining**: the query is embedded by the trained model (its batches get their own small "
    "adaptation; the reference does not move), and cell types are transferred from the "
    "reference by nearest neighbours, with an **uncertainty** per cell. Cells unlike anything in "
    "the reference are called **Unknown** instead of being forced into a known type."
)
if ws is None:
    st.info("Mapping keeps its files in a workspace. Start one here to upload a saved model.")
    if st.button("Start a workspace for mapping", key="map_new_ws", type="primary"):
        ui.use_workspace(Workspace.create(name="mapping"))
        st.rerun()
    st.stop()

own = mapping_step.trained_model(ws)
choices = (["This workspace's trained model"] if own else []) + ["Upload a saved model (.zip)"]
source = st.radio("Model", choices, key="map_source", horizontal=True,
                  help="A model trained here, or the model.zip of an earlier Export.")  # fmt: skip
model_dir = own if source == choices[0] and own else st.session_state.get("map_model_dir")
if source != choices[0] or not own:
    up = st.file_uploader("Saved model (.zip)", type=["zip"], key="map_model_zip")
    if up is not None and st.session_state.get("map_model_name") != up.name:
        with ui.guard("Reading the model"):
            st.session_state["map_model_dir"] = str(mapping_step.store_model_zip(ws, up, up.name))
            st.session_state["map_model_name"] = up.name
            model_dir = st.session_state["map_model_dir"]
if not model_dir:
    st.stop()
columns = None
with ui.guard("Reading the model"):
    columns = mapping_step.model_columns(Path(model_dir))
if columns is None:
    st.stop()

files = st.file_uploader("Query data (.h5ad, 10x .h5 or .zip of a 10x folder; several files: one "
                         "batch each)", type=["h5ad", "h5", "zip"], accept_multiple_files=True,
                         key="map_query_files")  # fmt: skip
if files:
    sig = tuple((f.name, f.size) for f in files)
    if st.session_state.get("map_query_sig") != sig:
        with ui.guard("Reading the query"):
            st.session_state["map_query"] = mapping_step.store_query(
                ws, [(f.name, f) for f in files]
            )
            st.session_state["map_query_sig"] = sig
query = st.session_state.get("map_query")
job = jobs.find(ui.job_dir(ws, "map"))
running = job is not None and job.active
if query:
    with st.form("map_form"):
        c1, c2, c3 = st.columns(3)
        batch_key = c1.selectbox("Batch column of the query", [mapping_step.ONE_BATCH,
                                 *query["columns"]], key="map_batch_key")  # fmt: skip
        default = ws.keys.get("label_key")
        label = c2.selectbox("Transfer labels from", ["(none)", *columns],
                             index=(columns.index(default) + 1) if default in columns else 0,
                             key="map_label")  # fmt: skip
        steps = c3.number_input(
            "Adaptation steps", 0, 5000, DEFAULT_ADAPT_STEPS, key="map_steps",
            help="Steps training the query batches' own entries, scArches-style (0, the default: "
            "the model's batch-free encoders embed the query as it is, which mixed it better "
            "with the reference in our benchmarks).",
        )  # fmt: skip
        go = st.form_submit_button("Map the query", type="primary", disabled=running)
    if go:
        with ui.guard("Starting the mapping"):
            job = jobs.start(ui.job_dir(ws, "map"), "map", {
                "workspace": str(ws.path), "model_dir": str(model_dir), **query,
                "batch_key": None if batch_key == mapping_step.ONE_BATCH else batch_key,
                "label": None if label == "(none)" else label, "adapt_steps": int(steps),
            })  # fmt: skip
            st.session_state["map_seen"] = "running"


@st.fragment(run_every=1.0)
def _progress() -> None:
    if job is not None:
        ui.job_progress(job, name="map", what="Mapping", show_finished=True)


_progress()
res = None if running else mapping_step.results(ws)
if res:
    joint, label = res["joint"], res["label"]
    st.subheader("Reference and query together")
    colors = {"origin": joint.obs["schelix_origin"].astype(str)}
    if label:
        colors["label"] = joint.obs[f"{label}_transferred"].astype(str)
    for name, values in colors.items():
        st.plotly_chart(plots.embeddings({f"coloured by {name}": joint.obsm["X_umap"]}, values,
                                         ncols=1), key=f"map_umap_{name}")  # fmt: skip
    if label:
        st.subheader("How sure is each transferred label?")
        st.plotly_chart(mapping_step.uncertainty_figure(res["labels"], label), key="map_unc")
        st.dataframe(res["labels"][f"{label}_transferred"].value_counts(), key="map_counts")
        st.download_button("Transferred labels (CSV)", res["csv"].read_bytes, "labels.csv",
                           mime="text/csv", key="dl_map_csv", on_click="ignore")  # fmt: skip
    st.download_button("Reference + query (.h5ad)", res["h5ad"].read_bytes, "schelix_mapped.h5ad",
                       mime="application/octet-stream", key="dl_map_h5ad", on_click="ignore")  # fmt: skip
