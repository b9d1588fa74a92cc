"""Trajectory — the stages of scHelix side by side, and the fused embedding during training."""

from __future__ import annotations

import streamlit as st

from schelix import display
from schelix import stages as stage_embeddings
from studio import plots, ui

ui.setup("trajectory")
ws = ui.workspace()
ui.sidebar(ws)
ui.title("trajectory", "Trajectory: how the integration forms")
ws = ui.require(ws, "export", result="train")
st.markdown(
    "UMAPs of each stage of the model. **Variant** (the batch-sensitive genes) before and after "
    "**Align** (pulled towards the anchors), **Anchor** (the stable genes) before and after "
    "**Refine** (the anchors borrow detail from the variants), and the **Fused** result. Cells of "
    "the same type should come together; batches should mix."
)
ui.stale_banner(ws, "train")
keys = ws.keys
adata = ui.load(ws, "train")
options = {"batch": keys["batch_key"]}
if keys.get("label_key"):
    options["cell type"] = keys["label_key"]
by = st.radio(
    "Colour by",
    list(options),
    horizontal=True,
    key="color_by",
    help="Batch colours show mixing (good: colours interleave); cell-type colours show "
    "whether biology is kept (good: each type in its own island).",
)
colors = adata.obs[options[by]].astype(str)

stages = {
    label: adata.obsm[stage_embeddings.umap_key(key)]
    for label, key in stage_embeddings.stage_keys(adata).items()
    if stage_embeddings.umap_key(key) in adata.obsm
}
if stages:
    if sampled := display.note(adata):
        st.caption(sampled)
    st.plotly_chart(plots.embeddings(stages, colors), key="stages")
else:
    st.info("This training run has no stage UMAPs.")

snaps = {
    step: key
    for step, key in stage_embeddings.snapshot_keys(adata).items()
    if stage_embeddings.umap_key(key) in adata.obsm
}
st.subheader("The fused embedding during training")
if len(snaps) >= 1:
    step = st.select_slider(
        "Training step",
        options=list(snaps),
        value=list(snaps)[-1],
        key="snapshot",
        help="Snapshots of the fused embedding taken while training.",
    )
    panels = {f"step {step}": adata.obsm[stage_embeddings.umap_key(snaps[step])]}
    if "X_schelix_umap" in adata.obsm:
        panels["final"] = adata.obsm["X_schelix_umap"]
    st.plotly_chart(plots.embeddings(panels, colors, ncols=2), key="snapshot_plot")
else:
    st.info("No snapshots were taken during this run.")
ui.next_link("metrics", "Next: metrics")
