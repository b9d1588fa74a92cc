"""Background jobs: long steps (training, peer methods) run in their own process.

:func:`start` writes ``job.json`` into a job folder and launches
``python -m studio.jobs <job_dir>`` in a new session, so a crash, an out-of-memory kill
or a cancel of the job never takes the app down. The child runs the registered task
(see :data:`TASKS`), appends progress records as JSON lines to ``progress.jsonl``, stops
when a ``cancel`` file appears, and writes ``status.json``: ``status`` in
``{"running", "finished", "failed", "cancelled"}``, the ``message`` (the plain-language
error for a failed job) and ``device`` (the device really used). A browser reload finds the
job again with :func:`find`; the job records its result in the workspace itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schelix.errors import SchelixError
from studio import job_memory

__all__ = ["TASKS", "Job", "JobCancelled", "JobContext", "find", "main", "start", "task"]

#: Seconds after a cancel request before a job that has not stopped is killed.
CANCEL_GRACE_S = 15.0
_PROCS: dict[int, subprocess.Popen] = {}  # children of this process (so they get reaped)


def _oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has ended in this cgroup (or None)."""
    own = job_memory.own_cgroup()
    if own is None:
        return None
    root = job_memory.CGROUP_ROOT
    for path in (own / "memory.events", own / "memory.oom_control", root / "memory.events",
                 root / "memory" / "memory.oom_control"):  # fmt: skip
        try:
            for line in path.read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return None


def _death_message(pid: int, st: dict[str, Any]) -> str:
    """Why a job process ended without writing its status: out of memory only when it was."""
    before, after = st.get("oom_kills"), _oom_kills()
    proc = _PROCS.get(pid)
    code = proc.returncode if proc is not None else None
    if before is not None and after is not None and after > before:
        return (
            "The background job ran out of memory and was stopped by the system. Earlier "
            "results are kept; try fewer cells or a smaller batch size"
        )
    how = ""
    if code is not None and code < 0:
        try:
            how = f" (ended by signal {signal.Signals(-code).name})"
        except ValueError:
            how = f" (ended by signal {-code})"
    elif code is not None:
        how = f" (exit code {code})"
    return (
        f"The background job was stopped before it finished{how}. Earlier results are kept; "
        "start it again"
    )


class JobCancelled(Exception):
    """Raised inside a job when the user asked it to stop."""


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # per thread
    tmp.write_text(json.dumps(obj, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int, job_dir: Path) -> bool:
    proc = _PROCS.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and str(job_dir.resolve()) in cmdline


@dataclass(frozen=True)
class Job:
    """A job folder: read its status and progress, or cancel it."""

    path: Path

    @property
    def spec(self) -> dict[str, Any]:
        """``{"kind", "params", "submitted"}`` as given to :func:`start`."""
        return _read_json(self.path / "job.json")

    def status(self) -> dict[str, Any]:
        """``status.json``, corrected for a process that died without saying so."""
        st = _read_json(self.path / "status.json") or {"status": "running", "message": "starting"}
        if st.get("status") == "running":
            pid = int(st.get("pid", self.spec.get("pid", 0)) or 0)
            if pid and not _pid_alive(pid, self.path):
                st = self._finalise(st, "failed", _death_message(pid, st))
            elif (self.path / "cancel").exists():
                asked = (self.path / "cancel").stat().st_mtime
                if time.time() - asked > CANCEL_GRACE_S:
                    self._kill(pid)
                    st = self._finalise(st, "cancelled", "Cancelled (the process was stopped)")
        return st

    @property
    def state(self) -> str:
        return str(self.status()["status"])

    @property
    def active(self) -> bool:
        return self.state == "running"

    def records(self) -> list[dict[str, Any]]:
        """Every progress record written so far."""
        path = self.path / "progress.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # a line being written right now
                continue
        return out

    def cancel(self) -> None:
        """Ask the job to stop; it is killed if it has not stopped after ``CANCEL_GRACE_S``."""
        (self.path / "cancel").touch()

    def wait(self, timeout: float = 600.0, poll: float = 0.5) -> dict[str, Any]:
        """Block until the job is no longer running (tests and the CLI); returns its status."""
        end = time.time() + timeout
        while time.time() < end:
            st = self.status()
            if st["status"] != "running":
                return st
            time.sleep(poll)
        raise TimeoutError(f"job {self.path} still running after {timeout} s")

    def _finalise(self, st: dict[str, Any], status: str, message: str) -> dict[str, Any]:
        st = {**st, "status": status, "message": message, "finished": time.time()}
        _write_json(self.path / "status.json", st)
        return st

    @staticmethod
    def _kill(pid: int) -> None:
        if not pid:
            return
        try:
            os.killpg(pid, signal.SIGKILL)  # the child leads its own session/group
        except (ProcessLookupError, PermissionError):
            pass
        proc = _PROCS.get(pid)
        if proc is not None:
            proc.wait(timeout=10)


def start(job_dir: str | Path, kind: str, params: dict[str, Any]) -> Job:
    """Launch task ``kind`` with ``params`` (JSON-serialisable) in a new process.

    ``kind`` is a name registered with :func:`task` (``"train"``, ``"metrics"`` in
    :mod:`studio.tasks`); the task is called with a :class:`JobContext`.

    ``job_dir`` is emptied of an earlier run's files first. Refuses (SchelixError) while a
    job is still running there.
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    old = Job(job_dir)
    if (job_dir / "job.json").exists() and old.active:
        raise SchelixError("A job is already running here", "wait for it to finish or cancel it")
    for name in ("status.json", "progress.jsonl", "cancel", "log.txt", "error.log"):
        (job_dir / name).unlink(missing_ok=True)
    if kind not in TASKS:
        import studio.tasks  # noqa: F401  (registers the app's tasks)
    if kind not in TASKS:
        raise SchelixError(f"Unknown job kind '{kind}'", f"use one of {sorted(TASKS)}")
    spec = {"kind": kind, "params": params}
    _write_json(job_dir / "job.json", {**spec, "submitted": time.time()})
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    with open(job_dir / "log.txt", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "studio.jobs", str(job_dir.resolve())],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    _PROCS[proc.pid] = proc
    # reap the child the moment it exits (no zombies), whether or not anyone asks its status
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    st = _read_json(job_dir / "status.json")  # the child may have written already
    _write_json(
        job_dir / "status.json",
        {"status": "running", "message": "starting", "started": time.time(), **st,
         "pid": proc.pid, "oom_kills": _oom_kills()},
    )  # fmt: skip
    return Job(job_dir)


def find(job_dir: str | Path) -> Job | None:
    """The job in ``job_dir`` if one was ever started there (running or not)."""
    job_dir = Path(job_dir)
    return Job(job_dir) if (job_dir / "job.json").is_file() else None


# ------------------------------------------------------------------ child side
class JobContext:
    """What a task sees: its folder, parameters, a progress writer and the cancel flag."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spec = _read_json(path / "job.json")
        self.params: dict[str, Any] = self.spec.get("params", {})
        self._progress = open(path / "progress.jsonl", "a")

    def progress(self, **record: Any) -> None:
        """Append one progress record (e.g. ``fraction``, ``message``, ``losses``)."""
        self._progress.write(json.dumps({"time": time.time(), **record}, default=float) + "\n")
        self._progress.flush()

    def set_status(self, **fields: Any) -> None:
        """Update ``status.json`` (e.g. ``message``, ``device``)."""
        st = _read_json(self.path / "status.json")
        _write_json(self.path / "status.json", {**st, **fields})

    def should_stop(self) -> bool:
        return (self.path / "cancel").exists()

    def check_cancel(self) -> None:
        if self.should_stop():
            raise JobCancelled()

    def close(self) -> None:
        self._progress.close()


#: Task name -> function: gets a :class:`JobContext`, returns the final message. Filled by
#: :func:`task`; the app's own tasks are in :mod:`studio.tasks` (imported by the child).
TASKS: dict[str, Callable[[JobContext], str]] = {}


def task(name: str) -> Callable[[Callable[[JobContext], str]], Callable[[JobContext], str]]:
    """Decorator registering a background task under ``name``."""

    def deco(fn: Callable[[JobContext], str]) -> Callable[[JobContext], str]:
        TASKS[name] = fn
        return fn

    return deco


def _resolve(kind: str) -> Callable[[JobContext], str]:
    """The task registered as ``kind`` by the app's own task module, :mod:`studio.tasks`.

    Nothing a ``job.json`` says is imported: only the known tasks run. The server's own
    environment may add task modules (``SCHELIX_EXTRA_TASKS``, comma-separated; the tests'
    tasks), never a job's files.
    """
    import importlib

    import studio.tasks  # noqa: F401  (registers the app's tasks)

    for module in filter(None, os.environ.get("SCHELIX_EXTRA_TASKS", "").split(",")):
        importlib.import_module(module.strip())

    if kind not in TASKS:
        raise SchelixError(f"Unknown job kind '{kind}'", f"use one of {sorted(TASKS)}")
    return TASKS[kind]


def _start_memory_guard(ctx: JobContext) -> None:
    """Fail the job, with a message, past the server's memory limit for one job."""
    limit = job_memory.limit_bytes()
    if limit is None:
        return

    def fail(message: str) -> None:
        ctx.set_status(status="failed", message=message, finished=time.time())

    threading.Thread(
        target=job_memory.guard, args=(limit, fail), name="memory-guard", daemon=True
    ).start()


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m studio.jobs <job_dir>``."""
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0])
    ctx = JobContext(path)
    ctx.set_status(status="running", pid=os.getpid(), message="running")
    try:
        _start_memory_guard(ctx)
        message = _resolve(str(ctx.spec.get("kind", "")))(ctx)
        ctx.set_status(status="finished", message=message, finished=time.time())
        return 0
    except JobCancelled:
        ctx.set_status(
            status="cancelled", message="Cancelled; earlier results are kept", finished=time.time()
        )
        return 0
    except SchelixError as err:
        ctx.set_status(status="failed", message=str(err), finished=time.time())
        return 1
    except BaseException as err:
        (path / "error.log").write_text(traceback.format_exc())
        if ctx.should_stop():
            ctx.set_status(
                status="cancelled",
                message="Cancelled; earlier results are kept",
                finished=time.time(),
            )
            return 0
        ctx.set_status(
            status="failed",
            message=f"The job stopped with an error ({type(err).__name__}: {err}). Earlier results "
            "are kept; change the settings or try again",
            finished=time.time(),
        )
        return 1
    finally:
        ctx.close()


if __name__ == "__main__":
    from studio import jobs as _registry  # tasks register in the imported module, not __main__

    sys.exit(_registry.main())
