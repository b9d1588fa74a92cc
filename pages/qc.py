"""Quality control: adaptive or fixed thresholds, the per-batch QC summary, HVGs."""

from __future__ import annotations

import warnings

import streamlit as st

from schelix import pp
from schelix.errors import SchelixError
from studio import plots, ui

ui.setup("qc")
ws = ui.workspace()
ui.sidebar(ws)
ui.title("qc", "Quality control")
ws = ui.require(ws, "qc")
st.markdown(
    "Empty or broken droplets show few counts and genes, doublets many, dying cells many "
    "mitochondrial reads. By default each batch is judged against its own median (**adaptive**: "
    "cells more than 5 median absolute deviations out, mitochondrial cut-off never under 10 %), "
    "so a chemistry with more mitochondrial reads keeps its cells. The paper's **fixed** "
    "thresholds are one click away. Then choose how many **highly variable genes (HVGs)** form "
    "the gene pool that scHelix splits into anchors and variants."
)
ui.stale_banner(ws, "qc")
batch_key = ws.keys["batch_key"]
adata = ui.load(ws, "data")
done = ws.params("qc")

mode = st.radio(
    "Thresholds",
    pp.QC_MODES,
    index=pp.QC_MODES.index(done.get("qc", "adaptive")),
    format_func={"adaptive": "Adaptive, per batch (default)", "fixed": "Fixed (paper)"}.get,
    horizontal=True,
    key="qc_mode",
    help="Adaptive: within each batch, cells with far fewer counts or genes than the batch's "
    "median (5 median absolute deviations), or far more mitochondrial reads. Fixed: the same "
    "cut-offs for every cell.",
)
c1, c2, c3, c4 = st.columns(4)
min_genes = max_mito = None
if mode == "fixed":
    min_genes = c1.number_input(
        "Min genes per cell", 0, 20000, int(done.get("min_genes") or 200), step=50,
        key="min_genes", help="Cells with fewer detected genes are removed. Paper: 200.",
    )  # fmt: skip
    max_mito = c2.number_input(
        "Max mitochondrial %", 0.0, 100.0, float(done.get("max_mito_pct") or 5.0), step=1.0,
        key="max_mito_pct", help="Cells with a higher share of mitochondrial reads are removed "
        "(dying cells). Paper: 5 %.",
    )  # fmt: skip
min_cells = c3.number_input(
    "Min cells per gene", 0, 10000, int(done.get("min_cells", 3)), step=1, key="min_cells",
    help="Genes detected in fewer of the kept cells are removed. Paper: 3.",
)  # fmt: skip
n_top = c4.number_input(
    "Highly variable genes", 200, 10000, int(done.get("n_top_genes", 2000)), step=100,
    key="n_top_genes", help="Size of the HVG pool (batch-aware; seurat_v3 on counts). The anchor "
    "split divides these genes into anchors and variants. Paper: 2,000.",
)  # fmt: skip
options = {
    "qc": mode,
    "min_genes": None if min_genes is None else int(min_genes),
    "max_mito_pct": None if max_mito is None else float(max_mito),
    "min_cells": int(min_cells),
}

blocked = False
with ui.guard("Counting the cells kept"):
    summary = pp.qc_summary(adata, batch_key=batch_key, **options)
    m1, m2 = st.columns(2)
    for col, what, kept, total in (
        (m1, "Cells kept", summary["cells_kept"], adata.n_obs),
        (m2, "Genes kept", summary["genes_kept"], adata.n_vars),
    ):  # the count alone as the value: "1,742 of 2,000" is cut off in a narrow column
        col.metric(what, f"{kept:,}", delta=f"of {total:,} ({100 * kept / max(1, total):.1f} %)",
                   delta_color="off", delta_arrow="off")  # fmt: skip
    st.dataframe(pp.summary_frame(summary), width="stretch")
    st.caption(
        summary["mito_note"] + ". Reason columns count cells removed for that reason (a cell "
        "may have several)."
    )
    try:
        pp.check_batches(summary)
    except SchelixError as err:
        blocked = True
        st.error(str(err))
    st.plotly_chart(
        plots.qc_violins(
            adata.obs,
            batch_key=batch_key,
            thresholds={"n_genes_by_counts": min_genes, "pct_counts_mt": max_mito}
            if mode == "fixed"
            else {},
        ),
        key="qc_plot",
    )

params = {**options, "n_top_genes": int(n_top)}
applied = ws.status("qc") == "done" and {k: done.get(k) for k in params} == params
if ws.status("qc") != "todo" and not applied:
    st.warning(
        "These settings differ from the ones applied. Click **Apply** to use them; "
        "every later step will then be marked stale."
    )
if st.button(
    "Apply",
    type="primary",
    disabled=applied or blocked,
    help="Filters cells and genes, normalises (counts per 10,000, log1p) and selects the "
    "HVGs. Later steps are marked stale so old and new results are never mixed.",
):
    with ui.guard("Quality control"), st.spinner("Filtering, normalising, selecting genes…"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = pp.preprocess(adata, batch_key=batch_key, **params)
        ws.save_adata("qc", out)
        ws.mark_done("qc", {**params, "cells_kept": int(out.n_obs), "genes_kept": int(out.n_vars)})
        st.session_state["qc_notes"] = [
            str(w.message) for w in caught if issubclass(w.category, UserWarning)
        ]
        st.rerun()
for note in st.session_state.get("qc_notes", []):
    st.info(note)
if ws.status("qc") == "done":
    p = ws.params("qc")
    st.success(
        f"Applied: {p.get('cells_kept', 0):,} cells and {p.get('genes_kept', 0):,} genes kept, "
        f"{p['n_top_genes']:,} HVGs."
    )
    ui.next_link("anchors", "Next: anchor genes")
