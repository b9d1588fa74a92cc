"""What the Train page and the export say about a training run: plan, progress, loss terms.

- :func:`plan`: the steps a run will really take (the schedule of :func:`schelix.train.schedule`)
  and a rough time estimate, before it starts;
- :func:`progress_line`: the progress bar of a running job, training *and* the UMAP stage;
- :func:`kept_records`: the loss curves of the run whose results the workspace keeps (from its
  ``uns["schelix"]["history"]``, never from a later, cancelled job);
- :func:`weights` / :data:`TERM_NAMES`: which loss terms are trained, in words.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np

from schelix.config import SCHelixConfig

__all__ = [
    "CPU_STEPS_PER_S",
    "DEVICES",
    "TERM_NAMES",
    "kept_records",
    "plan",
    "progress_line",
    "weights",
]

#: Device choice shown in the app -> value passed to the package (one wording on every page).
DEVICES = {"auto": "auto", "GPU": "cuda", "CPU": "cpu"}
#: Training steps per second on two CPU cores, the default model (benchmarks/SPEED_RESULTS.md,
#: session 23: 1,000 steps in 40.8 s on pbmc_3chem, 2,000 in 67.5 s on Kang; the slower of the
#: two, so that the first estimate is not too short). Used only until this workspace has a run
#: of its own.
CPU_STEPS_PER_S = 25.0
#: Seconds per UMAP per 1,000 cells on two CPU cores (the demo: 15 UMAPs of 2,000 cells, ~85 s).
CPU_UMAP_S_PER_1K = 2.8

#: Loss term -> what it is, in words (the paper's names).
TERM_NAMES = {
    "total": "Weighted total (what training minimises)",
    "rec_variant": "Reconstruction of the variant genes",
    "rec_anchor": "Reconstruction of the anchor genes",
    "align": "Align: variant stream towards the anchors",
    "conn_variant": "Connectivity, variant stream",
    "conn_anchor": "Connectivity, anchor stream",
    "mnn_variant": "Cross-batch neighbours (MNN), variant stream",
    "mnn_anchor": "Cross-batch neighbours (MNN, contrastive), anchor stream",
    "rec_fused": "Reconstruction from the fused embedding",
    "kd": "Distillation from the anchors (KD)",
    "conn_fused": "Connectivity, fused embedding",
    "triplet": "Triplets within each batch (anchor-guided), fused embedding",
    "supervised": "Cell-type head (semi-supervised)",
}


def weights(config: Mapping[str, Any] | SCHelixConfig) -> dict[str, float]:
    """Weight of each loss term in the total (``w_<term>`` of the config); ``total`` is 1."""
    cfg = config.to_dict() if isinstance(config, SCHelixConfig) else dict(config)
    out = {t: float(cfg.get(f"w_{t}", 1.0)) for t in TERM_NAMES if t != "total"}
    if not cfg.get("semi_supervised", False):
        out["supervised"] = 0.0
    return {"total": 1.0, **out}


def config_of(overrides: Mapping[str, Any]) -> SCHelixConfig:
    """The configuration a job runs with: the defaults with ``overrides`` (unknown keys ignored)."""
    known = SCHelixConfig().to_dict()
    return SCHelixConfig().replace(**{k: v for k, v in overrides.items() if k in known})


def plan(
    n_cells: int,
    config: SCHelixConfig,
    *,
    device: str,
    rate: float | None = None,
    n_umaps: int = 15,
) -> dict[str, Any]:
    """Steps a run will take and a rough time: ``{"steps", "warmup", "seconds", "basis"}``.

    ``rate``: steps per second measured by an earlier run in this workspace (then ``basis`` says
    so); otherwise the CPU speed of the benchmark. No estimate on a GPU without an earlier run
    (``seconds`` is None).
    """
    from schelix.train import schedule

    steps, warmup = schedule(n_cells, config)
    umap_s = n_umaps * CPU_UMAP_S_PER_1K * max(1.0, n_cells / 1000)
    if rate:
        return {"steps": steps, "warmup": warmup, "seconds": steps / rate + umap_s,
                "basis": "the speed of your last run here"}  # fmt: skip
    if device == "cpu":
        return {"steps": steps, "warmup": warmup, "seconds": steps / CPU_STEPS_PER_S + umap_s,
                "basis": "the speed measured on 2 CPU cores"}  # fmt: skip
    return {"steps": steps, "warmup": warmup, "seconds": None, "basis": ""}


def duration(seconds: float) -> str:
    """``"about 2 min"``, ``"about 40 s"``, ``"about 1 h 5 min"``."""
    s = max(1, round(seconds))
    if s < 90:
        return f"about {s} s"
    if s < 3600:
        return f"about {round(s / 60)} min"
    return f"about {s // 3600} h {round(s % 3600 / 60)} min"


def progress_line(records: Sequence[Mapping[str, Any]]) -> tuple[float, str] | None:
    """``(fraction, text)`` of a running training job, or None before its first step.

    After the last step the job computes the UMAPs of every stage and snapshot: that stage is
    shown as such (``UMAP 3 of 15``), not as a training bar stuck at "ETA 00:00:00".
    """
    last_step = next((r for r in reversed(records) if "losses" in r), None)
    last = records[-1] if records else None
    if last is not None and last.get("phase") == "umap":
        frac = float(last.get("fraction") or 0.0)
        return (
            frac,
            f"Training done · computing the UMAPs for the Trajectory page: {last['message']}",
        )
    if last_step is None:
        return None
    frac = min(1.0, last_step["step"] / max(1, last_step["total_steps"]))
    eta = time.strftime("%H:%M:%S", time.gmtime(max(0.0, last_step.get("eta") or 0.0)))
    return frac, (
        f"step {last_step['step']:,} of {last_step['total_steps']:,} · {last_step['phase']} · "
        f"training ETA {eta} (then the UMAPs)"
    )


def kept_records(adata: ad.AnnData) -> list[dict[str, Any]]:
    """The kept run's loss history (``uns["schelix"]["history"]``) as progress records."""
    hist = adata.uns.get("schelix", {}).get("history")
    if not hist or "step" not in hist:
        return []
    steps = np.asarray(hist["step"])
    phases = np.asarray(hist.get("phase", ["warmup"] * len(steps))).astype(str)
    terms = [t for t in hist if t not in ("step", "phase")]
    return [
        {
            "step": int(steps[i]),
            "phase": str(phases[i]),
            "losses": {t: float(hist[t][i]) for t in terms if np.isfinite(float(hist[t][i]))},
        }
        for i in range(len(steps))
    ]
