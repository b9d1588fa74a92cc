"""scVAE's own single-batch claim (paper Table 1), reproduced on one batch of a shared dataset.

The paper (``papers/scvae_sparse.txt`` §3.1, App. A.1.1) embeds the largest batch of a
dataset in 10 dimensions and scores the embedding with ASW (cell-type silhouette), and NMI /
ARI of Leiden (``_L``) and k-means (``_K``) clusters against the annotation, beside scVI on
the full gene list, scVI on HVGs and Seurat (HVG + PCA). This script does the same, in one
run, on one batch of a shared dataset (default: Kang ctrl, 8 PBMC types, 6.5k cells).

Every model gets the paper's preprocessing (genes in >= 3 cells, cells with >= 200 genes; the
scVI models read the counts, scVAE log1p of the counts, Seurat log-normalized HVGs) and the
same number of epochs (``--epochs``, default 100 = scVAE's package default).

Usage (from the repository root)::

    python3 benchmarks/scvae_single_batch.py [--dataset kang_ifnb_pbmc --batch ctrl]
        [--seeds 0 1 2] [--epochs 100] [--scvi-epochs 400] [--scvae kl_warmup_epochs=400]
        [--out benchmarks/results/scvae_single_batch.csv]
"""

from __future__ import annotations

import argparse
import ast
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {  # stem: (batch key, label key)
    "kang_ifnb_pbmc": ("condition", "cell_type"),
    "pbmc_3chem": ("tech", "cell_type"),
    "cellbench_lung_lines": ("batch", "cell_line"),
}
MISSING = ["unlabelled", "unknown", "nan"]


def paper_preprocess(adata: ad.AnnData) -> ad.AnnData:
    """App. A.1.1: genes in >= 3 cells, cells with >= 200 genes; counts kept in a layer."""
    import scanpy as sc

    adata = adata.copy()
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.filter_cells(adata, min_genes=200)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", layer="counts", n_top_genes=2000)
    return adata


def paper_scores(emb: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """ASW (rescaled cell-type silhouette), NMI/ARI of Leiden (res. 1) and k-means clusters."""
    import scanpy as sc
    from scib_metrics import silhouette_label
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score as ari
    from sklearn.metrics import normalized_mutual_info_score as nmi

    tmp = ad.AnnData(np.zeros((len(emb), 1), dtype=np.float32))
    tmp.obsm["emb"] = emb
    sc.pp.neighbors(tmp, use_rep="emb", n_neighbors=15, random_state=seed)
    sc.tl.leiden(tmp, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
    leiden = tmp.obs["leiden"].to_numpy()
    k = len(np.unique(labels))
    kmeans = KMeans(k, n_init=10, random_state=seed).fit_predict(emb)
    return {
        "ASW": float(silhouette_label(emb, labels, rescale=True)),
        "NMI_L": float(nmi(labels, leiden)),
        "ARI_L": float(ari(labels, leiden)),
        "NMI_K": float(nmi(labels, kmeans)),
        "ARI_K": float(ari(labels, kmeans)),
    }


def embed(method: str, adata: ad.AnnData, *, seed: int, epochs: int, **scvae: object) -> np.ndarray:
    """A 10-d embedding of one batch by ``method``."""
    if method == "scvae":
        from schelix.methods.scvae import fit_scvae

        one = adata.copy()
        one.obs["_batch"] = "all"
        res = fit_scvae(one, batch_key="_batch", seed=seed, device="cpu", epochs=epochs, **scvae)
        return res.embedding
    if method.startswith("scvi"):
        import scvi

        scvi.settings.seed = seed
        sub = adata[:, adata.var["highly_variable"]] if method == "scvi_hvg" else adata
        sub = ad.AnnData(sub.layers["counts"].copy(), obs=sub.obs[[]].copy())
        scvi.model.SCVI.setup_anndata(sub)
        model = scvi.model.SCVI(sub, n_latent=10)
        model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
        return np.asarray(model.get_latent_representation(), dtype=np.float32)
    if method == "seurat":
        import scanpy as sc

        sub = adata[:, adata.var["highly_variable"]].copy()
        sc.pp.scale(sub, max_value=10)
        return np.asarray(sc.pp.pca(sub.X, n_comps=10, random_state=seed), dtype=np.float32)
    raise SystemExit(f"unknown method {method}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="kang_ifnb_pbmc", choices=sorted(DATASETS))
    p.add_argument("--batch", default=None, help="which batch (default: most labelled cells)")
    p.add_argument("--methods", nargs="+", default=["scvae", "scvi_full", "scvi_hvg", "seurat"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument(
        "--scvi-epochs", type=int, default=None, help="scVI's epochs (default: --epochs)"
    )
    p.add_argument("--out", default="benchmarks/results/scvae_single_batch.csv")
    p.add_argument("--scvae", nargs="*", default=[], metavar="NAME=VALUE", help="scVAE options")
    p.add_argument("--save-emb", default=None, metavar="DIR", help="save each embedding (.npy)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    batch_key, label_key = DATASETS[args.dataset]
    raw = ad.read_h5ad(DATA / f"{args.dataset}.h5ad")
    labelled = ~raw.obs[label_key].astype(str).str.lower().isin(MISSING)
    batch = args.batch or raw.obs.loc[labelled, batch_key].value_counts().index[0]
    adata = paper_preprocess(raw[raw.obs[batch_key].astype(str) == str(batch)])
    labels = adata.obs[label_key].astype(str).to_numpy()
    keep = ~pd.Series(labels).str.lower().isin(MISSING).to_numpy()
    print(f"{args.dataset} batch {batch}: {adata.n_obs} cells, {adata.n_vars} genes, "
          f"{len(np.unique(labels[keep]))} labelled types", flush=True)  # fmt: skip
    scvae = {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in args.scvae)}
    rows = []
    for method in args.methods:
        for seed in args.seeds:
            t0 = time.perf_counter()
            n_ep = (
                args.scvi_epochs if method.startswith("scvi") and args.scvi_epochs else args.epochs
            )
            emb = embed(method, adata, seed=seed, epochs=n_ep, **scvae)
            if args.save_emb:
                Path(args.save_emb).mkdir(parents=True, exist_ok=True)
                np.save(Path(args.save_emb) / f"{method}_seed{seed}.npy", emb)
            row = {
                "method": method,
                "seed": seed,
                "epochs": n_ep,
                "seconds": time.perf_counter() - t0,
            }
            row.update(paper_scores(emb[keep], labels[keep], seed))
            rows.append(row)
            print(
                {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True
            )
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    summary = df.drop(columns="seed").groupby("method", sort=False).agg(["mean", "std"])
    print(summary.round(3).to_string())  # to_markdown needs tabulate, not a dependency


if __name__ == "__main__":
    main()
