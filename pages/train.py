"""Train scHelix in the background, with live loss curves, progress, ETA and Cancel."""

from __future__ import annotations

import streamlit as st

from schelix.config import ABLATIONS, config_help
from schelix.device import resolve_device
from studio import jobs, plots, training, ui

ui.setup("train")
ws = ui.workspace()
ui.sidebar(ws)
ui.title("train", "Train scHelix")
ws = ui.require(ws, "train", result="train")
st.markdown(
    "Training runs in a separate process: you can leave this page, reload it, or cancel; the app "
    "keeps working. It first **warms up** (the variant stream learns to *align* with the anchor "
    "stream), then **fuses** the two streams into one embedding, then computes the UMAPs of every "
    "stage for the Trajectory page."
)
ui.stale_banner(ws, "train")
keys = ws.keys
split = ws.params("anchors")
if split.get("n_anchor") is not None:
    st.caption(
        f"Anchor split in use: tau_dom = {split['tau_dom']:g}, tau_str = {split['tau_str']:g} "
        f"({split['n_anchor']} anchors, {split['n_variant']} variants)."
    )
HELP = config_help()
MAIN = ("max_steps", "warmup_steps", "batch_size")
SKIP = {*MAIN, "tau_dom", "tau_str"}  # thresholds come from the anchor page
DEVICES = training.DEVICES
DEVICE_LABEL = {v: k for k, v in DEVICES.items()}
job = jobs.find(ui.job_dir(ws, "train"))
running = job is not None and job.active
# the form shows the settings of the run that is running, else of the kept run
record = job.spec.get("params", {}).get("record", {}) if running else ws.params("train")
n_cells = int(ws.params("qc").get("cells_kept") or ws.params("data").get("n_cells") or 1)
kept = ui.load(ws, "train") if ws.status("train") != "todo" and ws.has_adata("train") else None
kept_train = kept.uns.get("schelix", {}).get("train", {}) if kept is not None else {}
rate = kept_train["steps"] / kept_train["seconds"] if kept_train.get("seconds") else None
default_plan = training.plan(n_cells, training.config_of({}), device="cpu")


def _default(name: str, fallback: object) -> object:
    return record.get(name, fallback)


def _widget(name: str, spec: dict, container: st.delta_generator.DeltaGenerator) -> object:
    label, default, helptext = name, _default(name, spec["default"]), spec["help"]
    if spec["type"] == "bool":
        return container.checkbox(label, value=bool(default), help=helptext, key=f"cfg_{name}")
    if name == "fusion":
        return container.selectbox(
            label, ["hyper", "sum"], index=["hyper", "sum"].index(str(default)), help=helptext,
            key=f"cfg_{name}",
        )  # fmt: skip
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


cant_train = ui.blocked(ws, "train", "Training")
with st.form("train_form"):
    c1, c2, c3 = st.columns(3)
    steps = c1.number_input(
        "Training steps", 1, 100000, int(_default("max_steps", default_plan["steps"])),
        key="steps", help=HELP["max_steps"]["help"] + " The default is the schedule's for your "
        "data (60 epochs, at least 1,000 steps or 250 epochs, at most 2,000). Fewer steps = "
        "faster, rougher result.",
    )  # fmt: skip
    warmup = c2.number_input(
        "Warm-up steps", 0, 100000, int(_default("warmup_steps", default_plan["warmup"])),
        key="warmup", help=HELP["warmup_steps"]["help"] + " At most half the steps.",
    )  # fmt: skip
    batch_size = c3.number_input(
        "Batch size", 8, 8192, int(_default("batch_size", HELP["batch_size"]["default"])),
        key="batch_size", help=HELP["batch_size"]["help"],
    )  # fmt: skip
    c4, c5 = st.columns(2)
    seed = c4.number_input(
        "Seed", 0, 2**31 - 1, int(_default("seed", 0)), key="seed",
        help="Random seed: the same seed and settings give the same result.",
    )  # fmt: skip
    device = c5.radio(
        "Device", list(training.DEVICES), horizontal=True, key="device",
        index=list(training.DEVICES).index(DEVICE_LABEL.get(str(_default("device", "auto")), "auto")),
        help="auto = the GPU if there is one, else the CPU. The device really used is "
        "shown while training.",
    )  # fmt: skip
    with st.expander("Advanced: every scHelix setting (paper §3, Tables 6–7)"):
        preset = st.selectbox(
            "Ablation preset (paper Table 2)", list(ABLATIONS), key="ablation",
            index=list(ABLATIONS).index(str(_default("ablation", "S0_full"))),
            help="Switches off one part of the method to see what it contributes; "
            "a preset overrides the fields it changes. S0_full = the defaults; self_training = "
            "the paper's fused KD and connectivity back on; paper_spec = SPEC §4's "
            "values (64-d, no MNN term); scaffold_48d = the earlier default (see the README).",
        )  # fmt: skip
        values = {}
        for group in dict.fromkeys(s["group"] for s in HELP.values()):
            names = [n for n, s in HELP.items() if s["group"] == group and n not in SKIP]
            if names:
                st.markdown(f"**{group}**")
                cols = st.columns(3)
                for i, name in enumerate(names):
                    values[name] = _widget(name, HELP[name], cols[i % 3])
    submitted = st.form_submit_button(
        "Start training", type="primary", disabled=running or cant_train
    )
main = {"max_steps": int(steps), "warmup_steps": int(warmup), "batch_size": int(batch_size)}
chosen = training.config_of({**ABLATIONS[preset], **main})
the_plan = training.plan(
    n_cells, chosen, device=resolve_device("auto") if device == "auto" else DEVICES[device],
    rate=rate,
)  # fmt: skip
st.caption(
    f"This run: **{the_plan['steps']:,} steps** ({the_plan['warmup']:,} of warm-up) on "
    f"{n_cells:,} cells, then the stage UMAPs"
    + (
        f" · {training.duration(the_plan['seconds'])} in all (from {the_plan['basis']})."
        if the_plan["seconds"] is not None
        else " · no time estimate for a GPU before its first run."
    )
)

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
    record = {
        **overrides,
        "seed": int(seed),
        "device": training.DEVICES[device],
        "ablation": preset,
    }
    with ui.guard("Starting the training"):
        job = jobs.start(
            ui.job_dir(ws, "train"),
            "train",
            {
                "workspace": str(ws.path),
                "batch_key": keys["batch_key"],
                "label_key": keys.get("label_key"),
                "seed": int(seed),
                "device": training.DEVICES[device],
                "overrides": overrides,
                "record": record,
                "upstream_revs": ws.upstream_revs("train"),
            },
        )
        st.session_state["train_seen"] = "running"


def _curves(records: list, config: object, key: str) -> None:
    st.plotly_chart(
        plots.loss_curves(records, weights=training.weights(config), names=training.TERM_NAMES),
        key=key,
    )
    off = [n for t, n in training.TERM_NAMES.items() if training.weights(config).get(t, 1) == 0]
    st.caption(
        "The weighted total first, then each term that is trained (its weight in the total); "
        "the dotted line marks the switch from warm-up to fusion."
        + (f" Not trained in this run (weight 0): {', '.join(off).lower()}." if off else "")
    )


@st.fragment(run_every=1.0)
def _progress() -> None:
    state = job.status()["status"] if job is not None else "none"
    if state == "running":
        status = job.status()
        records = job.records()
        st.info(f"Training on **{status.get('device', '…')}** — {status.get('message', '')}")
        line = training.progress_line(records)
        if line is not None:
            st.progress(*line)
        if st.button("Cancel", key="cancel", help="Stops the training; earlier results are kept."):
            job.cancel()
            st.warning("Cancelling…")
        if any("losses" in r for r in records):
            spec = job.spec.get("params", {})
            _curves(records, training.config_of(spec.get("overrides", {})), "loss_curves")
    else:
        status = job.status() if job is not None else {}
        if state == "finished":
            st.success(f"{status.get('message', 'Finished')} on {status.get('device', '?')}.")
        elif state == "cancelled":
            st.info(status.get("message", "Cancelled.") + " The page shows the kept run.")
        elif state == "failed":
            st.error(f"Training failed: {status.get('message', '')}")
        if kept is not None and training.kept_records(kept):
            st.subheader("Loss curves of the kept run")
            _curves(training.kept_records(kept), kept_train, "kept_loss_curves")
    if st.session_state.get("train_seen") == "running" and state != "running":
        st.session_state["train_seen"] = state
        st.rerun(scope="app")  # refresh the checklist, the links and the kept run
    st.session_state["train_seen"] = state


_progress()
if ws.status("train") != "todo" and not running:
    ui.next_link("trajectory", "Next: see how the embedding formed (trajectory)")
