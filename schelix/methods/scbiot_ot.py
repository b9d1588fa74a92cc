"""scBIOT's building blocks (Extended Methods Eqs. 1-15): unbalanced Sinkhorn, kNN, prototypes,
OT shifts, sharpening, step cap and edge guard. The iteration itself is :mod:`.scbiot`."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["cap_moves", "unbalanced_sinkhorn"]


def unbalanced_sinkhorn(
    cost: np.ndarray,
    *,
    reg: float = 0.028,
    reg_m: float = 0.40,
    backend: str = "pot",
    device: str = "cpu",
    n_iter: int = 2000,
    tol: float = 1e-6,
) -> np.ndarray:
    """Entropic unbalanced OT plan (Eqs. 3-4) between uniform masses; ``KL(T || 1)`` entropy.

    ``backend="pot"`` uses ``ot.unbalanced.sinkhorn_unbalanced`` (generalized Sinkhorn-Knopp;
    POT's "stabilized" variant fails to converge at this small ``reg``); ``"torch"`` runs the
    log-domain scaling ``f = tau (log a - LSE(g - C/eps))`` on ``device``. Costs are capped at
    ``600 reg`` (float64 range; such entries carry no mass), so pass a cost with minimum ~0.
    """
    cost = np.minimum(np.asarray(cost, dtype=np.float64), 600 * reg)
    p, q = cost.shape
    if backend == "pot":
        import ot

        with warnings.catch_warnings():  # "c is overwritten by the one matrix" note
            warnings.simplefilter("ignore")
            plan = ot.unbalanced.sinkhorn_unbalanced(
                np.full(p, 1 / p),
                np.full(q, 1 / q),
                cost,
                reg,
                reg_m,
                method="sinkhorn",
                reg_type="entropy",
                numItermax=n_iter,
                stopThr=tol,
            )
        return np.asarray(plan)
    import torch

    log_k = -torch.as_tensor(cost, device=device) / reg
    tau = reg_m / (reg_m + reg)
    f = torch.zeros(p, dtype=log_k.dtype, device=device)
    g = torch.zeros(q, dtype=log_k.dtype, device=device)
    for it in range(n_iter):
        f_new = tau * (-math.log(p) - torch.logsumexp(log_k + g[None, :], 1))
        g_new = tau * (-math.log(q) - torch.logsumexp(log_k + f_new[:, None], 0))
        err = torch.maximum((f_new - f).abs().max(), (g_new - g).abs().max())
        f, g = f_new, g_new
        if it % 10 == 9 and err.item() < tol:
            break
    return torch.exp(f[:, None] + log_k + g[None, :]).cpu().numpy()


def cap_moves(moves: np.ndarray, dbar0: np.ndarray, kappa: float) -> np.ndarray:
    """Eq. 14: shrink each row of ``moves`` to norm ``<= kappa * dbar0`` (direction kept)."""
    norm = np.linalg.norm(moves, axis=1)
    scale = np.minimum(1.0, kappa * dbar0 / np.maximum(norm, 1e-12))
    return (moves * scale[:, None]).astype(moves.dtype)


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a`` and ``b`` (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :], 0.0)


def _use_torch(device: str) -> bool:
    """kNN and Sinkhorn run in torch on CUDA; on the CPU, sklearn and POT are faster."""
    return device == "cuda"


def _knn(x: np.ndarray, k: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every cell (self excluded): (indices, distances)."""
    if _use_torch(device):
        import torch

        xt = torch.as_tensor(x, device=device)
        idx, dist = [], []
        for s in range(0, len(x), 4096):
            d = torch.cdist(xt[s : s + 4096], xt)
            rows = torch.arange(d.shape[0], device=xt.device)
            d[rows, rows + s] = float("inf")
            v, i = torch.topk(d, k, largest=False)
            idx.append(i.cpu().numpy())
            dist.append(v.cpu().numpy())
        return np.concatenate(idx), np.concatenate(dist)
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors()
    return idx, dist.astype(np.float32)


def _prototypes(x, w, n_proto, state, key, seed):
    """Weighted MiniBatch k-means (Eq. 1 weights), warm-started from last iteration's members."""
    from sklearn.cluster import MiniBatchKMeans

    n_proto = int(min(n_proto, len(x)))
    init: Any = "k-means++"
    if key in state:  # previous members' weighted means in the moved coordinates
        labels = state[key]
        member = sp.csr_matrix((w, (labels, np.arange(len(x)))), shape=(n_proto, len(x)))
        wsum = np.asarray(member.sum(1)).ravel()
        if (wsum > 0).all():
            init = (member @ x) / wsum[:, None]
    km = MiniBatchKMeans(
        n_proto, init=init, n_init=1, max_iter=3, batch_size=2048, random_state=seed
    ).fit(x, sample_weight=w)
    state[key] = km.labels_
    return km.cluster_centers_, km.labels_


def _entropy(idx: np.ndarray, codes: np.ndarray, n_batches: int) -> np.ndarray:
    """Eq. 8: normalised neighbour-batch entropy ``H_i / log B``."""
    nb = codes[idx]
    p = np.stack([(nb == b).mean(1) for b in range(n_batches)], 1)
    return -(p * np.log(p + 1e-12)).sum(1) / math.log(n_batches)


def _ot_shift(x, codes, groups, ref_mask, w, beta, state, q_clip, opt, seed, backend, device):
    """Eqs. 2-7: prototype OT from each batch to the reference, barycentric cell shifts."""
    cpp = opt.cells_per_prototype
    ref, _ = _prototypes(
        x[ref_mask],
        w[ref_mask],
        min(opt.max_ref_prototypes, math.ceil(ref_mask.sum() / cpp)),
        state,
        "ref",
        seed,
    )
    delta_cell = np.zeros_like(x)  # the reference batch (mode "largest") does not move
    for b in groups:
        m = codes == b
        if m.sum() < 2:
            continue
        cen, lab = _prototypes(
            x[m],
            w[m],
            max(2, min(opt.max_batch_prototypes, math.ceil(m.sum() / cpp))),
            state,
            b,
            seed,
        )
        cost = _sqdist(cen, ref)
        cost = cost / max(cost.std(), 1e-12)
        cost = np.minimum(cost, np.quantile(cost, q_clip))
        # a constant cost offset only rescales the plan (equal tau on both sides), so the
        # barycentres are unchanged; subtracting the minimum keeps the scaling well conditioned
        plan = unbalanced_sinkhorn(
            cost - cost.min(), reg=opt.reg, reg_m=opt.reg_m, backend=backend, device=device
        )
        mass = plan.sum(1)
        ok = mass > 1e-300
        bary = cen.copy()
        bary[ok] = plan[ok] @ ref / mass[ok, None]
        delta_cell[m] = (bary - cen)[lab]
    norm = np.linalg.norm(delta_cell, axis=1)
    s_i = 1.0 / (1.0 + norm / max(norm.std(), 1e-12))  # s_p of each cell's prototype
    shift = (s_i * (1.0 - 0.35 * beta))[:, None] * delta_cell
    return shift


def _sharpen(x, w, state, opt, seed):
    """Eqs. 10-11: pull to the nearest pseudo-centre, margin-gated push from the second."""
    cen, _ = _prototypes(x, w, opt.n_centers, state, "centers", seed)
    d = np.sqrt(_sqdist(x, cen))
    order = np.argsort(d, axis=1)[:, :2]
    rows = np.arange(len(x))
    d1, d2 = d[rows, order[:, 0]], d[rows, order[:, 1]]
    margin = (d2 - d1) / max(np.median(d2), 1e-12)
    gate = 1.0 / (1.0 + np.exp((margin - 1.0) / 0.8))
    c1, c2 = cen[order[:, 0]], cen[order[:, 1]]
    return opt.pull * (c1 - x) + (gate * opt.push)[:, None] * (x - c2)


def _edge_guard(x, move, src, dst, d0, smin, smax, rounds=6):
    """Eq. 15: halve (finally zero) the whole move of cells whose X0-edges newly leave
    ``[smin_i, smax_i]`` (edges already outside stay allowed, but may not get worse)."""

    def violation(f):
        y = x + f[:, None] * move
        r = np.linalg.norm(y[src] - y[dst], axis=1) / d0
        return np.maximum(0.0, np.maximum(smin[src] - r, r - smax[src]))

    f = np.ones(len(x), dtype=x.dtype)
    base = violation(np.zeros_like(f)) + 1e-6
    for it in range(rounds + 10):
        bad = violation(f) > base
        if not bad.any():
            break
        hit = np.zeros(len(x), bool)
        hit[src[bad]] = hit[dst[bad]] = True
        f[hit] = 0.5 * f[hit] if it < rounds else 0.0
    return move * f[:, None], float((f < 1).mean())
