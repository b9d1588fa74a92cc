"""Small data: each shared dataset subsampled (stratified by batch) to 300 and 1,000 cells.

For each dataset, size and seed, the subsample (drawn with that seed, every batch keeping
its share of cells) is written to a file and run through ``schelix run`` with the defaults
(``quality.user_run``); Harmony and unintegrated PCA are scored on the cells that run kept.

Usage (from the repository root)::

    python3 benchmarks/small_data.py --sizes 300 1000 --seeds 0 1 2 \\
        --out benchmarks/results/small_data.csv

``--floors 0 500 1000`` instead runs scHelix once per value of ``min_steps`` (``--set
min_steps=F``; 0 = the epoch rule alone), to choose the step floor (EXPERIMENTS.md).
``--set KEY=VALUE`` (repeatable) passes a setting to every scHelix run, to screen a candidate
default against the default's rows of an earlier run.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from quality import DATA, DATASETS, baselines, kept_share, score_on, user_run, write


def subsample(adata: ad.AnnData, n: int, batch_key: str, seed: int) -> ad.AnnData:
    """``n`` cells, each batch keeping its share (largest remainders), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    batch = adata.obs[batch_key].astype(str).to_numpy()
    names, sizes = np.unique(batch, return_counts=True)
    exact = n * sizes / sizes.sum()
    take = np.floor(exact).astype(int)
    take[np.argsort(exact - take)[::-1][: n - take.sum()]] += 1
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(batch == b), k, replace=False) for b, k in zip(names, take)]
    )
    return adata[np.sort(idx)].copy()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--sizes", nargs="+", type=int, default=[300, 1000])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--floors", nargs="+", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting passed to every scHelix run (schelix run --set)")  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="benchmarks/results/small_data.csv")
    p.add_argument("--combine", nargs="+", default=None, metavar="CSV",
                   help="merge the per-seed CSVs of earlier runs into --out")  # fmt: skip
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    by = ("dataset", "n_cells", "method")
    if args.combine:
        write(pd.concat(map(pd.read_csv, args.combine)).to_dict("records"), args.out, by)
        return
    rows: list[dict] = []
    for name in args.datasets:
        batch_key, label_key = DATASETS[name]
        full = ad.read_h5ad(DATA / f"{name}.h5ad")
        for n in args.sizes:
            for seed in args.seeds:
                with tempfile.TemporaryDirectory(prefix="schelix_small_") as tmp:
                    path = Path(tmp) / f"{name}_{n}_{seed}.h5ad"
                    subsample(full, n, batch_key, seed).write_h5ad(path)
                    common = [a for kv in args.set for a in ("--set", kv)]
                    runs = (
                        {"schelix": common}
                        if args.floors is None
                        else {
                            f"floor {f}": [*common, "--set", f"min_steps={f}"] for f in args.floors
                        }
                    )
                    for i, (method, extra) in enumerate(runs.items()):
                        adata, secs = user_run(path, batch_key, label_key, seed, extra=extra,
                                               device=args.device)  # fmt: skip
                        before, kept, share = kept_share(adata)
                        base = {"dataset": name, "n_cells": n, "seed": seed,
                                "cells_before": before, "cells_kept": kept,
                                "min_batch_kept": share}  # fmt: skip
                        keys = {method: ("X_schelix", secs)}
                        if i == 0:
                            keys.update(baselines(adata, ["pca", "harmony"], batch_key, seed))
                        steps = int(adata.uns["schelix"]["train"]["steps"])
                        for m, (key, s) in keys.items():
                            res = score_on(adata, key, batch_key, label_key, seed)
                            rows.append({**base, "method": m, "steps": steps, **res, "seconds": s})
                            print(f"{name} n={n} seed={seed} {m:<12} kept {kept}/{before} "
                                  f"steps {steps} Overall {res['Overall']:.3f}", flush=True)  # fmt: skip
    write(rows, args.out, by)


if __name__ == "__main__":
    main()
