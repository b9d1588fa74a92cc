"""Input types: one dataset given as counts, CPM, log1p, counts in layers, ... through ``schelix run``.

Each form of the same data is written to a file and run with the defaults
(``quality.user_run``); the table shows what the run took the values to be, the cells it
kept, whether they are the counts run's cells, and the Overall of scHelix and Harmony.

Forms: ``counts`` (X = raw counts), ``cpm`` (X = counts per million), ``log1p``
(normalize_total + log1p, as scanpy leaves it), ``layers`` (counts in layers["counts"], X
scaled), ``raw`` (log-normalized values in .raw, X scaled), and two that cannot give the counts
back: ``corrected`` (every count times a random 0.6-1.0, like ambient-RNA correction) and
``log_rounded`` (log1p values rounded to 3 decimals, like a CSV export).

Usage (from the repository root)::

    python3 benchmarks/input_types.py --dataset pbmc_3chem --seeds 0 \\
        --out benchmarks/results/input_types.csv
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
from quality import DATA, DATASETS, baselines, kept_share, score_on, user_run, write

FORMS = ("counts", "cpm", "log1p", "layers", "raw", "corrected", "log_rounded")


def make(counts: ad.AnnData, form: str) -> ad.AnnData:
    """The same data in another form (see the module docstring)."""
    a = counts.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scanpy: scaling densifies
        if form == "cpm":
            sc.pp.normalize_total(a, target_sum=1e6)
        elif form in ("log1p", "log_rounded"):
            sc.pp.normalize_total(a, target_sum=1e4)
            sc.pp.log1p(a)
            if form == "log_rounded":
                a.X.data = np.round(a.X.data, 3)
                del a.uns["log1p"]
        elif form in ("layers", "raw"):
            a.layers["counts"] = a.X.copy()
            sc.pp.normalize_total(a, target_sum=1e4)
            sc.pp.log1p(a)
            if form == "raw":
                del a.layers["counts"]
                a.raw = a
            sc.pp.scale(a, max_value=10)
        elif form == "corrected":
            x = sp.csr_matrix(a.X, dtype=np.float32)
            x.data *= np.random.default_rng(0).uniform(0.6, 1.0, x.nnz).astype(np.float32)
            a.X = x
    return a


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="pbmc_3chem", choices=list(DATASETS))
    p.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="benchmarks/results/input_types.csv")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    batch_key, label_key = DATASETS[args.dataset]
    counts = ad.read_h5ad(DATA / f"{args.dataset}.h5ad")
    rows: list[dict] = []
    ref: dict[int, list[str]] = {}
    for form in args.forms:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(prefix="schelix_forms_") as tmp:
                path = Path(tmp) / f"{form}.h5ad"
                make(counts, form).write_h5ad(path)
                adata, secs = user_run(path, batch_key, label_key, seed, device=args.device)
            before, kept, share = kept_share(adata)
            info = adata.uns["schelix"]["input"]
            cells = list(adata.obs_names)
            ref.setdefault(seed, cells)
            same = cells == ref[seed]
            base = {"dataset": args.dataset, "form": form, "seed": seed, "cells_before": before,
                    "cells_kept": kept, "min_batch_kept": share, "kind": info["kind"],
                    "recovered": bool(info.get("recovered", False)),
                    "same_cells_as_counts": same,
                    "hvg_flavor": adata.uns["schelix"]["preprocess"]["hvg_flavor"]}  # fmt: skip
            keys = {"schelix": ("X_schelix", secs)}
            keys.update(baselines(adata, ["harmony"], batch_key, seed))
            for method, (key, s) in keys.items():
                res = score_on(adata, key, batch_key, label_key, seed)
                rows.append({**base, "method": method, **res, "seconds": s})
                print(f"{form:<12} seed {seed} {info['kind']:<15} kept {kept}/{before} "
                      f"same cells {same} {method:<8} Overall {res['Overall']:.3f}", flush=True)  # fmt: skip
    write(rows, args.out, ("dataset", "form", "method"))


if __name__ == "__main__":
    main()
