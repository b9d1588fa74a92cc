"""Large-data paths on small synthetic data: sparse rows, sketch, bounded neighbours, samples.

The size switches (:data:`schelix.sketch.SKETCH_CELLS`, :data:`~schelix.sketch.DISPLAY_CELLS`)
are lowered so that a few hundred cells take the paths a million cells take.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import schelix
from schelix import display, rows, sketch
from schelix.pipeline import integrate
from schelix.train import embed_all

FAST = {"max_steps": 6, "batch_size": 32, "n_prototypes": 4, "mixup_k": 40, "mnn_k": 5}


@pytest.fixture(scope="module")
def pre():
    adata = schelix.datasets.synthetic(900, 300, seed=4, library_size=800)
    return schelix.pp.preprocess(adata, batch_key="batch", min_genes=20)


@pytest.fixture
def large(monkeypatch):
    """Make ~900 cells 'large': sketch of 300, display sample of 200, chunks of 64 rows."""
    monkeypatch.setattr(sketch, "SKETCH_CELLS", 300)
    monkeypatch.setattr(sketch, "DISPLAY_CELLS", 200)
    monkeypatch.setattr(rows, "CHUNK", 64)


def test_scaled_rows_are_the_dense_scaling_to_the_bit(pre):
    x = sp.csr_matrix(pre.X[:, :120], dtype=np.float32)
    dense = x.toarray()
    mean, std = rows.column_moments(x)
    assert np.array_equal(mean, dense.mean(0)) and np.array_equal(std, dense.std(0))
    damp = np.linspace(0.5, 1.0, 120, dtype=np.float32)
    r = rows.ScaledRows(x, mean, std + 1e-6, lambda idx: np.broadcast_to(damp, (len(idx), 120)))
    want = np.clip((dense - mean) / (std + 1e-6), -10, 10) * damp
    n = x.shape[0]
    idx = torch.tensor([5, 0, n - 1, 5])
    assert torch.equal(r[idx], torch.from_numpy(want[[5, 0, n - 1, 5]]))
    assert torch.equal(r[:], torch.from_numpy(want))


def test_sketch_engages_above_threshold_and_places_every_cell(pre, large):
    small = pre[:250].copy()  # below the threshold: no sketch, as before
    schelix.anchors.score_genes(small, batch_key="batch")
    assert "schelix_sketch" not in small.obs
    assert "sketch" not in small.uns["schelix"]["anchor_scores"]

    adata = pre.copy()
    schelix.anchors.score_genes(adata, batch_key="batch")
    mask = adata.obs["schelix_sketch"].to_numpy()
    assert mask.sum() == 300 and adata.uns["schelix"]["anchor_scores"]["sketch"]["n_cells"] == 300
    n = adata.n_obs
    share = pd.crosstab(adata.obs["batch"], mask, normalize="index")[True]
    assert np.allclose(share, 300 / n, atol=0.01)  # stratified by batch
    assert adata.obs["schelix_pseudo_cluster"].notna().all()
    graph = adata.obsp["schelix_connectivities"]
    assert graph.shape == (n, n) and graph[~mask].nnz == 0  # the kNN graph links sketch cells
    schelix.anchors.split_anchors(adata)
    gate = schelix.gate.fit_gate(adata, seed=0)
    for lab, gam in ((gate.low_labels, gate.gamma_low), (gate.high_labels, gate.gamma_high)):
        assert len(lab) == n and lab.min() >= 0 and lab.max() < len(gam)
    near = adata.obsm["schelix_sketch_neighbors"]
    assert np.isin(near, np.flatnonzero(mask)).all()
    assert not (near == np.arange(n)[:, None]).any()  # a sketch cell is not its own neighbour


def test_large_path_never_densifies_the_whole_matrix(pre, large, monkeypatch):
    seen = []
    original = sp.csr_matrix.toarray

    def guarded(self, *args, **kwargs):
        seen.append(self.shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", guarded)
    adata = pre.copy()
    model = integrate(adata, batch_key="batch", seed=0, **FAST)
    assert seen and max(seen) <= 300 < adata.n_obs  # mini-batches, chunks, the sketch: never all
    data, n = model._data, adata.n_obs
    assert data.neighbors.shape[0] == n and data.neighbors.shape[1] <= 32  # bounded per cell
    assert data.partners.shape == (n, 5)
    got = data.partners[data.partners >= 0].numpy()
    cells = np.repeat(np.arange(n)[:, None], 5, axis=1)[data.partners.numpy() >= 0]
    batch = data.batch.numpy()
    assert (batch[got] != batch[cells]).all()  # partners are always in another batch
    assert np.isfinite(adata.obsm["X_schelix"]).all()


def test_chunked_embedding_equals_unchunked(pre):
    adata = pre.copy()
    model = integrate(adata, batch_key="batch", seed=0, **FAST)
    whole = embed_all(model.module, model._data, "cpu", chunk=10_000)
    parts = embed_all(model.module, model._data, "cpu", chunk=77)
    for stage, emb in whole.items():
        np.testing.assert_allclose(parts[stage], emb, rtol=1e-5, atol=1e-6)
    sub = embed_all(model.module, model._data, "cpu", rows=np.array([3, 500, 7]))
    np.testing.assert_allclose(sub["fused"], whole["fused"][[3, 500, 7]], rtol=1e-5, atol=1e-6)


def test_display_sample_recorded_for_umap_snapshots_and_metrics(pre, large):
    adata = pre.copy()
    integrate(adata, batch_key="batch", seed=0, **FAST)
    rec = adata.uns["schelix"]["display"]
    assert rec["n_cells"] == 200 and rec["n_obs"] == adata.n_obs and rec["stratified_by"] == "batch"
    shown = adata.obs["schelix_display"].to_numpy()
    assert shown.sum() == 200
    snap = adata.obsm[schelix.stages.snapshot_keys(adata)[6]]
    assert np.isfinite(snap[shown]).all() and np.isnan(snap[~shown]).all()
    assert np.isfinite(adata.obsm["X_schelix"]).all()  # the full embedding: every cell
    schelix.stages.add_umaps(adata, ["X_schelix"], n_epochs=20)
    umap = adata.obsm["X_umap"]
    assert np.isfinite(umap[shown]).all() and np.isnan(umap[~shown]).all()
    assert adata.uns["schelix"]["umap"]["n_cells"] == 200
    table = schelix.evaluate.evaluate(
        adata, ["X_schelix"], batch_key="batch", label_key="cell_type"
    )
    assert np.isfinite(table["Overall"]).all()
    assert adata.uns["schelix"]["metrics"]["n_cells"] == 200
    assert f"200 of the {adata.n_obs:,} cells" in display.note(adata)


def test_small_data_has_no_sample(pre):
    adata = pre.copy()
    assert display.sample(adata, batch_key="batch") is None and display.note(adata) is None


def test_an_uploaded_display_column_is_not_trusted(pre, large):
    adata = pre.copy()
    adata.obs["schelix_display"] = False  # a file's own column: no cell shown
    rows_ = display.sample(adata, batch_key="batch")
    assert len(rows_) == 200 and adata.obs["schelix_display"].sum() == 200
    assert np.array_equal(display.sample(adata, batch_key="batch"), rows_)  # kept once drawn
    adata.obs["schelix_display"] = "yes"  # not boolean: drawn again
    assert len(display.sample(adata, batch_key="batch")) == 200


def test_a_stray_sketch_column_is_not_a_sketch(pre):
    adata = pre.copy()
    adata.obs["schelix_sketch"] = True  # e.g. left in an uploaded file, no neighbours with it
    assert sketch.sketch_mask(adata) is None
    adata.obsm["schelix_sketch_neighbors"] = np.full((adata.n_obs, 3), adata.n_obs + 5)
    assert sketch.sketch_mask(adata) is None  # neighbours out of range
    adata.obsm["schelix_sketch_neighbors"] = np.zeros((adata.n_obs, 3), dtype=int)
    assert sketch.sketch_mask(adata).all()
