"""Data-parallel training with ``torch.distributed`` (DDP): many GPUs, one process each.

Launched by ``torchrun`` (single node or several, through its rendezvous)::

    torchrun --nproc-per-node 8 -m schelix.distributed FILE --batch-key K -o out.h5ad

takes the options of ``schelix run``. The division of work:

1. **Rank 0** reads and preprocesses the file, scores the genes, splits anchors and
   variants, fits the variant gate and the gene scaling (the gene-level work), and writes
   the preprocessed cells to a work file (``--work-dir``; on several nodes it must be a
   folder every node sees). The split, scaling and gate go to every rank by broadcast.
2. **Every rank** reads only its own shard of cells from the work file (anndata's backed
   mode; cells ``rank, rank + world, ...``), builds its kNN MixUp neighbours and MNN
   partners within the shard, and trains the same network wrapped in
   :class:`torch.nn.parallel.DistributedDataParallel`. Each step a rank draws
   ``batch_size / world`` cells of its shard, so one step sees ``batch_size`` cells in all;
   DDP averages the gradients, so every rank holds the same weights at every step. The
   step count is the one-process schedule's for all cells.
3. **Every rank** embeds its shard; rank 0 gathers the embeddings and writes the results
   exactly as :func:`schelix.pipeline.integrate` does (plus ``world_size`` in
   ``uns["schelix"]["train"]``).

Backend: NCCL on CUDA (each process on ``cuda:LOCAL_RANK``), gloo on CPU. The loss curves
are rank 0's shard's. Outside ``torchrun`` (no process group) the same code runs as one
process on all cells. Without labels the result matches a one-process run in quality, not
to the bit: mini-batches, MixUp partners and MNN partners are drawn within shards
(``tests/test_distributed.py`` states the tolerance).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from schelix.config import SCHelixConfig
from schelix.model import SCHelix
from schelix.train import embed_all, fit, schedule, sized_for_run

__all__ = ["integrate_distributed", "main", "rank_world", "shard_rows"]


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_rows(n_cells: int, rank: int, world: int) -> np.ndarray:
    """The cells of one rank: every ``world``-th cell from ``rank`` (each shard sees every
    batch and cell type in proportion, whatever the file's order)."""
    return np.arange(rank, n_cells, world)


class _Losses(nn.Module):
    """The module's loss as ``forward``, which DDP needs to synchronise gradients."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.losses(*args, **kwargs)


class _Replica(nn.Module):
    """What :func:`schelix.train.fit` trains: ``losses`` through DDP, ``embed`` direct."""

    def __init__(self, module: nn.Module, device: str) -> None:
        super().__init__()
        module.to(device)
        ids = [torch.device(device).index] if device.startswith("cuda") else None
        # the fusion-phase parameters get no gradient during the warm-up phase
        self.ddp = nn.parallel.DistributedDataParallel(
            _Losses(module), device_ids=ids, find_unused_parameters=True
        )

    @property
    def inner(self) -> nn.Module:
        return self.ddp.module.module

    def losses(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp(*args, **kwargs)

    def embed(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.embed(*args, **kwargs)


def _plan(
    adata: ad.AnnData, *, batch_key: str, label_key: str | None, config: SCHelixConfig,
    seed: int, max_steps: int | None, work_dir: Path,
) -> dict[str, Any]:  # fmt: skip
    """Rank 0's gene-level work and the work file every rank reads its shard from."""
    from schelix import data as data_step
    from schelix.pipeline import split_genes

    split_genes(adata, batch_key=batch_key, label_key=label_key, config=config, seed=seed)
    gate = data_step.fit_gate(adata, config, seed=seed)
    _, meta = data_step.prepare(
        adata, config, batch_key=batch_key, label_key=label_key, gate=gate, training=False
    )
    keep_obs = [k for k in (batch_key, label_key) if k]
    work = ad.AnnData(
        X=adata.X, obs=adata.obs[keep_obs].copy(), var=adata.var[["schelix_stream"]].copy(),
        obsm={k: adata.obsm[k] for k in ("X_schelix_pca",) if k in adata.obsm},
        uns={"schelix": {"setup": dict(adata.uns["schelix"]["setup"])}},
    )  # fmt: skip
    path = work_dir / f"schelix-ddp-{os.getpid()}.h5ad"
    work.write_h5ad(path)
    steps = schedule(adata.n_obs, config, max_steps)[0]
    return {"path": str(path), "meta": meta, "gate": gate, "n_cells": adata.n_obs, "steps": steps}


def _device(device: str) -> str:
    from schelix.device import resolve_device

    dev = resolve_device(device)
    if dev.startswith("cuda") and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return dev


def _train_shard(
    plan: dict[str, Any], *, config: SCHelixConfig, seed: int, device: str
) -> tuple[SCHelix, np.ndarray, dict[str, np.ndarray]]:
    """Read this rank's shard, train under DDP, embed the shard: ``(model, rows, stages)``."""
    rank, world = rank_world()
    rows = shard_rows(plan["n_cells"], rank, world)
    backed = ad.read_h5ad(plan["path"], backed="r")
    try:
        shard = backed[rows].to_memory()
    finally:
        backed.file.close()
    steps = plan["steps"]
    # every rank must take the same number of steps: the global schedule, not the shard's.
    # MixUp neighbours are found within the shard, which holds 1/world of the cells: k / world
    # keeps the neighbourhood the same share of the data as in one process (with k unchanged,
    # 2 ranks mixed each cell with half its shard and lost the cell types: Overall 0.68 against
    # 0.86 for one process; with k / 2, 0.90; benchmarks/EXPERIMENTS.md, issue 16)
    cfg = config.replace(
        batch_size=max(1, config.batch_size // world), max_epochs=steps, snapshot_every=steps,
        mixup_k=max(1, round(config.mixup_k / world)),
    )  # fmt: skip
    model = SCHelix(shard, cfg)
    model.meta, model.gate, model.seed, model.device = plan["meta"], plan["gate"], seed, device
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP also broadcasts them)
    model._data = model._prepare()
    model._build()
    trained = _Replica(model.module, device) if world > 1 else model.module
    model.state = fit(
        trained, model._data, cfg, device=device, seed=seed + 7919 * rank, max_steps=steps
    )
    stages = embed_all(model.module, model._data, device)
    return model, rows, stages


def _weights_spread(module: nn.Module) -> float:
    """Largest difference of any weight between ranks (0 when DDP kept them in sync)."""
    _, world = rank_world()
    flat = torch.cat([p.detach().float().flatten() for p in module.parameters()])
    if world == 1:
        return 0.0
    lo, hi = flat.clone(), flat.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return float((hi - lo).max())


def _gather(rows: np.ndarray, stages: dict[str, np.ndarray], n_cells: int) -> dict | None:
    """Rank 0: every cell's stage embeddings, in the work file's order."""
    rank, world = rank_world()
    parts: list[Any] = [(rows, stages)]
    if world > 1:
        parts = [None] * world if rank == 0 else None
        dist.gather_object((rows, stages), parts, dst=0)
    if rank != 0:
        return None
    out = {k: np.empty((n_cells, v.shape[1]), dtype=v.dtype) for k, v in stages.items()}
    for r, s in parts:
        for k in out:
            out[k][r] = s[k]
    return out


def integrate_distributed(
    adata: ad.AnnData | None,
    *,
    batch_key: str,
    label_key: str | None = None,
    config: SCHelixConfig | None = None,
    seed: int = 0,
    device: str = "auto",
    max_steps: int | None = None,
    work_dir: str | Path | None = None,
) -> SCHelix | None:
    """:func:`schelix.pipeline.integrate` over every process of the process group.

    Parameters
    ----------
    adata
        The preprocessed AnnData on rank 0 (``None`` on the other ranks: they read their
        shard from rank 0's work file).
    batch_key, label_key, config, seed, device, max_steps
        As :func:`schelix.pipeline.integrate`; ``config.batch_size`` is the global batch.
    work_dir
        Folder of the work file (default: the system's temporary folder; on several nodes,
        a folder every node sees).

    Returns
    -------
    On rank 0 the trained model on ``adata``, with the results written into it as
    :func:`~schelix.pipeline.integrate` writes them; ``None`` on the other ranks.
    """
    from schelix.pipeline import write_results

    cfg = config or SCHelixConfig()
    rank, world = rank_world()
    dev = _device(device)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        box: list[Any] = [None]
        if rank == 0:
            if adata is None:
                raise ValueError("rank 0 needs the AnnData")
            box = [_plan(adata, batch_key=batch_key, label_key=label_key, config=cfg, seed=seed,
                         max_steps=max_steps, work_dir=Path(work_dir or tmp))]  # fmt: skip
        if world > 1:
            dist.broadcast_object_list(box, src=0)
        plan = box[0]
        cfg = sized_for_run(cfg, plan["steps"])  # the decoder width of the global run
        model, rows, stages = _train_shard(plan, config=cfg, seed=seed, device=dev)
        spread = _weights_spread(model.module)
        everything = _gather(rows, stages, plan["n_cells"])
        if world > 1:
            dist.barrier()  # nobody still reads the work file
        if rank == 0 and work_dir is not None:
            Path(plan["path"]).unlink(missing_ok=True)
    if rank != 0:
        return None
    full = SCHelix(adata, cfg)
    full.module, full.meta, full.gate = model.module, plan["meta"], plan["gate"]
    full.seed, full.device, full.state = seed, dev, model.state
    full.state.snapshots = {model.state.step: everything["fused"]}
    full._latent = everything
    # the plan's steps, so that the record (steps, warm-up, warm start) is the run's, not the
    # default schedule's
    write_results(full, seconds=time.perf_counter() - t0, max_steps=plan["steps"])
    adata.uns["schelix"]["train"].update(world_size=world, weights_spread=spread)
    return full


def main(argv: Sequence[str] | None = None) -> int:
    """``torchrun ... -m schelix.distributed`` with the arguments of ``schelix run``."""
    from schelix import cli
    from schelix.errors import SchelixError

    args = cli.build_parser().parse_args(["run", *(sys.argv[1:] if argv is None else argv)])
    backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend)
    rank, world = rank_world()
    try:
        status: list[Any] = [None]
        adata, config = None, cli.run_config(args)
        if rank == 0:
            try:
                adata, config = cli.prepare_run(args)
            except SchelixError as err:  # tell the other ranks before they wait for the plan
                status = [err]
        if world > 1:
            dist.broadcast_object_list(status, src=0)
        if status[0] is not None:
            raise status[0]
        label_key = args.label_key if adata is not None and args.label_key in adata.obs else None
        model = integrate_distributed(
            adata, batch_key=args.batch_key, label_key=label_key, config=config,
            seed=args.seed, device=args.device, max_steps=args.steps,
        )  # fmt: skip
        if rank == 0:
            cli.finish_run(args, model)
        return 0
    except SchelixError as err:
        if rank == 0:
            print(f"schelix: error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
