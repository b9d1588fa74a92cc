"""The "Map new data" step under AppTest: a trained workspace (or an uploaded model.zip), a
query upload, the background mapping job, the joint UMAPs, uncertainty and downloads."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import anndata as ad
import pytest
import scanpy as sc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from schelix import anchors, datasets  # noqa: E402
from schelix.pipeline import integrate  # noqa: E402
from studio import jobs  # noqa: E402
from studio.workspace import Workspace  # noqa: E402

FAST = dict(batch_size=64, n_prototypes=6, mixup_k=20, snapshot_every=10)


@pytest.fixture(autouse=True)
def workspace_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SCHELIX_WORKSPACE_ROOT", str(tmp_path / "workspaces"))
    return tmp_path / "workspaces"


@pytest.fixture(scope="module")
def reference_and_query(tmp_path_factory):
    """A model saved after training on two synthetic batches; the third batch as raw h5ad bytes."""
    counts = datasets.synthetic(600, 300, batch_strength=0.8, seed=3)
    ref = counts[counts.obs["batch"] != "batch2"].copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    ref.var["highly_variable"] = True
    anchors.score_genes(ref, batch_key="batch", n_pcs=20, seed=0)
    anchors.split_anchors(ref)
    model = integrate(ref, batch_key="batch", label_key="cell_type", max_steps=30, **FAST)
    folder = tmp_path_factory.mktemp("app_map")
    model.save(folder / "model")
    counts[counts.obs["batch"] == "batch2"].copy().write_h5ad(folder / "query.h5ad")
    return folder / "model", (folder / "query.h5ad").read_bytes()


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _map_page(ws: Workspace) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["ws_id"] = ws.id
    _ok(at.run())
    return _ok(at.switch_page("pages/map.py").run())


def _run_mapping(at: AppTest, ws: Workspace, query: bytes) -> AppTest:
    at.file_uploader(key="map_query_files").set_value(
        [("query.h5ad", query, "application/octet-stream")]
    )
    _ok(at.run())
    at.selectbox(key="map_batch_key").set_value("batch")
    at.selectbox(key="map_label").set_value("cell_type")
    at.number_input(key="map_steps").set_value(10)
    _ok(at.button[-1].click().run())  # the form's "Map the query"
    status = jobs.find(ws.path / "jobs" / "map").wait(timeout=400)
    assert status["status"] == "finished", status
    return _ok(at.run())


def _check_results(at: AppTest, ws: Workspace) -> None:
    assert any("Mapped" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) == 3  # UMAP by origin, by label; uncertainty
    joint = ad.read_h5ad(ws.path / "map" / "joint.h5ad")
    assert set(joint.obs["schelix_origin"].astype(str)) == {"reference", "query"}
    assert joint.obsm["X_umap"].shape == (joint.n_obs, 2)
    labels = (ws.path / "map" / "labels.csv").read_text()
    assert labels.startswith(",cell_type_transferred,cell_type_probability")
    assert len(at.get("download_button")) == 2


def test_map_onto_this_workspaces_trained_model(reference_and_query, workspace_root) -> None:
    import shutil

    model_dir, query = reference_and_query
    ws = Workspace.create(root=workspace_root)
    shutil.copytree(model_dir, ws.path / "model")
    for step in ("data", "qc", "anchors", "train"):
        ws.mark_done(step, {})
    at = _map_page(ws)
    assert at.radio(key="map_source").value == "This workspace's trained model"
    _check_results(_run_mapping(at, ws, query), ws)


def test_map_onto_an_uploaded_model_zip(reference_and_query, workspace_root) -> None:
    model_dir, query = reference_and_query
    ws = Workspace.create(root=workspace_root)  # no training here: only the upload is offered
    at = _map_page(ws)
    assert at.radio(key="map_source").options == ["Upload a saved model (.zip)"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in model_dir.iterdir():
            zf.write(f, f"model/{f.name}")
    at.file_uploader(key="map_model_zip").set_value(
        ("model.zip", buf.getvalue(), "application/zip")
    )
    _ok(at.run())
    _check_results(_run_mapping(at, ws, query), ws)


def test_an_old_model_zip_gets_a_message(reference_and_query, workspace_root) -> None:
    model_dir, _ = reference_and_query
    ws = Workspace.create(root=workspace_root)
    at = _map_page(ws)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in model_dir.iterdir():
            if f.name != "reference.npz":  # as saved before mapping existed
                zf.write(f, f.name)
    at.file_uploader(key="map_model_zip").set_value(("old.zip", buf.getvalue(), "application/zip"))
    at.run()
    assert not at.exception and "saved before mapping" in at.error[0].value
