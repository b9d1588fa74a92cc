"""One call from a preprocessed AnnData to an integrated one: split, gate, train, write.

:func:`as_method` is scHelix behind the peers' interface (registered as ``"schelix"``; the
registry in :mod:`schelix.methods.base` loads this module by name on first use), so
comparisons treat it like any peer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np

from schelix.config import SCHelixConfig
from schelix.methods.base import ProgressCallback, register
from schelix.model import SCHelix
from schelix.module.network import STAGES
from schelix.train import Callback, StepRecord

__all__ = ["as_method", "integrate", "split_genes", "stage_key", "write_results"]


def stage_key(key_added: str, stage: str) -> str:
    """``obsm`` key of a stage embedding: ``X_schelix`` for fused, ``X_schelix_<stage>`` otherwise."""
    return key_added if stage == "fused" else f"{key_added}_{stage}"


def split_genes(
    adata: ad.AnnData, *, batch_key: str, label_key: str | None, config: SCHelixConfig, seed: int
) -> None:
    """Score the genes (once; cached in ``var``), split anchors/variants unless ``adata`` already
    holds this split, and register the keys (:meth:`SCHelix.setup_anndata`). In place."""
    from schelix import anchors

    if "schelix_z_dom" not in adata.var or "schelix_connectivities" not in adata.obsp:
        anchors.score_genes(adata, batch_key=batch_key, seed=seed)
    split = {"tau_dom": config.tau_dom, "tau_str": config.tau_str, "random": config.random_anchors}
    if not anchors.has_split(adata, **split, seed=seed):
        anchors.split_anchors(adata, **split, seed=seed)
    SCHelix.setup_anndata(adata, batch_key=batch_key, label_key=label_key)


def integrate(
    adata: ad.AnnData,
    *,
    batch_key: str,
    label_key: str | None = None,
    config: SCHelixConfig | None = None,
    seed: int = 0,
    device: str = "auto",
    max_steps: int | None = None,
    callbacks: Sequence[Callback] = (),
    progress_bar: bool = False,
    key_added: str = "X_schelix",
    **overrides: Any,
) -> SCHelix:
    """Run scHelix end to end on a preprocessed AnnData (in place).

    Scores genes (once; cached in ``var``), splits anchors/variants with the
    config's thresholds (or at random for ablation S1) unless ``adata`` already holds that
    split (then the stored ``var["schelix_stream"]`` is used as it is), trains (the variant
    gate is fitted once, at the first step, and kept with the model), and writes

    - ``obsm[key_added]`` (fused) and ``obsm[key_added + "_" + stage]`` for
      ``variant``, ``variant_aligned``, ``anchor``, ``anchor_refined``;
    - ``obsm[key_added + "_snapshot_<step>"]``: fused snapshots during training;
    - ``uns["schelix"]["train"]``: every setting, device, seed, steps, seconds,
      snapshot steps; ``uns["schelix"]["history"]``: the loss curves.

    Labels (``label_key``) train a supervised head only with
    ``semi_supervised=True``; otherwise they are only recorded for scoring.
    """
    from schelix.checks import check_device, check_labels, check_seed, check_steps

    cfg = (config or SCHelixConfig()).replace(**overrides)
    check_steps(max_steps)  # every setting is checked before the gene scoring and training
    check_seed(seed)
    check_device(device)
    check_labels(adata, label_key)
    split_genes(adata, batch_key=batch_key, label_key=label_key, config=cfg, seed=seed)
    model = SCHelix(adata, cfg)
    t0 = time.perf_counter()
    model.train(
        max_steps=max_steps,
        device=device,
        seed=seed,
        callbacks=callbacks,
        progress_bar=progress_bar,
    )
    write_results(model, key_added=key_added, seconds=time.perf_counter() - t0, max_steps=max_steps)
    return model


def write_results(
    model: SCHelix,
    *,
    key_added: str = "X_schelix",
    seconds: float | None = None,
    max_steps: int | None = None,
) -> None:
    """Write a trained model's embeddings, snapshots, settings and loss history into its AnnData.

    ``uns["schelix"]["train"]`` records the steps the schedule really planned (``max_steps``,
    ``warmup_steps``; see :func:`schelix.train.schedule`), with the configured caps beside them
    (``max_steps_cap``, ``warmup_steps_cap``): passing ``max_steps`` again repeats the run;
    ``fusion_warm_started`` says whether the warm-up also fitted the fusion path
    (:func:`schelix.train.warm_starts_fusion`).
    """
    from schelix.train import schedule, warm_starts_fusion

    adata = model.adata
    total, warmup = schedule(adata.n_obs, model.config, max_steps)
    for stage in STAGES:
        adata.obsm[stage_key(key_added, stage)] = model.get_latent_representation(stage)
    for old in [k for k in adata.obsm if k.startswith(f"{key_added}_snapshot_")]:
        del adata.obsm[old]
    for step, emb in model.snapshots.items():
        adata.obsm[f"{key_added}_snapshot_{step}"] = emb
    hist = model.history
    uns = adata.uns.setdefault("schelix", {})
    uns["train"] = {
        **model.config.to_dict(),
        "max_steps": int(total),
        "warmup_steps": int(warmup),
        "max_steps_cap": int(model.config.max_steps),
        "warmup_steps_cap": int(model.config.warmup_steps),
        "fusion_warm_started": warm_starts_fusion(total, model.config),
        "key_added": key_added,
        "device": model.device or "cpu",
        "seed": int(model.seed or 0),
        "steps": int(model.state.step),
        "stopped_early": bool(model.state.stopped_early),
        "seconds": float(seconds if seconds is not None else model.state.seconds),
        "n_anchor": len(model.meta["anchors"]),
        "n_variant": len(model.meta["variants"]),
        "snapshot_steps": np.asarray(sorted(model.snapshots), dtype=np.int64),
        "stages": list(STAGES),
    }
    uns["history"] = {
        c: (hist[c].to_numpy(dtype=str) if c == "phase" else hist[c].to_numpy(dtype=np.float64))
        for c in hist.columns
    }


# ------------------------------------------------- scHelix behind the peers' interface
class _MethodProgress(Callback):
    def __init__(self, progress: ProgressCallback) -> None:
        self.progress = progress

    def on_step(self, record: StepRecord) -> None:
        if record.step % 25 == 0 or record.step == record.total_steps:
            self.progress(record.step / record.total_steps, f"{record.phase} step {record.step}")


@register("schelix", label="scHelix", uses_gpu=True)
def as_method(
    adata: ad.AnnData,
    *,
    batch_key: str,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    **params: Any,
) -> np.ndarray:
    """scHelix on a copy of the HVG pool (the input AnnData is not modified).

    ``params`` are :class:`schelix.SCHelixConfig` fields (and ``max_steps``).
    """
    from schelix.preprocess import hvg_mask

    work = adata[:, hvg_mask(adata)].copy()
    for key in [k for k in work.var if k.startswith("schelix_")]:
        del work.var[key]  # re-score on this copy: no state leaks between runs
    cbs = [_MethodProgress(progress)] if progress is not None else []
    model = integrate(work, batch_key=batch_key, seed=seed, device=device, callbacks=cbs, **params)
    return model.get_latent_representation("fused")
