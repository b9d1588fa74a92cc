"""Background jobs (separate process, progress, cancel, crash) and the workspace step state."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from schelix.errors import SchelixError
from studio import job_memory, jobs
from studio.workspace import Workspace, list_workspaces

HERE = Path(__file__).resolve().parent


# ---- tasks run by the child process (it imports this module, which registers them) ----
@jobs.task("test_quick")
def quick_task(ctx: jobs.JobContext) -> str:
    for i in range(3):
        ctx.progress(step=i + 1, total_steps=3, losses={"total": 1.0 / (i + 1)})
    ctx.set_status(device="cpu")
    return f"done with {ctx.params['word']}"


@jobs.task("test_loop")
def loop_task(ctx: jobs.JobContext) -> str:
    for i in range(600):
        ctx.check_cancel()
        ctx.progress(step=i)
        time.sleep(0.05)
    return "not cancelled"


@jobs.task("test_deaf")
def deaf_task(ctx: jobs.JobContext) -> str:
    ctx.progress(step=0)
    time.sleep(60)  # never looks at the cancel flag
    return "slept"


@jobs.task("test_crash")
def crash_task(ctx: jobs.JobContext) -> str:
    ctx.progress(step=0)
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
    return "unreachable"


@jobs.task("test_hog")
def hog_task(ctx: jobs.JobContext) -> str:
    ctx.progress(step=0)
    held = []
    for _ in range(48):  # up to 3 GB, 64 MB at a time (bytearray touches every page)
        held.append(bytearray(64 * 2**20))
        time.sleep(0.05)
    return f"held {len(held)} blocks"


@jobs.task("test_error")
def error_task(ctx: jobs.JobContext) -> str:
    raise SchelixError("The batch column has one batch", "choose another column")


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("SCHELIX_EXTRA_TASKS", "test_jobs")  # the server's setting, not job.json's


def _wait_for_records(job: jobs.Job, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while not job.records() and time.time() < end:
        time.sleep(0.1)


def test_job_runs_in_another_process_and_reports(tmp_path: Path, on_path: None) -> None:
    job = jobs.start(tmp_path / "job", "test_quick", {"word": "hello"})
    assert job.status()["pid"] != os.getpid()
    st = job.wait(timeout=120)
    assert st["status"] == "finished", st
    assert st["message"] == "done with hello" and st["device"] == "cpu"
    assert [r["step"] for r in job.records()] == [1, 2, 3]
    assert jobs.find(tmp_path / "job") is not None and jobs.find(tmp_path / "none") is None


def test_cancel_stops_a_running_job(tmp_path: Path, on_path: None) -> None:
    job = jobs.start(tmp_path / "job", "test_loop", {})
    _wait_for_records(job)
    with pytest.raises(SchelixError, match="already running"):
        jobs.start(tmp_path / "job", "test_loop", {})
    job.cancel()
    st = job.wait(timeout=60)
    assert st["status"] == "cancelled", st
    assert len(job.records()) < 600


def test_a_job_that_ignores_cancel_is_killed(tmp_path: Path, on_path: None, monkeypatch) -> None:
    monkeypatch.setattr(jobs, "CANCEL_GRACE_S", 0.2)
    job = jobs.start(tmp_path / "job", "test_deaf", {})
    _wait_for_records(job)
    job.cancel()
    time.sleep(0.5)
    assert job.wait(timeout=30)["status"] == "cancelled"
    pid = job.status()["pid"]
    assert (
        not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_a_killed_process_is_reported_as_stopped_not_out_of_memory(
    tmp_path: Path, on_path: None
) -> None:
    job = jobs.start(tmp_path / "job", "test_crash", {})
    st = job.wait(timeout=120)
    assert st["status"] == "failed" and "was stopped before it finished" in st["message"]
    assert "SIGKILL" in st["message"] and "memory" not in st["message"]


def test_a_job_past_its_memory_limit_stops_with_a_message(
    tmp_path: Path, on_path: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the server's limit for one job; the hog would reach 3 GB and finish without the guard
    monkeypatch.setenv("SCHELIX_JOB_MEMORY_GB", "1")
    job = jobs.start(tmp_path / "job", "test_hog", {})
    st = job.wait(timeout=120)
    assert st["status"] == "failed", st
    assert (
        "more than 1.0 GB of memory" in st["message"]
        and "Earlier results are kept" in st["message"]
    )


def test_the_memory_limit_is_a_share_of_the_machine_or_the_servers_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SCHELIX_JOB_MEMORY_GB", raising=False)
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < job_memory.limit_bytes() <= total * job_memory.MEMORY_SHARE
    monkeypatch.setenv("SCHELIX_JOB_MEMORY_GB", "2.5")
    assert job_memory.limit_bytes() == int(2.5 * 2**30)
    for bad in ("lots", "inf", "-1"):
        monkeypatch.setenv("SCHELIX_JOB_MEMORY_GB", bad)
        with pytest.raises(SchelixError, match="SCHELIX_JOB_MEMORY_GB"):
            job_memory.limit_bytes()


def test_the_memory_limit_follows_the_servers_control_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a server under systemd: the limit sits on its own group, not on the mount's root
    own = tmp_path / "system.slice" / "schelix.service"
    own.mkdir(parents=True)
    (own / "memory.max").write_text("1073741824\n")
    (tmp_path / "memory.max").write_text("max\n")
    monkeypatch.delenv("SCHELIX_JOB_MEMORY_GB", raising=False)
    monkeypatch.setattr(job_memory, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(job_memory, "own_cgroup", lambda: own)
    assert job_memory.limit_bytes() == int(2**30 * job_memory.MEMORY_SHARE)


def test_a_finished_job_is_reaped_without_asking_its_status(tmp_path: Path, on_path: None) -> None:
    job = jobs.start(tmp_path / "job", "test_quick", {"word": "x"})
    pid = job.status()["pid"]
    end = time.time() + 120
    while Path(f"/proc/{pid}").exists() and time.time() < end:
        time.sleep(0.2)  # a zombie keeps /proc/<pid> until it is reaped
    assert not Path(f"/proc/{pid}").exists()


def test_a_job_json_cannot_name_code_to_run(tmp_path: Path, monkeypatch) -> None:
    # a tampered job.json naming another module: the child imports only the known tasks
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "job.json").write_text('{"kind": "evil", "module": "antigravity", "params": {}}')
    monkeypatch.delenv("SCHELIX_EXTRA_TASKS", raising=False)
    assert jobs.main([str(job_dir)]) == 1
    assert "antigravity" not in sys.modules
    assert "Unknown job kind 'evil'" in jobs.Job(job_dir).status()["message"]


def test_a_schelix_error_becomes_the_message(tmp_path: Path, on_path: None) -> None:
    st = jobs.start(tmp_path / "job", "test_error", {}).wait(timeout=120)
    assert st["status"] == "failed"
    assert st["message"] == "The batch column has one batch. Fix: choose another column"
    with pytest.raises(SchelixError, match="Unknown job kind"):  # only registered tasks run
        jobs.start(tmp_path / "job2", "no_such_kind", {})


def test_workspace_marks_later_steps_stale(tmp_path: Path) -> None:
    ws = Workspace.create(root=tmp_path, name="t")
    assert ws.statuses() == dict.fromkeys(
        ("data", "qc", "anchors", "train", "metrics", "export"), "todo"
    )
    assert ws.ready("qc") == "data"
    for step in ("data", "qc", "anchors", "train"):
        ws.mark_done(step, {"x": 1})
    assert ws.ready("export") is None and ws.ready("metrics") is None
    ws.mark_done("qc", {"min_genes": 100})
    st = ws.statuses()
    assert st["data"] == "done" and st["qc"] == "done"
    assert st["anchors"] == "stale" and st["train"] == "stale" and st["metrics"] == "todo"
    assert ws.ready("train") == "anchors"
    assert ws.params("qc") == {"min_genes": 100}


def test_a_job_result_made_with_old_settings_is_stale(tmp_path: Path) -> None:
    ws = Workspace.create(root=tmp_path)
    for step in ("data", "qc", "anchors"):
        ws.mark_done(step)
    revs = ws.upstream_revs("train")  # the job starts
    ws.mark_done("anchors", {"tau_dom": 0.5})  # the user applies a new split meanwhile
    assert ws.mark_done("train", {}, upstream_revs=revs) == "stale"
    assert ws.mark_done("train", {}, upstream_revs=ws.upstream_revs("train")) == "done"
    ws.invalidate("qc")
    assert ws.status("qc") == "todo" and ws.status("train") == "stale"


def test_workspaces_reopen_and_bad_ids_are_refused(tmp_path: Path) -> None:
    a = Workspace.create(root=tmp_path, name="first")
    b = Workspace.create(root=tmp_path, name="second")
    b.mark_done("data")
    assert Workspace.open(a.id, root=tmp_path).name == "first"
    listed = list_workspaces(root=tmp_path)
    assert [r["id"] for r in listed] == [b.id, a.id] and listed[0]["steps_done"] == ["data"]
    for bad in ("nope", "../etc", ""):
        with pytest.raises(SchelixError, match="no workspace"):
            Workspace.open(bad, root=tmp_path)
    with pytest.raises(SchelixError, match="no result yet"):
        a.load_adata("qc")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
