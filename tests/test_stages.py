"""UMAPs of the stage embeddings (``schelix.stages.add_umaps``)."""

from __future__ import annotations

import anndata as ad
import numpy as np
from sklearn.manifold import trustworthiness
from sklearn.metrics import pairwise_distances

from schelix import stages


def _clusters(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(5, 16))
    return (centres[rng.integers(0, 5, n)] + rng.normal(size=(n, 16))).astype(np.float32)


def test_small_data_neighbours_are_the_exact_ones_umap_would_find():
    emb = _clusters(600)
    idx, dist = stages._exact_knn(emb, 15)
    # umap-learn's own small-data path: every pairwise distance, the 15 smallest per cell
    d = pairwise_distances(emb)
    for i in range(len(emb)):
        assert set(idx[i]) == set(np.argsort(d[i])[:15])
        assert idx[i, 0] == i and dist[i, 0] == 0  # each cell is its own first neighbour
    np.testing.assert_allclose(dist, np.take_along_axis(d, idx.astype(int), 1), rtol=1e-5)


def test_large_data_keeps_umaps_own_search():
    assert stages._exact_knn(np.zeros((stages.UMAP_EXACT_BELOW, 4), np.float32), 15) == (
        None,
        None,
        None,
    )


def test_umap_of_a_small_embedding_keeps_its_neighbourhoods():
    emb = _clusters(800, seed=1)
    adata = ad.AnnData(np.zeros((len(emb), 2), np.float32))
    adata.obsm["X_schelix"] = emb
    assert stages.add_umaps(adata, ["X_schelix"], seed=0) == ["X_schelix_umap"]
    layout = adata.obsm["X_schelix_umap"]
    assert layout.shape == (800, 2) and np.isfinite(layout).all()
    assert np.array_equal(adata.obsm["X_umap"], layout)  # the fused one is cellxgene's default
    assert trustworthiness(emb, layout, n_neighbors=15) > 0.9
    again = ad.AnnData(adata.X.copy())
    again.obsm["X_schelix"] = emb
    stages.add_umaps(again, ["X_schelix"], seed=0)
    np.testing.assert_array_equal(again.obsm["X_schelix_umap"], layout)  # seeded
