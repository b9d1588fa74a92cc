"""A workspace built in seconds for the app tests: data -> QC -> anchors -> a 20-step training.

The training is real (``schelix.pipeline.integrate``); the stage UMAPs are the first two
latent dimensions (the real ones need umap-learn's JIT, tested in ``test_app`` and the browser
test). Also the background tasks these tests start (``SCHELIX_EXTRA_TASKS=app_workspace``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from schelix import anchors, datasets, evaluate, pipeline, pp, stages
from studio import jobs
from studio.workspace import Workspace

FAKE_LOSS = 12345.5  # a cancelled job's loss: must never be shown as the kept run's


@jobs.task("test_cancelled_train")
def cancelled_train(ctx: jobs.JobContext) -> str:
    """Writes loss records unlike any real run, then waits to be cancelled."""
    for i in range(5):
        ctx.progress(step=i + 1, total_steps=50, phase="warmup", losses={"total": FAKE_LOSS})
    while True:
        ctx.check_cancel()
        time.sleep(0.1)


@jobs.task("test_umap_stage")
def umap_stage(ctx: jobs.JobContext) -> str:
    """Training done, UMAPs being computed: the stage the page must show."""
    ctx.progress(step=20, total_steps=20, phase="fusion", losses={"total": 1.0}, eta=0.0)
    ctx.progress(phase="umap", fraction=0.2, message="UMAP 3 of 15 (X_schelix_variant)")
    while True:
        ctx.check_cancel()
        time.sleep(0.1)


@jobs.task("test_peer_running")
def peer_running(ctx: jobs.JobContext) -> str:
    """The metrics job while its second of three peers (scVI) is at epoch 64 of 400."""
    from studio.tasks import method_progress

    ctx.progress(**method_progress(1, 3, "scVI", 64 / 400, "scVI: epoch 64/400"))
    while True:
        ctx.check_cancel()
        time.sleep(0.1)


def trained_workspace(root: Path, *, steps: int = 20) -> Workspace:
    """A workspace whose data, QC, anchors and training are done (CPU, seed 0)."""
    adata = datasets.synthetic(300, 200, batch_strength=0.8, seed=5)
    pp.qc_metrics(adata)
    ws = Workspace.create(root=root, name="test")
    ws.save_adata("data", adata)
    ws.set_keys(batch_key="batch", label_key="cell_type")
    ws.mark_done("data", {"batch_key": "batch", "label_key": "cell_type", "n_cells": 300})
    qc = pp.preprocess(adata, batch_key="batch", n_top_genes=200)
    ws.save_adata("qc", qc)
    ws.mark_done("qc", {"qc": "adaptive", "min_cells": 3, "n_top_genes": 200,
                        "cells_kept": int(qc.n_obs), "genes_kept": int(qc.n_vars)})  # fmt: skip
    anchors.score_genes(qc, batch_key="batch", n_pcs=20)
    qc.uns["schelix"]["app_qc_rev"] = ws.rev("qc")
    anchors.split_anchors(qc, tau_dom=0.0, tau_str=0.0)
    ws.save_adata("anchors", qc)
    n_anchor = int((qc.var["schelix_stream"] == "anchor").sum())
    n_variant = int((qc.var["schelix_stream"] == "variant").sum())
    ws.mark_done("anchors", {"tau_dom": 0.0, "tau_str": 0.0, "n_anchor": n_anchor,
                             "n_variant": n_variant})  # fmt: skip
    train = qc.copy()
    fast = {"batch_size": 64, "n_prototypes": 6, "mixup_k": 20, "snapshot_every": 10,
            "warmup_steps": 5}  # fmt: skip
    pipeline.integrate(train, batch_key="batch", seed=0, device="cpu", max_steps=steps, **fast)
    keys = [*stages.stage_keys(train).values(), *stages.snapshot_keys(train).values()]
    for key in keys:
        train.obsm[stages.umap_key(key)] = np.ascontiguousarray(train.obsm[key][:, :2])
    train.obsm["X_umap"] = train.obsm["X_schelix_umap"]
    ws.save_adata("train", train)
    record = {**fast, "max_steps": steps, "seed": 0, "device": "cpu",
              "ablation": "S0_full", "tau_dom": 0.0, "tau_str": 0.0}  # fmt: skip
    ws.mark_done("train", record)
    train.obsm["X_pca"] = train.obsm["X_schelix_pca"]  # the unintegrated baseline
    table = evaluate.evaluate(train, ["X_schelix", "X_pca"], batch_key="batch",
                              label_key="cell_type")  # fmt: skip
    table.to_csv(ws.subdir("metrics") / "scores.csv", index=False)
    ws.save_adata("metrics", train)
    ws.mark_done("metrics", {"methods": [], "device": "cpu"})
    return ws
