"""The unintegrated PCA baseline and Harmony behind the shared method interface."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from schelix import evaluate as ev
from schelix.errors import SchelixError, SchelixWarning
from schelix.methods import available_methods, get_method, run_method


@pytest.fixture(scope="module")
def data() -> ad.AnnData:
    """Synthetic counts with gene-specific batch effects, log-normalized, all genes HVG."""
    import scanpy as sc

    from schelix.datasets import synthetic

    a = synthetic(n_cells=600, n_genes=300, seed=1)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    a.var["highly_variable"] = True
    run_method(a, "pca", batch_key="batch", seed=0)
    run_method(a, "harmony", batch_key="batch", seed=0)
    return a


def test_registered_with_labels():
    assert {"pca", "harmony"} <= set(available_methods())
    assert get_method("pca").label == "Unintegrated (PCA)"
    assert get_method("harmony").label == "Harmony"
    assert not get_method("harmony").needs_counts


def test_outputs_and_run_records(data):
    for name in ("pca", "harmony"):
        emb = data.obsm[f"X_{name}"]
        assert emb.shape == (data.n_obs, 50) and emb.dtype == np.float32
        assert np.isfinite(emb).all()
        rec = data.uns["schelix"]["methods"][name]
        assert rec["obsm_key"] == f"X_{name}" and rec["seconds"] > 0
    # Harmony corrects the PCA it computes itself: different from the baseline
    assert not np.allclose(data.obsm["X_pca"], data.obsm["X_harmony"])


def test_harmony_mixes_batches_better_than_pca(data):
    pca = ev.score(data, "X_pca", batch_key="batch", label_key="cell_type")
    har = ev.score(data, "X_harmony", batch_key="batch", label_key="cell_type")
    assert har["ASW_batch"] > pca["ASW_batch"] + 0.05
    assert har["Overall"] > pca["Overall"]
    lf_pca = ev.label_free_score(data, "X_pca", batch_key="batch")
    lf_har = ev.label_free_score(data, "X_harmony", batch_key="batch")
    assert lf_har["iLISI"] > lf_pca["iLISI"]
    assert 0 <= lf_har["ARI_batch"] <= 1 and 0 <= lf_har["NMI_batch"] <= 1
    assert lf_har["LabelFree"] == pytest.approx(
        0.4 * lf_har["iLISI"] + 0.3 * (lf_har["ARI_batch"] + lf_har["NMI_batch"])
    )
    # each batch's own clusters were computed once and cached for both embeddings
    assert data.obs["schelix_batch_leiden"].notna().all()


def test_seeded_and_deterministic(data):
    view = data[:300].copy()
    first = get_method("harmony").fn(view, batch_key="batch", seed=0)
    again = get_method("harmony").fn(view, batch_key="batch", seed=0)
    np.testing.assert_array_equal(first, again)
    progress = []
    get_method("pca").fn(view, batch_key="batch", progress=lambda f, m: progress.append(f))
    assert progress[0] == 0.0 and progress[-1] == 1.0


def test_clear_errors_and_fallback_warning(data):
    view = data[:200].copy()
    with pytest.raises(SchelixError, match="Batch column"):
        run_method(view, "harmony", batch_key="donor")
    with pytest.raises(SchelixError, match="Unknown option"):
        run_method(view, "harmony", batch_key="batch", thetta=1.0)
    del view.var["highly_variable"]
    with pytest.warns(SchelixWarning, match="highly_variable"):
        run_method(view, "pca", batch_key="batch", n_comps=10)
    assert view.obsm["X_pca"].shape == (200, 10)
