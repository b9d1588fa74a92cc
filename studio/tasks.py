"""The app's steps that run as background jobs (:mod:`studio.jobs`): training and metrics.

Each is registered under a short name with :func:`studio.jobs.task`; it gets a
:class:`~studio.jobs.JobContext` and returns the final message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from studio.jobs import JobContext, task
from studio.workspace import Workspace

__all__ = ["method_progress", "metrics_task", "train_task"]


def method_progress(i: int, n_methods: int, label: str, frac: float, msg: str) -> dict[str, Any]:
    """The Metrics bar while peer ``i`` (0-based) of ``n_methods`` runs, ``frac`` of the way.

    The bar is the whole job (every peer, then the scoring, one share each); the text says which
    peer, how far it is in its own terms, and the overall share the bar shows, so they agree.
    """
    own = msg[len(label) + 2 :] if msg.startswith(f"{label}: ") else msg  # "scVI: scVI: ..."
    overall = (i + min(max(frac, 0.0), 1.0)) / (n_methods + 1)
    return {
        "fraction": overall,
        "message": f"{label} (method {i + 1} of {n_methods}): {own} · {int(overall * 100)}% of the job",
    }


def _workspace(ctx: JobContext) -> Workspace:
    return Workspace(Path(ctx.params["workspace"]))


@task("train")
def train_task(ctx: JobContext) -> str:
    """Train scHelix on the workspace's anchor step; save ``train.h5ad`` (+ UMAPs) and the model."""
    import shutil

    from schelix import jit_cache, pipeline, stages
    from schelix.device import resolve_device
    from schelix.train import Callback

    jit_cache.enable()
    p, ws = ctx.params, _workspace(ctx)
    device = resolve_device(p.get("device", "auto"))
    ctx.set_status(device=device, message="loading the data")
    adata = ws.load_adata("anchors")

    class Progress(Callback):
        def on_step(self, record: Any) -> None:
            ctx.progress(
                step=record.step,
                total_steps=record.total_steps,
                phase=record.phase,
                losses=dict(record.losses),
                elapsed=record.elapsed,
                eta=record.eta,
            )

        def should_stop(self) -> bool:
            return ctx.should_stop()

    ctx.set_status(message="training")
    model = pipeline.integrate(
        adata,
        batch_key=p["batch_key"],
        label_key=p.get("label_key"),
        seed=int(p.get("seed", 0)),
        device=device,
        callbacks=[Progress()],
        **p.get("overrides", {}),
    )
    ctx.check_cancel()  # a cancelled run is not kept
    ctx.set_status(device=str(model.device), message="computing UMAPs of every stage")
    keys = [*stages.stage_keys(adata).values(), *stages.snapshot_keys(adata).values()]

    def umap_progress(frac: float, msg: str) -> None:
        ctx.check_cancel()
        ctx.set_status(message=msg)
        ctx.progress(phase="umap", fraction=frac, message=msg)

    stages.add_umaps(adata, keys, seed=int(p.get("seed", 0)), progress=umap_progress)
    ctx.check_cancel()
    model_dir = ws.path / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    model.save(str(model_dir))
    ws.save_adata("train", adata)
    status = ws.mark_done("train", p.get("record", {}), upstream_revs=p.get("upstream_revs"))
    return "Training finished" + (
        " (with settings that have since changed)" if status == "stale" else ""
    )


@task("metrics")
def metrics_task(ctx: JobContext) -> str:
    """Run the chosen peer methods, then score every embedding; save ``metrics.h5ad`` + CSVs."""
    from schelix import benchmarker, display, evaluate, jit_cache, stages
    from schelix.batch_mixing import batch_mixing_by_label
    from schelix.errors import SchelixError
    from schelix.methods import get_method, run_method

    jit_cache.enable()
    p, ws = ctx.params, _workspace(ctx)
    adata = ws.load_adata("train")
    batch_key, label_key, seed = p["batch_key"], p.get("label_key"), int(p.get("seed", 0))
    methods = list(p.get("methods", []))
    keys = ["X_schelix"]
    for i, name in enumerate(methods):
        label = get_method(name).label

        def progress(frac: float, msg: str, i: int = i, label: str = label) -> None:
            ctx.check_cancel()
            ctx.progress(**method_progress(i, len(methods), label, frac, msg))

        progress(0.0, "running")
        keys.append(
            run_method(
                adata,
                name,
                batch_key=batch_key,
                seed=seed,
                device=p.get("device", "auto"),
                progress=progress,
            ).obsm_key
        )
    ctx.progress(
        fraction=len(methods) / (len(methods) + 1),
        message=f"scoring every embedding (after {len(methods)} methods)",
    )
    out = ws.subdir("metrics")
    table = evaluate.evaluate(adata, keys, batch_key=batch_key, label_key=label_key, seed=seed)
    table.to_csv(out / "scores.csv", index=False)
    (out / "scib.csv").unlink(missing_ok=True)
    (out / "mixing.csv").unlink(missing_ok=True)
    if label_key:
        ctx.progress(message="scib-metrics benchmark")
        benchmarker.scib_benchmark(
            adata, keys, batch_key=batch_key, label_key=label_key, seed=seed
        ).to_csv(out / "scib.csv", index=False)
        ctx.progress(message="batch mixing per cell type")
        rows = display.sample(adata, batch_key=batch_key)  # the cells evaluate() scored
        try:
            mixing = batch_mixing_by_label(
                adata if rows is None else adata[rows],
                keys, batch_key=batch_key, label_key=label_key, seed=seed,
            )  # fmt: skip
        except SchelixError:  # no cell type in 2+ batches: nothing to break down
            pass
        else:  # one row per method, one column per cell type (+ mean)
            mixing[keys].T.rename_axis("embedding").to_csv(out / "mixing.csv")
    ctx.check_cancel()
    ctx.progress(message="UMAPs of the peers (batch mixing view)")
    stages.add_umaps(adata, keys[1:], seed=seed)
    ws.save_adata("metrics", adata)
    ws.mark_done("metrics", p.get("record", {}), upstream_revs=p.get("upstream_revs"))
    return f"Scored {len(keys)} embeddings"


import studio.mapping  # noqa: E402, F401  (registers the "map" task of the Map new data step)
