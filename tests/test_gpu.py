"""scHelix on CUDA: training, every stage, save on the GPU and load on the CPU, mapping a
query, and data parallelism over NCCL. Skipped without CUDA (CI has none); run on a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score

import schelix
from schelix import mapping
from schelix.model import SCHelix
from schelix.module import STAGES
from schelix.pipeline import integrate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

FAST = dict(batch_size=64, n_prototypes=6, mixup_k=20)
ROOT = Path(__file__).resolve().parents[1]


def _reference_and_query() -> tuple[ad.AnnData, ad.AnnData]:
    counts = schelix.datasets.synthetic(600, 300, batch_strength=0.8, seed=3)
    ref = counts[counts.obs["batch"] != "batch2"].copy()
    query = counts[counts.obs["batch"] == "batch2"].copy()
    ref = schelix.pp.preprocess(ref, batch_key="batch", min_genes=50)
    return ref, query


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same reference trained on the GPU and on the CPU (same seed and steps)."""
    ref, query = _reference_and_query()
    on_gpu = integrate(ref.copy(), batch_key="batch", max_steps=120, device="cuda", **FAST)
    on_cpu = integrate(ref.copy(), batch_key="batch", max_steps=120, device="cpu", **FAST)
    path = tmp_path_factory.mktemp("gpu") / "model"
    on_gpu.save(path)
    return on_gpu, on_cpu, query, path


def test_training_runs_on_the_gpu_with_every_stage_and_loss_finite(trained):
    on_gpu, _, _, _ = trained
    assert on_gpu.device.startswith("cuda")
    assert next(on_gpu.module.parameters()).is_cuda
    for stage in STAGES:
        emb = on_gpu.get_latent_representation(stage)
        assert emb.shape[0] == on_gpu.adata.n_obs and np.isfinite(emb).all(), stage
    hist = on_gpu.history
    assert len(hist) == 120 and np.isfinite(hist["total"]).all()
    assert on_gpu.adata.uns["schelix"]["train"]["device"].startswith("cuda")


def test_gpu_and_cpu_runs_agree_in_quality(trained):
    """Not to the bit (different kernels): the cell types separate as well on either device."""
    on_gpu, on_cpu, _, _ = trained
    labels = on_gpu.adata.obs["cell_type"].astype(str).to_numpy()
    asw = {
        name: silhouette_score(model.get_latent_representation(), labels)
        for name, model in (("gpu", on_gpu), ("cpu", on_cpu))
    }
    print(asw)
    assert asw["gpu"] > 0.2 and abs(asw["gpu"] - asw["cpu"]) < 0.15


def test_a_gpu_model_loads_on_the_cpu_and_embeds_the_same(trained):
    on_gpu, _, _, path = trained
    loaded = SCHelix.load(path, on_gpu.adata.copy(), device="cpu")
    assert loaded.device == "cpu" and not next(loaded.module.parameters()).is_cuda
    np.testing.assert_allclose(
        loaded.get_latent_representation(), on_gpu.get_latent_representation(), atol=1e-4
    )


def test_a_query_maps_on_the_gpu(trained):
    _, _, query, path = trained
    model = mapping.load_reference(path, device="cuda")
    prepared = mapping.prepare_query(query, batch_key="batch")
    joint = mapping.map_query(
        model, prepared, batch_key="batch", transfer=["cell_type"], adapt_steps=20
    )
    is_q = (joint.obs["schelix_origin"] == "query").to_numpy()
    assert np.isfinite(joint.obsm["X_schelix"]).all()
    pred = joint.obs["cell_type_transferred"].astype(str).to_numpy()[is_q]
    truth = joint.obs["cell_type"].astype(str).to_numpy()[is_q]
    assert (pred == truth).mean() > 0.7


def test_one_gpu_data_parallel_run_over_nccl(tmp_path):
    data, out = tmp_path / "cells.h5ad", tmp_path / "out.h5ad"
    schelix.datasets.synthetic(900, 400, seed=2).write_h5ad(data)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path[1:]])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "1", "-m", "schelix.distributed", str(data), "--batch-key", "batch", "--label-key",
           "cell_type", "-o", str(out), "--steps", "100", "--device", "cuda", "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    train = ad.read_h5ad(out).uns["schelix"]["train"]
    assert train["world_size"] == 1 and str(train["device"]).startswith("cuda")
    assert train["steps"] == 100
