"""scHelix Studio — the entry point: navigation over the steps, and the home page.

Run with ``streamlit run app.py``. The steps (``pages/``) and their order come from one list,
:data:`studio.steps.STEPS`; this file builds ``st.navigation`` from it, runs the chosen page
and, on the home page, shows what the tool does: start with the demo or your own data.
"""

from __future__ import annotations

import datetime as dt

import streamlit as st

from schelix import datasets, io, pp
from schelix.errors import SchelixError
from studio import jobs, ui
from studio.security import local_mode
from studio.steps import by_key
from studio.workspace import Workspace

current = ui.navigation(lambda: None)  # the home page is the rest of this file
current.run()
if current.url_path:  # a step's page ran: nothing of the home page below
    st.stop()

ui.setup("home")
ws = ui.workspace()
ui.sidebar(ws)

st.title("scHelix Studio")
st.markdown(
    "scHelix removes batch effects from single-cell RNA-seq data so that cells from different "
    "experiments can be compared side by side. It first finds **anchor genes** — genes that tell "
    "cell types apart but barely change between batches — and lets them guide how the remaining "
    "**variant genes** are blended in. You leave with an integrated `.h5ad` file (it opens in "
    "cellxgene or scanpy), the list of anchor genes and scores of how good the integration is."
)

left, right = st.columns(2)
with left:
    st.subheader("Try it on the demo data")
    st.caption(
        "2,064 blood cells (PBMC, Kang et al. 2018) from eight donors, untreated or stimulated "
        "with interferon-β — the two batches — labelled with eight cell types (T, B, NK cells, "
        "two kinds of monocytes, dendritic cells, megakaryocytes)."
    )
    if st.button(
        "Use the demo data",
        type="primary",
        key="demo",
        help="Copies the bundled PBMC demo into a new workspace of your own.",
    ):
        with ui.guard("Loading the demo data"), st.spinner("Loading the demo data…"):
            new = Workspace.create(name="demo PBMC (control / IFN-β)")
            adata = io.read(
                datasets.DEMO_PATH,
                batch_key=datasets.DEMO_BATCH_KEY,
                label_key=datasets.DEMO_LABEL_KEY,
            )
            pp.qc_metrics(adata)
            new.save_adata("data", adata)
            new.set_keys(batch_key=datasets.DEMO_BATCH_KEY, label_key=datasets.DEMO_LABEL_KEY)
            new.mark_done(
                "data",
                {
                    "file": datasets.DEMO_PATH.name,
                    "batch_key": datasets.DEMO_BATCH_KEY,
                    "label_key": datasets.DEMO_LABEL_KEY,
                },
            )
            ui.use_workspace(new)
            st.switch_page(ui.page("data"))
with right:
    st.subheader("Bring your own data")
    st.caption(
        "An `.h5ad` file, a 10x Genomics `.h5` file, or a zipped 10x folder "
        "(matrix.mtx, barcodes, features); several files, one per sample, become one batch "
        f"each. Up to {st.get_option('server.maxUploadSize'):,} MB per file"
        + (" (larger ones: open them by path on the Data page)." if local_mode() else ".")
    )
    if st.button("Upload a file", key="upload", help="Opens the upload page in a new workspace."):
        ui.use_workspace(Workspace.create(name="upload"))
        st.switch_page(ui.page("data"))

if ws is not None:
    st.success(f"You are working in workspace `{ws.id}`. Continue with the steps in the sidebar.")
    ui.next_link("data", "Continue with your data")

earlier = ui.my_workspaces()
if earlier:
    st.subheader("Reopen an earlier workspace")
    st.caption(
        "Every workspace on this computer (local mode)."
        if local_mode()
        else "Your workspaces in this browser session. Each is private: keep its link (the "
        "address in your browser, with ?ws=...) to come back to it later."
    )
    for row in earlier[:10]:
        when = dt.datetime.fromtimestamp(row["modified"]).strftime("%Y-%m-%d %H:%M")
        done = ", ".join(by_key(s).title for s in row["steps_done"]) or "nothing yet"
        c1, c2, c3 = st.columns([5, 1, 1])
        c1.markdown(f"**{row['name'] or 'unnamed'}** · {when} · done: {done} · `{row['id']}`")
        if c2.button(
            "Reopen", key=f"reopen_{row['id']}", disabled=ws is not None and ws.id == row["id"]
        ):
            ui.use_workspace(Workspace.open(row["id"]))
            st.rerun()
        with c3.popover("Rename / delete", key=f"manage_{row['id']}"):
            new_name = st.text_input("Name", row["name"], key=f"name_{row['id']}", max_chars=80)
            if st.button("Rename", key=f"rename_{row['id']}", disabled=new_name == row["name"]):
                Workspace.open(row["id"]).rename(new_name)
                st.rerun()
            sure = st.checkbox("Delete it with all its results", key=f"sure_{row['id']}")
            if st.button("Delete", key=f"delete_{row['id']}", disabled=not sure, type="primary"):
                with ui.guard("Deleting the workspace"):
                    gone = Workspace.open(row["id"])
                    if any(j.active for j in map(jobs.find, gone.path.glob("jobs/*")) if j):
                        raise SchelixError("A job is still running in it", "cancel it first")
                    gone.delete()
                    if ws is not None and ws.id == row["id"]:
                        st.session_state.pop("ws_id", None)
                        st.query_params.pop("ws", None)
                    st.rerun()
