"""Integration quality on the three real datasets, run as a user runs it; mean ± std over seeds.

For each dataset and seed this runs exactly what a user types, with no other flag::

    schelix run FILE --batch-key K --label-key L -o out.h5ad --seed S

(in-process through ``schelix.cli.main``, plus ``--quiet --no-evaluate``), then scores on the
cells and HVGs that run kept (paper protocol, SPEC §5):

- ``schelix``    the fused scHelix embedding of that run (labels never train it);
- ``pca``        unintegrated PCA of the scaled HVGs;
- ``harmony``    Harmony on that PCA;
- ``random``     ablation S1: the same command with ``--set random_anchors=true``;
- ``diagnostic`` paper Diagnostic I: PCA-64 of the run's anchor genes, all HVGs, random sets.

Usage (from the repository root)::

    python3 benchmarks/quality.py --seeds 0 1 2 --out benchmarks/results/quality.csv

Prints the per-batch QC summary of each run (on stderr, as the CLI does), one markdown table
(Overall as mean ± std, the other metrics as means, the smallest share of a batch kept) and
writes every per-seed row to ``--out`` (plus ``*_summary.csv``). ``user_run`` and ``score_on``
are shared with ``small_data.py`` and ``input_types.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {  # file stem: (batch key, label key)
    "kang_ifnb_pbmc": ("condition", "cell_type"),
    "pbmc_3chem": ("tech", "cell_type"),
    "cellbench_lung_lines": ("batch", "cell_line"),
}
METHODS = ("pca", "harmony", "schelix", "random", "diagnostic")
LABELS = {
    "pca": "Unintegrated PCA",
    "harmony": "Harmony",
    "schelix": "scHelix",
    "random": "scHelix, random anchors (S1)",
    "Anchors": "Diag. I: anchor PCA",
    "All HVGs": "Diag. I: all-HVG PCA",
    "Random (same size)": "Diag. I: random-set PCA",
}
METRICS = ("ASW_ct", "GC", "ARI", "NMI", "BioMean", "ASW_batch", "Overall")


def user_run(
    path: str | Path,
    batch_key: str,
    label_key: str,
    seed: int,
    *,
    extra: list[str] | tuple[str, ...] = (),
    device: str = "auto",
) -> tuple[ad.AnnData, float]:
    """``schelix run PATH --batch-key K --label-key L -o OUT --seed S [extra]``; the output, seconds."""
    from schelix import layouts
    from schelix.cli import main

    with tempfile.TemporaryDirectory(prefix="schelix_bench_") as tmp:
        out = Path(tmp) / "out.h5ad"
        argv = ["run", str(path), "--batch-key", batch_key, "--label-key", label_key,
                "-o", str(out), "--seed", str(seed), "--quiet", "--no-evaluate", *extra]  # fmt: skip
        if device != "auto":
            argv += ["--device", device]
        t0 = time.perf_counter()
        code = main(argv)
        secs = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"schelix run exited with {code}: {' '.join(argv)}")
        back = ad.read_h5ad(out)
        for old, new in layouts.original_names(back).items():  # the file's viewer names
            back.obsm[old] = back.obsm[new]
        return back, secs


def kept_share(adata: ad.AnnData) -> tuple[int, int, float]:
    """Cells before QC, cells kept, and the smallest share of a batch kept (from the QC record)."""
    rec = adata.uns["schelix"]["preprocess"]
    per = rec["qc"]["per_batch"]
    share = min(k / c for k, c in zip(per["kept"], per["cells"]))
    return int(rec["cells_before"]), int(adata.n_obs), float(share)


def score_on(
    adata: ad.AnnData, key: str, batch_key: str, label_key: str, seed: int
) -> dict[str, float]:
    from schelix.evaluate import score

    return score(adata, key, batch_key=batch_key, label_key=label_key, seed=seed)


def baselines(
    adata: ad.AnnData, methods: list[str], batch_key: str, seed: int
) -> dict[str, tuple[str, float]]:
    """Run ``pca``/``harmony`` (those in ``methods``) on the kept cells: ``{method: (key, s)}``."""
    from schelix.methods import run_method

    out = {}
    for method in ("pca", "harmony"):
        if method in methods:
            res = run_method(adata, method, batch_key=batch_key, seed=seed)
            out[method] = (res.obsm_key, res.seconds)
    return out


def run_dataset(
    name: str,
    seeds: list[int],
    methods: list[str],
    device: str,
    path: Path | None = None,
    extra: list[str] | tuple[str, ...] = (),
) -> list[dict]:
    from schelix.evaluate import anchor_diagnostic

    batch_key, label_key = DATASETS[name]
    path = path or DATA / f"{name}.h5ad"
    rows: list[dict] = []
    for seed in seeds:
        adata, secs = user_run(path, batch_key, label_key, seed, device=device, extra=extra)
        before, kept, share = kept_share(adata)
        steps = int(adata.uns["schelix"]["train"]["steps"])
        print(f"# {name} seed {seed}: kept {kept} of {before} cells (every batch >= "
              f"{100 * share:.1f} %), {steps} steps", flush=True)  # fmt: skip
        base = {"dataset": name, "seed": seed, "cells_before": before, "cells_kept": kept,
                "min_batch_kept": share}  # fmt: skip
        keys = {"schelix": ("X_schelix", secs)} if "schelix" in methods else {}
        keys.update(baselines(adata, methods, batch_key, seed))
        if "random" in methods:
            rnd, rsecs = user_run(path, batch_key, label_key, seed, device=device,
                                  extra=["--set", "random_anchors=true"])  # fmt: skip
            adata.obsm["X_random"] = rnd.obsm["X_schelix"]
            keys["random"] = ("X_random", rsecs)
        for method, (key, s) in keys.items():
            res = score_on(adata, key, batch_key, label_key, seed)
            rows.append({**base, "method": method, **res, "seconds": s})
            print(f"  seed {seed} {method:<28} " + " ".join(f"{m} {res[m]:.3f}" for m in METRICS),
                  flush=True)  # fmt: skip
        if "diagnostic" in methods:
            diag = anchor_diagnostic(adata, batch_key=batch_key, label_key=label_key, seed=seed,
                                     n_random=3)  # fmt: skip
            for rec in diag.to_dict("records"):
                rows.append({**base, "method": rec["gene_set"], **{m: rec[m] for m in METRICS},
                             "seconds": float("nan")})  # fmt: skip
                print(
                    f"  seed {seed} {rec['gene_set']:<28} Overall {rec['Overall']:.3f}", flush=True
                )
    return rows


def summarize(df: pd.DataFrame, by: tuple[str, ...] = ("dataset", "method")) -> pd.DataFrame:
    """Mean and std over seeds per group (groups in order of appearance)."""
    cols = [*METRICS, "seconds", "min_batch_kept", "cells_kept"]
    agg = df.groupby(list(by), sort=False)[cols].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    agg = agg.reset_index()
    agg["n_seeds"] = df.groupby(list(by), sort=False)["seed"].nunique().to_numpy()
    return agg


def markdown(summary: pd.DataFrame, by: tuple[str, ...] = ("dataset", "method")) -> str:
    """One markdown table: Overall mean ± std, other metrics as means."""
    head = [*by, "Overall", *[m for m in METRICS if m != "Overall"], "cells kept",
            "min batch kept", "seconds"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary.to_dict("records"):
        std = 0.0 if np.isnan(r["Overall_std"]) else r["Overall_std"]
        cells = [
            *[str(LABELS.get(r[b], r[b])) for b in by],
            f"{r['Overall_mean']:.3f} ± {std:.3f}",
            *[f"{r[f'{m}_mean']:.3f}" for m in METRICS if m != "Overall"],
            f"{r['cells_kept_mean']:.0f}",
            f"{100 * r['min_batch_kept_mean']:.1f} %",
            f"{r['seconds_mean']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(rows: list[dict], out: str, by: tuple[str, ...] = ("dataset", "method")) -> pd.DataFrame:
    """Write per-seed rows and the summary; print the markdown table."""
    df = pd.DataFrame(rows)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    summary = summarize(df, by)
    summary.to_csv(path.with_name(path.stem + "_summary.csv"), index=False)
    print()
    print(markdown(summary, by))
    print(f"\nper-seed rows: {path}; summary: {path.with_name(path.stem + '_summary.csv')}")
    return df


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["pca", "harmony", "schelix"], choices=METHODS)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="benchmarks/results/quality.csv")
    p.add_argument("--run-arg", action="append", default=[], metavar="ARG",
                   help="extra `schelix run` argument, for diagnostics only (repeat: "
                   "--run-arg=--qc --run-arg=fixed); the benchmark itself passes none")  # fmt: skip
    p.add_argument("--combine", nargs="+", default=None, metavar="CSV",
                   help="merge the per-seed CSVs of earlier runs (e.g. one per seed) into --out")  # fmt: skip
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.combine:
        return write(pd.concat(map(pd.read_csv, args.combine)).to_dict("records"), args.out)
    rows = []
    for name in args.datasets:
        rows += run_dataset(name, args.seeds, args.methods, args.device, extra=args.run_arg)
    return write(rows, args.out)


if __name__ == "__main__":
    main()
