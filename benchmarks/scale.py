"""Atlas scale: wall time and peak memory of every stage, 100k to 1M cells, read from disk.

    python benchmarks/scale.py --n-cells 100000                 # CPU
    python benchmarks/scale.py --n-cells 1000000 --device cuda  # on a GPU
    python benchmarks/scale.py --n-cells 100000 --json out.json

Synthetic counts from the package's generator (:func:`schelix.datasets.synthetic`, 2,000
genes, 3 batches, 5 cell types, about 90 % zeros) are written once as a sparse h5ad (in a
separate process, so that writing costs the measured process nothing) and read back. Then the
stages of ``schelix run FILE --batch-key batch`` run one by one, each timed with its peak
resident memory (sampled every 50 ms): read, preprocess, score (gene scores, sketch, kNN,
Leiden, anchor split), gate, neighbours (MixUp and MNN), train, embed (every stage embedding
of every cell), UMAP, evaluate. Harmony (harmonypy, its defaults as in
:mod:`schelix.methods.harmony`) corrects the same PCA (``X_schelix_pca``) in the same run, as
the reference; both embeddings are scored the same way (on the display sample above 20k).
One-time numba/JIT compilation is paid by a small warm-up before any timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

OUT = Path(os.environ.get("SCHELIX_SCALE_DIR", "/tmp/schelix_scale"))


def write(path: Path, n_cells: int, seed: int) -> None:
    """The synthetic counts as a sparse h5ad (X only, counts; about 90 % zeros)."""
    from schelix.datasets import synthetic

    adata = synthetic(n_cells, 2000, library_size=400.0, seed=seed)
    del adata.layers["counts"]
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)


class Stages:
    """Wall time and peak RSS of each ``with stages("name"):`` block."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def __call__(self, name: str):
        from schelix.methods.base import _PeakRSS

        outer = self

        class _Stage:
            def __enter__(self):
                self.mem = _PeakRSS(interval=0.05).__enter__()
                self.t0 = time.perf_counter()
                return self

            def __exit__(self, *exc):
                secs = time.perf_counter() - self.t0
                self.mem.__exit__(*exc)
                outer.rows.append({"stage": name, "seconds": secs, "peak_gb": self.mem.peak / 1e9})
                print(f"{name:>12}: {secs:8.1f} s  peak RSS {self.mem.peak / 1e9:5.2f} GB",
                      flush=True)  # fmt: skip

        return _Stage()


def _warm_up() -> None:
    import schelix
    from schelix import stages
    from schelix.pipeline import integrate

    small = schelix.datasets.synthetic(400, 300, seed=1)
    small = schelix.pp.preprocess(small, batch_key="batch", min_genes=50)
    integrate(small, batch_key="batch", max_steps=2, batch_size=32, n_prototypes=4, mixup_k=10)
    stages.add_umaps(small, ["X_schelix"])
    # the sketched path (its approximate kNN graph and the vote's index) compiles pynndescent
    schelix.anchors.score_genes(small.copy(), batch_key="batch", sketch_cells=200)


def run(path: Path, *, device: str, seed: int, max_steps: int | None) -> dict:
    import torch

    import schelix
    from schelix import data as data_step
    from schelix import evaluate, stages
    from schelix.config import SCHelixConfig
    from schelix.methods import run_method
    from schelix.model import SCHelix
    from schelix.pipeline import split_genes, write_results

    st = Stages()
    cfg = SCHelixConfig()
    with st("read"):
        adata = schelix.io.read(path, batch_key="batch", label_key="cell_type")
    with st("preprocess"):
        adata = schelix.pp.preprocess(adata, batch_key="batch", copy=False)  # as schelix run
    with st("score"):
        split_genes(adata, batch_key="batch", label_key="cell_type", config=cfg, seed=seed)
    model = SCHelix(adata, cfg)
    model.seed = seed
    torch.manual_seed(seed)  # as SCHelix.train does before fitting the gate
    with st("gate"):
        model.gate = data_step.fit_gate(adata, cfg, seed=seed)
    with st("neighbours"):
        model._data = model._prepare()
        model._build()
    with st("train"):
        model.train(device=device, seed=seed, max_steps=max_steps)
    with st("embed"):
        write_results(model, max_steps=max_steps)
    with st("UMAP"):
        stages.add_umaps(adata, ["X_schelix"], seed=seed)
    with st("evaluate"):
        table = evaluate.evaluate(adata, ["X_schelix"], batch_key="batch", label_key="cell_type")
    ours = st.rows[:]
    with st("Harmony"):
        run_method(adata, "harmony", batch_key="batch", seed=seed, use_rep="X_schelix_pca")
    with st("evaluate Harmony"):
        ref = evaluate.evaluate(adata, ["X_harmony"], batch_key="batch", label_key="cell_type")
    total = sum(r["seconds"] for r in ours)
    sketch = adata.uns["schelix"]["anchor_scores"].get("sketch", {})
    return {
        "n_cells": int(adata.n_obs),
        "n_genes_hvg": int(adata.var["highly_variable"].sum()),
        "density": float(adata.layers["counts"].nnz / np.prod(adata.shape)),
        "device": model.device,
        "steps": int(model.state.step),
        "stages": st.rows,
        "end_to_end_seconds": total,
        "end_to_end_peak_gb": max(r["peak_gb"] for r in ours),
        "harmony_seconds": st.rows[-2]["seconds"],
        "ratio_to_harmony": total / st.rows[-2]["seconds"],
        "sketch_cells": int(sketch.get("n_cells", 0)),
        "display_cells": int(adata.uns["schelix"].get("display", {}).get("n_cells", adata.n_obs)),
        "overall": float(table["Overall"].iloc[0]),
        "overall_harmony": float(ref["Overall"].iloc[0]),
        "load_before": os.getloadavg(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-cells", type=int, default=100_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="cap training steps (default: schedule)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--write", default=None, help=argparse.SUPPRESS)  # internal: data only
    args = p.parse_args()
    path = OUT / f"synthetic_{args.n_cells}.h5ad"
    if args.write:
        write(Path(args.write), args.n_cells, args.seed)
        return
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        cmd = [sys.executable, __file__, "--n-cells", str(args.n_cells), "--write", str(path)]
        subprocess.run(cmd, check=True)
    warnings.filterwarnings("ignore")
    load = os.getloadavg()
    _warm_up()
    print(f"{args.n_cells:,} cells, device {args.device}, load average {load[0]:.2f}", flush=True)
    res = run(path, device=args.device, seed=args.seed, max_steps=args.steps)
    res.update(machine=f"{platform.node()} {platform.processor() or platform.machine()}",
               cpus=os.cpu_count(), load_start=load, load_end=os.getloadavg(),
               threads=os.environ.get("OMP_NUM_THREADS", "default"))  # fmt: skip
    print(f"end to end {res['end_to_end_seconds']:.1f} s, peak RSS {res['end_to_end_peak_gb']:.2f} "
          f"GB; Harmony {res['harmony_seconds']:.1f} s (ratio {res['ratio_to_harmony']:.1f}); "
          f"Overall {res['overall']:.3f} vs Harmony {res['overall_harmony']:.3f}; "
          f"load {res['load_start'][0]:.2f} -> {res['load_end'][0]:.2f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
