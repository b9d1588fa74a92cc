"""Safe to share (issue 12): upload names, private workspaces, model files, several files.

The app runs under Streamlit's AppTest; the three-sample run uses 10x .h5 files written from
the shared PBMC data (``tenx.py``), end to end in the CLI and in the app.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import anndata as ad
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(HERE)]

from conftest import shared_data  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402
from tenx import pbmc_per_chemistry  # noqa: E402

import schelix  # noqa: E402
from schelix.archive import extract_zip  # noqa: E402
from schelix.errors import SchelixError  # noqa: E402
from studio.workspace import Workspace  # noqa: E402

TIMEOUT = 300


@pytest.fixture(autouse=True)
def workspace_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SCHELIX_WORKSPACE_ROOT", str(tmp_path / "workspaces"))
    monkeypatch.delenv("SCHELIX_LOCAL_MODE", raising=False)
    return tmp_path / "workspaces"


def _home() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    return at


def upload(files: list[tuple[str, bytes]], at: AppTest | None = None) -> tuple[AppTest, Workspace]:
    """Open the Data page in a new workspace and upload ``files`` (name, bytes)."""
    at = at or _home()
    at.button(key="upload").click().run()
    at.switch_page("pages/data.py").run()
    ws = Workspace.open(at.session_state["ws_id"])
    at.file_uploader[0].set_value([(n, b, "application/octet-stream") for n, b in files]).run()
    return at, ws


@pytest.mark.parametrize("name", ["../../x.h5ad", "/tmp/x.h5ad", "..\\..\\x.h5ad"])
def test_an_upload_lands_inside_its_own_workspace(
    name: str, tmp_path: Path, workspace_root
) -> None:
    data = tmp_path / "src.h5ad"
    schelix.datasets.synthetic(120, 60, seed=3).write_h5ad(data)
    at, ws = upload([(name, data.read_bytes())])
    assert not at.exception and not at.error, [e.value for e in at.error]
    stored = sorted((ws.path / "uploads").iterdir())
    assert [p.suffix for p in stored] == [".h5ad", ".json"]
    assert stored[0].name.startswith("upload-") and stored[0].read_bytes() == data.read_bytes()
    everything = {p.resolve() for p in tmp_path.rglob("x.h5ad")}
    assert everything == set() and not Path("/tmp/x.h5ad").exists()
    assert ad.read_h5ad(ws.adata_path("data")).uns["schelix"]["input"]["original_names"] == [
        "x.h5ad"
    ]


def test_a_second_session_cannot_list_or_open_the_first_ones_workspace(workspace_root) -> None:
    first = _home()
    first.button(key="upload").click().run()
    mine = first.session_state["ws_id"]
    assert len(mine) >= 24  # a capability: 144 random bits
    owner = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    owner.query_params["ws"] = mine  # the capability link opens it, and it is listed
    owner.run()
    assert owner.session_state["ws_id"] == mine
    assert any(mine in m.value for m in owner.markdown)

    second = _home()
    assert not any(mine in m.value for m in second.markdown)  # not listed
    assert not [b for b in second.button if b.key == f"reopen_{mine}"]
    # an old-style short id (12 hex characters) is not a valid link on a shared server
    old = Workspace.create(name="old")
    old.path.rename(old.path.with_name(mine[:12]))
    guess = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    guess.query_params["ws"] = mine[:12]
    guess.run()
    assert "ws_id" not in guess.session_state and any("not valid" in w.value for w in guess.warning)


def test_local_mode_lists_every_workspace(monkeypatch, workspace_root) -> None:
    first = _home()
    first.button(key="upload").click().run()
    monkeypatch.setenv("SCHELIX_LOCAL_MODE", "1")
    other = _home()
    assert any(first.session_state["ws_id"] in m.value for m in other.markdown)


def test_load_refuses_a_pickle_payload_without_running_it(adata_split, tmp_path: Path) -> None:
    model = schelix.pipeline.integrate(adata_split, batch_key="batch", max_steps=2, batch_size=64,
                                       n_prototypes=6, mixup_k=20)  # fmt: skip
    folder = model.save(tmp_path / "model")
    marker = tmp_path / "pwned.txt"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    blob = torch.load(folder / "model.pt", weights_only=True)
    torch.save({**blob, "optimizer": Payload()}, folder / "model.pt")
    with pytest.raises(SchelixError, match="was not run") as info:
        schelix.SCHelix.load(folder, adata_split)
    assert info.value.fix and not marker.exists()
    (folder / "model.pt").write_bytes(pickle.dumps(Payload()))  # a bare pickle, too
    with pytest.raises(SchelixError, match=r"model\.pt"):
        schelix.SCHelix.load(folder, adata_split)
    assert not marker.exists()
    pickle.loads((folder / "model.pt").read_bytes())  # the payload is real: unpickling runs it
    assert marker.read_text() == "ran"


def test_zip_limits_and_links(tmp_path: Path, monkeypatch) -> None:
    import zipfile

    from schelix import archive

    ok = tmp_path / "ok.zip"
    with zipfile.ZipFile(ok, "w") as zf:
        zf.writestr("a/b.txt", "x" * 100)
    assert (extract_zip(ok, tmp_path / "out") / "a" / "b.txt").read_text() == "x" * 100
    monkeypatch.setitem(archive.LIMITS, "max_entries", 0)
    with pytest.raises(SchelixError, match="entries"):
        extract_zip(ok, tmp_path / "out2")
    monkeypatch.setitem(archive.LIMITS, "max_entries", 10)
    monkeypatch.setitem(archive.LIMITS, "max_total_bytes", 50)
    with pytest.raises(SchelixError, match="unpack to"):
        extract_zip(ok, tmp_path / "out3")
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("evil")
        info.external_attr = 0o120777 << 16  # a symbolic link entry
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(SchelixError, match="link"):
        extract_zip(link, tmp_path / "out4")


def test_a_zip_is_unpacked_inside_the_workspace(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    seen = []
    real = tempfile.TemporaryDirectory

    def spy(*args, **kwargs):
        seen.append(kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryDirectory", spy)
    bad = tmp_path / "x.zip"
    import zipfile

    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("notes.txt", "hi")
    with pytest.raises(SchelixError, match=r"'x\.zip'"):
        schelix.io.read(bad, workdir=tmp_path / "ws" / "uploads")
    assert (
        seen == [tmp_path / "ws" / "uploads"]
        and list((tmp_path / "ws" / "uploads").iterdir()) == []
    )


@pytest.fixture(scope="module")
def three_h5(tmp_path_factory) -> list[Path]:
    return pbmc_per_chemistry(shared_data("pbmc_3chem.h5ad"), tmp_path_factory.mktemp("tenx"))


def test_three_10x_files_run_as_three_batches_in_the_cli(three_h5, tmp_path, capsys) -> None:
    from schelix.cli import main

    out = tmp_path / "out.h5ad"
    code = main(["run", *map(str, three_h5), "--batch-key", "sample", "-o", str(out), "--steps",
                 "4", "--quiet", "--no-evaluate", "--set", "batch_size=64", "--set",
                 "n_prototypes=6", "--set", "mixup_k=20"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "dropped (pbmc_V3.h5: 25, pbmc_VDJ.h5: 25)" in err
    back = ad.read_h5ad(out)
    assert sorted(back.obs["sample"].unique()) == ["pbmc_V2", "pbmc_V3", "pbmc_VDJ"]
    assert (
        back.obsm["schelix"].shape[0] == back.n_obs and back.uns["schelix"]["train"]["steps"] == 4
    )


def test_three_10x_files_run_as_three_batches_in_the_app(three_h5) -> None:
    from studio import jobs

    at, ws = upload([(p.name, p.read_bytes()) for p in three_h5])
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("dropped" in i.value for i in at.info)
    assert at.selectbox[0].value == "sample"
    at.text_input(key="batch_name_0").input("donor A").run()  # batch names are editable
    at.button(key="rename_batches").click().run()
    use = next(b for b in at.button if b.label == "Use these columns")
    use.click().run()
    assert not at.exception and ws.status("data") == "done" and ws.keys == {"batch_key": "sample"}
    data = ws.load_adata("data")
    assert sorted(data.obs["sample"].unique()) == ["donor A", "pbmc_V3", "pbmc_VDJ"]
    at.switch_page("pages/qc.py").run()
    at.button[0].click().run()
    assert ws.status("qc") == "done", [e.value for e in at.error]
    at.switch_page("pages/anchor_genes.py").run()
    at.button(key="score").click().run()
    at.button(key="apply_split").click().run()
    assert ws.status("anchors") == "done", [e.value for e in at.error]
    at.switch_page("pages/train.py").run()
    at.number_input(key="steps").set_value(6)
    at.number_input(key="warmup").set_value(2)
    at.number_input(key="batch_size").set_value(64)
    at.button[0].click().run()
    status = jobs.find(ws.path / "jobs" / "train").wait(timeout=400)
    assert status["status"] == "finished", status
    trained = ws.load_adata("train")
    assert trained.obs["sample"].nunique() == 3 and "X_schelix" in trained.obsm


def test_the_server_binds_to_localhost_with_a_sane_upload_limit() -> None:
    import tomllib

    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["address"] == "localhost" and 0 < server["maxUploadSize"] <= 1024


def test_open_by_path_only_in_local_mode(monkeypatch, tmp_path: Path) -> None:
    data = tmp_path / "big.h5ad"
    schelix.datasets.synthetic(120, 60, seed=3).write_h5ad(data)
    at, _ = upload([])
    assert not [t for t in at.text_input if t.key == "local_path"]  # shared server: no paths
    monkeypatch.setenv("SCHELIX_LOCAL_MODE", "1")
    at, ws = upload([])
    at.text_input(key="local_path").input(str(data)).run()
    at.button(key="open_path").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert ws.has_adata("data") and list((ws.path / "uploads").iterdir()) == []  # not copied
