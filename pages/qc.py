"""Quality control: per-batch QC plots, thresholds with a live count, gene selection."""

from __future__ import annotations

import warnings

import pandas as pd
import streamlit as st

from schelix import pp
from studio import plots, ui

ui.setup("qc")
ws = ui.require(ui.workspace(), "qc")
ui.sidebar(ws)
ui.title("qc", "Quality control")
st.markdown(
    "Damaged or empty droplets show few detected genes or many mitochondrial reads. Choose the "
    "thresholds: the count of cells kept per batch updates as you type. Then choose how many "
    "**highly variable genes (HVGs)** form the gene pool that scHelix splits into anchors and "
    "variants."
)
ui.stale_banner(ws, "qc")
batch_key = ws.keys["batch_key"]
adata = ui.load(ws, "data")
done = ws.params("qc")
suggested = ws.params("data").get("qc_suggested", {})
defaults = {
    "min_genes": 200,
    "min_cells": 3,
    "max_mito_pct": 5.0,
    "n_top_genes": 2000,
    **suggested,
    **done,
}
if suggested and not done:
    st.info(
        "For this dataset the thresholds start at "
        + ", ".join(f"{k} = {v:g}" for k, v in suggested.items())
        + " instead of the paper's defaults (200 genes, 3 cells, 5 % mitochondrial): with 5 % "
        "one whole batch of the demo would be removed."
    )

c1, c2, c3, c4 = st.columns(4)
min_genes = c1.number_input(
    "Min genes per cell",
    0,
    20000,
    int(defaults["min_genes"]),
    step=50,
    help="Cells with fewer detected genes are removed (empty or broken droplets). Paper: 200.",
)
max_mito = c2.number_input(
    "Max mitochondrial %",
    0.0,
    100.0,
    float(defaults["max_mito_pct"]),
    step=1.0,
    help="Cells with a higher share of reads from mitochondrial (MT-) genes are removed "
    "(dying cells). Paper: 5 %.",
)
min_cells = c3.number_input(
    "Min cells per gene",
    0,
    10000,
    int(defaults["min_cells"]),
    step=1,
    help="Genes detected in fewer of the kept cells are removed. Paper: 3.",
)
n_top = c4.number_input(
    "Highly variable genes",
    200,
    10000,
    int(defaults["n_top_genes"]),
    step=100,
    help="Size of the HVG pool (batch-aware, seurat_v3 on counts). The anchor split divides these "
    "genes into anchors and variants. Paper: 2,000.",
)

with ui.guard("Counting the cells kept"):
    cell_mask, gene_mask = pp.qc_masks(
        adata, min_genes=int(min_genes), min_cells=int(min_cells), max_mito_pct=float(max_mito)
    )
    batch = adata.obs[batch_key].astype(str)
    kept = (
        pd.DataFrame({"cells": batch.value_counts(), "kept": batch[cell_mask].value_counts()})
        .fillna(0)
        .astype(int)
    )
    kept["% kept"] = (100 * kept["kept"] / kept["cells"]).round(1)
    m1, m2, m3 = st.columns([1, 1, 3])
    m1.metric("Cells kept", f"{int(cell_mask.sum()):,} of {adata.n_obs:,}")
    m2.metric("Genes kept", f"{int(gene_mask.sum()):,} of {adata.n_vars:,}")
    m3.dataframe(kept, width="stretch")
    if kept["% kept"].min() < 50:
        obs = adata.obs
        n_mito = int((obs["pct_counts_mt"] > max_mito).sum())
        n_low = int((obs["n_genes_by_counts"] < min_genes).sum())
        st.warning(
            f"Fewer than half the cells of some batch pass. {n_mito:,} cells have more than "
            f"{max_mito:g} % mitochondrial reads and {n_low:,} fewer than {min_genes} genes: if that "
            "is normal for this tissue or protocol, loosen the matching threshold."
        )
    st.plotly_chart(
        plots.qc_violins(
            adata.obs,
            batch_key=batch_key,
            thresholds={"n_genes_by_counts": min_genes, "pct_counts_mt": max_mito},
        ),
        key="qc_plot",
    )

params = {
    "min_genes": int(min_genes),
    "min_cells": int(min_cells),
    "max_mito_pct": float(max_mito),
    "n_top_genes": int(n_top),
}
applied = ws.status("qc") == "done" and {k: done.get(k) for k in params} == params
if ws.status("qc") != "todo" and not applied:
    st.warning(
        "These settings differ from the ones applied. Click **Apply** to use them; "
        "every later step will then be marked stale."
    )
if st.button(
    "Apply",
    type="primary",
    disabled=applied,
    help="Filters cells and genes, normalises (counts per 10,000, log1p) and selects the "
    "HVGs. Later steps are marked stale so old and new results are never mixed.",
):
    with ui.guard("Quality control"), st.spinner("Filtering, normalising, selecting genes…"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = pp.preprocess(
                adata,
                batch_key=batch_key,
                min_genes=params["min_genes"],
                min_cells=params["min_cells"],
                max_mito_pct=params["max_mito_pct"],
                n_top_genes=params["n_top_genes"],
            )
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
