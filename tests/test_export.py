"""Export (h5ad slots, CSVs, figures as HTML/PNG/SVG) and the app's plotly figures."""

from __future__ import annotations

import itertools
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from schelix import anchors, datasets, stages
from studio import export, plots


@pytest.fixture(scope="module")
def integrated() -> ad.AnnData:
    """A small AnnData with the slots the pipeline writes (filled with random numbers)."""
    adata = datasets.synthetic(n_cells=150, n_genes=80, seed=1)
    rng = np.random.default_rng(0)
    hvg = np.arange(adata.n_vars) >= 10
    for col in ("schelix_z_dom", "schelix_z_str", "schelix_s_dom", "schelix_s_str"):
        adata.var[col] = np.where(hvg, rng.normal(size=adata.n_vars), np.nan)
    stream = np.where(
        ~hvg, "unused", np.where(adata.var["schelix_z_dom"] <= 0, "anchor", "variant")
    )
    adata.var["schelix_stream"] = pd.Categorical(stream, categories=["anchor", "variant", "unused"])
    for key in [*stages.STAGES.values(), "X_schelix_snapshot_10", "X_schelix_snapshot_20", "X_pca"]:
        adata.obsm[key] = rng.normal(size=(adata.n_obs, 8)).astype(np.float32)
        adata.obsm[stages.umap_key(key)] = rng.normal(size=(adata.n_obs, 2)).astype(np.float32)
    return adata


def test_stage_and_snapshot_keys(integrated: ad.AnnData) -> None:
    assert list(stages.stage_keys(integrated)) == list(stages.STAGES)
    assert stages.snapshot_keys(integrated) == {
        10: "X_schelix_snapshot_10",
        20: "X_schelix_snapshot_20",
    }
    assert export.method_label("X_schelix") == "scHelix"
    assert export.method_label("X_pca") == "Unintegrated (PCA)"


def test_gene_table_has_only_scored_genes(integrated: ad.AnnData) -> None:
    table = anchors.gene_table(integrated)
    assert len(table) == 70 and list(table.columns[:2]) == ["gene", "stream"]
    assert set(table["stream"]) == {"anchor", "variant"}


def _figures(adata: ad.AnnData) -> dict:
    table = anchors.gene_table(adata)
    mask = (table["stream"] == "anchor").to_numpy()
    obs = pd.DataFrame(
        {
            "batch": adata.obs["batch"],
            "n_genes_by_counts": np.arange(adata.n_obs),
            "total_counts": np.arange(adata.n_obs) * 3.0,
            "pct_counts_mt": np.ones(adata.n_obs),
        }
    )
    records = [
        {
            "step": i,
            "total_steps": 20,
            "phase": "warmup" if i < 10 else "fusion",
            "losses": {"total": 1 / (i + 1), "align": 0.5},
        }
        for i in range(20)
    ]
    metrics = pd.DataFrame(
        {"ASW_ct": [0.6, 0.5], "Overall": [0.7, 0.6]}, index=["scHelix", "Harmony"]
    )
    embs = {k: adata.obsm[stages.umap_key(v)] for k, v in stages.STAGES.items()}
    return {
        "quadrant": plots.quadrant(
            table, mask, tau_dom=0.0, tau_str=0.0, highlight=[table["gene"][0]]
        ),
        "qc": plots.qc_violins(obs, batch_key="batch", thresholds={"n_genes_by_counts": 20}),
        "losses": plots.loss_curves(records),
        "stages": plots.embeddings(embs, adata.obs["cell_type"].astype(str)),
        "metrics": plots.metrics_chart(metrics),
    }


def test_figures_show_the_data(integrated: ad.AnnData) -> None:
    figs = _figures(integrated)
    q = figs["quadrant"]
    n_anchor = int((anchors.gene_table(integrated)["stream"] == "anchor").sum())
    assert q.data[0].name == f"anchors ({n_anchor})" and len(q.data[0].x) == n_anchor
    lines = [sh for sh in q.layout.shapes if sh.type == "line"]
    (corner,) = [sh for sh in q.layout.shapes if sh.type == "rect"]  # the shaded anchor corner
    assert len(lines) == 2 and (corner.x1, corner.y0) == (lines[0].x0, lines[1].y0)
    assert {tr.name for tr in figs["losses"].data} == {"total", "align"}
    assert len(figs["losses"].layout.shapes) == 2  # warm-up -> fusion marked in each panel
    assert len(figs["stages"].data) == 5 * integrated.obs["cell_type"].nunique()


def test_export_writes_a_reopenable_h5ad_and_every_file(
    integrated: ad.AnnData, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    metrics = pd.DataFrame(
        {"ASW_ct": [0.6, 0.5], "mode": ["labels", "labels"]}, index=["scHelix", "PCA"]
    )
    files = export.export(
        integrated,
        tmp_path / "out",
        figures=_figures(integrated),
        tables={"metrics": metrics},
        params={"qc": {"min_genes": 200, "skip": None}, "train": {"steps": 30}},
        seed=7,
        model_dir=model,
    )
    back = ad.read_h5ad(files["h5ad"])
    assert np.allclose(back.obsm["X_umap"], integrated.obsm["X_schelix_umap"])
    assert "schelix" in back.obsm and "X_umap_anchor_refined" in back.obsm  # viewer names
    assert list(back.var["schelix_stream"].cat.categories) == ["anchor", "variant", "unused"]
    exp = back.uns["schelix"]["export"]
    assert (
        exp["seed"] == 7
        and exp["params"]["qc"]["min_genes"] == 200
        and "skip" not in exp["params"]["qc"]
    )
    assert exp["versions"]["anndata"] == ad.__version__
    assert list(exp["metrics"]["metrics"]["index"]) == ["scHelix", "PCA"]
    anchors_csv = pd.read_csv(files["anchor_genes"])
    assert len(anchors_csv) == int((integrated.var["schelix_stream"] == "anchor").sum())
    assert pd.read_csv(files["metrics"], index_col=0).loc["scHelix", "ASW_ct"] == 0.6
    assert files["metrics"].read_text().startswith("method,")  # no blank first header
    for name in ("quadrant", "qc", "losses", "stages", "metrics"):
        for ext in ("html", "png", "svg"):
            assert files[f"figure_{name}_{ext}"].stat().st_size > 1000
    assert files["figure_quadrant_png"].read_bytes()[:4] == b"\x89PNG"
    assert b"plotly" in files["figure_quadrant_html"].read_bytes()[:200000]
    assert files["model"].suffix == ".zip"


def test_exported_metrics_chart_has_one_bar_per_method_and_metric(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {"ASW_ct": [0.6, 0.5, 0.4], "ARI": [0.7, 0.8, 0.3], "Overall": [0.7, 0.6, 0.5]},
        index=["scHelix", "Harmony", "Unintegrated (PCA)"],
    )
    mfig = export.to_matplotlib(plots.metrics_chart(table))
    ax = mfig.axes[0]
    bars = [p for p in ax.patches if p.get_width() > 0]
    assert len(bars) == 9  # 3 methods x 3 metrics, not drawn on top of each other
    spans = sorted((p.get_x(), p.get_x() + p.get_width()) for p in bars)
    assert all(a[1] <= b[0] + 1e-9 for a, b in itertools.pairwise(spans))  # no two bars overlap
    by_height = {round(p.get_height(), 6) for p in bars}
    assert by_height == {round(v, 6) for v in table.to_numpy().ravel()}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ASW_ct", "ARI", "Overall"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(table.index)
    export.write_figure(plots.metrics_chart(table), tmp_path, "m")
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_names_with_dollar_signs_are_drawn_as_text(tmp_path: Path) -> None:
    """Cell types and methods come from the user's file: "$" in them is not TeX (nor an error)."""
    table = pd.DataFrame({"a$^{$b": [0.9, 0.8], "mean": [0.8, 0.7]}, index=["x$_1$", "Harmony"])
    for fig in (
        plots.metrics_chart(table),
        plots.embeddings({"m": np.zeros((4, 2))}, pd.Series(["a$^{$b", "a$^{$b", "$x$", "$x$"])),
    ):
        mfig = export.to_matplotlib(fig)
        mfig.savefig(tmp_path / "f.png")  # raised ParseSyntaxException before
    ax = export.to_matplotlib(plots.metrics_chart(table)).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a$^{$b", "mean"]
