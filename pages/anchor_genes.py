"""Anchor genes: the discriminability–sensitivity quadrant and its two thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from schelix import anchors, evaluate
from schelix.gene_profile import gene_profile
from studio import genes, plots, quadrant, ui

#: the usual PBMC markers (T cells, monocytes, B cells, NK cells, ...): the search hint
EXAMPLES = ("CD3E", "LYZ", "MS4A1", "NKG7", "CD14", "GNLY", "FCGR3A", "CD8A", "PPBP")

ui.setup("anchors")
ws = ui.workspace()
ui.sidebar(ws)
ui.title("anchors", "Anchor genes")
ws = ui.require(ws, "anchors")
st.markdown(
    "Each highly variable gene gets two scores. **Domain sensitivity** (x): how much its "
    "expression shifts between batches. **Structure separability** (y): how well it separates "
    "groups of similar cells (pseudo-clusters). Genes in the top-left quadrant — stable across "
    "batches, informative about cell identity — become **anchors**, the scaffold of the "
    "integration; all other HVGs are **variants**, blended in under the anchors' guidance."
)
ui.stale_banner(ws, "anchors")
keys = ws.keys
batch_key, label_key = keys["batch_key"], keys.get("label_key")


def _scored() -> bool:
    if not ws.has_adata("anchors"):
        return False
    return ui.load(ws, "anchors").uns.get("schelix", {}).get("app_qc_rev", -1) == ws.rev("qc")


if not _scored():
    st.info(
        "First, every HVG is scored (PCA → kNN graph → Leiden pseudo-clusters). This takes "
        "a few seconds to a minute and is done once; the thresholds below then move instantly."
    )
    if st.button(
        "Score the genes",
        type="primary",
        key="score",
        help="schelix.anchors.score_genes: the paper's Eq. 1 (domain sensitivity) and "
        "Eq. 2 (structure separability), z-scored over the HVGs.",
    ):
        with ui.guard("Scoring the genes"), st.spinner("Scoring genes…"):
            adata = ui.load(ws, "qc").copy()
            anchors.score_genes(adata, batch_key=batch_key)
            adata.uns["schelix"]["app_qc_rev"] = ws.rev("qc")
            ws.save_adata("anchors", adata)
            ws.invalidate("anchors")
            st.rerun()
    st.stop()

adata = ui.load(ws, "anchors")
table = genes.with_symbols(anchors.gene_table(adata), adata)
applied = ws.params("anchors")
lo = np.floor(table[["z_dom", "z_str"]].min().clip(-5, 0)).astype(float)
hi = np.ceil(table[["z_dom", "z_str"]].max().clip(0, 10)).astype(float)
# the search hint names genes this data has: the usual markers, else its most structured genes
HINT = [g for g in EXAMPLES if genes.find(table, [g])][:3] or list(
    table.sort_values("z_str", ascending=False).get("symbol", table["gene"])[:3]
)


def _clicked() -> list[str]:
    """Genes clicked in the quadrant (its selection, kept in Session State)."""
    return quadrant.picked_genes(st.session_state.get("quadrant"))


def _taus() -> tuple[float, float]:
    """The thresholds as the sliders stand now (Session State), else the applied ones."""
    out = []
    for key, z in (("tau_dom", "z_dom"), ("tau_str", "z_str")):
        value = st.session_state.get(key, applied.get(key, 0.0))
        out.append(float(np.clip(value, lo[z], hi[z])))
    return out[0], out[1]


@st.fragment
def split_genes(found: list[str]) -> None:
    """Thresholds, counts, quadrant and Apply: a slider move reruns only this part of the page."""
    start_dom, start_str = _taus()
    c1, c2 = st.columns(2)
    tau_dom = c1.slider(
        "Domain-sensitivity threshold (tau_dom)", lo["z_dom"], hi["z_dom"], start_dom, 0.05,
        key="tau_dom",
        help="Anchors must have a domain-sensitivity z-score at or below this line "
        "(left of the vertical line). Lower = stricter about batch effects. Paper default: 0.",
    )  # fmt: skip
    tau_str = c2.slider(
        "Structure-separability threshold (tau_str)", lo["z_str"], hi["z_str"], start_str, 0.05,
        key="tau_str",
        help="Anchors must have a structure-separability z-score at or above this line (above "
        "the horizontal line). Higher = only the most cell-type-specific genes. Paper: 0.",
    )  # fmt: skip
    mask = anchors.quadrant(table["z_dom"], table["z_str"], tau_dom=tau_dom, tau_str=tau_str)
    n_anchor, n_variant = int(mask.sum()), int((~mask).sum())
    m1, m2, m3 = st.columns(3)
    m1.metric("Anchors", n_anchor, help="Genes in the top-left quadrant: the teacher stream.")
    m2.metric("Variants", n_variant, help="All other HVGs: the student stream, gated per batch.")
    m3.metric("HVGs scored", len(table))
    if min(n_anchor, n_variant) < 20:
        st.warning("Each side needs at least 20 genes; move the lines towards the middle.")
    chosen = _chosen(found)
    marked = list(dict.fromkeys([*_clicked(), *found, *([chosen] if chosen else [])]))
    # points keep the colours of the split in use while the lines move: only the lines redraw
    in_use = anchors.quadrant(table["z_dom"], table["z_str"], tau_dom=applied.get("tau_dom", 0.0),
                              tau_str=applied.get("tau_str", 0.0))  # fmt: skip
    fig = quadrant.chart(table, in_use, tau_dom=tau_dom, tau_str=tau_str, highlight=marked)
    st.vega_lite_chart(spec=fig, key="quadrant", on_select="rerun",
                       selection_mode=quadrant.PICK, width="stretch")  # fmt: skip
    st.caption(
        "Points are coloured by the split in use (the paper's default lines until you choose "
        "one); the dashed lines, the shaded anchor quadrant and the counts above follow the "
        "sliders. Click a point to see why it sits there (double-click clears)."
    )
    if _clicked() != st.session_state.get("clicked_seen", []):  # a click: the profile follows
        st.session_state["clicked_seen"] = _clicked()
        st.rerun(scope="app")
    _apply(tau_dom, tau_str, n_anchor, n_variant)


def _choices(found: list[str]) -> list[str]:
    """The genes the profile offers: clicked and found ones, else the most structured."""
    return list(dict.fromkeys([*_clicked(), *found])) or list(
        table.sort_values("z_str", ascending=False)["gene"][:50]
    )


def _chosen(found: list[str]) -> str | None:
    """The gene the profile shows (marked in the quadrant too)."""
    choices = _choices(found)
    value = st.session_state.get("profile_gene")
    return value if value in choices else (choices[0] if choices else None)


def _profile(found: list[str]) -> None:
    st.subheader("Why does a gene sit where it does?")
    label = dict(zip(table["gene"], table.get("symbol", table["gene"]), strict=True))
    choices = _choices(found)
    gene = st.selectbox(
        "Gene", choices, key="profile_gene", format_func=lambda g: label.get(g, g),
        help="Click a point in the plot, search above, or pick one of the most "
        "structured genes. Shows its expression per batch and per pseudo-cluster.",
    )  # fmt: skip
    if gene:
        with ui.guard(f"Profile of {gene}"):
            profile = gene_profile(adata, gene, batch_key=batch_key)
            st.plotly_chart(plots.gene_profile(profile, label.get(gene, gene)), key="profile")
            st.caption(
                "High bars that differ between batches push a gene right (batch-sensitive); "
                "bars that differ between pseudo-clusters push it up (structure)."
            )


def _split_table() -> pd.DataFrame:
    """The gene table with each gene's stream at the thresholds as they stand now."""
    tau_dom, tau_str = _taus()
    mask = anchors.quadrant(table["z_dom"], table["z_str"], tau_dom=tau_dom, tau_str=tau_str)
    return table.assign(stream=np.where(mask, "anchor", "variant"))


def _gene_lists() -> None:
    st.subheader("Gene table")
    st.caption(
        "Streams at the lines as they were when this table was drawn (searching or clicking a "
        "gene redraws it); the downloads always use the lines as they are now."
    )
    st.dataframe(_split_table(), width="stretch", height=300, hide_index=True)
    d1, d2 = st.columns(2)
    for col, stream in ((d1, "anchor"), (d2, "variant")):
        col.download_button(
            f"Download the {stream} genes (CSV)",
            lambda stream=stream: _split_table().query("stream == @stream").to_csv(index=False),
            file_name=f"{stream}_genes.csv", mime="text/csv", key=f"dl_{stream}",
            on_click="ignore",
            help="The genes on this side of the lines you set, with their scores.",
        )  # fmt: skip


def _diagnostic() -> None:
    tau_dom, tau_str = _taus()
    st.subheader("Check the split before training (Diagnostic I)")
    st.caption(
        "A plain PCA of the anchor genes alone, scored like an integration, beside all HVGs and "
        "random gene sets of the same size. Good anchors already score close to an integrated "
        "result; random genes score far lower. Takes about half a minute, no training."
    )
    if label_key is None:
        st.info("This check needs a cell-type column (chosen on the Data page).")
    elif st.button(
        "Score this split", key="run_diagnostic",
        help="schelix.evaluate.anchor_diagnostic (paper Diagnostic I) at the thresholds above.",
    ):  # fmt: skip
        with (
            ui.guard("Diagnostic I"),
            st.spinner("Scoring anchors, all HVGs and random gene sets…"),
        ):
            trial = adata.copy()
            anchors.split_anchors(trial, tau_dom=tau_dom, tau_str=tau_str)
            st.session_state["diagnostic_result"] = (
                (tau_dom, tau_str),
                evaluate.anchor_diagnostic(trial, batch_key=batch_key, label_key=label_key),
            )
    if "diagnostic_result" in st.session_state:
        (td, ts), diag = st.session_state["diagnostic_result"]
        st.caption(f"Scores for tau_dom = {td:g}, tau_str = {ts:g} (higher is better).")
        st.dataframe(diag, hide_index=True, width="stretch")


def _apply(tau_dom: float, tau_str: float, n_anchor: int, n_variant: int) -> None:
    is_applied = ws.status("anchors") == "done" and (
        applied.get("tau_dom"),
        applied.get("tau_str"),
    ) == (tau_dom, tau_str)
    if ws.status("anchors") == "done" and not is_applied:
        st.warning(
            f"Training will use the applied thresholds (tau_dom = {applied['tau_dom']:g}, "
            f"tau_str = {applied['tau_str']:g}) until you click **Use this split**."
        )
    if st.button(
        "Use this split for training", type="primary", key="apply_split", disabled=is_applied,
        help="Records the thresholds; training splits the genes exactly this way.",
    ):  # fmt: skip
        with ui.guard("Splitting the genes"):
            out = adata.copy()
            anchors.split_anchors(out, tau_dom=tau_dom, tau_str=tau_str)
            ws.save_adata("anchors", out)
            ws.mark_done("anchors", {"tau_dom": tau_dom, "tau_str": tau_str,
                                     "n_anchor": n_anchor, "n_variant": n_variant})  # fmt: skip
            st.rerun()  # the whole page: the checklist in the sidebar changes
    if ws.status("anchors") == "done":
        st.success(
            f"Split in use: {applied.get('n_anchor')} anchors, {applied.get('n_variant')} variants."
        )
        ui.next_link("train", "Next: train scHelix")


search = st.text_input(
    "Find genes", key="gene_search", placeholder="e.g. " + ", ".join(HINT),
    help="Comma-separated names or parts of names"
    + (" (symbols or IDs)" if "symbol" in table else "")
    + "; matches are circled in red, like the gene you click.",
)  # fmt: skip
terms = [t for t in search.split(",") if t.strip()]
found_genes = genes.find(table, terms)
if terms and not found_genes:
    st.info("No highly variable gene matches that name (only HVGs are scored).")
st.session_state["clicked_seen"] = _clicked()  # the fragment reruns the page on a new click
split_genes(found_genes)
_profile(found_genes)
_gene_lists()
_diagnostic()
