"""UMAP of a small embedding: ``schelix.stages.add_umaps`` against umap-learn's own path.

    python benchmarks/umap_small.py            # the demo's five stage embeddings (2,064 cells)

Below 4,096 cells umap-learn finds the neighbours from every pairwise distance, with a Python
callback per pair; ``add_umaps`` hands it the same exact neighbours from scikit-learn's
k-d tree (``precomputed_knn``). Both run here, on the same embeddings, with the same settings
(15 neighbours, ``min_dist`` 0.5, 200 epochs, one thread, seeded), after a warm-up that pays
numba's compilation for both. Prints the seconds per UMAP, the ratio, each layout's
trustworthiness (15 neighbours) and how far the two fuzzy graphs differ.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np

from schelix import datasets, pipeline, stages
from schelix.preprocess import preprocess

SETTINGS = dict(n_neighbors=15, min_dist=0.5, n_epochs=200, random_state=0, n_jobs=1)


def _fit(emb: np.ndarray, exact_knn: bool):
    import umap

    k = SETTINGS["n_neighbors"]
    extra = {"precomputed_knn": stages._exact_knn(emb, k)} if exact_knn else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return umap.UMAP(**SETTINGS, **extra).fit(emb)


def main() -> None:
    from sklearn.manifold import trustworthiness

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps for the embeddings")
    args = ap.parse_args()
    adata = preprocess(datasets.demo(), batch_key=datasets.DEMO_BATCH_KEY)
    pipeline.integrate(adata, batch_key=datasets.DEMO_BATCH_KEY, max_steps=args.steps, seed=0)
    embs = {k: np.asarray(adata.obsm[k], np.float32) for k in stages.stage_keys(adata).values()}
    warm = next(iter(embs.values()))[:500]
    _fit(warm, False), _fit(warm, True)  # numba's compilation, for both paths
    times: dict[bool, list[float]] = {False: [], True: []}
    print(f"{adata.n_obs} cells; seconds per UMAP (umap-learn's own / exact kNN given):")
    for key, emb in embs.items():
        fits = {}
        for exact in (False, True):
            t0 = time.perf_counter()
            fits[exact] = _fit(emb, exact)
            times[exact].append(time.perf_counter() - t0)
        trust = [
            trustworthiness(emb, fits[e].embedding_, n_neighbors=SETTINGS["n_neighbors"])
            for e in (False, True)
        ]
        graph = abs(fits[False].graph_.tocsr() - fits[True].graph_.tocsr()).max()
        print(
            f"  {key:28s} {times[False][-1]:5.2f} / {times[True][-1]:5.2f} s; trustworthiness "
            f"{trust[0]:.4f} / {trust[1]:.4f}; fuzzy graphs differ by at most {graph:.1e}"
        )
    own, given = statistics.median(times[False]), statistics.median(times[True])
    print(f"median {own:.2f} s / {given:.2f} s per UMAP: {own / given:.1f}x faster")


if __name__ == "__main__":
    main()
