"""scBIOT: batch-aware unbalanced-OT refinement of a PCA embedding (rare-type protected).

Written from the scBIOT Extended Methods (``papers/scbiot_extended.txt``, Eqs. 1-21).
Starting from ``X0`` (the scaled-HVG PCA of :func:`schelix.pca.scaled_hvg_pca`),
each iteration: kNN in ``X(t)`` -> sparsity ``d_i`` (Eq. 1) and bridge scores ``beta_i``
(Eqs. 8-9); weighted MiniBatch k-means prototypes of the reference and of every batch;
entropic unbalanced Sinkhorn between them (Eqs. 2-4; POT on CPU, log-domain torch on CUDA);
barycentric shifts with adaptive weights (Eqs. 5-7); cluster sharpening (Eqs. 10-12);
rare-aware kNN smoothing on the graph of ``X0`` (Eq. 13); step cap (Eq. 14); edge-stretch
guard (Eq. 15); PostScale (Eq. 16). The iterate maximising ``J`` (Eqs. 17-21) is returned.

Values the paper leaves open, chosen once for every dataset (:class:`ScbiotOptions`):
reference = the largest batch (it takes no OT shift; "union" available); one prototype per
20 cells (K_ref <= 1024, K_batch <= 512), MiniBatch k-means warm-started, 3 epochs;
k = 15 neighbours; cost ``C / std(C)`` (the paper's ``/ std(C)^2`` is not scale-free),
clipped at a quantile annealed 0.99 -> 0.95, minimum subtracted (barycentres unchanged);
sigma_Delta = std of ``||Delta||`` over all cells, the reference's zero displacements
included (a per-batch std leaves a pure translation -- the typical batch effect -- nearly
immobile); 32 pseudo-centres, gamma_sharp = 0.1; kappa (max_step_local) = 1.0;
rho_i = percentile rank of d_i; mix uses ``H_i / log B``; anneals run first -> second value
(smoothing 0.38 -> 0.52, step 0.78 -> 0.96, overlap floor 0.6 -> 0.3); guard limits
bulk [0.72, 1.65] -> bridge [0.88, 1.24] by beta, enforced by halving a cell's whole move;
strain clip c = 1; w_overlap = w_strain = 0.5, penalty_gamma = 4; ovl* = best overlap of
earlier iterates; patience 4; X0 itself is not a candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from schelix.device import resolve_device
from schelix.errors import SchelixError
from schelix.methods.base import ProgressCallback, register
from schelix.methods.scbiot_ot import (
    _edge_guard,
    _entropy,
    _knn,
    _ot_shift,
    _sharpen,
    _use_torch,
    cap_moves,
    unbalanced_sinkhorn,
)
from schelix.obs import require_column

__all__ = ["ScbiotOptions", "ScbiotResult", "cap_moves", "refine", "scbiot", "unbalanced_sinkhorn"]


@dataclass(frozen=True)
class ScbiotOptions:
    """Every hyperparameter of the refinement (pairs are annealed first -> second value)."""

    n_neighbors: int = 15
    max_iter: int = 15
    patience: int = 4
    reference: str = "largest"
    cells_per_prototype: int = 20
    max_ref_prototypes: int = 1024
    max_batch_prototypes: int = 512
    reg: float = 0.028
    reg_m: float = 0.40
    cost_clip: tuple[float, float] = (0.99, 0.95)
    n_centers: int = 32
    sharpen: float = 0.1
    pull: float = 0.78
    push: float = 0.34
    smoothing: tuple[float, float] = (0.38, 0.52)
    step: tuple[float, float] = (0.78, 0.96)
    rare_quantile: float = 0.85
    max_step_local: float = 1.0
    stretch_min: tuple[float, float] = (0.72, 0.88)  # (bulk, bridge)
    stretch_max: tuple[float, float] = (1.65, 1.24)  # (bulk, bridge)
    strain_clip: float = 1.0
    w_overlap: float = 0.5
    w_strain: float = 0.5
    penalty_gamma: float = 4.0
    overlap_floor: tuple[float, float] = (0.6, 0.3)
    post_scale: bool = True


@dataclass
class ScbiotResult:
    """Output of :func:`refine`: the best iterate, its index (1-based) and per-iteration metrics."""

    embedding: np.ndarray
    best_iter: int
    history: pd.DataFrame
    iterates: list[np.ndarray] = field(default_factory=list)


def refine(
    x0: np.ndarray,
    batches: Any,
    *,
    seed: int = 0,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    keep_iterates: bool = False,
    options: ScbiotOptions | None = None,
    **overrides: Any,
) -> ScbiotResult:
    """Refine the embedding ``x0`` (cells x dims) across ``batches`` (one label per cell).

    ``device="cuda"`` runs kNN and Sinkhorn with torch, anything else sklearn + POT (the
    small k-means / Sinkhorn problems run single-threaded: thread start-up costs more).
    ``keep_iterates`` stores every iterate; ``overrides`` change :class:`ScbiotOptions` fields.
    History columns: iteration, mix, overlap, strain, objective, step, smoothing,
    max_move_ratio (``max_i ||m_i|| / (kappa d_i0)`` after the guard, <= 1), guarded, mix0.
    """
    names = {f.name for f in fields(ScbiotOptions)}
    if set(overrides) - names:
        raise SchelixError(
            f"Unknown scBIOT option(s): {', '.join(sorted(set(overrides) - names))}",
            f"choose from: {', '.join(sorted(names))}",
        )
    opt = replace(options or ScbiotOptions(), **overrides)
    x0 = np.ascontiguousarray(x0, dtype=np.float32)
    codes, cats = pd.factorize(np.asarray(batches), sort=True)
    if len(codes) != len(x0) or (codes < 0).any():
        raise SchelixError(
            f"{len(codes)} batch labels ({int((codes < 0).sum())} missing) for {len(x0)} cells",
            "pass exactly one non-missing batch label per cell",
        )
    if len(cats) < 2 or len(x0) < 4:
        raise SchelixError(
            f"scBIOT needs >= 2 batches and >= 4 cells (got {len(cats)}, {len(x0)})",
            "choose a batch key with at least two batches",
        )
    if opt.reference not in ("largest", "union"):
        raise SchelixError(
            f"Unknown scBIOT reference '{opt.reference}'", "use 'largest' or 'union'"
        )
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1 if len(x0) < 5000 else None):  # kNN threads pay off > 5k
        return _iterate(x0, codes, len(cats), opt, seed, device, progress, keep_iterates)


def _iterate(x0, codes, n_b, opt, seed, device, progress, keep_iterates) -> ScbiotResult:
    """The refinement loop (Eqs. 1-21) with best-iterate selection and patience."""
    from threadpoolctl import threadpool_limits

    backend = "torch" if _use_torch(device) else "pot"
    n, k = len(x0), int(min(opt.n_neighbors, len(x0) - 1))
    rng = np.random.default_rng(seed)
    idx0, dist0 = _knn(x0, k, device)
    dbar0 = dist0.mean(1) + 1e-12
    src, dst = np.repeat(np.arange(n), k), idx0.ravel()
    d0 = np.maximum(dist0.ravel(), 1e-8)
    mu0, sd0 = x0.mean(0), x0.std(0)
    largest = int(np.bincount(codes).argmax())
    ref_mask = codes == largest if opt.reference == "largest" else np.ones(n, bool)
    groups = [b for b in range(n_b) if opt.reference == "union" or b != largest]
    mix0 = float(_entropy(idx0, codes, n_b).mean())
    x, idx, dist, state = x0, idx0, dist0, {}
    rows, iterates, best, best_j, ovl_star, stale = [], [], x0, -np.inf, None, 0
    for it in range(opt.max_iter):
        t = it / max(opt.max_iter - 1, 1)

        def lerp(pair: tuple[float, float], t: float = t) -> float:
            return pair[0] + t * (pair[1] - pair[0])

        it_seed = int(rng.integers(2**31 - 1))
        dbar = dist.mean(1) + 1e-12
        rho = (pd.Series(dbar).rank().to_numpy() - 1) / (n - 1)
        beta = 0.5 * _entropy(idx, codes, n_b) + 0.5 * rho
        w = dbar / dbar.mean()
        with threadpool_limits(limits=1):
            shift = _ot_shift(
                x,
                codes,
                groups,
                ref_mask,
                w,
                beta,
                state,
                lerp(opt.cost_clip),
                opt,
                it_seed,
                backend,
                device,
            )
            if opt.sharpen > 0:
                shift = shift + opt.sharpen * _sharpen(x, w, state, opt, it_seed)
        lam, common = lerp(opt.smoothing), rho <= opt.rare_quantile
        shift[common] = (1 - lam) * shift[common] + lam * shift[idx0[common]].mean(1)
        move = cap_moves((lerp(opt.step) * shift).astype(np.float32), dbar0, opt.max_step_local)
        smin = opt.stretch_min[0] + beta * (opt.stretch_min[1] - opt.stretch_min[0])
        smax = opt.stretch_max[0] + beta * (opt.stretch_max[1] - opt.stretch_max[0])
        move, guarded = _edge_guard(x, move, src, dst, d0, smin, smax)
        ratio = float((np.linalg.norm(move, axis=1) / (opt.max_step_local * dbar0)).max())
        x = x + move
        if opt.post_scale:
            x = ((x - x.mean(0)) / np.maximum(x.std(0), 1e-12) * sd0 + mu0).astype(np.float32)
        idx, dist = _knn(x, k, device)
        mix = float(_entropy(idx, codes, n_b).mean())
        ovl = float((idx0[:, :, None] == idx[:, None, :]).any(2).mean())
        r = np.linalg.norm(x[src] - x[dst], axis=1) / d0
        strain = float((np.clip(r - 1, -opt.strain_clip, opt.strain_clip) ** 2).mean())
        penalty = opt.penalty_gamma * max(0.0, lerp(opt.overlap_floor) - ovl) ** 2
        penalty += 0.45 * max(0.0, ovl_star - ovl) if ovl_star is not None else 0.0
        ovl_star = ovl if ovl_star is None else max(ovl_star, ovl)
        obj = (mix - mix0) + opt.w_overlap * ovl - opt.w_strain * strain - penalty
        rows.append(
            {
                "iteration": it + 1,
                "mix": mix,
                "overlap": ovl,
                "strain": strain,
                "objective": obj,
                "step": lerp(opt.step),
                "smoothing": lam,
                "max_move_ratio": ratio,
                "guarded": guarded,
            }
        )
        if keep_iterates:
            iterates.append(x.copy())
        best, best_j, stale = (x, obj, 0) if obj > best_j else (best, best_j, stale + 1)
        if progress is not None:
            progress(
                (it + 1) / opt.max_iter,
                f"scBIOT iteration {it + 1}/{opt.max_iter}: mix {mix:.3f}, overlap {ovl:.3f}",
            )
        if stale >= opt.patience:
            break
    hist = pd.DataFrame(rows).assign(mix0=mix0)
    return ScbiotResult(best, int(hist["iteration"][hist["objective"].idxmax()]), hist, iterates)


@register("scbiot", label="scBIOT", uses_gpu=True)
def scbiot(
    adata: ad.AnnData,
    *,
    batch_key: str,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    n_comps: int = 50,
    **params: Any,
) -> np.ndarray:
    """scBIOT's OT refinement of the 50-component scaled-HVG PCA (seeded) across ``batch_key``.

    Parameters
    ----------
    adata
        Preprocessed AnnData (log-normalized ``X``, ``var["highly_variable"]``); not modified.
    batch_key
        Column of ``adata.obs`` with the batch labels.
    seed
        Seeds the PCA solver and the prototype k-means.
    device
        ``"auto"``/``"cuda"``/``"cpu"`` via :func:`resolve_device`; CUDA runs kNN and Sinkhorn
        in torch, otherwise sklearn + POT on the CPU (MPS counts as CPU).
    progress
        Optional ``progress(fraction, message)``, called after each iteration.
    n_comps
        PCA components of the starting embedding.
    **params
        Any :class:`ScbiotOptions` field (e.g. ``max_iter=10``, ``reference="union"``).

    Returns
    -------
    ``(n_cells, n_comps)`` float32 embedding (the best iterate).
    """
    from schelix.pca import scaled_hvg_pca

    require_column(adata, batch_key)
    dev = resolve_device(device)
    if progress is not None:
        progress(0.0, "scBIOT: PCA of the scaled HVGs")
    x0 = scaled_hvg_pca(adata, n_comps=n_comps, seed=seed)
    report: Callable[[float, str], None] | None = None
    if progress is not None:

        def report(frac: float, msg: str) -> None:
            progress(0.05 + 0.95 * frac, msg)

    res = refine(
        x0,
        adata.obs[batch_key].astype(str).to_numpy(),
        seed=seed,
        device="cuda" if dev == "cuda" else "cpu",
        progress=report,
        **params,
    )
    if progress is not None:
        progress(1.0, f"scBIOT done: best iterate {res.best_iter} of {len(res.history)}")
    return res.embedding.astype(np.float32)
