"""Every registered integration method side by side on the real datasets (paper Table 1 layout).

Each dataset is preprocessed once with ``schelix.pp.preprocess`` (same defaults everywhere),
then :func:`schelix.compare.compare` runs every method for every seed on it and scores the
embeddings with the paper protocol (SPEC §5). The output is mean ± std over seeds per method:
ASW_ct, GC, ARI, NMI, BioMean, ASW_batch, Overall, plus runtime and peak memory.

Usage (from the repository root)::

    python3 benchmarks/compare.py --datasets pbmc_3chem --methods pca harmony scvi --seeds 0 \\
        --out benchmarks/results/compare.csv
    python3 benchmarks/compare.py                       # everything: 4 tasks, all methods, 3 seeds
    python3 benchmarks/compare.py --param scvi.max_epochs=100 --param sysvi.max_epochs=100
    python3 benchmarks/compare.py --combine a.csv b.csv --out all.csv   # merge earlier runs' rows

Writes every per-seed row to ``--out``, the aggregated table to ``*_summary.csv`` and the
markdown tables to ``*.md``; prints the markdown.
"""

from __future__ import annotations

import argparse
import ast
import time
import warnings
from pathlib import Path

import anndata as ad
import pandas as pd

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {  # task: (file stem, batch key, label key)
    "kang_ifnb_pbmc": ("kang_ifnb_pbmc", "condition", "cell_type"),
    "pbmc_3chem": ("pbmc_3chem", "tech", "cell_type"),
    "cellbench_lung_lines": ("cellbench_lung_lines", "batch", "cell_line"),
    # Issue 17's fourth task: the same Kang cells with the donor as the batch. The donors are
    # confounded with the stimulation (four are ctrl-only, "unknown" is 97 % stim).
    "kang_donor": ("kang_ifnb_pbmc", "donor", "cell_type"),
}
METRICS = ("ASW_ct", "GC", "ARI", "NMI", "BioMean", "ASW_batch", "Overall")
COLUMNS = {**{m: m for m in METRICS}, "seconds": "Runtime (s)", "peak_memory_mb": "Peak mem (MB)"}


def load(name: str, *, max_mito_pct: float | None) -> tuple[ad.AnnData, str, str]:
    """Read one dataset and preprocess it with the package defaults (adaptive QC)."""
    import schelix

    stem, batch_key, label_key = DATASETS[name]
    path = DATA / f"{stem}.h5ad"
    if not path.exists():
        raise SystemExit(f"{path} not found: the benchmark needs ../shared/data next to the repo")
    raw = ad.read_h5ad(path)
    return (
        schelix.pp.preprocess(raw, batch_key=batch_key, max_mito_pct=max_mito_pct),
        batch_key,
        label_key,
    )


def parse_params(items: list[str]) -> dict[str, dict]:
    """``["scvi.max_epochs=50", "sysvi.z_distance_cycle_weight=2"]`` -> nested dict."""
    params: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--param {item!r}: expected METHOD.NAME=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        params.setdefault(method, {})[name] = value
    return params


def _printer(dataset: str):
    def progress(fraction: float, message: str) -> None:
        if message.endswith(": starting") or ": finished in" in message or ": failed:" in message:
            print(
                f"  {time.strftime('%H:%M:%S')} {dataset} {100 * fraction:5.1f}% {message}",
                flush=True,
            )

    return progress


def run(
    datasets: list[str],
    methods: list[str],
    seeds: list[int],
    *,
    device: str,
    params: dict[str, dict],
    max_mito_pct: float | None,
) -> pd.DataFrame:
    """The tidy table (one row per dataset x method x seed) for all ``datasets``."""
    from schelix.compare import compare

    tables = []
    for name in datasets:
        t0 = time.perf_counter()
        adata, batch_key, label_key = load(name, max_mito_pct=max_mito_pct)
        print(
            f"{name}: {adata.n_obs} cells x {int(adata.var['highly_variable'].sum())} HVGs "
            f"(preprocessed in {time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        used = {m: p for m, p in params.items() if m in methods}
        df = compare(
            adata,
            batch_key=batch_key,
            label_key=label_key,
            methods=methods,
            seeds=seeds,
            device=device,
            progress=_printer(name),
            params=used,
        )
        tables.append(df.assign(dataset=name))
    df = pd.concat(tables, ignore_index=True)
    return df[["dataset", *[c for c in df.columns if c != "dataset"]]]


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std per dataset and method (formatted strings), in the paper's column order."""
    from schelix.compare import summarize

    parts = []
    for name, group in df.groupby("dataset", sort=False):
        text = summarize(group.drop(columns="dataset"), formatted=True)
        cols = ["label", "n_seeds", *[c for c in COLUMNS if c in text.columns], "error"]
        parts.append(text[cols].reset_index().assign(dataset=name))
    out = pd.concat(parts, ignore_index=True)
    return out[["dataset", *[c for c in out.columns if c != "dataset"]]]


def markdown(summary: pd.DataFrame) -> str:
    """One markdown table per dataset: method rows, Table 1 columns, runtime and memory."""
    lines = []
    for name, group in summary.groupby("dataset", sort=False):
        cols = [c for c in COLUMNS if c in group.columns]
        lines += [
            f"### {name} (mean ± std over {group['n_seeds'].max()} seed(s))",
            "",
            "| Method | " + " | ".join(COLUMNS[c] for c in cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for _, row in group.iterrows():
            cells = [str(row[c]) for c in cols]
            if row["n_seeds"] == 0:  # every seed failed: say why
                cells = [f"failed: {row['error'][:100]}"] + ["-"] * (len(cols) - 1)
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Peak mem: peak resident-set growth of the benchmark process during each run. "
        "Memory an earlier method freed is reused without growth, so methods run later in "
        "the same process (sysVI right after scVI, for instance) are understated; compare "
        "footprints with one method per process (`--methods NAME`).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    from schelix.methods import available_methods

    registered = available_methods()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument(
        "--methods",
        nargs="+",
        default=registered,
        choices=registered,
        help="registered methods (default: all)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="extra method parameter, e.g. scvi.max_epochs=100 (repeatable)",
    )
    p.add_argument(
        "--max-mito-pct",
        type=float,
        default=None,
        help="an extra mitochondrial cap on top of the package's adaptive QC "
        "(default: none, i.e. the package defaults as a user gets them)",
    )
    p.add_argument("--out", default="benchmarks/results/compare.csv")
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="CSV",
        help="run nothing: merge the per-seed CSVs of earlier runs (e.g. one per "
        "dataset, run in parallel) into one table",
    )
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)

    if args.combine:
        # per-seed tables only: a glob may also catch *_summary.csv files and --out itself
        tables = [
            pd.read_csv(f) for f in args.combine if Path(f).resolve() != Path(args.out).resolve()
        ]
        df = pd.concat(
            [t for t in tables if {"dataset", "method", "seed"} <= set(t.columns)],
            ignore_index=True,
        )
        rank = {name: i for i, name in enumerate([*DATASETS, *registered])}
        df = df.sort_values(["dataset", "method"], key=lambda c: c.map(rank), kind="stable")
    else:
        df = run(
            args.datasets,
            args.methods,
            args.seeds,
            device=args.device,
            params=parse_params(args.param),
            max_mito_pct=args.max_mito_pct,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    summary = summary_table(df)
    summary.to_csv(out.with_name(out.stem + "_summary.csv"), index=False)
    text = markdown(summary)
    out.with_suffix(".md").write_text(text)
    print()
    print(text)
    return df


if __name__ == "__main__":
    main()
