"""Per-user workspace of the app: one folder per session, the AnnData of every step, step state.

A workspace is a folder ``<root>/<id>`` (root: ``$SCHELIX_WORKSPACE_ROOT``, default
``~/.schelix/workspaces``) holding

- ``state.json``: for every step its status (``"done"``, ``"stale"``, ``"todo"``), the
  parameters it was applied with, and a revision counter;
- ``<step>.h5ad``: the AnnData a step produced (``data``, ``qc``, ``anchors``, ``train``,
  ``metrics``);
- ``uploads/`` (files the user brought), ``jobs/<name>/`` (background jobs, see
  :mod:`studio.jobs`) and ``export/``.

Applying a step marks every *done* step after it ``"stale"``: its results stay on disk and
on screen, flagged, until the user runs it again. The state is read fresh from disk on every
access and written atomically, so a background job and the app can both update it.

The steps that run as background jobs are in :mod:`studio.tasks`; they record their result
in the workspace themselves.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad

from schelix.errors import SchelixError
from studio.security import new_id
from studio.steps import WORK_STEPS, by_key

__all__ = ["STEPS", "Workspace", "list_workspaces", "workspace_root"]

#: The steps whose results the workspace keeps, in order (from :data:`studio.steps.STEPS`).
#: Each step's result depends on every step before it.
STEPS: tuple[str, ...] = WORK_STEPS
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def workspace_root() -> Path:
    """``$SCHELIX_WORKSPACE_ROOT`` or ``~/.schelix/workspaces``."""
    env = os.environ.get("SCHELIX_WORKSPACE_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".schelix" / "workspaces"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


@dataclass(frozen=True)
class Workspace:
    """A workspace folder. Create with :meth:`create` or :meth:`open`."""

    path: Path

    # ---------------------------------------------------------------- life cycle
    @classmethod
    def create(cls, *, root: str | Path | None = None, name: str = "") -> Workspace:
        """A new, empty workspace with a fresh id that cannot be guessed (a capability)."""
        root = Path(root) if root is not None else workspace_root()
        wid = new_id()
        path = root / wid
        path.mkdir(parents=True, mode=0o700)
        state = {
            "id": wid,
            "name": name,
            "created": time.time(),
            "steps": {s: {"status": "todo", "params": {}, "rev": 0} for s in STEPS},
            "keys": {},
        }
        _write_json(path / "state.json", state)
        return cls(path)

    @classmethod
    def open(cls, wid: str, *, root: str | Path | None = None) -> Workspace:
        """The existing workspace ``wid``; :class:`SchelixError` if there is none."""
        root = Path(root) if root is not None else workspace_root()
        if not _ID.match(str(wid)) or not (root / wid / "state.json").is_file():
            raise SchelixError(
                f"There is no workspace '{wid}'",
                "start again from the home page (use the demo data or upload a file)",
            )
        return cls(root / wid)

    @property
    def id(self) -> str:
        return self.path.name

    # ---------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        """The whole state (fresh from disk)."""
        return json.loads((self.path / "state.json").read_text())

    def _update(self, fn: Any) -> dict[str, Any]:
        state = self.state()
        fn(state)
        state["modified"] = time.time()
        _write_json(self.path / "state.json", state)
        return state

    @property
    def name(self) -> str:
        return str(self.state().get("name", ""))

    def rename(self, name: str) -> str:
        """Give the workspace a name (shown on the home page): printable, at most 80 characters."""
        clean = "".join(ch for ch in str(name) if ch.isprintable()).strip()[:80]

        def fn(state: dict[str, Any]) -> None:
            state["name"] = clean

        self._update(fn)
        return clean

    def delete(self) -> None:
        """Remove the workspace folder and everything in it (its jobs must have stopped)."""
        import shutil

        if not (self.path / "state.json").is_file() or not _ID.match(self.id):
            raise SchelixError(f"'{self.path}' is not a workspace", "nothing was deleted")
        shutil.rmtree(self.path)

    def status(self, step: str) -> str:
        """``"done"``, ``"stale"`` or ``"todo"``."""
        return str(self.state()["steps"][step]["status"])

    def statuses(self) -> dict[str, str]:
        return {s: v["status"] for s, v in self.state()["steps"].items()}

    def params(self, step: str) -> dict[str, Any]:
        """The parameters ``step`` was last applied with (empty if never)."""
        return dict(self.state()["steps"][step]["params"])

    def rev(self, step: str) -> int:
        """How many times ``step`` has been applied (a job records it to detect changes)."""
        return int(self.state()["steps"][step]["rev"])

    @property
    def keys(self) -> dict[str, str]:
        """The chosen obs columns: ``{"batch_key": ..., "label_key": ...}`` (label optional)."""
        return dict(self.state().get("keys", {}))

    def set_keys(self, *, batch_key: str, label_key: str | None = None) -> None:
        """Record the batch and (optional) cell-type column."""

        def fn(state: dict[str, Any]) -> None:
            state["keys"] = {
                "batch_key": batch_key,
                **({"label_key": label_key} if label_key else {}),
            }

        self._update(fn)

    def mark_done(
        self,
        step: str,
        params: dict[str, Any] | None = None,
        *,
        upstream_revs: dict[str, int] | None = None,
    ) -> str:
        """Record ``step`` as applied with ``params``; mark every done step after it stale.

        ``upstream_revs`` (from :meth:`upstream_revs` when a background job started): if any
        earlier step was applied again since, the result is recorded as ``"stale"`` instead.
        Returns the status recorded.
        """
        i = STEPS.index(step)

        def fn(state: dict[str, Any]) -> None:
            steps = state["steps"]
            changed = upstream_revs is not None and any(
                steps[s]["rev"] != r for s, r in upstream_revs.items()
            )
            steps[step] = {
                "status": "stale" if changed else "done",
                "params": params or {},
                "rev": steps[step]["rev"] + 1,
                "updated": time.time(),
            }
            for later in STEPS[i + 1 :]:
                if steps[later]["status"] == "done":
                    steps[later]["status"] = "stale"

        return str(self._update(fn)["steps"][step]["status"])

    def invalidate(self, step: str) -> None:
        """Mark ``step`` to do again (its result is no longer valid) and later done steps stale."""
        i = STEPS.index(step)

        def fn(state: dict[str, Any]) -> None:
            steps = state["steps"]
            steps[step]["status"] = "todo"
            steps[step]["rev"] += 1
            for later in STEPS[i + 1 :]:
                if steps[later]["status"] == "done":
                    steps[later]["status"] = "stale"

        self._update(fn)

    def upstream_revs(self, step: str) -> dict[str, int]:
        """Revisions of every step before ``step`` (see :meth:`mark_done`)."""
        steps = self.state()["steps"]
        return {s: int(steps[s]["rev"]) for s in STEPS[: STEPS.index(step)]}

    def ready(self, step: str) -> str | None:
        """``None`` if the steps before ``step`` are done, else the first one that is not."""
        st = self.statuses()
        needed = [s for s in STEPS[: STEPS.index(step)] if s != "metrics"]  # metrics is optional
        return next((s for s in needed if st[s] != "done"), None)

    # ---------------------------------------------------------------- files
    def adata_path(self, step: str) -> Path:
        return self.path / f"{step}.h5ad"

    def has_adata(self, step: str) -> bool:
        return self.adata_path(step).is_file()

    def save_adata(self, step: str, adata: ad.AnnData) -> Path:
        """Write ``adata`` as ``<step>.h5ad`` (atomically: a half-written file never replaces one)."""
        path = self.adata_path(step)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.h5ad")
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
        return path

    def load_adata(self, step: str) -> ad.AnnData:
        """Read ``<step>.h5ad``; :class:`SchelixError` if that step has not produced one."""
        path = self.adata_path(step)
        if not path.is_file():
            raise SchelixError(
                f"The '{by_key(step).title}' step has no result yet",
                "run that step first (see the checklist in the sidebar)",
            )
        return ad.read_h5ad(path)

    def subdir(self, name: str) -> Path:
        """``<workspace>/<name>/``, created if needed (``uploads``, ``export``, ``jobs/...``)."""
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        return d


def list_workspaces(
    *, root: str | Path | None = None, ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """Earlier workspaces, newest first: ``{"id", "name", "modified", "steps_done"}``.

    ``ids``: only these (the app passes this browser session's own, unless in local mode).
    """
    root = Path(root) if root is not None else workspace_root()
    out = []
    files = root.glob("*/state.json") if root.is_dir() else []
    if ids is not None:
        files = [root / i / "state.json" for i in ids if _ID.match(str(i))]
    for state_file in files:
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        done = [s for s, v in state.get("steps", {}).items() if v.get("status") == "done"]
        out.append(
            {
                "id": state_file.parent.name,
                "name": state.get("name", ""),
                "modified": float(state.get("modified", state.get("created", 0.0))),
                "steps_done": done,
            }
        )
    return sorted(out, key=lambda r: r["modified"], reverse=True)
