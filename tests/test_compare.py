"""compare(): every method side by side, one tidy row per method x seed, failures as rows."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from schelix.compare import INFO_COLUMNS, compare, comparison_table, summarize
from schelix.errors import SchelixError

LABEL_METRICS = ["ASW_ct", "GC", "ARI", "NMI", "BioMean", "ASW_batch", "Overall"]


@pytest.fixture(scope="module")
def data() -> ad.AnnData:
    """Log-normalized synthetic data WITHOUT raw counts: scVI must fail, PCA/Harmony run."""
    import scanpy as sc

    from schelix.datasets import synthetic

    a = synthetic(n_cells=500, n_genes=300, seed=2)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    a.var["highly_variable"] = True
    del a.layers["counts"]
    return a


@pytest.fixture(scope="module")
def table(data) -> pd.DataFrame:
    return compare(
        data,
        batch_key="batch",
        label_key="cell_type",
        methods=("pca", "harmony", "scvi"),
        seeds=(0, 1),
        device="cpu",
    )


def test_tidy_table_with_failing_peer(data, table):
    assert list(table[["method", "seed"]].itertuples(index=False, name=None)) == [
        ("pca", 0),
        ("pca", 1),
        ("harmony", 0),
        ("harmony", 1),
        ("scvi", 0),
        ("scvi", 1),
    ]
    assert list(table.columns) == [*INFO_COLUMNS, *LABEL_METRICS]
    ok = table[table["method"] != "scvi"]
    assert (ok["status"] == "ok").all() and (ok["error"] == "").all()
    assert ok[LABEL_METRICS].notna().all().all() and (ok["seconds"] > 0).all()
    assert ok[LABEL_METRICS].apply(lambda c: c.between(0, 1)).all().all()
    # one embedding per method and seed
    for key in ok["obsm_key"]:
        assert key in data.obsm and data.obsm[key].shape[0] == data.n_obs
    assert {"X_pca_seed0", "X_pca_seed1", "X_harmony_seed0"} <= set(data.obsm)
    # scVI needs counts that are absent: an error row naming the problem, not a crash
    failed = table[table["method"] == "scvi"]
    assert (failed["status"] == "error").all()
    assert failed["error"].str.contains("counts").all()
    assert failed[LABEL_METRICS].isna().all().all()
    # the table says what the paper says: Harmony mixes batches better than PCA
    mean = table.groupby("method")["ASW_batch"].mean()
    assert mean["harmony"] > mean["pca"]


def test_summarize(table):
    summary = summarize(table)
    assert list(summary.index) == ["pca", "harmony", "scvi"]
    pca = table[table["method"] == "pca"]
    assert summary.loc["pca", "Overall_mean"] == pytest.approx(pca["Overall"].mean())
    assert summary.loc["pca", "Overall_std"] == pytest.approx(pca["Overall"].std(ddof=1))
    assert summary.loc["pca", "n_seeds"] == 2 and summary.loc["scvi", "n_failed"] == 2
    assert np.isnan(summary.loc["scvi", "Overall_mean"])
    assert "counts" in summary.loc["scvi", "error"]
    text = summarize(table, formatted=True)
    assert " ± " in text.loc["harmony", "ASW_batch"] and text.loc["scvi", "Overall"] == "n/a"
    single = summarize(table[table["seed"] == 0], formatted=True)
    assert " ± " not in single.loc["pca", "NMI"]


def test_stored_and_round_trips_h5ad(data, table, tmp_path):
    pd.testing.assert_frame_equal(comparison_table(data), table, check_dtype=False)
    path = tmp_path / "cmp.h5ad"
    data.write_h5ad(path)
    back = comparison_table(ad.read_h5ad(path))
    pd.testing.assert_frame_equal(back, table, check_dtype=False)


def test_csv_and_label_free(data, tmp_path, monkeypatch):
    from schelix import evaluate

    seen = []

    def fake_label_free(adata, embedding, *, batch_key, seed=0):
        seen.append((embedding, batch_key, seed))
        return {"iLISI": 0.25, "LabelFree": 0.5}

    # the label-free path itself is tested in test_evaluate; here: compare takes it
    monkeypatch.setattr(evaluate, "label_free_score", fake_label_free)
    csv = tmp_path / "out" / "comparison.csv"
    df = compare(data, batch_key="batch", methods=("pca",), device="cpu", seeds=(7,), csv=csv)
    assert seen == [("X_pca", "batch", 7)]
    assert df["obsm_key"].tolist() == ["X_pca"]  # single seed: the plain key
    assert df[["iLISI", "LabelFree"]].values.tolist() == [[0.25, 0.5]]
    assert "ASW_ct" not in df.columns
    pd.testing.assert_frame_equal(pd.read_csv(csv, keep_default_na=False), df, check_dtype=False)


def test_progress_and_cancel(data):
    calls: list[tuple[float, str]] = []
    compare(
        data,
        batch_key="batch",
        label_key="cell_type",
        methods=("pca", "scvi"),
        progress=lambda f, m: calls.append((f, m)),
    )
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("Unintegrated" in m or "PCA" in m for _, m in calls)
    assert "failed" in calls[-1][1]

    def stop(fraction: float, message: str) -> None:
        if fraction > 0:
            raise InterruptedError("cancelled by user")

    with pytest.raises(InterruptedError):
        compare(
            data,
            batch_key="batch",
            label_key="cell_type",
            methods=("pca", "harmony"),
            progress=stop,
        )


def test_bad_input_fails_up_front(data):
    with pytest.raises(SchelixError, match="no_such_method"):
        compare(data, batch_key="batch", methods=("pca", "no_such_method"))
    with pytest.raises(SchelixError, match="donor"):
        compare(data, batch_key="donor", methods=("pca",))
    with pytest.raises(SchelixError, match="harmony"):
        compare(data, batch_key="batch", methods=("pca",), params={"harmony": {}})
