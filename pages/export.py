"""Export: the integrated .h5ad, gene lists, metrics, figures and the model."""

from __future__ import annotations

import streamlit as st

from schelix import anchors
from schelix import stages as stage_embeddings
from studio import export, plots, report, training, ui

ui.setup("export")
ws = ui.workspace()
ui.sidebar(ws)
ui.title("export", "Export your results")
ws = ui.require(ws, "export", result="train")
st.markdown(
    "- **A one-page report** (`report.html`, opens in any browser, offline): data and QC, the "
    "anchor split and its top genes, training, the stage UMAPs, the metrics beside the peers "
    "with a plain verdict, the package versions and the command that repeats the analysis.\n"
    "- **Integrated data** (`.h5ad`): opens in cellxgene on `X_umap` (the integrated UMAP), with "
    "the stage and peer UMAPs as further layouts (`X_umap_anchor`, `X_umap_harmony`, …); the "
    "embeddings themselves in `obsm['schelix']` (the result), `obsm['schelix_variant']`, … "
    "(`use_rep='schelix'` in scanpy); the anchor / variant label of each gene in "
    "`var['schelix_stream']`; the metrics, every setting, the versions and the seed in "
    "`uns['schelix']`.\n"
    "- **Gene lists and metrics** as CSV; **figures** as interactive HTML and as PNG / SVG "
    "(redrawn with matplotlib from the same data); the **trained model**; and all of it in one "
    "`.zip`."
)
ui.stale_banner(ws, "export")
keys = ws.keys
use_metrics = ws.status("metrics") == "done"
source = "metrics" if use_metrics else "train"
if not use_metrics:
    st.info(
        "No up-to-date metrics: the export will contain the integration without scores. "
        "Run the Metrics step first if you want them included."
    )

cant_export = ui.blocked(ws, "export", "A new export")
if st.button(
    "Prepare the export files",
    type="primary",
    key="build_export",
    disabled=cant_export,
    help="Writes every file into your workspace's export folder; download them below.",
):
    with ui.guard("Preparing the export"), st.spinner("Writing the files…"):
        adata = ui.load(ws, source)
        tables = export.read_metrics(ws.subdir("metrics")) if use_metrics else {}
        split = ws.params("anchors")
        genes = anchors.gene_table(adata)
        mask = (genes["stream"] == "anchor").to_numpy()  # the stored split, as trained
        figures = {
            "anchor_quadrant": plots.quadrant(
                genes, mask, tau_dom=split["tau_dom"], tau_str=split["tau_str"]
            )
        }
        if training.kept_records(adata):  # the kept run's own history, never a later job's
            figures["loss_curves"] = plots.loss_curves(
                training.kept_records(adata),
                weights=training.weights(adata.uns["schelix"].get("train", {})),
                names=training.TERM_NAMES,
            )
        stages = {
            label: adata.obsm[stage_embeddings.umap_key(k)]
            for label, k in stage_embeddings.stage_keys(adata).items()
            if stage_embeddings.umap_key(k) in adata.obsm
        }
        for name, col in (("batch", keys["batch_key"]), ("cell_type", keys.get("label_key"))):
            if col and stages:
                figures[f"stages_by_{name}"] = plots.embeddings(stages, adata.obs[col].astype(str))
        for name, df in tables.items():
            figures[f"{name}_chart"] = plots.metrics_chart(df)
        params = {step: ws.params(step) for step in ("data", "qc", "anchors", "train", "metrics")}
        page = report.build(
            adata, name=ws.name or ws.id, keys=keys, params=params, figures=figures,
            tables=tables, versions=export.versions(),
        )  # fmt: skip
        files = export.export(
            adata,
            ws.subdir("export"),
            figures=figures,
            tables=tables,
            params=params,
            seed=int(ws.params("train").get("seed", 0)),
            model_dir=ws.path / "model",
            report=page,
        )
        ws.mark_done("export", {"files": sorted(files), "from": source})
        st.rerun()

folder = ws.path / "export"
if ws.status("export") != "todo" and (folder / "schelix_integrated.h5ad").is_file():
    st.success(f"Your files are ready. They also stay in the workspace folder: `{folder}`")
    mimes = {
        ".h5ad": "application/octet-stream",
        ".csv": "text/csv",
        ".html": "text/html",
        ".png": "image/png",
        ".svg": "image/svg+xml",
        ".zip": "application/zip",
    }
    groups = {
        "The report, and everything in one file": ["report.html", "schelix_results.zip"],
        "Integrated data and model": ["schelix_integrated.h5ad", "model.zip"],
        "Gene lists and metrics (CSV)": sorted(p.name for p in folder.glob("*.csv")),
        "Figures": sorted(f"figures/{p.name}" for p in (folder / "figures").glob("*")),
    }
    for title, names in groups.items():
        st.subheader(title)
        cols = st.columns(3)
        for i, name in enumerate(n for n in names if (folder / n).is_file()):
            path = folder / name
            cols[i % 3].download_button(
                f"{name.split('/')[-1]} ({export.size_text(path.stat().st_size)})",
                path.read_bytes,
                file_name=path.name,
                mime=mimes.get(path.suffix, "application/octet-stream"),
                key=f"dl_{name}",
                on_click="ignore",
                icon=":material/download:",
            )  # read from disk only when clicked
    st.caption("Open the .h5ad with `scanpy.read_h5ad` or drop it into cellxgene.")
