"""The live anchor quadrant of the Anchor genes page (Vega-Lite, through Altair).

The page redraws this chart on every slider move, so it must update fast in the browser.
Streamlit gives a keyed ``st.altair_chart`` one identity for the whole session and, when only
a dataset changes, replaces that dataset in the live Vega view; a plotly chart is mounted
afresh whenever its figure changes (its identity hashes the figure), which redraws every
point and, for WebGL, creates new GL contexts (measured in the browser: 450-940 ms a move
against 120-350 ms here; ``benchmarks/SPEED_RESULTS.md``, "The quadrant in the browser").

So the points (coloured by the split in use) are one dataset that does not change while the
sliders move, and the dashed lines and the shaded anchor corner are small datasets of their
own. The plotly figure :func:`studio.plots.quadrant` stays for the export (PNG/SVG/HTML).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from studio.plots import STREAM_COLORS, quadrant_range

__all__ = ["PICK", "chart", "picked_genes"]

#: Name of the click selection (a clicked point's gene is in ``event.selection[PICK]``).
PICK = "pick"
X_TITLE = "domain sensitivity z-score (z_dom)"
Y_TITLE = "structure separability z-score (z_str)"


def chart(
    table: pd.DataFrame,
    anchor: np.ndarray,
    *,
    tau_dom: float,
    tau_str: float,
    highlight: Sequence[str] = (),
) -> alt.LayerChart:
    """The quadrant: one point per HVG, the threshold lines and the shaded anchor corner.

    ``table`` has ``gene``, ``z_dom``, ``z_str`` (and optionally ``symbol``); ``anchor`` colours
    the points (the split in use); ``highlight`` genes are circled and labelled. Axis ranges are
    fixed by the data (whole z-units), so a threshold move changes nothing but the lines.
    """
    label = table["symbol"] if "symbol" in table else table["gene"]
    points = pd.DataFrame({
        "gene": table["gene"].astype(str).to_numpy(),
        "name": label.astype(str).to_numpy(),
        "z_dom": table["z_dom"].to_numpy(dtype=float),
        "z_str": table["z_str"].to_numpy(dtype=float),
        "stream": np.where(np.asarray(anchor, dtype=bool), "anchor", "variant"),
    })  # fmt: skip
    xr = quadrant_range(points["z_dom"].to_numpy(), tau_dom)
    yr = quadrant_range(points["z_str"].to_numpy(), tau_str)
    xs, ys = (alt.Scale(domain=r, nice=False, zero=False) for r in (xr, yr))

    def x(field: str = "z_dom") -> alt.X:
        return alt.X(f"{field}:Q", title=X_TITLE, scale=xs)

    def y(field: str = "z_str") -> alt.Y:
        return alt.Y(f"{field}:Q", title=Y_TITLE, scale=ys)

    n_anchor = int((points["stream"] == "anchor").sum())
    legend = {"anchor": f"anchors in use ({n_anchor})",
              "variant": f"variants in use ({len(points) - n_anchor})"}  # fmt: skip
    points["split"] = points["stream"].map(legend)
    color = alt.Color(
        "split:N",
        title=None,
        scale=alt.Scale(domain=list(legend.values()), range=[STREAM_COLORS[k] for k in legend]),
        legend=alt.Legend(orient="top"),
    )
    pick = alt.selection_point(name=PICK, fields=["gene"], on="click", clear="dblclick")
    dots = (
        alt.Chart(points)
        .mark_circle(size=22, opacity=0.7)
        .encode(
            x=x(),
            y=y(),
            color=color,
            tooltip=[
                alt.Tooltip("name:N", title="gene"),
                alt.Tooltip("z_dom:Q", title="domain sensitivity z", format=".2f"),
                alt.Tooltip("z_str:Q", title="structure z", format=".2f"),
                alt.Tooltip("stream:N", title="in use as"),
            ],
        )
        .add_params(pick)
    )
    corner = (
        alt.Chart(pd.DataFrame({"x0": [xr[0]], "x1": [tau_dom], "y0": [tau_str], "y1": [yr[1]]}))
        .mark_rect(opacity=0.08, color=STREAM_COLORS["anchor"])
        .encode(x=x("x0"), x2="x1:Q", y=y("y0"), y2="y1:Q")
    )
    dash = {"strokeDash": [6, 4], "color": "#444"}
    vline = alt.Chart(pd.DataFrame({"tau_dom": [tau_dom]})).mark_rule(**dash).encode(x=x("tau_dom"))
    hline = alt.Chart(pd.DataFrame({"tau_str": [tau_str]})).mark_rule(**dash).encode(y=y("tau_str"))
    found = points[points["gene"].isin(list(highlight))]
    ring = alt.Chart(found).mark_point(size=160, strokeWidth=2, color=STREAM_COLORS["highlight"])
    text = alt.Chart(found).mark_text(dy=-12, fontSize=11, color=STREAM_COLORS["highlight"])
    layers = [
        corner,
        dots,
        vline,
        hline,
        ring.encode(x=x(), y=y()),
        text.encode(x=x(), y=y(), text="name:N"),
    ]
    return alt.layer(*layers).properties(height=520)


def picked_genes(event: object) -> list[str]:
    """Genes clicked in the chart, from the ``st.altair_chart`` selection event (or state)."""
    selection = event.get("selection", {}) if isinstance(event, Mapping) else {}
    picked = (selection.get(PICK) if isinstance(selection, Mapping) else None) or []
    if isinstance(picked, Mapping):  # an interval-style value: {"gene": [...]}
        return [str(g) for g in picked.get("gene", [])]
    return [str(p["gene"]) for p in picked if isinstance(p, Mapping) and p.get("gene")]
