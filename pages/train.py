"""Train scHelix in the background, with live loss curves, progress, ETA and Cancel."""

from __future__ import annotations

import time

import streamlit as st

from schelix.config import ABLATIONS, config_help
from studio import jobs, plots, ui

ui.setup("train")
ws = ui.require(ui.workspace(), "train")
ui.sidebar(ws)
ui.title("train", "Train scHelix")
st.markdown(
    "Training runs in a separate process: you can leave this page, reload it, or cancel; the app "
    "keeps working. It first **warms up** (the variant stream learns to *align* with the anchor "
    "stream), then **fuses** the two streams into one embedding."
)
ui.stale_banner(ws, "train")
keys = ws.keys
split = ws.params("anchors")
st.caption(
    f"Anchor split in use: tau_dom = {split['tau_dom']:g}, tau_str = {split['tau_str']:g} "
    f"({split['n_anchor']} anchors, {split['n_variant']} variants)."
)
HELP = config_help()
MAIN = ("max_steps", "warmup_steps", "batch_size")
SKIP = {*MAIN, "tau_dom", "tau_str"}  # thresholds come from the anchor page
DEVICES = {"auto": "auto", "GPU": "cuda", "CPU": "cpu"}
job = jobs.find(ui.job_dir(ws, "train"))
running = job is not None and job.active


def _widget(name: str, spec: dict, container: st.delta_generator.DeltaGenerator) -> object:
    label, default, helptext = name, spec["default"], spec["help"]
    if spec["type"] == "bool":
        return container.checkbox(label, value=default, help=helptext, key=f"cfg_{name}")
    if name == "fusion":
        return container.selectbox(
            label,
            ["hyper", "sum"],
            index=["hyper", "sum"].index(default),
            help=helptext,
            key=f"cfg_{name}",
        )
    if spec["type"] == "int":
        return int(
            container.number_input(
                label, value=int(default), step=1, help=helptext, key=f"cfg_{name}"
            )
        )
    if spec["type"] == "float":
        return float(
            container.number_input(
                label, value=float(default), format="%g", help=helptext, key=f"cfg_{name}"
            )
        )
    return container.text_input(label, value=str(default), help=helptext, key=f"cfg_{name}")


with st.form("train_form"):
    c1, c2, c3 = st.columns(3)
    steps = c1.number_input(
        "Training steps",
        1,
        100000,
        int(HELP["max_steps"]["default"]),
        key="steps",
        help=HELP["max_steps"]["help"] + " Fewer steps = faster, rougher result.",
    )
    warmup = c2.number_input(
        "Warm-up steps",
        0,
        100000,
        int(HELP["warmup_steps"]["default"]),
        key="warmup",
        help=HELP["warmup_steps"]["help"],
    )
    batch_size = c3.number_input(
        "Batch size",
        8,
        8192,
        int(HELP["batch_size"]["default"]),
        key="batch_size",
        help=HELP["batch_size"]["help"],
    )
    c4, c5 = st.columns(2)
    seed = c4.number_input(
        "Seed",
        0,
        2**31 - 1,
        0,
        key="seed",
        help="Random seed: the same seed and settings give the same result.",
    )
    device = c5.radio(
        "Device",
        list(DEVICES),
        horizontal=True,
        key="device",
        help="auto = the GPU if there is one, else the CPU. The device really used is "
        "shown while training.",
    )
    with st.expander("Advanced: every scHelix setting (paper §3, Tables 6–7)"):
        preset = st.selectbox(
            "Ablation preset (paper Table 2)",
            list(ABLATIONS),
            key="ablation",
            help="Switches off one part of the method to see what it contributes; "
            "a preset overrides the fields it changes. S0_full = the defaults; self_training = "
            "the paper's fused KD and connectivity back on; paper_spec = SPEC §4's "
            "values (64-d, no MNN term); scaffold_48d = the earlier default (see the README).",
        )
        values = {}
        for group in dict.fromkeys(s["group"] for s in HELP.values()):
            names = [n for n, s in HELP.items() if s["group"] == group and n not in SKIP]
            if names:
                st.markdown(f"**{group}**")
                cols = st.columns(3)
                for i, name in enumerate(names):
                    values[name] = _widget(name, HELP[name], cols[i % 3])
    submitted = st.form_submit_button("Start training", type="primary", disabled=running)

if submitted:
    overrides = {k: v for k, v in values.items() if v != HELP[k]["default"]}
    overrides.update(
        ABLATIONS[preset],
        max_steps=int(steps),
        warmup_steps=int(warmup),
        batch_size=int(batch_size),
        tau_dom=float(split["tau_dom"]),
        tau_str=float(split["tau_str"]),
    )
    record = {**overrides, "seed": int(seed), "device": DEVICES[device], "ablation": preset}
    with ui.guard("Starting the training"):
        job = jobs.start(
            ui.job_dir(ws, "train"),
            "train",
            {
                "workspace": str(ws.path),
                "batch_key": keys["batch_key"],
                "label_key": keys.get("label_key"),
                "seed": int(seed),
                "device": DEVICES[device],
                "overrides": overrides,
                "record": record,
                "upstream_revs": ws.upstream_revs("train"),
            },
        )
        st.session_state["train_seen"] = "running"


@st.fragment(run_every=1.0)
def _progress() -> None:
    if job is None:
        return
    status = job.status()
    records = job.records()
    steps_done = [r for r in records if "losses" in r]
    last = steps_done[-1] if steps_done else None
    state = status["status"]
    if state == "running":
        st.info(f"Training on **{status.get('device', '…')}** — {status.get('message', '')}")
        if last:
            frac = min(1.0, last["step"] / max(1, last["total_steps"]))
            eta = time.strftime("%H:%M:%S", time.gmtime(max(0.0, last.get("eta") or 0.0)))
            st.progress(
                frac,
                text=f"step {last['step']} of {last['total_steps']} · {last['phase']} · ETA {eta}",
            )
        if st.button("Cancel", key="cancel", help="Stops the training; earlier results are kept."):
            job.cancel()
            st.warning("Cancelling…")
    elif state == "finished":
        st.success(f"{status.get('message', 'Finished')} on {status.get('device', '?')}.")
    elif state == "cancelled":
        st.info(status.get("message", "Cancelled."))
    else:
        st.error(f"Training failed: {status.get('message', '')}")
    if steps_done:
        st.plotly_chart(plots.loss_curves(records), key="loss_curves")
        st.caption(
            "One panel per loss term; the dotted line marks the switch from warm-up to fusion."
        )
    if st.session_state.get("train_seen") == "running" and state != "running":
        st.session_state["train_seen"] = state
        st.rerun(scope="app")  # refresh the checklist and the links
    st.session_state["train_seen"] = state


_progress()
if ws.status("train") == "done" and not running:
    ui.next_link("trajectory", "Next: see how the embedding formed (trajectory)")
