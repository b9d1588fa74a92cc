"""The live anchor quadrant of the Anchor genes page (a Vega-Lite spec).

The page redraws this chart on every slider move, so it must update fast in the browser.
Streamlit gives a keyed ``st.vega_lite_chart`` one identity for the whole session and, when only
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
) -> dict:
    """The quadrant as a Vega-Lite spec: one point per HVG, the threshold lines, the shaded
    anchor corner (for ``st.vega_lite_chart``).

    ``table`` has ``gene``, ``z_dom``, ``z_str`` (and optionally ``symbol``); ``anchor`` colours
    the points (the split in use); ``highlight`` genes are circled and labelled. Axis ranges are
    fixed by the data (whole z-units), so a threshold move changes nothing but the lines.

    The spec is written as a dict, not built through Altair: Altair validates every chart
    against the Vega-Lite JSON schema when Streamlit converts it, which cost more than the rest
    of a slider move (``benchmarks/quadrant.py``). Every dataset has a fixed name, so between
    two moves the spec is the same text and only the small line datasets change.
    """
    label = table["symbol"] if "symbol" in table else table["gene"]
    stream = np.where(np.asarray(anchor, dtype=bool), "anchor", "variant")
    n_anchor = int((stream == "anchor").sum())
    legend = {"anchor": f"anchors in use ({n_anchor})",
              "variant": f"variants in use ({len(stream) - n_anchor})"}  # fmt: skip
    points = pd.DataFrame({
        "gene": table["gene"].astype(str).to_numpy(),
        "name": label.astype(str).to_numpy(),
        "z_dom": table["z_dom"].to_numpy(dtype=float),
        "z_str": table["z_str"].to_numpy(dtype=float),
        "stream": stream,
        "split": pd.Series(stream).map(legend).to_numpy(),
    })  # fmt: skip
    xr = quadrant_range(points["z_dom"].to_numpy(), tau_dom)
    yr = quadrant_range(points["z_str"].to_numpy(), tau_str)

    def axis(field: str, title: str, domain: tuple[float, float]) -> dict:
        scale = {"domain": [float(domain[0]), float(domain[1])], "nice": False, "zero": False}
        return {"field": field, "type": "quantitative", "title": title, "scale": scale}

    def x(field: str = "z_dom") -> dict:
        return axis(field, X_TITLE, xr)

    def y(field: str = "z_str") -> dict:
        return axis(field, Y_TITLE, yr)

    def layer(data: str, mark: dict, **encoding: dict) -> dict:
        return {"data": {"name": data}, "mark": mark, "encoding": encoding}

    color = {
        "field": "split", "type": "nominal", "title": None, "legend": {"orient": "top"},
        "scale": {"domain": list(legend.values()), "range": [STREAM_COLORS[k] for k in legend]},
    }  # fmt: skip
    tooltip = [
        {"field": "name", "type": "nominal", "title": "gene"},
        {
            "field": "z_dom",
            "type": "quantitative",
            "title": "domain sensitivity z",
            "format": ".2f",
        },
        {"field": "z_str", "type": "quantitative", "title": "structure z", "format": ".2f"},
        {"field": "stream", "type": "nominal", "title": "in use as"},
    ]
    dots = layer("points", {"type": "circle", "size": 22, "opacity": 0.7},
                 x=x(), y=y(), color=color, tooltip=tooltip)  # fmt: skip
    dots["name"] = "points_view"
    dash = {"type": "rule", "strokeDash": [6, 4], "color": "#444"}
    mark = {"color": STREAM_COLORS["highlight"]}
    layers = [
        layer("corner", {"type": "rect", "opacity": 0.08, "color": STREAM_COLORS["anchor"]},
              x=x("x0"), x2={"field": "x1"}, y=y("y0"), y2={"field": "y1"}),
        dots,
        layer("tau_dom", dash, x=x("tau_dom")),
        layer("tau_str", dash, y=y("tau_str")),
        layer("marked", {"type": "point", "size": 160, "strokeWidth": 2, **mark}, x=x(), y=y()),
        layer("marked", {"type": "text", "dy": -12, "fontSize": 11, **mark},
              x=x(), y=y(), text={"field": "name", "type": "nominal"}),
    ]  # fmt: skip
    pick = {"name": PICK, "views": ["points_view"],
            "select": {"type": "point", "fields": ["gene"], "on": "click", "clear": "dblclick"}}  # fmt: skip
    datasets = {
        "points": points,
        "corner": pd.DataFrame({"x0": [xr[0]], "x1": [tau_dom], "y0": [tau_str], "y1": [yr[1]]}),
        "tau_dom": pd.DataFrame({"tau_dom": [tau_dom]}),
        "tau_str": pd.DataFrame({"tau_str": [tau_str]}),
        "marked": points[points["gene"].isin(list(highlight))],
    }
    return {"height": 520, "params": [pick], "layer": layers, "datasets": datasets}


def picked_genes(event: object) -> list[str]:
    """Genes clicked in the chart, from the ``st.vega_lite_chart`` selection event (or state)."""
    selection = event.get("selection", {}) if isinstance(event, Mapping) else {}
    picked = (selection.get(PICK) if isinstance(selection, Mapping) else None) or []
    if isinstance(picked, Mapping):  # an interval-style value: {"gene": [...]}
        return [str(g) for g in picked.get("gene", [])]
    return [str(p["gene"]) for p in picked if isinstance(p, Mapping) and p.get("gene")]
