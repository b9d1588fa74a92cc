"""The app's export: the integrated ``.h5ad`` (opens in cellxgene), gene lists, metrics and figures.

Figures are written as interactive HTML (plotly's ``to_html``) and as PNG/SVG redrawn with
matplotlib from the same figure data (:func:`to_matplotlib`), so export needs no browser.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from schelix import anchors, layouts

__all__ = [
    "export",
    "method_label",
    "size_text",
    "read_metrics",
    "to_matplotlib",
    "versions",
    "write_figure",
]

_PACKAGES = (
    "schelix",
    "anndata",
    "scanpy",
    "numpy",
    "scipy",
    "pandas",
    "torch",
    "scikit-learn",
    "umap-learn",
    "scib-metrics",
    "scvi-tools",
    "harmonypy",
    "pot",
    "plotly",
    "streamlit",
)


def method_label(key: str) -> str:
    """Display name of an embedding key: ``X_schelix`` -> scHelix, ``X_harmony`` -> Harmony."""
    if key == "X_schelix":
        return "scHelix"
    name = key[2:] if key.startswith("X_") else key
    try:
        from schelix.methods import get_method

        return get_method(name).label
    except Exception:
        return name


def size_text(n_bytes: int) -> str:
    """``"812 KB"``, ``"4.2 MB"``: never "0.0 MB" for a small file."""
    if n_bytes < 1e6:
        return f"{max(1, round(n_bytes / 1e3))} KB"
    return f"{n_bytes / 1e6:.1f} MB"


def read_metrics(folder: str | Path) -> dict[str, pd.DataFrame]:
    """The metrics job's tables, one row per method (index = display name).

    ``"metrics"``: the paper's scores (or the label-free score) from ``scores.csv``;
    ``"scib_metrics"``: the scib-metrics table from ``scib.csv`` (wide), when present;
    ``"batch_mixing"``: scIB's batch silhouette per cell type (columns; ``mean`` = ASW_batch)
    from ``mixing.csv`` (:func:`schelix.batch_mixing.batch_mixing_by_label`), when present.
    """
    folder = Path(folder)
    out: dict[str, pd.DataFrame] = {}
    if (folder / "scores.csv").is_file():
        df = pd.read_csv(folder / "scores.csv")
        df.index = [method_label(k) for k in df.pop("embedding")]
        out["metrics"] = df.drop(columns=["seconds"], errors="ignore")
    if (folder / "scib.csv").is_file():
        tidy = pd.read_csv(folder / "scib.csv")
        wide = tidy.pivot_table(index="embedding", columns="metric", values="value", sort=False)
        wide.index = [method_label(k) for k in wide.index]
        out["scib_metrics"] = wide
    if (folder / "mixing.csv").is_file():
        mixing = pd.read_csv(folder / "mixing.csv", index_col=0)
        mixing.index = [method_label(k) for k in mixing.index]
        out["batch_mixing"] = mixing
    return out


def versions() -> dict[str, str]:
    """Installed versions of the packages an analysis depends on (plus Python)."""
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            if pkg == "schelix":
                import schelix

                out[pkg] = schelix.__version__
    return out


def _axis_pairs(fig: Any) -> list[tuple[str, str]]:
    pairs = []
    for tr in fig.data:
        pair = (getattr(tr, "xaxis", None) or "x", getattr(tr, "yaxis", None) or "y")
        if pair not in pairs:
            pairs.append(pair)
    return pairs or [("x", "y")]


def to_matplotlib(fig: Any) -> Any:
    """Redraw a plotly figure (scatter, bar, violin traces; subplots; h/v lines) with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.text

    pairs = _axis_pairs(fig)
    ncols = min(3, len(pairs))
    nrows = int(np.ceil(len(pairs) / ncols))
    n_bars = sum(len(tr.x) for tr in fig.data if tr.type == "bar")
    width = max(4.5 * ncols, 3.0 + 0.22 * n_bars if len(pairs) == 1 else 0.0)
    mfig, axes = plt.subplots(nrows, ncols, figsize=(width, 3.6 * nrows), squeeze=False)
    ax_of = {p: axes.flat[i] for i, p in enumerate(pairs)}
    titles = [a.text for a in (fig.layout.annotations or ())]
    for i, (ax, title) in enumerate(zip(axes.flat, titles)):
        if i < len(pairs):
            ax.set_title(title, fontsize=9)
    bars: dict[Any, list[Any]] = {ax: [] for ax in ax_of.values()}
    for tr in fig.data:  # bar traces sharing a panel are drawn side by side (barmode="group")
        if tr.type == "bar":
            bars[ax_of[(tr.xaxis or "x", tr.yaxis or "y")]].append(tr)
    for tr in fig.data:
        ax = ax_of[(tr.xaxis or "x", tr.yaxis or "y")]
        label = tr.name if tr.showlegend is not False else None
        color = getattr(getattr(tr, "marker", None), "color", None)
        color = color if isinstance(color, str) and not color.startswith("rgba(0,0,0,0") else None
        if tr.type in ("scatter", "scattergl"):
            x, y = np.asarray(tr.x, dtype=float), np.asarray(tr.y, dtype=float)
            if "lines" in (tr.mode or ""):
                ax.plot(x, y, lw=1, label=label, color=getattr(tr.line, "color", None))
            else:
                ax.scatter(
                    x,
                    y,
                    s=3,
                    label=label,
                    color=color,
                    alpha=0.8,
                    linewidths=0,
                    facecolors="none" if color is None else None,
                    edgecolors="red" if color is None else None,
                )
                for xi, yi, t in zip(x, y, tr.text or ()) if "text" in (tr.mode or "") else ():
                    ax.annotate(str(t), (xi, yi), fontsize=7)
        elif tr.type == "bar":
            _bars(ax, tr, bars[ax_of[(tr.xaxis or "x", tr.yaxis or "y")]], label, color, fig)
        elif tr.type == "violin":
            pos = len(ax.collections)
            ax.violinplot([np.asarray(tr.y, dtype=float)], positions=[pos], showmedians=True)
            ax.set_xticks(
                [*ax.get_xticks()[:pos], pos],
                [*[t.get_text() for t in ax.get_xticklabels()][:pos], tr.name],
            )
    for shape in fig.layout.shapes or ():
        ax = ax_of.get((_axis_ref(shape.xref, "x"), _axis_ref(shape.yref, "y")))
        if ax is None:
            continue
        if shape.x0 == shape.x1 and str(shape.yref).endswith("domain"):
            ax.axvline(shape.x0, ls="--", color="#555", lw=1)
        elif shape.y0 == shape.y1:
            ax.axhline(shape.y0, ls="--", color="#555", lw=1)
        elif shape.type == "rect":  # a shaded region (the quadrant's anchor corner)
            ax.axvspan(shape.x0, shape.x1, *_span(ax, shape.y0, shape.y1), lw=0, zorder=0,
                       color=shape.fillcolor, alpha=shape.opacity or 0.1)  # fmt: skip
    for i, ax in enumerate(axes.flat):
        if i >= len(pairs):
            ax.axis("off")
    first = axes.flat[0]
    first.set_xlabel(fig.layout.xaxis.title.text or "")
    first.set_ylabel(fig.layout.yaxis.title.text or "")
    if any(tr.showlegend is not False and tr.name for tr in fig.data) and len(fig.data) <= 30:
        first.legend(fontsize=7, markerscale=3, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for text in mfig.findobj(matplotlib.text.Text):  # names from the data are plain text: a
        text.set_parse_math(False)  # cell type "a$^{$b" is not TeX (and would not parse)
    mfig.tight_layout()
    return mfig


def _bars(ax: Any, tr: Any, group: list[Any], label: str | None, color: Any, fig: Any) -> None:
    """One bar per category of ``tr``; traces in ``group`` side by side, as plotly groups them."""
    cats = list(dict.fromkeys(str(v) for t in group for v in t.x))
    grouped = fig.layout.barmode in (None, "group") and len(group) > 1
    n, j = (len(group), group.index(tr)) if grouped else (1, 0)
    width = 0.8 / n
    pos = np.array([cats.index(str(v)) for v in tr.x]) + (j - (n - 1) / 2) * width
    ax.bar(pos, np.asarray(tr.y, dtype=float), width=width, label=label, color=color)
    ax.set_xticks(range(len(cats)), cats, rotation=35, ha="right", fontsize=7)


def _span(ax: Any, y0: float, y1: float) -> tuple[float, float]:
    """``y0 .. y1`` in data units as the axes fractions ``axvspan`` takes (the plotly range)."""
    lo, hi = ax.get_ylim()
    return max(0.0, (y0 - lo) / (hi - lo)), min(1.0, (y1 - lo) / (hi - lo))


def _axis_ref(ref: str | None, axis: str) -> str:
    ref = (ref or axis).replace(" domain", "")
    return axis if ref == "paper" else ref


def write_figure(fig: Any, out_dir: str | Path, name: str) -> list[Path]:
    """``<name>.html`` (plotly) and ``<name>.png`` / ``.svg`` (matplotlib redraw) in ``out_dir``.

    The HTML loads ``plotly.min.js`` from its own folder (written once, beside the figures).
    """
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = out / f"{name}.html"
    if not (out / "plotly.min.js").is_file():  # one copy for every figure, not 4.8 MB in each
        from plotly.offline import get_plotlyjs

        (out / "plotly.min.js").write_text(get_plotlyjs())
    html.write_text(fig.to_html(include_plotlyjs="directory", full_html=True))
    mfig = to_matplotlib(fig)
    paths = [html]
    for ext in ("png", "svg"):
        mfig.savefig(out / f"{name}.{ext}", dpi=150)
        paths.append(out / f"{name}.{ext}")
    plt.close(mfig)
    return paths


def _clean(obj: Any) -> Any:
    """Make a value h5ad-serialisable: drop None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj if v is not None]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _table_to_uns(df: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {"index": np.asarray(df.index.astype(str))}
    for c in df.columns:
        col = df[c]
        out[str(c)] = (
            col.to_numpy(float)
            if pd.api.types.is_numeric_dtype(col)
            else col.astype(str).to_numpy()
        )
    return out


def export(
    adata: ad.AnnData,
    out_dir: str | Path,
    *,
    figures: Mapping[str, Any] = {},
    tables: Mapping[str, pd.DataFrame] = {},
    params: Mapping[str, Any] = {},
    seed: int = 0,
    model_dir: str | Path | None = None,
    report: str | None = None,
) -> dict[str, Path]:
    """Write everything a user takes home into ``out_dir``; returns ``{name: path}``.

    - ``schelix_integrated.h5ad``: every embedding in ``obsm``, named by
      :func:`schelix.layouts.for_viewers` (``X_umap`` = fused UMAP, ``X_umap_<stage>``;
      the latents without ``X_``: ``schelix``, ``harmony`` ...),
      ``var["schelix_stream"]``, and in ``uns["schelix"]["export"]`` the metrics ``tables``,
      the app's ``params`` per step, package versions and the seed;
    - ``anchor_genes.csv``, ``variant_genes.csv``, ``gene_scores.csv``, ``<table>.csv``;
    - ``figures/<name>.html|png|svg`` for each figure; ``model.zip`` (the saved model);
    - ``report.html`` (``report``: :func:`studio.report.build`'s page) and
      ``schelix_results.zip``: everything above in one file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    genes = anchors.gene_table(adata) if "schelix_z_dom" in adata.var else pd.DataFrame()
    if "stream" in genes:
        for stream in ("anchor", "variant"):
            files[f"{stream}_genes"] = out / f"{stream}_genes.csv"
            genes[genes["stream"] == stream].to_csv(files[f"{stream}_genes"], index=False)
        files["gene_scores"] = out / "gene_scores.csv"
        genes.to_csv(files["gene_scores"], index=False)
    for name, df in tables.items():
        files[name] = out / f"{name}.csv"
        df.rename_axis(df.index.name or "method").to_csv(files[name])  # no blank header
    result = layouts.for_viewers(adata)  # only 2-d layouts start with X_ (cellxgene)
    result.uns.setdefault("schelix", {})["export"] = _clean(
        {
            "versions": versions(),
            "seed": int(seed),
            "params": dict(params),
            "metrics": {name: _table_to_uns(df) for name, df in tables.items()},
        }
    )
    files["h5ad"] = out / "schelix_integrated.h5ad"
    result.write_h5ad(files["h5ad"], compression="gzip")
    for name, fig in figures.items():
        for path in write_figure(fig, out / "figures", name):
            files[f"figure_{name}_{path.suffix[1:]}"] = path
    if model_dir is not None and Path(model_dir).is_dir():
        files["model"] = Path(shutil.make_archive(str(out / "model"), "zip", model_dir))
    if report is not None:
        files["report"] = out / "report.html"
        files["report"].write_text(report, encoding="utf-8")
    bundle = out / "schelix_results.zip"
    bundle.unlink(missing_ok=True)
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(set(files.values()) | set((out / "figures").glob("plotly.min.js"))):
            zf.write(path, path.relative_to(out).as_posix())
    files["zip"] = bundle
    return files
