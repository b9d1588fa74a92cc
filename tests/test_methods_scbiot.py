"""scBIOT peer (schelix/methods/scbiot.py): integrates, deterministic, capped, best iterate."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import torch
from sklearn.neighbors import NearestNeighbors

from schelix.datasets import synthetic
from schelix.errors import SchelixError
from schelix.methods import get_method, run_method
from schelix.methods.scbiot import ScbiotOptions, cap_moves, refine, unbalanced_sinkhorn
from schelix.pca import scaled_hvg_pca


@pytest.fixture(scope="module")
def adata():
    """Preprocessed synthetic data with a known per-batch shift (600 cells, 3 batches)."""
    a = synthetic(600, 300, n_batches=3, n_cell_types=5, batch_strength=1.5, seed=0)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    a.var["highly_variable"] = True
    return a


@pytest.fixture(scope="module")
def x0(adata):
    return scaled_hvg_pca(adata, n_comps=30, seed=0)


def test_registered():
    spec = get_method("scbiot")
    assert spec.label == "scBIOT" and spec.uses_gpu and not spec.needs_counts


def test_integrates_better_than_pca(adata):
    import scib_metrics

    a = adata.copy()
    calls = []
    run_method(a, "pca", batch_key="batch", seed=0)
    res = run_method(
        a,
        "scbiot",
        batch_key="batch",
        seed=0,
        device="cpu",
        progress=lambda f, m: calls.append((f, m)),
    )
    emb = a.obsm["X_scbiot"]
    assert res.obsm_key == "X_scbiot" and emb.shape == a.obsm["X_pca"].shape
    assert np.isfinite(emb).all()
    assert not np.allclose(emb, a.obsm["X_pca"])
    lab, bat = a.obs["cell_type"].to_numpy(), a.obs["batch"].to_numpy()
    asw_b = {k: scib_metrics.silhouette_batch(a.obsm[k], lab, bat) for k in ("X_pca", "X_scbiot")}
    asw_l = {k: scib_metrics.silhouette_label(a.obsm[k], lab) for k in ("X_pca", "X_scbiot")}
    # measured on this set: ASW_batch 0.68 (PCA) -> 0.91; silhouette_label 0.62 -> 0.67
    assert asw_b["X_scbiot"] > asw_b["X_pca"] + 0.1
    assert asw_l["X_scbiot"] > asw_l["X_pca"] - 0.05  # cell types stay separated
    fracs = [f for f, _ in calls]
    assert fracs == sorted(fracs) and fracs[0] == 0.0 and fracs[-1] == 1.0
    assert any("iteration" in m for _, m in calls)
    assert "scbiot" in a.uns["schelix"]["methods"]


def test_mixing_metric_rises(adata, x0):
    res = refine(x0, adata.obs["batch"].to_numpy(), seed=0, max_iter=6, patience=6)
    h = res.history
    assert h["mix"].iloc[-1] > h["mix0"].iloc[0] + 0.2
    assert h["overlap"].between(0, 1).all() and (h["strain"] >= 0).all()


def test_deterministic_for_a_seed(adata, x0):
    b = adata.obs["batch"].to_numpy()
    r1 = refine(x0, b, seed=3, max_iter=3)
    r2 = refine(x0, b, seed=3, max_iter=3)
    np.testing.assert_array_equal(r1.embedding, r2.embedding)
    assert r1.history.equals(r2.history)


def test_cap_moves():
    rng = np.random.default_rng(0)
    moves = rng.normal(size=(50, 4)).astype(np.float32) * 5
    dbar0 = rng.uniform(0.5, 2.0, 50)
    capped = cap_moves(moves, dbar0, 0.3)
    norm = np.linalg.norm(capped, axis=1)
    assert (norm <= 0.3 * dbar0 * (1 + 1e-5)).all()
    cos = (capped * moves).sum(1) / (norm * np.linalg.norm(moves, axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)  # direction kept
    small = moves * 1e-3
    np.testing.assert_allclose(cap_moves(small, dbar0, 0.3), small)  # short moves untouched


def test_step_cap_holds(adata, x0):
    """Without PostScale, consecutive iterates differ by the capped moves only."""
    kappa = 0.15
    res = refine(
        x0,
        adata.obs["batch"].to_numpy(),
        seed=0,
        max_iter=4,
        patience=4,
        max_step_local=kappa,
        post_scale=False,
        keep_iterates=True,
    )
    dist0, _ = NearestNeighbors(n_neighbors=15).fit(x0).kneighbors()
    limit = kappa * dist0.mean(1)
    prev = x0
    for it in res.iterates:
        step = np.linalg.norm(it - prev, axis=1)
        assert (step <= limit * (1 + 1e-4) + 1e-6).all()
        prev = it
    assert (res.history["max_move_ratio"] <= 1 + 1e-5).all()
    assert res.history["max_move_ratio"].max() > 0.5  # the cap was actually reached


def test_best_iterate_is_selected(adata, x0):
    res = refine(
        x0, adata.obs["batch"].to_numpy(), seed=0, max_iter=8, patience=8, keep_iterates=True
    )
    h = res.history
    assert len(res.iterates) == len(h) == 8
    best = int(np.argmax(h["objective"].to_numpy()))
    assert res.best_iter == best + 1
    np.testing.assert_array_equal(res.embedding, res.iterates[best])
    # objective = Eqs. 20-21 recomputed from the recorded metrics
    o = ScbiotOptions()
    t = np.arange(8) / 7
    floor = o.overlap_floor[0] + t * (o.overlap_floor[1] - o.overlap_floor[0])
    ovl = h["overlap"].to_numpy()
    star = np.concatenate([[ovl[0]], np.maximum.accumulate(ovl)[:-1]])
    j = (
        h["mix"]
        - h["mix0"]
        + o.w_overlap * ovl
        - o.w_strain * h["strain"]
        - o.penalty_gamma * np.maximum(0, floor - ovl) ** 2
        - 0.45 * np.maximum(0, star - ovl)
    )
    np.testing.assert_allclose(h["objective"], j, atol=1e-9)


def test_patience_stops_early(adata, x0):
    res = refine(x0, adata.obs["batch"].to_numpy(), seed=0, max_iter=15, patience=1)
    n = len(res.history)
    assert n < 15 and res.best_iter == n - 1


def _cost(p, q, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(p, 5)), rng.normal(size=(q, 5)) + 0.5
    c = ((a[:, None] - b[None]) ** 2).sum(-1)
    c /= c.std()
    return c - c.min()


def test_unbalanced_sinkhorn_pot_and_torch_agree():
    cost = _cost(12, 17)
    reg, reg_m = 0.028, 0.40
    pot = unbalanced_sinkhorn(cost, reg=reg, reg_m=reg_m, backend="pot", n_iter=20000, tol=1e-10)
    tch = unbalanced_sinkhorn(cost, reg=reg, reg_m=reg_m, backend="torch", n_iter=20000, tol=1e-10)
    np.testing.assert_allclose(pot, tch, rtol=1e-4, atol=1e-9 * tch.max())
    # optimality of Eq. 3 with KL(T || 1): eps log T = f + g - C, f = -reg_m log(T1 / a)
    f = -reg_m * np.log(tch.sum(1) * cost.shape[0])
    g = -reg_m * np.log(tch.sum(0) * cost.shape[1])
    np.testing.assert_allclose(reg * np.log(tch), f[:, None] + g[None] - cost, atol=1e-6)
    assert tch.sum() < 1.0  # unbalanced: mass is not conserved


def test_identical_prototypes_barely_move():
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(20, 6)) * 3
    c = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    plan = unbalanced_sinkhorn(c / c.std())
    bary = plan @ pts / plan.sum(1, keepdims=True)
    assert np.abs(bary - pts).max() < 0.05 * np.abs(pts).max()


def test_errors(adata, x0):
    with pytest.raises(SchelixError, match="2 batches"):
        refine(x0, np.zeros(len(x0)), seed=0)
    with pytest.raises(SchelixError, match="Unknown scBIOT option"):
        refine(x0, adata.obs["batch"].to_numpy(), bogus=1)
    with pytest.raises(SchelixError, match=r"not in adata\.obs"):
        run_method(adata.copy(), "scbiot", batch_key="donor")


def test_torch_path_matches_pot_path(adata, x0, monkeypatch):
    """The GPU code (torch kNN + log-domain Sinkhorn) run on the CPU agrees with sklearn + POT."""
    import schelix.methods.scbiot as scbiot_mod

    b = adata.obs["batch"].to_numpy()
    ref = refine(x0, b, seed=0, max_iter=4, patience=4)
    idx_sk, dist_sk = scbiot_mod._knn(x0, 15, "cpu")
    monkeypatch.setattr(scbiot_mod, "_use_torch", lambda device: True)
    idx_t, dist_t = scbiot_mod._knn(x0, 15, "cpu")
    np.testing.assert_allclose(dist_t, dist_sk, rtol=1e-3, atol=1e-3)
    assert (idx_t == idx_sk).mean() > 0.98
    alt = refine(x0, b, seed=0, max_iter=4, patience=4)
    np.testing.assert_allclose(alt.history["mix"], ref.history["mix"], atol=0.03)
    np.testing.assert_allclose(alt.history["overlap"], ref.history["overlap"], atol=0.03)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_integrates(adata, x0):
    b = adata.obs["batch"].to_numpy()
    gpu = refine(x0, b, seed=0, device="cuda", max_iter=6, patience=6)
    cpu = refine(x0, b, seed=0, device="cpu", max_iter=6, patience=6)
    assert gpu.history["mix"].iloc[-1] > gpu.history["mix0"].iloc[0] + 0.2
    np.testing.assert_allclose(gpu.history["mix"], cpu.history["mix"], atol=0.05)
    cost = _cost(40, 50)
    np.testing.assert_allclose(
        unbalanced_sinkhorn(cost, backend="torch", device="cuda"),
        unbalanced_sinkhorn(cost, backend="pot"),
        rtol=1e-3,
        atol=1e-6,
    )
