"""What every page of scHelix Studio shares: the workspace, the sidebar checklist, messages.

Pages import it as ``from studio import ui``. Page order, titles and links all come from
:data:`studio.steps.STEPS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import streamlit as st

from schelix.errors import SchelixError
from studio import security
from studio.steps import HOME, STEPS, by_key
from studio.workspace import Workspace, list_workspaces

#: ``st.Page`` of every step, by key (filled by :func:`navigation` on every run).
PAGES: dict[str, object] = {}
_ICON = {
    "done": ":material/check_circle:",
    "stale": ":material/warning:",
    "todo": ":material/radio_button_unchecked:",
}
_WORD = {"done": "done", "stale": "stale: run again", "todo": "to do"}


def navigation(home: object) -> object:
    """``st.navigation`` over :data:`~studio.steps.STEPS` (``home``: the home page's callable).

    The sidebar shows :func:`sidebar`'s checklist instead of Streamlit's menu.
    """
    PAGES[HOME.key] = st.Page(home, title=HOME.title, icon=HOME.icon, default=True)
    for step in STEPS:
        PAGES[step.key] = st.Page(step.page, title=step.title, icon=step.icon, url_path=step.url)
    return st.navigation(list(PAGES.values()), position="hidden")


def page(key: str) -> object:
    """The page of step ``key`` (for links and ``st.switch_page``)."""
    return PAGES.get(key) or by_key(key).page


def setup(key: str) -> None:
    """Page config (must come first on every page)."""
    st.set_page_config(
        page_title=f"scHelix Studio · {by_key(key).title}",
        page_icon=":material/genetics:",
        layout="wide",
    )


def title(key: str, text: str | None = None) -> None:
    """The page heading: ``"<number> · <text>"``, numbered from :data:`~studio.steps.STEPS`."""
    st.title(f"{by_key(key).number} · {text or by_key(key).title}")


def workspace() -> Workspace | None:
    """The session's workspace: from Session State, else from the link (``?ws=<id>``).

    The id is a capability (see :mod:`studio.security`): a link with a short, guessable id
    (made before ids became capabilities) opens only in local mode.
    """
    wid = st.session_state.get("ws_id")
    if not wid and st.query_params.get("ws"):
        wid = str(st.query_params.get("ws"))
        if not security.is_capability(wid):
            st.warning(
                "This workspace link is not valid on a shared server. Start again from the "
                "home page (use the demo data or upload a file)."
            )
            st.query_params.pop("ws", None)
            return None
    if not wid:
        return None
    try:
        ws = Workspace.open(str(wid))
    except SchelixError as err:
        st.warning(str(err))
        st.session_state.pop("ws_id", None)
        st.query_params.pop("ws", None)
        return None
    use_workspace(ws)
    return ws


def use_workspace(ws: Workspace) -> None:
    """Make ``ws`` this session's workspace and put its id in the URL (a reload finds it)."""
    st.session_state["ws_id"] = ws.id
    mine = st.session_state.setdefault("my_workspaces", [])
    if ws.id not in mine:
        mine.append(ws.id)
    if st.query_params.get("ws") != ws.id:
        st.query_params["ws"] = ws.id


def my_workspaces() -> list[dict]:
    """The workspaces the home page may list: this session's own; every one in local mode."""
    if security.local_mode():
        return list_workspaces()
    return list_workspaces(ids=list(st.session_state.get("my_workspaces", [])))


def sidebar(ws: Workspace | None) -> None:
    """The checklist of steps (done / stale / to do) with links."""
    with st.sidebar:
        st.page_link(page("home"), label="Home: data, earlier workspaces", icon=HOME.icon)
        st.markdown("### Your analysis")
        if ws is None:
            st.caption("No data yet: start on the home page.")
            return
        st.caption(f"Workspace `{ws.id}` {('· ' + ws.name) if ws.name else ''}")
        status = ws.statuses()
        for step in STEPS:
            if step.kept:
                label, icon = f"{step.title} — {_WORD[status[step.key]]}", _ICON[status[step.key]]
            else:  # a view of an earlier step's result, or a step with its own files
                label, icon = step.title + (f" ({step.note})" if step.note else ""), step.icon
            st.page_link(page(step.key), label=label, icon=icon)
        st.caption("Stale = an earlier step was changed after this one ran: run it again.")


def require(ws: Workspace | None, step: str, *, result: str | None = None) -> Workspace:
    """Stop the page with a plain message when it has nothing to show.

    The page shows when the steps before ``step`` are done, or only stale (its actions are then
    disabled, see :func:`blocked`), or when ``result`` (a step) has a result kept — marked stale
    by :func:`stale_banner` when an earlier step changed since. Call it after :func:`sidebar`
    and :func:`title`, so that a stopped page still has both.
    """
    if ws is None:
        st.info("Start on the home page: use the demo data or upload your own file.")
        st.page_link(page("home"), label="Go to the home page", icon=HOME.icon)
        st.stop()
    if result is not None and ws.status(result) != "todo" and ws.has_adata(result):
        return ws
    missing = ws.ready(step)
    if missing is None or (result is None and ws.status(missing) == "stale"):
        return ws
    word = "is stale" if ws.status(missing) == "stale" else "is not done yet"
    name = by_key(missing).title
    st.info(f"The step **{name}** {word}; this page needs it.")
    st.page_link(page(missing), label=f"Go to {name}", icon=":material/arrow_forward:")
    st.stop()
    raise AssertionError  # unreachable: st.stop() ends the run


def blocked(ws: Workspace, step: str, what: str) -> bool:
    """Whether ``what`` (e.g. "Training") cannot start: a step before ``step`` is not done.

    Says which one and links to it; the kept results stay on the page.
    """
    missing = ws.ready(step)
    if missing is None:
        return False
    name = by_key(missing).title
    why = (
        "is stale (a step before it was changed): apply it again first"
        if ws.status(missing) == "stale"
        else "is not done yet: run it first"
    )
    st.info(f"{what} needs the step **{name}**, which {why}.")
    st.page_link(page(missing), label=f"Go to {name}", icon=":material/arrow_forward:")
    return True


def stale_banner(ws: Workspace, step: str) -> None:
    """A banner when this step's results were made before an earlier step changed."""
    if ws.status(step) == "stale":
        st.warning(
            f"The **{by_key(step).title}** results shown here were made with earlier settings of a "
            "previous step. They are kept, but they no longer match: run this step again."
        )


@contextlib.contextmanager
def guard(what: str, *, keep: str | None = None) -> Iterator[None]:
    """Show any error of ``what`` as a message in the page (never a traceback); keep going.

    With ``keep`` (a Session State key) the message stays on the page across reruns until the
    next success (see :func:`kept_error`).
    """
    message = None
    try:
        yield
    except SchelixError as err:
        message = f"{what}: {err}"
    except Exception as err:  # the app must never show a traceback
        message = (
            f"{what} failed ({type(err).__name__}: {err}). Nothing you made before was lost; "
            "check your settings and try again."
        )
    if keep is not None:
        st.session_state[keep] = message
    elif message:
        st.error(message)


def kept_error(keep: str) -> None:
    """Show the message :func:`guard` kept under ``keep``, if any."""
    if st.session_state.get(keep):
        st.error(st.session_state[keep])


@st.cache_resource(max_entries=3, show_spinner="Reading the data…")
def _read(path: str, mtime: float) -> ad.AnnData:
    return ad.read_h5ad(path)


def load(ws: Workspace, step: str) -> ad.AnnData:
    """The AnnData of ``step`` (cached while the file is unchanged). Do not modify it: copy first."""
    path = ws.adata_path(step)
    if not path.is_file():
        raise SchelixError(
            f"The '{by_key(step).title}' step has no result yet", "run that step first"
        )
    return _read(str(path), path.stat().st_mtime)


def next_link(key: str, label: str) -> None:
    """A link onward to step ``key``."""
    st.page_link(page(key), label=label, icon=":material/arrow_forward:")


def job_dir(ws: Workspace, name: str) -> Path:
    return ws.subdir(f"jobs/{name}")


def job_progress(job: object, *, name: str, what: str, show_finished: bool = False) -> str:
    """Progress bar, Cancel and end state of a background job; reruns the page when it ends.

    Call it inside an ``st.fragment(run_every=...)``. ``name`` keys the Cancel button
    (``<name>_cancel``) and the state remembered between reruns (``<name>_seen``); ``what``
    names the job in the failure message ("Mapping failed: ..."). When the job stops, the whole
    page reruns once so that it shows the new result. Returns the job's state.
    """
    status = job.status()
    state = status["status"]
    if state == "running":
        last = next((r for r in reversed(job.records()) if "message" in r or "fraction" in r), {})
        text = last.get("message") or status.get("message") or "starting"
        st.progress(min(1.0, float(last.get("fraction") or 0.0)), text=text)
        if st.button("Cancel", key=f"{name}_cancel", help="Stops the job; earlier results stay."):
            job.cancel()
    elif state == "finished":
        if show_finished:
            st.success(status.get("message", "Finished"))
    elif state == "cancelled":
        st.info(status.get("message", "Cancelled."))
    else:
        st.error(f"{what} failed: {status.get('message', '')}")
    seen = f"{name}_seen"
    if st.session_state.get(seen) == "running" and state != "running":
        st.session_state[seen] = state
        st.rerun(scope="app")
    st.session_state[seen] = state
    return state
