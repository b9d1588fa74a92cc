"""scVI and sysVI (scvi-tools) behind the shared method interface: they integrate, not just run."""

from __future__ import annotations

from types import SimpleNamespace

import anndata as ad
import numpy as np
import pytest
import torch

from schelix.errors import SchelixError, SchelixWarning
from schelix.methods import get_method, run_method
from schelix.methods.scvi import ScviProgress, hvg_copy, trainer_device

# short runs on the tiny synthetic set (the real defaults train for hundreds of epochs)
SCVI_FAST = {"max_epochs": 150, "n_epochs_kl_warmup": 20}
SYSVI_FAST = {"max_epochs": 80, "lr": 3e-3}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny MLPs gain nothing from threads, and oversubscribed CI cores make them crawl (10x).

    scanpy / scib-metrics imports reset torch's thread count, so import them first.
    """
    import scanpy  # noqa: F401
    import scib_metrics  # noqa: F401

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _preprocessed(n_cells: int, n_genes: int, seed: int) -> ad.AnnData:
    import scanpy as sc

    from schelix.datasets import synthetic

    a = synthetic(n_cells=n_cells, n_genes=n_genes, seed=seed)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(
        a, n_top_genes=200, flavor="seurat_v3", layer="counts", batch_key="batch"
    )
    return a


@pytest.fixture(scope="module")
def data() -> ad.AnnData:
    """600 cells, 3 batches with strong gene-specific shifts; PCA keeps them apart."""
    a = _preprocessed(600, 300, seed=0)
    run_method(a, "pca", batch_key="batch", seed=0)
    return a


def lisi(adata: ad.AnnData, key: str) -> dict[str, float]:
    """scIB's scaled iLISI (batch mixing, 1 = mixed) and cLISI (1 = types apart), k = 90."""
    import scib_metrics
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    x = adata.obsm[key]
    dist, idx = NearestNeighbors(n_neighbors=90).fit(x).kneighbors(x)
    nn = NeighborsResults(indices=idx, distances=dist.astype(np.float32))
    return {
        "iLISI": float(scib_metrics.ilisi_knn(nn, adata.obs["batch"].to_numpy(), scale=True)),
        "cLISI": float(scib_metrics.clisi_knn(nn, adata.obs["cell_type"].to_numpy(), scale=True)),
    }


@pytest.fixture(scope="module")
def pca_score(data) -> dict[str, float]:
    return lisi(data, "X_pca")


def test_registration():
    scvi, sysvi = get_method("scvi"), get_method("sysvi")
    assert (scvi.label, scvi.needs_counts, scvi.uses_gpu) == ("scVI", True, True)
    assert (sysvi.label, sysvi.needs_counts, sysvi.uses_gpu) == ("sysVI", False, True)


@pytest.mark.parametrize(("name", "params"), [("scvi", SCVI_FAST), ("sysvi", SYSVI_FAST)])
def test_integrates_better_than_pca(data, pca_score, name, params):
    before = {k: v.copy() for k, v in data.layers.items()}
    x_before = data.X.copy()
    calls: list[tuple[float, str]] = []
    torch.set_num_threads(1)  # the fixtures' scanpy calls may have reset it
    res = run_method(
        data,
        name,
        batch_key="batch",
        seed=0,
        device="cpu",
        progress=lambda f, m: calls.append((f, m)),
        **params,
    )
    emb = data.obsm[res.obsm_key]
    assert emb.shape == (data.n_obs, 10) and np.isfinite(emb).all()
    # input untouched (the model trained on its own HVG copy)
    assert (data.X != x_before).nnz == 0
    assert all((data.layers[k] != v).nnz == 0 for k, v in before.items())
    # progress: monotone fractions in [0, 1], ends at 1 with an epoch message on the way
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] == 1.0
    assert any(f"epoch {params['max_epochs']}/{params['max_epochs']}" in m for _, m in calls)
    # it integrates: batches mix better than unintegrated PCA, and cell types stay apart
    # (measured, 2-core CPU: iLISI PCA 0.03, scVI 0.19, sysVI 0.53; cLISI all >= 0.999)
    got = lisi(data, res.obsm_key)
    assert got["iLISI"] > pca_score["iLISI"] + 0.05
    assert got["cLISI"] > 0.95


def test_seeded_and_deterministic(data):
    small = data[:200].copy()
    first = get_method("scvi").fn(small, batch_key="batch", seed=3, device="cpu", max_epochs=3)
    again = get_method("scvi").fn(small, batch_key="batch", seed=3, device="cpu", max_epochs=3)
    other = get_method("scvi").fn(small, batch_key="batch", seed=4, device="cpu", max_epochs=3)
    np.testing.assert_allclose(first, again, atol=1e-5)
    assert not np.allclose(first, other)


@pytest.mark.parametrize("name", ["scvi", "sysvi"])
def test_cancel_from_progress_propagates(data, name):
    class Cancel(Exception):
        pass

    calls = []

    def progress(fraction: float, message: str) -> None:
        calls.append(fraction)
        raise Cancel("user pressed stop")

    with pytest.raises(Cancel, match="user pressed stop"):
        get_method(name).fn(
            data[:200].copy(), batch_key="batch", device="cpu", progress=progress, max_epochs=40
        )
    assert len(calls) == 1  # nothing reported after the cancel


def test_progress_callback_stops_trainer():
    seen = []

    def progress(fraction: float, message: str) -> None:
        seen.append((fraction, message))
        if fraction >= 0.5:
            raise KeyError("stop")

    cb = ScviProgress(progress, "scVI", interval=0.0)
    trainer = SimpleNamespace(
        current_epoch=0,
        max_epochs=4,
        num_training_batches=2,
        callback_metrics={"train_loss_epoch": torch.tensor(12.5)},
        should_stop=False,
    )
    cb.on_epoch(trainer)
    assert seen == [(0.25, "scVI: epoch 1/4, loss 12.5")] and not trainer.should_stop
    cb.raise_if_cancelled()  # nothing to raise yet
    trainer.current_epoch = 1
    cb.on_batch(trainer, batch_idx=1)
    assert trainer.should_stop and seen[-1][0] == 0.5
    with pytest.raises(KeyError):
        cb.raise_if_cancelled()


def test_clear_errors(data):
    no_counts = data[:100].copy()
    del no_counts.layers["counts"]
    with pytest.raises(SchelixError, match="raw counts"):
        run_method(no_counts, "scvi", batch_key="batch")
    with pytest.raises(SchelixError, match="counts"):
        get_method("scvi").fn(no_counts, batch_key="batch", max_epochs=1)
    raw_x = data[:100].copy()
    raw_x.X = raw_x.layers["counts"].copy()
    with pytest.raises(SchelixError, match="log-normalized"):
        get_method("sysvi").fn(raw_x, batch_key="batch", max_epochs=1)
    one_batch = data[data.obs["batch"] == "batch0"].copy()
    with pytest.raises(SchelixError, match="two batches"):
        get_method("sysvi").fn(one_batch, batch_key="batch", max_epochs=1)
    with pytest.raises(SchelixError, match="donor"):
        get_method("sysvi").fn(data, batch_key="donor")


def test_hvg_copy_is_minimal_and_warns_without_hvgs(data):
    copy = hvg_copy(data, batch_key="batch", layer="counts", method="scVI")
    assert copy.n_vars == int(data.var["highly_variable"].sum()) == 200
    assert list(copy.obs.columns) == ["batch"] and not copy.layers and not copy.obsm
    bare = data[:50].copy()
    del bare.var["highly_variable"]
    with pytest.warns(SchelixWarning, match="highly_variable"):
        assert hvg_copy(bare, batch_key="batch", layer=None, method="sysVI").n_vars == bare.n_vars


def test_trainer_device():
    assert trainer_device("cpu") == {"accelerator": "cpu", "devices": 1}
    if torch.cuda.is_available():
        assert trainer_device("auto") == {"accelerator": "gpu", "devices": [0]}
        assert trainer_device("cuda:0") == {"accelerator": "gpu", "devices": [0]}
    else:
        with pytest.raises(SchelixError, match="GPU"):
            trainer_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["scvi", "sysvi"])
def test_runs_on_gpu(data, name):
    res = run_method(
        data, name, batch_key="batch", device="cuda", key_added=f"X_{name}_gpu", max_epochs=2
    )
    assert np.isfinite(data.obsm[res.obsm_key]).all()
