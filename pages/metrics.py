"""Metrics: scHelix beside unintegrated data, Harmony and other peers, scored alike."""

from __future__ import annotations

import streamlit as st

from schelix import display, evaluate
from schelix.methods import available_methods, get_method
from studio import export, jobs, plots, training, ui

ui.setup("metrics")
ws = ui.workspace()
ui.sidebar(ws)
ui.title("metrics", "Metrics: how good is the integration?")
ws = ui.require(ws, "metrics", result="metrics")
keys = ws.keys
label_key = keys.get("label_key")
if label_key:
    st.markdown(
        "The paper's scores, higher is better: **ASW_ct** (cell types form compact groups), "
        "**GC** (each type stays connected), **ARI** / **NMI** (clusters match the cell types), "
        "**BioMean** (their mean: biology kept), **ASW_batch** (batches mixed within each type) and "
        f"the aggregate **{evaluate.OVERALL_FORMULA}**. Below them the standard scib-metrics "
        "table."
    )
else:
    st.info(
        "Your data has no cell-type column, so scores that compare with known cell types cannot be "
        "computed. You get the **label-free score** instead: **iLISI** (how well batches mix, "
        "1 = perfectly), **ARI_batch / NMI_batch** (whether each batch's own clusters survive "
        "integration), **BioBatch** (their mean) and **LabelFree** = 0.4 iLISI + 0.6 BioBatch — plus "
        "UMAPs coloured by batch to see the mixing."
    )
ui.stale_banner(ws, "metrics")

peers = [m for m in available_methods() if m != "schelix"]
default = [m for m in ("pca", "harmony") if m in peers]
chosen = st.multiselect(
    "Methods to run beside scHelix",
    peers,
    default=default,
    format_func=lambda m: get_method(m).label,
    key="peers",
    help="Each runs on the same preprocessed data and is scored the same way. "
    "'Unintegrated (PCA)' is the baseline without any batch correction; Harmony is a fast, "
    "widely used method. Deep-learning peers (scVI, sysVI, scCRAFT …) take minutes on a CPU.",
)
device = training.DEVICES[
    st.radio(
        "Device for the peers",
        list(training.DEVICES),
        horizontal=True,
        key="peer_device",
        help="auto = the GPU if there is one, else the CPU (the same choice as on Train).",
    )
]
job = jobs.find(ui.job_dir(ws, "metrics"))
running = job is not None and job.active
cant_score = ui.blocked(ws, "metrics", "Scoring")
if st.button(
    "Run and score",
    type="primary",
    disabled=running or cant_score,
    key="run_metrics",
    help="Runs the ticked methods in the background, then scores every embedding.",
):
    with ui.guard("Starting the scoring"):
        job = jobs.start(
            ui.job_dir(ws, "metrics"),
            "metrics",
            {
                "workspace": str(ws.path),
                "batch_key": keys["batch_key"],
                "label_key": label_key,
                "methods": chosen,
                "device": device,
                "seed": 0,
                "record": {"methods": chosen, "device": device},
                "upstream_revs": ws.upstream_revs("metrics"),
            },
        )
        st.session_state["metrics_seen"] = "running"


@st.fragment(run_every=1.0)
def _progress() -> None:
    if job is not None:
        ui.job_progress(job, name="metrics", what="Scoring")


_progress()
tables = export.read_metrics(ws.subdir("metrics")) if ws.status("metrics") != "todo" else {}
if "metrics" in tables:
    st.subheader("The paper's scores" if label_key else "Label-free scores")
    st.dataframe(tables["metrics"].round(3), width="stretch")
    st.plotly_chart(plots.metrics_chart(tables["metrics"]), key="metrics_chart")
if "scib_metrics" in tables:
    st.subheader("scib-metrics benchmark")
    st.caption("One row per metric, one column per method (fits the page).")
    st.dataframe(tables["scib_metrics"].T.round(3), width="stretch")
    st.plotly_chart(plots.metrics_chart(tables["scib_metrics"]), key="scib_chart")
if "batch_mixing" in tables:
    with st.expander("Batch mixing per cell type: which types keep their batches apart"):
        st.caption(
            "scIB's batch silhouette inside each cell type (1 = batches fully mixed); the mean "
            "column is ASW_batch above. A low value for one type points at where the batches "
            "still differ (or at biology confounded with the batch)."
        )
        st.dataframe(tables["batch_mixing"].round(3), width="stretch")
        st.plotly_chart(plots.metrics_chart(tables["batch_mixing"]), key="mixing_chart")
if tables and ws.has_adata("metrics"):
    adata = ui.load(ws, "metrics")
    if sampled := display.note(adata):
        st.caption(sampled)
    emb = {
        export.method_label(k[: -len("_umap")]): adata.obsm[k]
        for k in adata.obsm
        if k.endswith("_umap")
        and k[: -len("_umap")] in adata.obsm
        and not k.startswith("X_schelix_")
        and "snapshot" not in k
    }
    with st.expander("Batch mixing: every method's UMAP coloured by batch", expanded=not label_key):
        st.plotly_chart(
            plots.embeddings(emb, adata.obs[keys["batch_key"]].astype(str)), key="mixing"
        )
if ws.status("train") == "done":
    ui.next_link("export", "Next: export your results")
