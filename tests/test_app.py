"""The Streamlit app, page by page, with Streamlit's AppTest (no browser).

End to end on the demo data: demo -> QC -> anchor split -> a cancelled and a short training
run -> trajectory -> metrics -> export; then the exported file is re-read. Plus bad uploads.
"""

from __future__ import annotations

import io
import sys
import time
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the pages import `studio` and `schelix` as Streamlit does

from streamlit.testing.v1 import AppTest  # noqa: E402

from schelix import datasets  # noqa: E402
from studio import export, jobs  # noqa: E402
from studio.workspace import Workspace  # noqa: E402

TIMEOUT = 300


@pytest.fixture(autouse=True)
def workspace_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SCHELIX_WORKSPACE_ROOT", str(tmp_path / "workspaces"))
    return tmp_path / "workspaces"


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _page(at: AppTest, name: str) -> AppTest:
    return _ok(at.switch_page(name).run())


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _wait_job(at: AppTest, ws: Workspace, name: str, timeout: float = 400) -> dict:
    job = jobs.find(ws.path / "jobs" / name)
    assert job is not None
    status = job.wait(timeout=timeout)
    at.run()
    return status


def test_demo_end_to_end(workspace_root: Path) -> None:
    at = _ok(AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run())
    assert "scHelix Studio" in at.title[0].value
    _ok(at.button(key="demo").click().run())  # -> the Data page
    ws = Workspace.open(at.session_state["ws_id"])
    assert at.query_params["ws"] == [ws.id] or at.query_params["ws"] == ws.id
    _page(at, "pages/data.py")
    assert _metrics(at)["Cells"] == "2,064" and ws.status("data") == "done"

    # QC: the same adaptive defaults as any upload; the per-batch summary; fixed is one click away
    _page(at, "pages/qc.py")
    assert at.radio(key="qc_mode").value == "adaptive"
    kept_adaptive = _metrics(at)["Cells kept"]
    assert (at.dataframe[0].value["% kept"] >= 85).all()
    _ok(at.radio(key="qc_mode").set_value("fixed").run())  # the paper's thresholds
    _ok(at.number_input(key="min_genes").set_value(550).run())  # the demo: 5 % under 510 genes
    assert _metrics(at)["Cells kept"] != kept_adaptive
    _ok(at.radio(key="qc_mode").set_value("adaptive").run())
    assert _metrics(at)["Cells kept"] == kept_adaptive
    _ok(at.button[0].click().run())
    assert ws.status("qc") == "done" and ws.params("qc")["qc"] == "adaptive"

    # Anchor genes: score once, move a threshold, counts follow; search; apply
    _page(at, "pages/anchor_genes.py")
    _ok(at.button(key="score").click().run())
    before = _metrics(at)["Anchors"]
    _ok(at.slider(key="tau_dom").set_value(-0.3).run())
    after = _metrics(at)["Anchors"]
    assert int(after) < int(before)
    assert int(after) + int(_metrics(at)["Variants"]) == int(_metrics(at)["HVGs scored"])
    _ok(at.text_input(key="gene_search").input("CD").run())
    assert at.selectbox(key="profile_gene").value.upper().find("CD") >= 0
    _ok(at.button(key="run_diagnostic").click().run())  # Diagnostic I, before any training
    diag = at.dataframe[-1].value
    assert list(diag["gene_set"]) == ["Anchors", "All HVGs", "Random (same size)"]
    assert diag["n_genes"].iloc[0] == int(after)
    _ok(at.button(key="apply_split").click().run())
    assert ws.params("anchors")["tau_dom"] == pytest.approx(-0.3)
    assert ws.params("anchors")["n_anchor"] == int(after)

    # Train: a long run is cancelled and the app keeps working; then a short run
    _page(at, "pages/train.py")
    at.number_input(key="steps").set_value(5000)
    _ok(at.button[0].click().run())
    job = jobs.find(ws.path / "jobs" / "train")
    end = time.time() + 240
    while job.status().get("message") != "training" and time.time() < end and job.active:
        time.sleep(0.5)  # cancel once the child is inside the training call
    _ok(at.run())
    _ok(at.button(key="cancel").click().run())
    assert _wait_job(at, ws, "train", timeout=120)["status"] == "cancelled"
    _ok(at.run())
    assert ws.status("train") == "todo"
    at.number_input(key="steps").set_value(30)
    at.number_input(key="warmup").set_value(10)
    at.number_input(key="batch_size").set_value(64)
    at.number_input(key="cfg_snapshot_every").set_value(15)
    _ok(at.button[0].click().run())
    status = _wait_job(at, ws, "train")
    assert status["status"] == "finished", status
    _ok(at.run())
    assert ws.status("train") == "done" and ws.params("train")["max_steps"] == 30
    assert any("Training finished" in s.value for s in at.success)

    # Trajectory: five stages, colour toggle, snapshot slider
    _page(at, "pages/trajectory.py")
    assert len(at.get("plotly_chart")) == 2
    _ok(at.radio(key="color_by").set_value("cell type").run())
    snaps = at.select_slider(key="snapshot").options
    assert len(snaps) >= 2
    _ok(at.select_slider(key="snapshot").set_value(snaps[0]).run())

    # Metrics: scHelix beside unintegrated and Harmony, in the background
    _page(at, "pages/metrics.py")
    assert at.multiselect(key="peers").value == ["pca", "harmony"]
    _ok(at.button(key="run_metrics").click().run())
    assert _wait_job(at, ws, "metrics", timeout=500)["status"] == "finished"
    _ok(at.run())
    frames = at.dataframe
    assert len(frames) >= 2 and ws.status("metrics") == "done"
    tables = export.read_metrics(ws.subdir("metrics"))
    mixing, scores = tables["batch_mixing"], tables["metrics"]
    assert set(mixing.index) == {"scHelix", "Unintegrated (PCA)", "Harmony"}
    assert "mean" in mixing.columns and len(mixing.columns) >= 3  # 2+ cell types and the mean
    np.testing.assert_allclose(  # the per-type breakdown averages to the paper's ASW_batch
        mixing["mean"], scores.loc[mixing.index, "ASW_batch"], rtol=1e-4
    )
    assert at.get("plotly_chart") and any("per cell type" in e.label for e in at.expander)

    # Export, then re-read the file
    _page(at, "pages/export.py")
    _ok(at.button(key="build_export").click().run())
    out = ws.path / "export"
    back = ad.read_h5ad(out / "schelix_integrated.h5ad")
    for key in ("schelix", "X_umap", "schelix_variant", "X_umap_anchor_refined", "pca", "harmony"):
        assert key in back.obsm, key  # the viewer's names (schelix.layouts)
    assert back.obsm["X_umap"].shape == (back.n_obs, 2)
    stream = back.var["schelix_stream"].astype(str)
    assert (stream == "anchor").sum() == ws.params("anchors")["n_anchor"]
    exp = back.uns["schelix"]["export"]
    assert exp["seed"] == 0 and float(exp["params"]["anchors"]["tau_dom"]) == pytest.approx(-0.3)
    assert "scanpy" in exp["versions"] and "torch" in exp["versions"]
    assert set(exp["metrics"]["metrics"]["index"]) == {"scHelix", "Unintegrated (PCA)", "Harmony"}
    assert np.isfinite(exp["metrics"]["metrics"]["Overall"]).all()
    for name in (
        "anchor_genes.csv",
        "variant_genes.csv",
        "metrics.csv",
        "scib_metrics.csv",
        "batch_mixing.csv",
        "model.zip",
        "figures/anchor_quadrant.png",
        "figures/loss_curves.svg",
        "figures/stages_by_batch.html",
    ):
        assert (out / name).stat().st_size > 0, name
    assert len(at.get("download_button")) >= 10

    # Changing QC now marks every later step stale, with a banner
    _page(at, "pages/qc.py")
    _ok(at.number_input[0].set_value(250).run())
    _ok(at.button[0].click().run())
    assert [ws.status(s) for s in ("anchors", "train", "metrics", "export")] == ["stale"] * 4
    _page(at, "pages/trajectory.py")  # old results are still shown, flagged
    _page(at, "pages/train.py")
    assert "Anchor genes" in at.info[0].value and "stale" in at.info[0].value


def _upload_page() -> AppTest:
    at = _ok(AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run())
    _ok(at.button(key="upload").click().run())
    return _page(at, "pages/data.py")


def _h5ad_bytes(adata: ad.AnnData, tmp: Path) -> bytes:
    adata.write_h5ad(tmp / "x.h5ad")
    return (tmp / "x.h5ad").read_bytes()


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, make, expected",
    [
        ("broken.h5ad", lambda tmp: b"this is not an hdf5 file", "broken.h5ad"),
        ("broken.h5", lambda tmp: b"\x00" * 64, "broken.h5"),
        ("notes.zip", lambda tmp: _zip_bytes({"notes.txt": b"hello"}), "notes.zip"),
        (
            "empty.h5ad",
            lambda tmp: _h5ad_bytes(datasets.synthetic(50, 30)[:0].copy(), tmp),
            "0 cells",
        ),
    ],
)
def test_bad_uploads_show_a_message(name: str, make, expected: str, tmp_path: Path) -> None:
    at = _upload_page()
    at.file_uploader[0].set_value((name, make(tmp_path), "application/octet-stream"))
    at.run()
    assert not at.exception
    assert at.error and expected in at.error[0].value
    assert "Traceback" not in at.error[0].value
    at.run()  # the page keeps working and the message stays until the next upload
    assert not at.exception and expected in at.error[0].value
    assert not Workspace.open(at.session_state["ws_id"]).has_adata("data")


def test_upload_then_one_batch_column_is_refused(tmp_path: Path) -> None:
    adata = datasets.synthetic(n_cells=120, n_genes=60, n_batches=2, seed=3)
    adata.obs["one"] = "only"
    at = _upload_page()
    at.file_uploader[0].set_value(
        ("mine.h5ad", _h5ad_bytes(adata, tmp_path), "application/octet-stream")
    )
    _ok(at.run())
    assert _metrics(at)["Cells"] == "120" and _metrics(at)["Raw counts"] == "found"
    at.selectbox[0].set_value("one")
    at.run()
    at.button[0].click().run()  # "Use these columns"
    assert at.error and "only one batch" in at.error[0].value
    at.selectbox[0].set_value("batch")
    _ok(at.button[0].click().run())
    ws = Workspace.open(at.session_state["ws_id"])
    assert ws.status("data") == "done" and ws.keys == {"batch_key": "batch"}
