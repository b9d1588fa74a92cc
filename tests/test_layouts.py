"""Written h5ad files open right in a viewer: cellxgene's layout rules (``schelix.layouts``)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from schelix import datasets, layouts, stages
from studio import export


def cellxgene_layouts(adata: ad.AnnData) -> list[str]:
    """What cellxgene 1.3's AnnData adaptor lists (``get_embedding_names``), checked strictly.

    Every ``X_`` key whose value is 2-d with >= 2 columns is offered, in name order, the first
    30; the names must be unique and each offered layout must really be 2-d (a latent's first
    two columns are not a layout).
    """
    offered = [k for k in sorted(adata.obsm) if k.startswith("X_")]
    names = [k[2:] for k in offered]
    assert len(set(names)) == len(names)
    assert len(offered) <= layouts.MAX_LAYOUTS, offered
    for key in offered:
        assert adata.obsm[key].shape == (adata.n_obs, 2), key
    assert layouts.layout_names(adata) == names
    return names


@pytest.fixture
def trained() -> ad.AnnData:
    """36 embeddings, as a training run with ten snapshots and three peers writes them."""
    adata = datasets.synthetic(n_cells=120, n_genes=40, seed=4)
    rng = np.random.default_rng(0)
    snaps = [f"X_schelix_snapshot_{s}" for s in range(10, 110, 10)]
    for key in [*stages.STAGES.values(), *snaps, "X_pca", "X_harmony", "X_scvi"]:
        adata.obsm[key] = rng.normal(size=(adata.n_obs, 16)).astype(np.float32)
        adata.obsm[stages.umap_key(key)] = rng.normal(size=(adata.n_obs, 2)).astype(np.float32)
    adata.obsm["X_schelix_pca"] = rng.normal(size=(adata.n_obs, 50)).astype(np.float32)
    return adata


def test_the_pipeline_names_break_cellxgene(trained: ad.AnnData) -> None:
    offered = sorted(k for k in trained.obsm if k.startswith("X_"))
    assert len(offered) > layouts.MAX_LAYOUTS and "umap" not in layouts.layout_names(trained)


def test_exported_h5ad_passes_cellxgene_layout_rules(trained: ad.AnnData, tmp_path) -> None:
    files = export.export(trained, tmp_path)
    back = ad.read_h5ad(files["h5ad"])
    names = cellxgene_layouts(back)
    assert names[0] == "umap"  # the fused UMAP, cellxgene's default layout
    np.testing.assert_array_equal(back.obsm["X_umap"], trained.obsm["X_schelix_umap"])
    for stage in ("variant", "variant_aligned", "anchor", "anchor_refined", "harmony", "pca"):
        assert f"umap_{stage}" in names
    assert not any("snapshot" in n for n in names)
    # nothing is lost: the latents and snapshots are kept under names a viewer does not list
    np.testing.assert_array_equal(back.obsm["schelix"], trained.obsm["X_schelix"])
    assert back.obsm["schelix_snapshot_10"].shape == (back.n_obs, 16)
    assert layouts.original_names(back)["X_schelix_variant"] == "schelix_variant"
    assert len(back.obsm) == len(trained.obsm)  # X_schelix_umap became X_umap


def test_more_umaps_than_a_viewer_keeps(trained: ad.AnnData) -> None:
    for i in range(40):
        trained.obsm[f"X_m{i:02d}_umap"] = np.zeros((trained.n_obs, 2), np.float32)
    out = layouts.for_viewers(trained)
    names = cellxgene_layouts(out)
    assert "umap" in names and len(names) == layouts.MAX_LAYOUTS
