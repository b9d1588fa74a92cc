"""Wall time and peak memory of scHelix vs scVI and Harmony, measured in the same run.

    python benchmarks/speed.py                      # Kang (14k cells) + synthetic 100k, CPU
    python benchmarks/speed.py --device cuda        # the same on a GPU
    python benchmarks/speed.py --skip-scvi --n-large 0

scHelix is timed twice: training alone (the model's own clock: the paper's
Table 9 quantity) and end to end (anchor scoring: PCA + kNN + Leiden, gate,
training, embedding). scVI runs with scvi-tools' default training length (as
in the paper's Table 8), Harmony with its PCA included. One-time JIT
compilation (numba in scanpy/umap/pynndescent) is paid by a small warm-up
before any timing, so no method is charged for it. Prints ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np

import schelix
from schelix.device import resolve_device
from schelix.methods import run_method
from schelix.methods.base import _PeakRSS
from schelix.pipeline import integrate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _warm_up() -> None:
    small = schelix.datasets.synthetic(300, 250, seed=0)
    small = schelix.pp.preprocess(small, batch_key="batch", min_genes=50)
    integrate(small, batch_key="batch", max_steps=2, batch_size=32, n_prototypes=4, mixup_k=10)
    run_method(small, "harmony", batch_key="batch")


def _schelix(adata: ad.AnnData, device: str, seed: int) -> dict:
    work = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    t0 = time.perf_counter()
    with _PeakRSS() as mem:
        model = integrate(work, batch_key=adata.uns["bench_batch_key"], device=device, seed=seed)
    total = time.perf_counter() - t0
    return {"method": "scHelix", "seconds": total, "train_seconds": model.state.seconds,
            "steps": model.state.step, "peak_mb": mem.peak_mb, "device": model.device}  # fmt: skip


def _peer(adata: ad.AnnData, name: str, device: str, seed: int, **params) -> dict:
    res = run_method(
        adata, name, batch_key=adata.uns["bench_batch_key"], seed=seed, device=device, **params
    )
    return {"method": name, "seconds": res.seconds, "peak_mb": res.peak_memory_mb, "device": device}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-scvi", action="store_true")
    ap.add_argument(
        "--scvi-epochs", type=int, default=None, help="default: scvi-tools' own heuristic"
    )
    ap.add_argument(
        "--n-large", type=int, default=100_000, help="cells of the synthetic scaling run (0: skip)"
    )
    ap.add_argument("--out", default="benchmarks/results/speed.json")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    device = resolve_device(args.device)
    import torch

    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    )
    if device == "cuda":
        machine += f", {torch.cuda.get_device_name()}"
    print(f"device: {device}; machine: {machine}")
    _warm_up()

    kang = ad.read_h5ad(DATA / "kang_ifnb_pbmc.h5ad")
    kang = schelix.pp.preprocess(kang, batch_key="condition")
    kang.uns["bench_batch_key"] = "condition"
    rows = [_schelix(kang, device, args.seed), _peer(kang, "harmony", device, args.seed)]
    if not args.skip_scvi:
        rows.append(_peer(kang, "scvi", device, args.seed, max_epochs=args.scvi_epochs))
    by = {r["method"]: r for r in rows}
    print(
        f"\nKang IFN-beta PBMC: {kang.n_obs} cells x {int(kang.var['highly_variable'].sum())} HVGs"
    )
    print(f"{'method':10s} {'wall s':>9s} {'train s':>9s} {'peak MB':>9s}")
    for r in rows:
        print(
            f"{r['method']:10s} {r['seconds']:9.1f} {r.get('train_seconds', float('nan')):9.1f} {r['peak_mb']:9.0f}"
        )
    h = by["scHelix"]
    ratios = {"schelix_vs_harmony_time": h["seconds"] / by["harmony"]["seconds"]}
    if "scvi" in by:
        ratios["schelix_vs_scvi_time"] = h["seconds"] / by["scvi"]["seconds"]
        ratios["schelix_train_vs_scvi_time"] = h["train_seconds"] / by["scvi"]["seconds"]
        ratios["schelix_vs_scvi_peak_mem"] = h["peak_mb"] / max(by["scvi"]["peak_mb"], 1e-9)
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.3f}")

    large = None
    if args.n_large:
        syn = schelix.datasets.synthetic(
            args.n_large, 3000, n_batches=4, n_cell_types=10, seed=args.seed
        )
        syn = schelix.pp.preprocess(syn, batch_key="batch")
        syn.uns["bench_batch_key"] = "batch"
        large = _schelix(syn, device, args.seed)
        print(f"\nsynthetic {syn.n_obs} cells: scHelix wall {large['seconds']:.1f} s "
              f"(training {large['train_seconds']:.1f} s, {large['steps']} steps), peak {large['peak_mb']:.0f} MB")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "machine": machine, "kang": rows, "ratios": ratios,
                               "large": large}, indent=2, default=float))  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
