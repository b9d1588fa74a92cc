"""Shared fixtures: small synthetic data, preprocessed and anchor-scored once per session."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

# One BLAS/OpenMP thread per process: the suite shares 2 cores with the Streamlit server and
# training subprocesses of the app tests, where spinning OpenMP threads slow everything down.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
warnings.filterwarnings("ignore", category=FutureWarning)

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """Path of a real dataset in ../shared/data; skips the test when it is absent."""
    path = DATA_DIR / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def _lognorm_hvg(adata):
    import scanpy as sc

    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.var["highly_variable"] = True
    return adata


@pytest.fixture(scope="session")
def scored_synthetic():
    """600 cells x 300 genes, 3 batches, log-normalized, anchors scored and split (read-only)."""
    import schelix
    from schelix import anchors

    adata = _lognorm_hvg(schelix.datasets.synthetic(600, 300, batch_strength=0.8, seed=3))
    anchors.score_genes(adata, batch_key="batch", n_pcs=20, seed=0)
    anchors.split_anchors(adata)
    return adata


@pytest.fixture
def adata_split(scored_synthetic):
    """A fresh copy of :func:`scored_synthetic` for tests that write to it."""
    return scored_synthetic.copy()
