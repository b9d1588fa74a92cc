"""Known-answer tests of the evaluation protocol (schelix.evaluate)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from schelix import evaluate as ev
from schelix.benchmarker import scib_benchmark
from schelix.errors import SchelixError

N_CELLS, N_TYPES = 480, 4


@pytest.fixture(scope="module")
def toy() -> ad.AnnData:
    """4 labels x 2 batches, batches assigned at random inside every label."""
    rng = np.random.default_rng(0)
    labels = np.repeat([f"t{i}" for i in range(N_TYPES)], N_CELLS // N_TYPES)
    batch = rng.choice(["b0", "b1"], N_CELLS)
    obs = pd.DataFrame(
        {"batch": batch, "cell_type": labels}, index=[f"c{i}" for i in range(N_CELLS)]
    )
    codes = pd.Categorical(labels).codes
    centers = np.eye(N_TYPES, 10, dtype=np.float32) * 20
    perfect = centers[codes] + rng.normal(0, 0.5, (N_CELLS, 10)).astype(np.float32)
    # "expression" = the embedding itself, so the label-free per-batch clustering has genes
    a = ad.AnnData(np.abs(perfect), obs=obs)
    a.var["highly_variable"] = True
    a.obsm["X_perfect"] = perfect
    # same labels, but every label splits into two far-apart batch clumps
    split = a.obsm["X_perfect"].copy()
    split[:, 9] += np.where(batch == "b0", 0.0, 8.0)
    a.obsm["X_batchsplit"] = split
    a.obsm["X_shuffled"] = rng.normal(0, 1, (N_CELLS, 10)).astype(np.float32)
    return a


@pytest.fixture(scope="module")
def synthetic_pp() -> ad.AnnData:
    """Small synthetic data, log-normalized, every gene in the HVG pool."""
    import scanpy as sc

    from schelix.datasets import synthetic

    a = synthetic(n_cells=N_CELLS, n_genes=200, seed=0)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    a.var["highly_variable"] = True
    return a


def _score(a: ad.AnnData, key, **kw) -> dict[str, float]:
    return ev.score(a, key, batch_key="batch", label_key="cell_type", **kw)


def test_perfectly_separated_labels_score_near_one(toy):
    s = _score(toy, "X_perfect")
    assert set(s) == set(ev.LABEL_METRICS)
    assert s["ASW_ct"] > 0.9
    assert s["ARI"] == pytest.approx(1.0)
    assert s["NMI"] == pytest.approx(1.0)
    assert s["GC"] > 0.95  # scib-metrics: strong components of the directed kNN graph
    assert s["ASW_batch"] > 0.9  # batches are mixed inside every label
    assert s["BioMean"] == pytest.approx(np.mean([s["ASW_ct"], s["ARI"], s["NMI"], s["GC"]]))
    assert s["Overall"] == pytest.approx(0.4 * s["ASW_batch"] + 0.6 * s["BioMean"])


def test_batch_structure_inside_labels_lowers_asw_batch(toy):
    mixed, split = _score(toy, "X_perfect"), _score(toy, "X_batchsplit")
    assert split["ASW_batch"] < 0.5
    assert split["ASW_batch"] < mixed["ASW_batch"] - 0.4


def test_shuffled_embedding_has_low_bio(toy):
    s = _score(toy, "X_shuffled")
    assert s["ARI"] < 0.1
    assert s["ASW_ct"] < 0.55
    assert s["BioMean"] < _score(toy, "X_perfect")["BioMean"] - 0.3


def test_deterministic(toy):
    assert _score(toy, "X_shuffled", seed=3) == _score(toy, "X_shuffled", seed=3)


def test_label_mask_and_unlabelled_cells_are_excluded(toy):
    assert ev.label_mask(["a", "unlabelled", np.nan, "Unknown", "b"]).tolist() == [
        True,
        False,
        False,
        False,
        True,
    ]
    a = toy.copy()
    rng = np.random.default_rng(1)
    lab = a.obs["cell_type"].astype(object).to_numpy()
    drop = rng.random(a.n_obs) < 0.3  # spread over every cluster
    lab[drop] = np.where(rng.random(drop.sum()) < 0.5, "unlabelled", None)
    lab[np.flatnonzero(lab == None)] = np.nan  # noqa: E711 (NaN as missing)
    a.obs["cell_type"] = lab
    s = _score(a, "X_perfect")
    # were 'unlabelled' a class (30 % of the cells, spread over every cluster), no
    # clustering could reach ARI 1 and ASW_ct would drop sharply
    assert s["ARI"] == pytest.approx(1.0)
    assert s["ASW_ct"] > 0.9


def test_wide_embeddings_are_reduced_to_64(toy):
    rng = np.random.default_rng(2)
    wide = np.hstack([toy.obsm["X_perfect"], rng.normal(0, 0.1, (N_CELLS, 90))]).astype(np.float32)
    assert ev.eval_space(wide).shape == (N_CELLS, 64)
    assert ev.eval_space(toy.obsm["X_perfect"]).shape == (N_CELLS, 10)  # no up-projection
    assert _score(toy, wide) == _score(toy, ev.eval_space(wide))


def test_evaluate_table_and_uns_round_trip(toy, tmp_path):
    a = toy.copy()
    df = ev.evaluate(a, ["X_perfect", "X_shuffled"], batch_key="batch", label_key="cell_type")
    assert df["embedding"].tolist() == ["X_perfect", "X_shuffled"]
    assert (df["mode"] == "labels").all()
    assert df.loc[0, "Overall"] > df.loc[1, "Overall"]
    lf = ev.evaluate(a, ["X_perfect", "X_batchsplit"], batch_key="batch")
    assert (lf["mode"] == "label-free").all()
    assert {"iLISI", "ARI_batch", "NMI_batch", "LabelFree"} <= set(lf.columns)
    assert lf.loc[0, "iLISI"] > lf.loc[1, "iLISI"] + 0.3  # batch clumps are not mixed
    a.write_h5ad(tmp_path / "m.h5ad")
    back = ad.read_h5ad(tmp_path / "m.h5ad").uns["schelix"]["metrics"]
    assert back["mode"] == "label-free" and back["label_key"] == ""
    assert list(back["table"]["embedding"]) == ["X_perfect", "X_batchsplit"]


def test_errors_name_the_problem(toy):
    with pytest.raises(SchelixError, match=r"not in adata\.obsm"):
        _score(toy, "X_missing")
    with pytest.raises(SchelixError, match=r"not in adata\.obs"):
        ev.score(toy, "X_perfect", batch_key="batch", label_key="nope")
    with pytest.raises(SchelixError, match="anchor split"):
        ev.anchor_diagnostic(toy, batch_key="batch", label_key="cell_type")


def test_anchor_diagnostic_on_synthetic(synthetic_pp):
    a = synthetic_pp.copy()
    stable_marker = a.var["is_marker"] & ~a.var["is_batch_affected"]
    a.var["schelix_stream"] = pd.Categorical(np.where(stable_marker, "anchor", "variant"))
    df = ev.anchor_diagnostic(a, batch_key="batch", label_key="cell_type", n_random=1)
    assert df["gene_set"].tolist() == ["Anchors", "All HVGs", "Random (same size)"]
    assert df.loc[2, "n_sets"] == 1 and df.loc[0, "n_genes"] == df.loc[2, "n_genes"]
    by = df.set_index("gene_set")
    # batch-stable markers: better mixed than all genes, more informative than random genes
    assert by.loc["Anchors", "ASW_batch"] > by.loc["All HVGs", "ASW_batch"]
    assert by.loc["Anchors", "Overall"] > by.loc["Random (same size)", "Overall"]


def test_scib_benchmark_fast_is_tidy(toy):
    df = scib_benchmark(
        toy, ["X_perfect", "X_batchsplit"], batch_key="batch", label_key="cell_type", fast=True
    )
    assert list(df.columns) == ["embedding", "metric", "metric_type", "value"]
    metrics = set(df["metric"])
    assert {"iLISI", "cLISI", "Isolated labels", "PCR comparison", "Total"} <= metrics
    assert "KBET" not in metrics  # switched off by the fast preset
    assert df["value"].between(-1e-6, 1 + 1e-6).all()
    ilisi = df[df["metric"] == "iLISI"].set_index("embedding")["value"]
    assert ilisi["X_perfect"] > ilisi["X_batchsplit"]
