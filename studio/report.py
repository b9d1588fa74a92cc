"""A one-page report a biologist keeps: self-contained HTML (pictures inline, no scripts).

:func:`build` writes the data and QC summary, the anchor split with its top genes, the training
settings and loss curves, the stage UMAPs, the metrics beside the peers with a plain-language
:func:`verdict`, the package versions and :func:`command`, the ``schelix run`` line that repeats
the analysis from the command line.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import shlex
from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from schelix.config import SCHelixConfig

__all__ = ["TABLE_TITLES", "build", "command", "verdict"]

_BASELINE = "Unintegrated (PCA)"
#: Heading of each metrics table (:func:`studio.export.read_metrics`) in the report.
TABLE_TITLES = {
    "metrics": "Paper scores",
    "scib_metrics": "scib-metrics benchmark",
    "batch_mixing": "Batch mixing per cell type (scIB's 1 − |batch silhouette|; mean = ASW_batch)",
}
_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ddd;
padding:.25em .6em;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{
text-align:left}img{max-width:100%}.verdict{background:#eef6ee;border-left:4px solid #3a3;
padding:.6em 1em}code,pre{background:#f4f4f4;padding:.2em .4em;white-space:pre-wrap}
.muted{color:#666;font-size:.9em}"""


def _img(fig: Any, alt: str) -> str:
    """A plotly figure redrawn with matplotlib, inline as a PNG (the report needs no scripts)."""
    import matplotlib.pyplot as plt

    from studio.export import to_matplotlib

    mfig = to_matplotlib(fig)
    buf = io.BytesIO()
    mfig.savefig(buf, format="png", dpi=110)
    plt.close(mfig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame, *, digits: int = 3) -> str:
    return df.round(digits).to_html(border=0, escape=True, na_rep="–")


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def verdict(table: pd.DataFrame) -> list[str]:
    """Plain-language sentences on the metrics (rows = methods, scHelix among them).

    Batch mixing and cell-type structure are judged against the unintegrated baseline when it
    was scored (a change of 0.02 or more counts), else on the absolute score.
    """
    if "scHelix" not in table.index:
        return ["scHelix was not scored."]
    me = table.loc["scHelix"]
    base = table.loc[_BASELINE] if _BASELINE in table.index else None
    labelled = "BioMean" in table
    mix, bio, total = (
        ("ASW_batch", "BioMean", "Overall") if labelled else ("iLISI", "BioBatch", "LabelFree")
    )
    out = []
    if base is not None and np.isfinite(me[mix]) and np.isfinite(base[mix]):
        gain = me[mix] - base[mix]
        where = "within cell types" if labelled else "in the neighbourhoods of each cell"
        out.append(
            f"Batches mixed {where}: {mix} {me[mix]:.2f} vs {base[mix]:.2f} unintegrated."
            if gain >= 0.02
            else f"Batch mixing barely changed: {mix} {me[mix]:.2f} vs {base[mix]:.2f} "
            "unintegrated."
        )
    elif np.isfinite(me[mix]):
        out.append(f"Batch mixing {mix} = {me[mix]:.2f} (1 = perfectly mixed).")
    what = "Cell-type structure" if labelled else "Each batch's own cluster structure"
    if base is not None and np.isfinite(me[bio]) and np.isfinite(base[bio]):
        drop = base[bio] - me[bio]
        word = "kept" if drop < 0.02 else ("partly lost" if drop < 0.1 else "lost")
        out.append(f"{what} {word}: {bio} {me[bio]:.2f} vs {base[bio]:.2f} unintegrated.")
    elif np.isfinite(me[bio]):
        out.append(f"{what}: {bio} = {me[bio]:.2f} (higher is better).")
    if total in table and table[total].notna().any():
        best = table[total].idxmax()
        out.append(
            f"scHelix has the best {total} score of the {len(table)} methods ({me[total]:.2f})."
            if best == "scHelix"
            else f"{best} scores higher overall than scHelix ({table.loc[best, total]:.2f} vs "
            f"{me[total]:.2f})."
        )
    return out


def command(params: Mapping[str, Mapping[str, Any]], keys: Mapping[str, str]) -> str:
    """The ``schelix run`` line with the settings of this analysis (QC, split, training)."""
    data, qc, split, train = (dict(params.get(s, {})) for s in ("data", "qc", "anchors", "train"))
    args = ["schelix", "run", str(data.get("file") or "your_data.h5ad")]
    args += ["--batch-key", keys["batch_key"]]
    if keys.get("label_key"):
        args += ["--label-key", keys["label_key"]]
    args += ["-o", "integrated.h5ad", "--seed", str(int(train.get("seed", 0)))]
    if train.get("device", "auto") != "auto":
        args += ["--device", str(train["device"])]
    if "max_steps" in train:
        args += ["--steps", str(int(train["max_steps"]))]
    if qc.get("qc", "adaptive") != "adaptive":
        args += ["--qc", str(qc["qc"])]
    for name in ("min_genes", "max_mito_pct"):
        if qc.get(name) is not None:
            args += [f"--{name.replace('_', '-')}", f"{qc[name]:g}"]
    if qc.get("min_cells", 3) != 3:
        args += ["--min-cells", str(int(qc["min_cells"]))]
    if qc.get("n_top_genes", 2000) != 2000:
        args += ["--n-top-genes", str(int(qc["n_top_genes"]))]
    defaults = SCHelixConfig().to_dict()
    sets = {k: split[k] for k in ("tau_dom", "tau_str") if k in split}
    sets.update({k: v for k, v in train.items() if k in defaults and k != "max_steps"})
    for name, value in sets.items():
        if value != defaults.get(name):
            args += [
                "--set",
                f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}",
            ]
    return shlex.join(args)


def build(
    adata: ad.AnnData,
    *,
    name: str,
    keys: Mapping[str, str],
    params: Mapping[str, Mapping[str, Any]],
    figures: Mapping[str, Any],
    tables: Mapping[str, pd.DataFrame],
    versions: Mapping[str, str],
) -> str:
    """The report as one HTML page (every picture inline; opens without a network)."""
    from schelix import anchors
    from schelix.qc import summary_frame
    from studio import genes

    batch_key, label_key = keys["batch_key"], keys.get("label_key")
    pre = adata.uns.get("schelix", {}).get("preprocess", {})
    train = adata.uns.get("schelix", {}).get("train", {})
    parts = [
        f"<h1>scHelix integration report</h1><p class='muted'>{html.escape(name)} · "
        f"{dt.datetime.now():%Y-%m-%d %H:%M} · scHelix {html.escape(versions.get('schelix', ''))}"
        "</p>"
    ]
    parts.append("<h2>Verdict</h2>")
    if "metrics" in tables:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in verdict(tables["metrics"]))
        parts.append(f"<div class='verdict'><ul>{items}</ul></div>")
    else:
        parts.append(_p("No metrics were computed (run the Metrics step to score the result)."))
    parts.append("<h2>Data and quality control</h2>")
    parts.append(
        _p(
            f"{pre.get('cells_before', adata.n_obs):,} cells × {pre.get('genes_before', 0):,} "
            f"genes read; {adata.n_obs:,} cells and {adata.n_vars:,} genes kept. Batches: column "
            f"'{batch_key}' ({adata.obs[batch_key].nunique()}); cell types: "
            + (
                f"column '{label_key}' ({adata.obs[label_key].nunique()})."
                if label_key
                else "none."
            )
        )
    )
    counts = adata.obs[batch_key].astype(str).value_counts().rename("cells after QC")
    parts.append(_table(counts.to_frame()))
    if "qc" in pre:
        parts.append(_table(summary_frame(pre["qc"]), digits=1))
    parts.append("<h2>Anchor genes</h2>")
    table = genes.with_symbols(anchors.gene_table(adata), adata)
    split = dict(params.get("anchors", {}))
    if "stream" in table:
        n_a = int((table["stream"] == "anchor").sum())
        parts.append(
            _p(
                f"tau_dom = {split.get('tau_dom', 0):g}, tau_str = {split.get('tau_str', 0):g}: "
                f"{n_a} anchors (batch-stable, cell-type informative) and {len(table) - n_a} "
                "variants among the scored highly variable genes."
            )
        )
        show = "symbol" if "symbol" in table else "gene"
        top_a = table[table["stream"] == "anchor"].nlargest(15, "z_str")[show]
        top_v = table[table["stream"] == "variant"].nlargest(15, "z_dom")[show]
        parts.append(
            _p("Most structured anchors: " + ", ".join(map(str, top_a)))
            + _p("Most batch-sensitive variants: " + ", ".join(map(str, top_v)))
        )
    if "anchor_quadrant" in figures:
        parts.append(_img(figures["anchor_quadrant"], "anchor quadrant"))
    parts.append("<h2>Training</h2>")
    shown = {k: train.get(k) for k in ("max_steps", "warmup_steps", "batch_size", "latent_dim")}
    shown.update(
        seed=train.get("seed"), device=train.get("device"), steps_run=train.get("steps"),
        seconds=round(float(train.get("seconds", 0.0)), 1),
    )  # fmt: skip
    parts.append(_table(pd.Series(shown, name="value").astype(str).to_frame()))
    if "loss_curves" in figures:
        parts.append(_img(figures["loss_curves"], "loss curves"))
    parts.append("<h2>Stages: Align → Refine → Fuse</h2>")
    for key in ("stages_by_batch", "stages_by_cell_type"):
        if key in figures:
            parts.append(_p(f"UMAPs coloured by {key.split('_by_')[1].replace('_', ' ')}."))
            parts.append(_img(figures[key], key))
    parts.append("<h2>Metrics beside the peers</h2>")
    for tname, df in tables.items():
        parts.append(_p(TABLE_TITLES.get(tname, tname)))
        parts.append(_table(df.select_dtypes("number")))
        if f"{tname}_chart" in figures:
            parts.append(_img(figures[f"{tname}_chart"], f"{tname} chart"))
    if not tables:
        parts.append(_p("Not scored."))
    parts.append("<h2>Reproduce it</h2>")
    parts.append(f"<pre>{html.escape(command(params, keys))}</pre>")
    parts.append(
        _p(
            "The same data, QC, anchor thresholds, training settings and seed, from the command "
            "line (pip install the versions below). The integrated .h5ad keeps every setting in "
            "uns['schelix']."
        )
    )
    vers = pd.Series(dict(versions), name="version").to_frame()
    parts.append(_table(vers))
    body = "\n".join(parts)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>scHelix report · "
        f"{html.escape(name)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )
