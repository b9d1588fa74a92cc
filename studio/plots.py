"""Plotly figures of the app (and the export): QC, the anchor quadrant, losses, UMAPs, metrics.

Every function takes data that a ``schelix`` step already computed and only draws it.
Traces are plain scatter / bar / violin so :func:`schelix.export.to_matplotlib` can redraw
any of them as PNG/SVG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "STREAM_COLORS",
    "embeddings",
    "gene_profile",
    "loss_curves",
    "metrics_chart",
    "qc_violins",
    "quadrant",
    "quadrant_range",
]

STREAM_COLORS = {"anchor": "#1f77b4", "variant": "#ff7f0e", "highlight": "#d62728"}
_PALETTE = (
    "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf "
    "#393b79 #637939 #8c6d31 #843c39 #7b4173 #3182bd #e6550d #31a354 #756bb1 #636363"
).split()
QC_METRICS = {
    "n_genes_by_counts": "Genes per cell",
    "total_counts": "Counts per cell",
    "pct_counts_mt": "Mitochondrial %",
}


def _color_map(values: Sequence[str]) -> dict[str, str]:
    return {v: _PALETTE[i % len(_PALETTE)] for i, v in enumerate(values)}


def qc_violins(obs: pd.DataFrame, *, batch_key: str, thresholds: Mapping[str, float]) -> go.Figure:
    """Per-batch violins of genes per cell, counts per cell and mitochondrial percent.

    ``thresholds`` maps a QC column to a cut-off drawn as a dashed red line.
    """
    cols = [  # no mitochondrial panel of zeros when the data has no mitochondrial genes
        c for c in QC_METRICS if c in obs and (c != "pct_counts_mt" or obs[c].fillna(0).gt(0).any())
    ]
    fig = make_subplots(rows=1, cols=len(cols), subplot_titles=[QC_METRICS[c] for c in cols])
    batches = obs[batch_key].astype("category")
    colors = _color_map(list(batches.cat.categories))
    for j, col in enumerate(cols, start=1):
        for b in batches.cat.categories:
            y = obs.loc[(batches == b).to_numpy(), col].to_numpy()
            fig.add_trace(
                go.Violin(
                    y=y,
                    name=str(b),
                    line_color=colors[b],
                    showlegend=False,
                    points=False,
                    box_visible=True,
                    meanline_visible=False,
                    spanmode="hard",  # no density below 0 genes or counts
                ),
                row=1,
                col=j,
            )
        fig.update_yaxes(title_text=QC_METRICS[col], rangemode="tozero", row=1, col=j)
        fig.update_xaxes(title_text="batch", row=1, col=j)
        if col in thresholds:
            fig.add_hline(
                y=float(thresholds[col]), line_dash="dash", line_color="red", row=1, col=j
            )
    fig.update_layout(height=360, margin={"t": 40, "b": 10, "l": 10, "r": 10})
    return fig


def quadrant_range(values: np.ndarray, tau: float) -> list[float]:
    """A fixed axis range holding every gene, 0 and the threshold (whole z-units, padded).

    Fixed, so that moving a threshold inside the sliders' range (whole units around the data
    too) changes no axis (:func:`studio.quadrant.chart` relies on it).
    """
    lo = math.floor(min(float(np.min(values, initial=0.0)), tau, 0.0))
    hi = math.ceil(max(float(np.max(values, initial=0.0)), tau, 0.0))
    return [lo - 0.5, hi + 0.5]


def quadrant(
    table: pd.DataFrame,
    anchor: np.ndarray,
    *,
    tau_dom: float,
    tau_str: float,
    highlight: Sequence[str] = (),
) -> go.Figure:
    """The discriminability–sensitivity quadrant: one point per HVG.

    ``table`` has a ``gene`` column and ``z_dom`` / ``z_str``; ``anchor`` is the mask that
    colours the points (e.g. the split in use, :func:`schelix.anchors.quadrant`). The dashed
    lines and the shaded top-left quadrant (low domain sensitivity, high structure
    separability: the anchors) are drawn at ``tau_dom`` / ``tau_str``.

    The export draws this figure (PNG/SVG/HTML); the live page draws the same quadrant with
    :func:`studio.quadrant.chart`, which updates faster in the browser.
    """
    fig = go.Figure()
    genes, x, y = table["gene"].to_numpy(), table["z_dom"].to_numpy(), table["z_str"].to_numpy()
    label = table["symbol"].astype(str).to_numpy() if "symbol" in table else genes
    anchor = np.asarray(anchor, dtype=bool)
    hover = "<b>%{hovertext}</b><br>domain sensitivity z = %{x:.2f}<br>structure z = %{y:.2f}"
    for name, mask in (("anchor", anchor), ("variant", ~anchor)):
        fig.add_trace(
            go.Scattergl(
                x=x[mask],
                y=y[mask],
                mode="markers",
                customdata=genes[mask],
                hovertext=label[mask],
                name=f"{name}s ({int(mask.sum())})",
                hovertemplate=hover + f"<extra>{name}</extra>",
                marker={"size": 5, "color": STREAM_COLORS[name], "opacity": 0.7},
            )
        )
    sel = np.isin(genes, list(highlight)) if len(highlight) else np.zeros(len(genes), bool)
    if sel.any():
        fig.add_trace(
            go.Scatter(
                x=x[sel],
                y=y[sel],
                mode="markers+text",
                text=label[sel],
                hovertext=label[sel],
                customdata=genes[sel],
                textposition="top center",
                name="found",
                hovertemplate=hover + "<extra></extra>",
                marker={
                    "size": 11,
                    "color": "rgba(0,0,0,0)",
                    "line": {"width": 2, "color": STREAM_COLORS["highlight"]},
                },
            )
        )
    xr, yr = quadrant_range(x, tau_dom), quadrant_range(y, tau_str)
    fig.add_vline(x=tau_dom, line_dash="dash", line_color="#444")
    fig.add_hline(y=tau_str, line_dash="dash", line_color="#444")
    fig.add_shape(
        type="rect", x0=xr[0], x1=tau_dom, y0=tau_str, y1=yr[1], layer="below",
        line_width=0, fillcolor=STREAM_COLORS["anchor"], opacity=0.08,
    )  # fmt: skip
    fig.update_layout(
        xaxis={"title": "domain sensitivity z-score (z_dom)", "range": xr},
        yaxis={"title": "structure separability z-score (z_str)", "range": yr},
        height=520,
        margin={"t": 30, "b": 10, "l": 10, "r": 10},
        legend={"orientation": "h"},
        uirevision="quadrant",  # keep zoom while sliders move
    )
    return fig


def gene_profile(profile: Mapping[str, pd.DataFrame], gene: str) -> go.Figure:
    """Mean expression (± std) of one gene per batch and per pseudo-cluster."""
    parts = [k for k in ("per_batch", "per_cluster") if k in profile]
    titles = {"per_batch": "per batch", "per_cluster": "per pseudo-cluster"}
    fig = make_subplots(
        rows=1,
        cols=len(parts),
        subplot_titles=[titles[p] for p in parts],
        column_widths=[1, 3][: len(parts)],
    )
    for j, part in enumerate(parts, start=1):
        df = profile[part]
        fig.add_trace(
            go.Bar(
                x=[str(i) for i in df.index],
                y=df["mean"],
                error_y={"array": df.get("std")},
                showlegend=False,
                marker_color=STREAM_COLORS["anchor" if j == 1 else "variant"],
            ),
            row=1,
            col=j,
        )
        labels = [str(i) for i in df.index]
        fig.update_xaxes(
            tickmode="array",
            tickvals=labels,
            ticktext=labels,
            type="category",
            row=1,
            col=j,
            title_text="batch" if part == "per_batch" else "pseudo-cluster",
        )  # every cluster labelled, not every other one
    fig.update_yaxes(title_text=f"{gene} (log-normalised)", row=1, col=1)
    fig.update_layout(height=320, margin={"t": 40, "b": 10, "l": 10, "r": 10})
    return fig


def loss_curves(
    records: Sequence[Mapping],
    *,
    weights: Mapping[str, float] | None = None,
    names: Mapping[str, str] | None = None,
    max_points: int = 400,
) -> go.Figure:
    """One panel per trained loss term over training steps; warm-up → fusion dotted.

    ``weights`` (term -> weight in the total): terms of weight 0 are not trained and not drawn;
    each panel says its weight. ``names``: the terms in words (panel titles). The weighted
    total comes first.
    """
    rows = [r for r in records if "losses" in r]
    if not rows:
        return go.Figure()
    if len(rows) > max_points:  # thin out long runs, always keeping the last record
        keep = np.unique(
            np.r_[np.linspace(0, len(rows) - 1, max_points).astype(int), len(rows) - 1]
        )
        rows = [rows[i] for i in keep]
    steps = np.array([r["step"] for r in rows])
    terms = list(dict.fromkeys(t for r in rows for t in r["losses"]))
    if weights is not None:
        terms = [t for t in terms if t == "total" or weights.get(t, 1.0) != 0]
    terms.sort(key=lambda t: t != "total")
    names = names or {}

    def title(t: str) -> str:
        w = "" if weights is None or t == "total" else f" · weight {weights.get(t, 1.0):g}"
        return f"{names.get(t, t)}{w}"

    ncol = 3
    fig = make_subplots(
        rows=math.ceil(len(terms) / ncol),
        cols=ncol,
        subplot_titles=[title(t) for t in terms],
        vertical_spacing=0.16,
    )
    fusion = [r["step"] for r in records if r.get("phase") == "fusion"]
    for i, term in enumerate(terms):
        row, col = i // ncol + 1, i % ncol + 1
        y = np.array([r["losses"].get(term, np.nan) for r in rows], dtype=float)
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=y,
                mode="lines",
                name=names.get(term, term),
                showlegend=False,
                line={"color": _PALETTE[i % len(_PALETTE)]},
            ),
            row=row,
            col=col,
        )
        if fusion:
            fig.add_vline(x=fusion[0], line_dash="dot", line_color="#888", row=row, col=col)
        fig.update_xaxes(title_text="training step", row=row, col=col)
        fig.update_yaxes(title_text="loss", row=row, col=col)
    fig.update_annotations(font_size=12)
    fig.update_layout(
        height=240 * math.ceil(len(terms) / ncol) + 40, margin={"t": 40, "b": 10, "l": 10, "r": 10}
    )
    return fig


def embeddings(
    panels: Mapping[str, np.ndarray], colors: pd.Series, *, ncols: int = 3, title: str = ""
) -> go.Figure:
    """Side-by-side 2-D embeddings (e.g. UMAPs of the stages), coloured by one obs column."""
    names = list(panels)
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = make_subplots(
        rows=nrows,
        cols=min(ncols, max(1, len(names))),
        subplot_titles=names,
        horizontal_spacing=0.03,
        vertical_spacing=0.08,
    )
    cats = colors.astype("category")
    cmap = _color_map(list(cats.cat.categories))
    codes = cats.to_numpy()
    for i, name in enumerate(names):
        xy = np.asarray(panels[name])
        shown = np.isfinite(xy).all(axis=1)  # large data: only the display sample is laid out
        for cat in cats.cat.categories:
            m = (codes == cat) & shown
            fig.add_trace(
                go.Scattergl(
                    x=xy[m, 0],
                    y=xy[m, 1],
                    mode="markers",
                    name=str(cat),
                    legendgroup=str(cat),
                    showlegend=i == 0,
                    marker={"size": 3, "color": cmap[cat], "opacity": 0.8},
                ),
                row=i // ncols + 1,
                col=i % ncols + 1,
            )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(
        height=330 * nrows + 40,
        title=title or None,
        legend={"itemsizing": "constant"},
        margin={"t": 50, "b": 10, "l": 10, "r": 10},
    )
    return fig


def metrics_chart(table: pd.DataFrame, *, metrics: Sequence[str] | None = None) -> go.Figure:
    """Grouped bars: one group per metric, one bar per method (rows of ``table``)."""
    cols = [
        c
        for c in (metrics or table.columns)
        if c in table and pd.api.types.is_numeric_dtype(table[c])
    ]
    fig = go.Figure()
    for i, (method, row) in enumerate(table[cols].iterrows()):
        fig.add_trace(
            go.Bar(
                x=cols,
                y=row.to_numpy(dtype=float),
                name=str(method),
                marker_color=_PALETTE[i % len(_PALETTE)],
            )
        )
    fig.update_layout(
        barmode="group",
        height=380,
        yaxis_title="score (higher is better)",
        margin={"t": 50, "b": 10, "l": 10, "r": 10},
        # above the plot: below it the legend covers long, slanted group names
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
    )
    return fig
