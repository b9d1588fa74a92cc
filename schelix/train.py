"""The scHelix training loop: two-phase schedule (Alg. 2), callbacks, snapshots, checkpoints."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from schelix.config import SCHelixConfig
from schelix.module.network import STAGES, SCHelixModule

__all__ = [
    "StepRecord",
    "Callback",
    "StopTraining",
    "TrainData",
    "TrainState",
    "schedule",
    "fit",
    "embed_all",
    "mixup_neighbors",
    "mnn_partners",
]


@dataclass(frozen=True)
class StepRecord:
    """One training step's loss record, shared by the loop, callbacks and loss curves.

    Attributes
    ----------
    step
        1-based step number.
    total_steps
        Steps in the whole run.
    phase
        ``"warmup"`` (align-only, Eq. 9) or ``"fusion"`` (Eq. 9 + Eq. 10).
    losses
        Every active loss term (unweighted) and ``"total"`` (weighted sum).
    elapsed, eta
        Seconds since the run started and estimated seconds left.
    """

    step: int
    total_steps: int
    phase: str
    losses: dict[str, float]
    elapsed: float
    eta: float


class StopTraining(Exception):
    """Raise from a callback (or return ``True`` from ``should_stop``) to end training early."""


class Callback:
    """Receives every step's :class:`StepRecord` and the fused-embedding snapshots."""

    def on_step(self, record: StepRecord) -> None:
        """Called after every optimisation step."""

    def on_snapshot(self, step: int, fused: np.ndarray) -> None:
        """Called with the fused embedding of all cells at each snapshot."""

    def should_stop(self) -> bool:
        """Return ``True`` to cancel the run after the current step."""
        return False


@dataclass
class TrainData:
    """Tensors a run reads: gated variant matrix, anchor matrix, batches, labels, MixUp kNN,
    cross-batch MNN partners."""

    x_variant: torch.Tensor
    x_anchor: torch.Tensor
    batch: torch.Tensor
    labels: torch.Tensor | None = None
    neighbors: torch.Tensor | None = None
    partners: torch.Tensor | None = None

    @property
    def n_cells(self) -> int:
        return self.x_variant.shape[0]


@dataclass
class TrainState:
    """What a run leaves behind, enough to resume it."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)
    optimizer: dict | None = None
    seconds: float = 0.0
    stopped_early: bool = False


def schedule(n_cells: int, config: SCHelixConfig, max_steps: int | None = None) -> tuple[int, int]:
    """``(total_steps, warmup_steps)``.

    Total = min(max_steps, max(max_epochs epochs, floor)) with floor = min(min_steps,
    min_steps_epochs epochs): large data stops at the step cap (6,000), small data gets
    at least 1,000 steps or 250 epochs, whichever is fewer (300 cells: 500 steps; 1,000
    cells: 1,000). Warm-up = min(warmup_steps, total // 2) so that the fusion phase is
    never starved on small data.
    """
    per_epoch = math.ceil(n_cells / config.batch_size)
    floor = min(config.min_steps, config.min_steps_epochs * per_epoch)
    total = min(max_steps or config.max_steps, max(config.max_epochs * per_epoch, floor))
    total = max(total, 1)
    return total, min(config.warmup_steps, total // 2)


def mixup_neighbors(pca: np.ndarray, k: int, *, chunk: int = 2048) -> torch.Tensor:
    """Indices of each cell's ``k`` nearest neighbours (Euclidean, PCA space) for kNN MixUp."""
    x = torch.as_tensor(np.ascontiguousarray(pca, dtype=np.float32))
    k = min(k, len(x) - 1)
    sq = (x * x).sum(1)
    out = []
    for s in range(0, len(x), chunk):
        d = sq[s : s + chunk, None] - 2 * x[s : s + chunk] @ x.T + sq[None, :]
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = float("inf")
        out.append(torch.topk(d, k, dim=1, largest=False).indices.to(torch.int32))
    return torch.cat(out)


def mnn_partners(
    x_anchor: np.ndarray, batch: np.ndarray, *, k: int = 10, seed: int = 0
) -> torch.Tensor:
    """Mutual nearest neighbours across batches in the PCA (30 components) of the anchor genes.

    Anchors are batch-stable, so a cross-batch MNN pair there is most likely the same cell state
    seen in two batches (the MNN idea of Haghverdi et al. 2018, on the scaffold). ``x_anchor`` is
    already the scaled matrix the model trains on, so it is not re-scaled here
    (:func:`schelix.pca.scaled_pca` would scale and clip it again).

    Parameters
    ----------
    x_anchor
        Cells x anchor genes (scaled).
    batch
        Integer batch code of each cell.
    k
        Neighbours searched in each other batch.
    seed
        Random state of the PCA.

    Returns
    -------
    ``(n_cells, k)`` int64 tensor of partner indices: the first ones are a cell's partners, the
    rest repeat them, so any column is a real partner; all ``-1`` for a cell without one.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    n = len(x_anchor)
    z = PCA(max(1, min(30, x_anchor.shape[1] - 1, n - 1)), random_state=seed).fit_transform(
        x_anchor
    )
    pairs = []
    codes = np.unique(batch)
    for i, a in enumerate(codes):
        for b in codes[i + 1 :]:
            ia, ib = np.flatnonzero(batch == a), np.flatnonzero(batch == b)
            ka, kb = min(k, len(ib)), min(k, len(ia))
            nab = (
                NearestNeighbors(n_neighbors=ka).fit(z[ib]).kneighbors(z[ia], return_distance=False)
            )
            nba = (
                NearestNeighbors(n_neighbors=kb).fit(z[ia]).kneighbors(z[ib], return_distance=False)
            )
            mutual = (nba[nab] == np.arange(len(ia))[:, None, None]).any(axis=2)  # (|ia|, ka)
            r, c = np.nonzero(mutual)
            u, v = ia[r], ib[nab[r, c]]
            pairs += [np.stack([u, v], 1), np.stack([v, u], 1)]
    out = np.full((n, k), -1, dtype=np.int64)
    if pairs:
        pr = np.concatenate(pairs)
        pr = pr[np.lexsort((pr[:, 1], pr[:, 0]))]
        start = np.searchsorted(pr[:, 0], np.arange(n))
        count = np.minimum(np.searchsorted(pr[:, 0], np.arange(n), side="right") - start, k)
        has = count > 0
        col = np.arange(k)[None, :] % np.maximum(count, 1)[:, None]  # repeat to fill the row
        out[has] = pr[(start[:, None] + col)[has], 1]
    return torch.as_tensor(out)


def _mix(data: TrainData, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    xv, xi = data.x_variant[idx], data.x_anchor[idx]
    labels = data.labels[idx] if data.labels is not None else None
    if data.neighbors is None:
        return xv, xi, labels
    nb = data.neighbors[idx]
    pick = torch.randint(nb.shape[1], (len(idx),), generator=gen)
    j = nb[torch.arange(len(idx)), pick].long()
    a = torch.rand(len(idx), 1, generator=gen)
    xv = a * xv + (1 - a) * data.x_variant[j]
    xi = a * xi + (1 - a) * data.x_anchor[j]
    if labels is not None:  # a mixed cell keeps its label only if both parents share it
        labels = torch.where(labels == data.labels[j], labels, torch.full_like(labels, -1))
    return xv, xi, labels


@torch.no_grad()
def embed_all(
    module: SCHelixModule,
    data: TrainData,
    device: str,
    *,
    stages: Sequence[str] = STAGES,
    chunk: int = 8192,
) -> dict[str, np.ndarray]:
    """Every stage embedding of all cells, in eval mode."""
    was_training = module.training
    module.eval()
    parts: dict[str, list[np.ndarray]] = {s: [] for s in stages}
    for s in range(0, data.n_cells, chunk):
        out = module.embed(
            data.x_variant[s : s + chunk].to(device), data.x_anchor[s : s + chunk].to(device)
        )
        for k in stages:
            parts[k].append(out[k].float().cpu().numpy())
    module.train(was_training)
    return {k: np.concatenate(v) for k, v in parts.items()}


def fit(
    module: SCHelixModule,
    data: TrainData,
    config: SCHelixConfig,
    *,
    device: str,
    seed: int = 0,
    max_steps: int | None = None,
    callbacks: Sequence[Callback] = (),
    state: TrainState | None = None,
    progress_bar: bool = False,
) -> TrainState:
    """Train ``module`` on ``data``; resumes from ``state`` when given.

    Mini-batches are drawn without replacement per epoch; kNN MixUp
    (training only) mixes each cell with one of its PCA neighbours; the
    warm-up phase optimises Eq. 9 (recon + align + connectivity), the fusion
    phase adds Eq. 10 (fused recon + KD + fused connectivity, and the
    supervised head when labels are given). AdamW with gradient clipping.
    """
    state = state or TrainState()
    total, warmup = schedule(data.n_cells, config, max_steps)
    snap_every = config.snapshot_every or max(total // 10, 1)
    gen = torch.Generator().manual_seed(seed + state.step)
    torch.manual_seed(seed)
    module.to(device).train()
    opt = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if state.optimizer is not None:
        opt.load_state_dict(state.optimizer)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=state.step, desc="scHelix", unit="step")
    perm, pos = torch.randperm(data.n_cells, generator=gen), 0
    t0, start_step = time.perf_counter(), state.step
    batch_size = min(config.batch_size, data.n_cells)
    plain = dataclasses.replace(data, neighbors=None)
    try:
        while state.step < total:
            if pos + batch_size > data.n_cells:
                perm, pos = torch.randperm(data.n_cells, generator=gen), 0
            idx = perm[pos : pos + batch_size]
            pos += batch_size
            xv, xi, labels = _mix(data if config.mixup else plain, idx, gen)
            fuse = state.step >= warmup
            x_partner = has_partner = None
            if data.partners is not None:
                pp = data.partners[idx]
                pp = pp[
                    torch.arange(len(idx)), torch.randint(pp.shape[1], (len(idx),), generator=gen)
                ].long()
                has_partner = pp >= 0
                x_partner = data.x_variant[pp[has_partner]].to(device)
                has_partner = has_partner.to(device)
            total_loss, terms = module.losses(
                xv.to(device), xi.to(device), data.batch[idx].to(device),
                None if labels is None else labels.to(device), fuse=fuse, generator=gen,
                x_partner=x_partner, has_partner=has_partner,
            )  # fmt: skip
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            opt.step()
            state.step += 1
            names = [*terms, "total"]
            values = torch.stack(
                [*(v.detach() for v in terms.values()), total_loss.detach()]
            ).tolist()
            losses = dict(zip(names, values))
            elapsed = time.perf_counter() - t0
            eta = elapsed / (state.step - start_step) * (total - state.step)
            phase = "fusion" if fuse else "warmup"
            record = StepRecord(state.step, total, phase, losses, state.seconds + elapsed, eta)
            state.history.append({"step": state.step, "phase": phase, **losses})
            if not all(math.isfinite(v) for v in values):
                raise FloatingPointError(
                    f"scHelix loss became non-finite at step {state.step}: {losses}"
                )
            for cb in callbacks:
                cb.on_step(record)
            if state.step % snap_every == 0 or state.step == total:
                fused = embed_all(module, data, device, stages=("fused",))["fused"]
                state.snapshots[state.step] = fused
                for cb in callbacks:
                    cb.on_snapshot(state.step, fused)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(phase=phase, loss=f"{losses['total']:.3f}")
            if any(cb.should_stop() for cb in callbacks):
                raise StopTraining
    except StopTraining:
        state.stopped_early = True
    finally:
        if bar is not None:
            bar.close()
        state.seconds += time.perf_counter() - t0
        state.optimizer = opt.state_dict()
    return state
