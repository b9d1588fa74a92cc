"""Datasets: a synthetic generator with gene-specific batch effects, and the bundled demo."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["synthetic", "demo", "make_demo", "DEMO_PATH", "DEMO_BATCH_KEY", "DEMO_LABEL_KEY"]

DEMO_PATH = Path(__file__).resolve().parent.parent / "assets" / "demo_pbmc_ifnb.h5ad"
DEMO_BATCH_KEY = "condition"
DEMO_LABEL_KEY = "cell_type"
#: Cells per (condition, cell type) in the demo: every type keeps enough cells to be seen.
DEMO_CELLS_PER_GROUP = 150


def synthetic(
    n_cells: int = 1200,
    n_genes: int = 600,
    *,
    n_batches: int = 3,
    n_cell_types: int = 5,
    frac_marker: float = 0.3,
    frac_batch_affected: float = 0.3,
    batch_strength: float = 1.5,
    n_mito: int = 5,
    library_size: float = 3000.0,
    seed: int = 0,
    chunk_cells: int = 20_000,
) -> ad.AnnData:
    """Simulate raw UMI counts with cell types and *gene-specific* batch effects.

    Every cell type has its own mean profile that differs from a shared baseline
    in a subset of "marker" genes. Batch effects hit only a subset of genes (a
    per-batch log-fold shift of size ``batch_strength``); the rest are
    batch-stable. Batch-affected genes and markers overlap partly, so there are
    stable markers (ideal anchors), shifted markers (informative variants),
    shifted non-markers (pure noise) and stable non-markers.

    Parameters
    ----------
    n_cells, n_genes
        Size of the count matrix.
    n_batches, n_cell_types
        Number of batches (``obs["batch"]``) and cell types (``obs["cell_type"]``).
    frac_marker
        Fraction of genes whose mean differs between cell types.
    frac_batch_affected
        Fraction of genes shifted per batch.
    batch_strength
        Standard deviation of the per-batch log-fold shift on affected genes.
    n_mito
        Number of ``MT-`` genes (low expression), for QC tests.
    library_size
        Mean total counts per cell.
    seed
        Random seed.
    chunk_cells
        Above this many cells, counts are drawn in chunks of this size (memory bounded by the
        sparse result; a different random stream than one draw). Up to it, one draw.

    Returns
    -------
    AnnData with integer counts in ``X`` (CSR, float32) and ``layers["counts"]``,
    ``obs["batch"]``, ``obs["cell_type"]`` (categoricals), and ground truth in
    ``var["is_marker"]`` and ``var["is_batch_affected"]``.
    """
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.0, n_genes)
    is_marker = rng.random(n_genes) < frac_marker
    is_batch = rng.random(n_genes) < frac_batch_affected
    type_effect = np.zeros((n_cell_types, n_genes))
    type_effect[:, is_marker] = rng.normal(0.0, 1.6, (n_cell_types, int(is_marker.sum())))
    batch_effect = np.zeros((n_batches, n_genes))
    batch_effect[:, is_batch] = rng.normal(0.0, batch_strength, (n_batches, int(is_batch.sum())))

    cell_type = rng.integers(0, n_cell_types, n_cells)
    # batches see cell types in different proportions, as real batches do
    batch_pref = rng.dirichlet(np.full(n_batches, 2.0), n_cell_types)
    effects = (base, type_effect, batch_effect, n_mito, library_size)
    if n_cells <= chunk_cells:
        batch = np.array([rng.choice(n_batches, p=batch_pref[t]) for t in cell_type])
        X = _counts(rng, cell_type, batch, *effects)
    else:  # large: cells drawn in chunks (own seeded streams), never a dense cells x genes array
        cum = batch_pref.cumsum(axis=1)
        batch = (rng.random(n_cells)[:, None] > cum[cell_type]).sum(axis=1).clip(0, n_batches - 1)
        X = sp.vstack(
            [
                _counts(np.random.default_rng([seed, s]), cell_type[sl], batch[sl], *effects)
                for s in range(0, n_cells, chunk_cells)
                for sl in [slice(s, s + chunk_cells)]
            ],
            format="csr",
        )

    genes = [f"Gene{i:04d}" for i in range(n_genes)]
    for i in range(min(n_mito, n_genes)):
        genes[i] = f"MT-G{i}"
    adata = ad.AnnData(
        X=X,
        obs=pd.DataFrame(
            {
                "batch": pd.Categorical([f"batch{b}" for b in batch]),
                "cell_type": pd.Categorical([f"type{t}" for t in cell_type]),
            },
            index=[f"cell{i:05d}" for i in range(n_cells)],
        ),
        var=pd.DataFrame({"is_marker": is_marker, "is_batch_affected": is_batch}, index=genes),
    )
    adata.layers["counts"] = X.copy()
    adata.uns["source"] = f"schelix.datasets.synthetic(seed={seed})"
    return adata


def _counts(
    rng: np.random.Generator,
    cell_type: np.ndarray,
    batch: np.ndarray,
    base: np.ndarray,
    type_effect: np.ndarray,
    batch_effect: np.ndarray,
    n_mito: int,
    library_size: float,
) -> sp.csr_matrix:
    """Negative-binomial UMI counts of the given cells (float32 CSR)."""
    n_cells, n_genes = len(cell_type), len(base)
    log_mu = base[None, :] + type_effect[cell_type] + batch_effect[batch]
    log_mu += rng.normal(0.0, 0.15, (n_cells, n_genes))  # cell-level noise
    if n_mito:
        log_mu[:, :n_mito] = -2.0
    prop = np.exp(log_mu)
    prop /= prop.sum(axis=1, keepdims=True)
    lib = rng.lognormal(np.log(library_size), 0.3, n_cells)[:, None]
    mu = prop * lib
    r = 5.0  # NB dispersion
    return sp.csr_matrix(rng.poisson(rng.gamma(r, mu / r)).astype(np.float32))


def demo() -> ad.AnnData:
    """The bundled demo: Kang et al. 2018 PBMC, control and IFN-beta stimulated, 8 cell types.

    2,064 labelled cells (raw UMI counts; batch key ``"condition"``, ctrl / stim; label key
    ``"cell_type"``: B, CD4 T, CD8 T, NK, CD14+ and FCGR3A+ monocytes, DC, megakaryocytes) with
    the usual markers (CD3E, LYZ, MS4A1, ...), made by :func:`make_demo` from the project's
    shared ``kang_ifnb_pbmc.h5ad``; its ``uns["source"]`` says where it came from and under
    which licence.
    """
    return ad.read_h5ad(DEMO_PATH)


def make_demo(kang_path: str | Path, out: str | Path = DEMO_PATH, *, seed: int = 0) -> ad.AnnData:
    """Write the demo: up to :data:`DEMO_CELLS_PER_GROUP` labelled cells per condition and type.

    ``kang_path``: ``kang_ifnb_pbmc.h5ad`` of the shared data. Unlabelled cells are left out;
    genes detected in no kept cell are dropped; the source note is kept and extended.
    """
    full = ad.read_h5ad(kang_path)
    rng = np.random.default_rng(seed)
    obs = full.obs[full.obs[DEMO_LABEL_KEY].astype(str) != "unlabelled"]
    keep = []
    for _, group in obs.groupby([DEMO_BATCH_KEY, DEMO_LABEL_KEY], observed=True, sort=True):
        n = min(len(group), DEMO_CELLS_PER_GROUP)
        keep.extend(rng.choice(group.index.to_numpy(), n, replace=False))
    sub = full[np.isin(full.obs_names, keep)].copy()
    detected = np.asarray((sub.X > 0).sum(axis=0)).ravel() > 0
    sub = sub[:, detected].copy()
    for col in sub.obs:
        sub.obs[col] = sub.obs[col].astype(str).astype("category")
    sub.obs[DEMO_LABEL_KEY] = sub.obs[DEMO_LABEL_KEY].cat.remove_unused_categories()
    sub.uns["source"] = (
        f"scHelix Studio demo: {sub.n_obs:,} labelled cells (at most {DEMO_CELLS_PER_GROUP} per "
        f"condition and cell type, seed {seed}) and the {sub.n_vars:,} genes detected in them, "
        "from the project's shared kang_ifnb_pbmc.h5ad. " + str(full.uns.get("source", ""))
    )
    sub.write_h5ad(out, compression="gzip")
    return sub
