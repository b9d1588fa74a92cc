"""Write an AnnData's counts as a Cell Ranger ``filtered_feature_bc_matrix.h5`` (10x HDF5, v3).

anndata and scanpy read this layout but cannot write it, so the tests write it with h5py: the
``matrix`` group holds the genes x cells matrix in CSC form (``data``, ``indices``,
``indptr``, ``shape``), ``barcodes`` and ``features`` (``id``, ``name``, ``feature_type``,
``genome``).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import scipy.sparse as sp


def write_10x_h5(adata: ad.AnnData, path: str | Path, *, genome: str = "GRCh38") -> Path:
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    m = sp.csr_matrix(counts)  # cells x genes CSR == genes x cells CSC
    m.sort_indices()
    names = np.asarray(adata.var_names, dtype=str)
    ids = np.asarray(adata.var["gene_ids"] if "gene_ids" in adata.var else names, dtype=str)
    path = Path(path)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.asarray(adata.obs_names, dtype="S"))
        g.create_dataset("data", data=np.rint(m.data).astype(np.int32), compression="gzip")
        g.create_dataset("indices", data=m.indices.astype(np.int64), compression="gzip")
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([adata.n_vars, adata.n_obs], dtype=np.int32))
        feat = g.create_group("features")
        feat.create_dataset("id", data=ids.astype("S"))
        feat.create_dataset("name", data=names.astype("S"))
        feat.create_dataset("feature_type", data=np.array([b"Gene Expression"] * adata.n_vars))
        feat.create_dataset("genome", data=np.array([genome.encode()] * adata.n_vars))
        feat.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
    return path


def pbmc_per_chemistry(
    data: Path, folder: Path, *, n_cells: int = 150, seed: int = 0
) -> list[Path]:
    """The shared PBMC set as three 10x .h5 files, one per chemistry (``n_cells`` each).

    The V2 file lacks the last 25 genes, so joining by name has genes to drop and say so.
    """
    full = ad.read_h5ad(data)
    rng = np.random.default_rng(seed)
    out = []
    for tech in ("V2", "V3", "VDJ"):
        part = full[full.obs["tech"] == tech]
        part = part[np.sort(rng.choice(part.n_obs, n_cells, replace=False))].copy()
        if tech == "V2":
            part = part[:, :-25].copy()
        part.obs_names = [f"AAACCTG{i:06d}-1" for i in range(part.n_obs)]  # same barcodes each
        out.append(write_10x_h5(part, folder / f"pbmc_{tech}.h5"))
    return out
