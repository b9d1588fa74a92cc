"""The result pages with a kept run (AppTest): what a first-time user sees after training.

A cancelled run never replaces the kept run's curves; changing an earlier step leaves the
results on show, marked stale; progress says what is happening; the loss curves show what is
trained, in words. The workspace is built in seconds (``tests/app_workspace.py``).
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shlex
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from app_workspace import FAKE_LOSS, trained_workspace  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from schelix.cli import build_parser  # noqa: E402
from studio import jobs  # noqa: E402
from studio.workspace import Workspace  # noqa: E402


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("SCHELIX_WORKSPACE_ROOT", str(tmp_path / "workspaces"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("SCHELIX_EXTRA_TASKS", "app_workspace")
    return trained_workspace(tmp_path / "workspaces")


def _open(ws: Workspace, page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["ws_id"] = ws.id
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _figures(at: AppTest) -> dict[str, dict]:
    return {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def _quadrant(at: AppTest) -> dict[str, pd.DataFrame]:
    """The live quadrant's datasets (Arrow) by what they hold: points, found, lines, corner."""
    import pyarrow as pa

    (chart,) = at.get("vega_lite_chart")  # the page's only Vega-Lite chart
    frames = [pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.proto.datasets]
    genes = sorted((f for f in frames if "gene" in f), key=len)
    out = {"points": genes[-1], "found": genes[0] if len(genes) > 1 else genes[-1].iloc[:0]}
    for f in frames:
        for col, name in (("tau_dom", "tau_dom"), ("tau_str", "tau_str"), ("x0", "corner")):
            if col in f:
                out[name] = f
    return out


def _values(v: object) -> list[float]:
    """Plotly 7 sends arrays as ``{"dtype", "bdata"}`` (base64)."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def _wait_records(job: jobs.Job, n: int) -> None:
    end = time.time() + 60
    while len(job.records()) < n and time.time() < end:
        time.sleep(0.1)


def _loss_figure(at: AppTest) -> dict:
    figs = [f for f in _figures(at).values() if "training step" in json.dumps(f["layout"])]
    assert len(figs) == 1
    return figs[0]


def test_a_cancelled_run_does_not_replace_the_kept_curves(ws: Workspace) -> None:
    kept = ws.load_adata("train").uns["schelix"]["history"]["total"]
    job = jobs.start(ws.path / "jobs" / "train", "test_cancelled_train", {})
    _wait_records(job, 5)
    job.cancel()
    assert job.wait(timeout=60)["status"] == "cancelled"
    at = _open(ws, "pages/train.py")
    fig = _loss_figure(at)
    total = _values(fig["data"][0]["y"])
    assert total == pytest.approx(list(kept))  # the kept run, not the cancelled job
    assert FAKE_LOSS not in total
    at = _open(ws, "pages/export.py")
    at.button(key="build_export").click().run()
    html = (ws.path / "export" / "figures" / "loss_curves.html").read_text()
    assert str(FAKE_LOSS) not in html and "Weighted total" in html


def test_the_loss_curves_show_what_is_trained_in_words(ws: Workspace) -> None:
    fig = _loss_figure(_open(ws, "pages/train.py"))
    names = [t["name"] for t in fig["data"]]
    assert names[0].startswith("Weighted total")
    assert not {"Distillation from the anchors (KD)", "Connectivity, fused embedding"} & set(names)
    assert "kd" not in names and "conn_fused" not in names
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert any("Reconstruction of the variant genes · weight 1" in t for t in titles)
    assert fig["layout"]["xaxis"]["title"]["text"] == "training step"
    assert fig["layout"]["yaxis"]["title"]["text"] == "loss"


def test_changing_qc_keeps_every_result_page_on_show_marked_stale(ws: Workspace) -> None:
    at = _open(ws, "pages/export.py")
    at.button(key="build_export").click().run()
    ws.mark_done("qc", {**ws.params("qc"), "min_cells": 5})  # QC re-applied
    assert ws.status("train") == "stale"
    for page, shown in (
        ("pages/train.py", "plotly_chart"),
        ("pages/trajectory.py", "plotly_chart"),
        ("pages/metrics.py", "dataframe"),
        ("pages/export.py", "download_button"),
    ):
        at = _open(ws, page)
        assert at.title and at.title[0].value[0].isdigit(), page  # the page has its title
        assert any("stale" in w.value or "earlier settings" in w.value for w in at.warning), page
        assert len(at.get(shown)) >= 1, page
    at = _open(ws, "pages/train.py")
    assert at.get("form_submit_button")[0].proto.disabled  # no training on stale anchors
    assert any("Anchor genes" in i.value and "stale" in i.value for i in at.info)
    at = _open(ws, "pages/export.py")
    assert at.button(key="build_export").disabled
    assert len(at.get("download_button")) >= 5  # the earlier files, still downloadable


def test_a_blocked_page_keeps_its_title_and_sidebar(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SCHELIX_WORKSPACE_ROOT", str(tmp_path))
    ws = Workspace.create(root=tmp_path)
    at = _open(ws, "pages/train.py")
    assert at.title and "Train" in at.title[0].value
    assert any("not done yet" in i.value for i in at.info)
    assert len(at.sidebar.get("page_link")) >= 7


def test_training_progress_and_form_say_what_happens(ws: Workspace) -> None:
    train = ws.load_adata("train").uns["schelix"]["train"]
    assert train["max_steps"] == train["steps"] == 20  # the steps planned, not the 2,000 cap
    at = _open(ws, "pages/train.py")  # a fresh session: the form shows the kept run's settings
    assert at.number_input(key="steps").value == 20 and at.radio(key="device").value == "CPU"
    assert at.number_input(key="batch_size").value == 64
    assert any("This run" in c.value and "about" in c.value for c in at.caption)
    job = jobs.start(ws.path / "jobs" / "train", "test_umap_stage", {})
    _wait_records(job, 2)
    at = _open(ws, "pages/train.py")
    bars = [p.proto.text for p in at.get("progress")]
    job.cancel()
    assert bars and "UMAP 3 of 15" in bars[0] and "ETA" not in bars[0], bars


def test_ensembl_ids_show_and_find_their_symbols(ws: Workspace) -> None:
    adata = ws.load_adata("anchors")
    adata.var["gene_symbols"] = adata.var_names.astype(str)
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    ws.save_adata("anchors", adata)
    at = _open(ws, "pages/anchor_genes.py")
    table = at.dataframe[0].value
    assert list(table.columns[:2]) == ["gene", "symbol"] and table["gene"][0].startswith("ENSG")
    symbol = str(table["symbol"].iloc[0])
    at.text_input(key="gene_search").input(symbol).run()
    assert not at.exception
    assert at.selectbox(key="profile_gene").value == table["gene"].iloc[0]
    found = _quadrant(at)["found"]
    assert symbol in list(found["name"])  # labelled by symbol, not by ID


def test_a_slider_move_changes_only_the_lines_and_counts(ws: Workspace) -> None:
    """The quadrant's points (the split in use) stay one unchanged dataset while the lines move.

    Streamlit then replaces only the small line datasets in the browser's live chart: that is
    what makes a slider move fast (the browser test times it).
    """
    at = _open(ws, "pages/anchor_genes.py")
    before = _quadrant(at)
    anchors_before = at.metric[0].value
    tau = round(float(before["tau_dom"]["tau_dom"].iloc[0]) - 0.5, 2)
    at.slider(key="tau_dom").set_value(tau).run()
    assert not at.exception
    after = _quadrant(at)
    assert float(after["tau_dom"]["tau_dom"].iloc[0]) == pytest.approx(tau)
    assert float(after["corner"]["x1"].iloc[0]) == pytest.approx(tau)
    pd.testing.assert_frame_equal(after["points"], before["points"])
    table = after["points"]
    t_str = float(after["tau_str"]["tau_str"].iloc[0])
    n_anchor = int(((table["z_dom"] <= tau) & (table["z_str"] >= t_str)).sum())
    assert int(at.metric[0].value) == n_anchor < int(anchors_before)


def test_the_chosen_gene_is_marked_in_the_quadrant(ws: Workspace) -> None:
    at = _open(ws, "pages/anchor_genes.py")
    gene = at.selectbox(key="profile_gene").options[3]
    at.selectbox(key="profile_gene").set_value(gene).run()
    assert gene in list(_quadrant(at)["found"]["gene"])
    profile = next(f for f in _figures(at).values() if "xaxis2" in f["layout"])
    n_clusters = len(ws.load_adata("anchors").obs["schelix_pseudo_cluster"].unique())
    assert len(profile["layout"]["xaxis2"]["tickvals"]) == n_clusters  # every one labelled
    assert "MS4A1" not in at.text_input(key="gene_search").placeholder  # not in this data


def test_the_metrics_bar_agrees_with_its_text(ws: Workspace) -> None:
    job = jobs.start(ws.path / "jobs" / "metrics", "test_peer_running", {})
    _wait_records(job, 1)
    at = _open(ws, "pages/metrics.py")
    job.cancel()
    bar = at.get("progress")[0].proto
    assert (
        bar.text.count("scVI") == 1 and "method 2 of 3" in bar.text and "epoch 64/400" in bar.text
    )
    assert f"{bar.value}% of the job" in bar.text  # the bar shows what the text says


def test_export_has_a_one_page_report_and_one_zip(ws: Workspace) -> None:
    at = _open(ws, "pages/export.py")
    at.button(key="build_export").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    out = ws.path / "export"
    page = (out / "report.html").read_text()
    for part in ("Verdict", "Data and quality control", "Anchor genes", "Training",
                 "Align → Refine → Fuse", "Metrics beside the peers", "Reproduce it"):  # fmt: skip
        assert part in page, part
    assert "Batches mixed" in page or "Batch mixing barely changed" in page
    assert "Cell-type structure" in page and page.count("<img") >= 4 and "<script" not in page
    line = re.search(r"<pre>(schelix run .*?)</pre>", page).group(1)
    args = build_parser().parse_args(shlex.split(html.unescape(line))[1:])
    assert args.steps == 20 and args.batch_key == "batch" and "batch_size=64" in args.set
    with zipfile.ZipFile(out / "schelix_results.zip") as zf:
        names = set(zf.namelist())
    assert {"report.html", "schelix_integrated.h5ad", "metrics.csv"} <= names
    assert "figures/plotly.min.js" in names
    for fig in (out / "figures").glob("*.html"):  # plotly.js once, not 4.8 MB in each
        assert fig.stat().st_size < 1_000_000 and 'src="plotly.min.js"' in fig.read_text()
    labels = [b.proto.label for b in at.get("download_button")]
    assert not any("(0.0 MB)" in lab for lab in labels) and any("KB)" in lab for lab in labels)


def test_small_things_a_first_time_user_sees(ws: Workspace, tmp_path: Path) -> None:
    at = _open(ws, "pages/qc.py")
    kept = next(m for m in at.metric if m.label == "Cells kept")
    assert " of " not in kept.value and kept.proto.delta.startswith("of ")  # never cut off
    violins = next(f for f in _figures(at).values() if f["data"][0]["type"] == "violin")
    assert all(t.get("spanmode") == "hard" for t in violins["data"])  # no violin below 0
    assert violins["layout"]["yaxis"]["title"]["text"] == "Genes per cell"
    train_devices = _open(ws, "pages/train.py").radio(key="device").options
    assert _open(ws, "pages/metrics.py").radio(key="peer_device").options == train_devices
    at = _open(ws, "pages/anchor_genes.py")
    assert not any("Takes seconds" in c.value for c in at.caption)

    # an upload's workspace is named after its file, and can be renamed and deleted
    home = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    home.button(key="upload").click().run()
    home.switch_page("pages/data.py").run()
    mine = Workspace.open(home.session_state["ws_id"])
    path = tmp_path / "pbmc_donor7.h5ad"
    ws.load_adata("data").write_h5ad(path)
    home.file_uploader[0].set_value((path.name, path.read_bytes(), "application/octet-stream"))
    home.run()
    assert mine.name == "pbmc_donor7.h5ad"
    home = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    home.session_state["my_workspaces"] = [mine.id]  # this browser session's workspaces
    home.run()
    home.text_input(key=f"name_{mine.id}").input("donor 7").run()
    home.button(key=f"rename_{mine.id}").click().run()
    assert mine.name == "donor 7"
    home.checkbox(key=f"sure_{mine.id}").check().run()
    home.button(key=f"delete_{mine.id}").click().run()
    assert not home.exception and not mine.path.exists()
