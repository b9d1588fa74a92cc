"""Per-cell-type batch mixing (schelix.batch_mixing): known answers on a toy embedding."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import schelix
from schelix import evaluate as ev
from schelix.batch_mixing import batch_mixing_by_label
from schelix.errors import SchelixError


@pytest.fixture(scope="module")
def toy() -> ad.AnnData:
    """3 types x 2 batches; type t2 is split by batch in X_split only; t3 is in one batch."""
    rng = np.random.default_rng(1)
    labels = np.repeat(["t0", "t1", "t2"], 80)
    batch = np.tile(["b0", "b1"], 120)
    labels = np.concatenate([labels, ["t3"] * 20, ["unknown"] * 10])
    batch = np.concatenate([batch, ["b0"] * 20, ["b1"] * 10])
    n = labels.size
    centers = np.eye(4, 8) * 20
    codes = pd.Categorical(labels, categories=["t0", "t1", "t2", "t3", "unknown"]).codes % 4
    mixed = centers[codes] + rng.normal(0, 0.5, (n, 8))
    split = mixed.copy()
    split[(labels == "t2") & (batch == "b1"), 7] += 10.0
    obs = pd.DataFrame({"batch": batch, "cell_type": labels}, index=[f"c{i}" for i in range(n)])
    a = ad.AnnData(np.zeros((n, 3), np.float32), obs=obs)
    a.obsm["X_mixed"], a.obsm["X_split"] = mixed.astype(np.float32), split.astype(np.float32)
    return a


def test_per_type_values_locate_the_unmixed_type(toy):
    df = batch_mixing_by_label(
        toy, ["X_mixed", "X_split"], batch_key="batch", label_key="cell_type"
    )
    assert list(df.index) == ["t0", "t1", "t2", "mean"]  # t3 (one batch) and unlabelled left out
    assert df.loc["t2", "X_split"] < 0.3 < 0.8 < df.loc["t2", "X_mixed"]
    np.testing.assert_allclose(df.loc[["t0", "t1"], "X_split"], df.loc[["t0", "t1"], "X_mixed"])
    assert df.loc["t0", "n_cells"] == 80 and df.loc["t0", "n_batches"] == 2


def test_mean_row_is_the_paper_metric(toy):
    df = batch_mixing_by_label(
        toy, ["X_mixed", "X_split"], batch_key="batch", label_key="cell_type"
    )
    for key in ("X_mixed", "X_split"):
        asw = ev.score(toy, key, batch_key="batch", label_key="cell_type")["ASW_batch"]
        np.testing.assert_allclose(df.loc["mean", key], asw, rtol=1e-5)
    assert schelix.batch_mixing.batch_mixing_by_label is batch_mixing_by_label


def test_bad_input_names_the_problem(toy):
    with pytest.raises(SchelixError, match="No embeddings"):
        batch_mixing_by_label(toy, [], batch_key="batch", label_key="cell_type")
    with pytest.raises(SchelixError, match=r"not in adata\.obsm"):
        batch_mixing_by_label(toy, ["X_nope"], batch_key="batch", label_key="cell_type")
    one = toy[toy.obs["cell_type"] == "t3"].copy()
    one.obs["cell_type"] = one.obs["cell_type"].astype(str)
    with pytest.raises(SchelixError, match="2 or more batches"):
        batch_mixing_by_label(one, ["X_mixed"], batch_key="batch", label_key="cell_type")
