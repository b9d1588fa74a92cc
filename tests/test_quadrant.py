"""The live quadrant's Vega-Lite spec (:func:`studio.quadrant.chart`)."""

from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd
import pytest

from studio import quadrant


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 300
    return pd.DataFrame({
        "gene": [f"ENSG{i:05d}" for i in range(n)],
        "symbol": [f"G{i}" for i in range(n)],
        "z_dom": rng.normal(size=n),
        "z_str": rng.normal(size=n),
    })  # fmt: skip


def _split(table: pd.DataFrame) -> np.ndarray:
    return ((table["z_dom"] <= 0) & (table["z_str"] >= 0)).to_numpy()


def test_the_spec_is_valid_vega_lite(table: pd.DataFrame) -> None:
    spec = quadrant.chart(table, _split(table), tau_dom=0.2, tau_str=-0.1, highlight=["ENSG00003"])
    inline = {k: json.loads(v.to_json(orient="records")) for k, v in spec["datasets"].items()}
    alt.LayerChart.from_dict({**spec, "datasets": inline}, validate=True)  # raises if invalid
    assert list(spec["datasets"]["marked"]["name"]) == ["G3"]
    assert (spec["datasets"]["points"]["split"].str.startswith("anchors in use")).sum() == (
        _split(table).sum()
    )


def test_a_threshold_move_changes_only_the_line_datasets(table: pd.DataFrame) -> None:
    """The same spec text, so Streamlit updates the live view's datasets in place."""
    a = quadrant.chart(table, _split(table), tau_dom=0.2, tau_str=-0.1)
    b = quadrant.chart(table, _split(table), tau_dom=-0.4, tau_str=0.3)
    text = {
        k: json.dumps({**s, "datasets": sorted(s["datasets"])}) for k, s in (("a", a), ("b", b))
    }
    assert text["a"] == text["b"]
    pd.testing.assert_frame_equal(a["datasets"]["points"], b["datasets"]["points"])
    assert float(b["datasets"]["tau_dom"]["tau_dom"].iloc[0]) == -0.4
    assert float(b["datasets"]["corner"]["y0"].iloc[0]) == 0.3


def test_a_click_selection_reads_back_as_genes() -> None:
    event = {"selection": {quadrant.PICK: [{"gene": "ENSG1"}, {"gene": "ENSG2"}]}}
    assert quadrant.picked_genes(event) == ["ENSG1", "ENSG2"]
    assert quadrant.picked_genes({"selection": {quadrant.PICK: {"gene": ["ENSG3"]}}}) == ["ENSG3"]
    assert quadrant.picked_genes(None) == []
