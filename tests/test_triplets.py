"""Anchor-guided within-batch triplets (schelix.triplets) and their place in training."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import schelix
from schelix import rows, sketch
from schelix.pipeline import integrate
from schelix.triplets import anchor_clusters, triplet_clusters, triplet_loss

FAST = {"max_steps": 8, "batch_size": 64, "n_prototypes": 4, "mixup_k": 40, "mnn_k": 5}


@pytest.fixture(scope="module")
def pre():
    adata = schelix.datasets.synthetic(600, 300, seed=2, library_size=800)
    return schelix.pp.preprocess(adata, batch_key="batch", min_genes=20)


def test_triplet_loss_pulls_positives_and_stays_within_batch():
    gen = torch.Generator().manual_seed(0)
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    neg = torch.tensor([0, 0, 1, 2, 2, 3])
    pos = torch.tensor([0, 0, 1, 2, 2, 3])
    # positives (0,1) and (3,4) far apart, negatives close: loss is positive, with a gradient
    z = torch.tensor([[0.0], [10.0], [1.0], [0.0], [10.0], [1.0]], requires_grad=True)
    loss = triplet_loss(z, batch, neg, pos, 5.0, gen)
    assert float(loss) > 0
    loss.backward()
    assert z.grad.abs().sum() > 0
    # positives together and negatives beyond the margin: no loss
    z = torch.tensor([[0.0], [0.0], [10.0], [0.0], [0.0], [10.0]])
    assert float(triplet_loss(z, batch, neg, pos, 5.0, gen)) == 0.0
    # a cross-batch "negative" nearby is ignored
    z = torch.tensor([[0.0], [0.0], [10.0], [0.1], [0.1], [10.0]])
    assert float(triplet_loss(z, batch, neg, pos, 5.0, gen)) == 0.0


def test_no_negative_where_the_anchor_cluster_is_shared():
    """Two groups with one anchor cluster are never pushed apart, however far they lie."""
    gen = torch.Generator().manual_seed(0)
    batch = torch.zeros(4, dtype=torch.long)
    pos = torch.tensor([0, 0, 1, 1])  # two within-batch groups (e.g. control / stimulated)
    z = torch.tensor([[0.0], [3.0], [0.5], [3.5]], requires_grad=True)
    same_anchor = torch.zeros(4, dtype=torch.long)
    assert float(triplet_loss(z, batch, same_anchor, pos, 5.0, gen)) == 0.0  # no term at all
    split_anchor = torch.tensor([0, 0, 1, 1])
    assert float(triplet_loss(z, batch, split_anchor, pos, 5.0, gen)) > 0


@pytest.mark.parametrize(
    "setting", [{"w_triplet": -1.0}, {"triplet_margin": -1.0}, {"triplet_coarse_resolution": 0.0}]
)
def test_bad_triplet_settings_name_the_setting(setting):
    name = next(iter(setting))
    with pytest.raises(schelix.SchelixError, match=name):
        schelix.SCHelixConfig(**setting)


def test_anchor_clusters_follow_the_anchor_space():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 6, (3, 40))
    truth = np.repeat([0, 1, 2], 80)
    x = centers[truth] + rng.normal(0, 1, (240, 40))
    got = anchor_clusters(x.astype(np.float32), resolution=0.1, seed=0)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, got) == 1.0
    assert anchor_clusters(x[:5], resolution=0.1).tolist() == [0] * 5  # too few cells: one


def test_training_adds_the_term_in_the_fusion_phase_only(pre):
    adata = pre.copy()
    model = integrate(adata, batch_key="batch", seed=0, w_triplet=1.0, **FAST)
    clusters = model._data.triplet_clusters
    assert clusters.shape == (adata.n_obs, 2) and (clusters >= 0).all()
    batch = model._data.batch.numpy()
    fine = clusters[:, 1].numpy()
    assert all(len(set(batch[fine == c])) == 1 for c in np.unique(fine))  # within one batch
    hist = adata.uns["schelix"]["history"]
    phases = np.asarray(hist["phase"])
    assert np.isnan(np.asarray(hist["triplet"], float)[phases == "warmup"]).all()
    assert np.isfinite(np.asarray(hist["triplet"], float)[phases == "fusion"]).all()

    off = pre.copy()  # the default: off
    model = integrate(off, batch_key="batch", seed=0, **FAST)
    assert model._data.triplet_clusters is None
    assert "triplet" not in off.uns["schelix"]["history"]


def test_large_data_cluster_the_sketch_and_place_every_cell(pre, monkeypatch):
    monkeypatch.setattr(sketch, "SKETCH_CELLS", 200)
    monkeypatch.setattr(rows, "CHUNK", 64)
    seen = []
    original = sp.csr_matrix.toarray

    def guarded(self, *args, **kwargs):
        seen.append(self.shape[0])
        return original(self, *args, **kwargs)

    adata = pre.copy()
    schelix.anchors.score_genes(adata, batch_key="batch")
    schelix.anchors.split_anchors(adata)
    data, _ = schelix.data.prepare(
        adata, schelix.SCHelixConfig(), batch_key="batch", training=False
    )
    monkeypatch.setattr(sp.csr_matrix, "toarray", guarded)
    codes = triplet_clusters(
        adata, data.x_anchor, data.batch.numpy(), coarse_resolution=0.1, fine_resolution=7.0
    )
    assert codes.shape == (adata.n_obs, 2) and (codes >= 0).all()
    assert seen and max(seen) <= 200  # only sketch rows are ever made dense
