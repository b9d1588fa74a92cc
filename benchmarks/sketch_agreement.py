"""Does the sketch change the split? Anchor sets and gate clusters, sketch vs all cells.

    python benchmarks/sketch_agreement.py

On the shared datasets (all below :data:`schelix.sketch.SKETCH_CELLS`, so the product never
sketches them) the sketch is forced at a fraction of the cells, a harder test than 50,000 of
a million. Reported per dataset and sketch size: Jaccard of the anchor sets, and the ARI of the
pseudo-clusters and of both gate clusterings (sketch clusters placed on every cell by the vote
of the nearest sketch cells) against the full-data ones. The same numbers between two seeds of
the full-data run (Leiden and PCA seeds) show how much moves without any sketch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
from sklearn.metrics import adjusted_rand_score

import schelix

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = {  # file, batch key, sketch sizes
    "kang_ifnb_pbmc.h5ad": ("condition", (7000, 3500)),
    "pbmc_3chem.h5ad": ("tech", (1000, 500)),
    "cellbench_lung_lines.h5ad": ("batch", (500,)),
}


def split(adata: ad.AnnData, batch_key: str, *, sketch_cells: int | None, seed: int) -> dict:
    a = adata.copy()
    schelix.anchors.score_genes(a, batch_key=batch_key, seed=seed, sketch_cells=sketch_cells)
    schelix.anchors.split_anchors(a)
    gate = schelix.gate.fit_gate(a, seed=seed)
    return {
        "anchors": set(a.var_names[a.var["schelix_stream"] == "anchor"]),
        "pseudo": a.obs["schelix_pseudo_cluster"].astype(str).to_numpy(),
        "low": gate.low_labels,
        "high": gate.high_labels,
    }


def agreement(a: dict, b: dict) -> dict:
    jac = len(a["anchors"] & b["anchors"]) / len(a["anchors"] | b["anchors"])
    out = {"jaccard_anchors": jac, "n_anchors": (len(a["anchors"]), len(b["anchors"]))}
    for key in ("pseudo", "low", "high"):
        out[f"ari_{key}"] = adjusted_rand_score(a[key], b[key])
    return out


def main() -> None:
    warnings.filterwarnings("ignore")
    print("| data | comparison | Jaccard anchors | anchors (a, b) | ARI pseudo | ARI gate low "
          "| ARI gate high |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for name, (batch_key, sizes) in SETS.items():
        adata = schelix.pp.preprocess(ad.read_h5ad(DATA / name), batch_key=batch_key)
        full = split(adata, batch_key, sketch_cells=None, seed=0)
        runs = {"full, seed 1": split(adata, batch_key, sketch_cells=None, seed=1)}
        for size in sizes:
            runs[f"sketch {size:,} of {adata.n_obs:,}"] = split(
                adata, batch_key, sketch_cells=size, seed=0
            )
        for label, run in runs.items():
            r = agreement(full, run)
            print(f"| {name.split('.')[0]} | {label} vs full seed 0 | {r['jaccard_anchors']:.3f} "
                  f"| {r['n_anchors'][0]}, {r['n_anchors'][1]} | {r['ari_pseudo']:.3f} "
                  f"| {r['ari_low']:.3f} | {r['ari_high']:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
