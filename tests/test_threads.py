"""Training keeps to the user's OMP_NUM_THREADS, also after numba (scanpy) started its threads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import scanpy as sc, torch  # numba is imported before schelix here: the harder order
import schelix
from schelix.pipeline import integrate
import scipy.sparse as sp
a = schelix.datasets.synthetic(300, 200, seed=0)
a.X = sp.csr_matrix(a.X)  # scanpy's numba kernels run on sparse counts
sc.pp.normalize_total(a, target_sum=1e4)  # numba prange: its OpenMP layer starts every core
sc.pp.log1p(a)
a.var["highly_variable"] = True
before = torch.get_num_threads()
integrate(a, batch_key="batch", max_steps=4, batch_size=32, n_prototypes=4, mixup_k=10)
print(before, torch.get_num_threads())
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2+ cores to tell 1 thread from all")
def test_training_keeps_to_omp_num_threads_after_numba_started():
    # OMP_NUM_THREADS alone, as a user or a scheduler sets it (MKL_NUM_THREADS=1 beside it, as
    # this suite's conftest sets, happens to keep torch at 1 thread anyway)
    unset = ("NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, during = (int(v) for v in done.stdout.split()[-2:])
    print(f"torch threads after numba: {before}; in and after training: {during}")
    assert during == 1
