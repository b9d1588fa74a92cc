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
from schelix.device import limit_cpu_threads
from schelix.module.network import STAGES, SCHelixModule

__all__ = [
    "LOG_EVERY",
    "StepRecord",
    "Callback",
    "StopTraining",
    "TrainData",
    "TrainState",
    "schedule",
    "reaches_step_floor",
    "warm_starts_fusion",
    "decoder_width",
    "sized_for_run",
    "fit",
    "embed_all",
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


#: On a GPU the losses are read back to the host every this many steps (one transfer).
LOG_EVERY = 25


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
    cross-batch MNN partners, triplet clusters."""

    x_variant: torch.Tensor
    x_anchor: torch.Tensor
    batch: torch.Tensor
    labels: torch.Tensor | None = None
    neighbors: torch.Tensor | None = None
    partners: torch.Tensor | None = None
    #: ``(n_cells, 2)``: anchor cluster and fine within-batch cluster (:mod:`schelix.triplets`)
    triplet_clusters: torch.Tensor | None = None

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
    min_steps_epochs epochs): large data stops at the step cap (2,000), small data gets
    at least 1,000 steps or 250 epochs, whichever is fewer (300 cells: 500 steps; 1,000
    cells: 1,000). An epoch here is ``ceil(n_cells / schedule_batch_size)`` steps, whatever
    the mini-batch. Warm-up = min(warmup_steps, total // 2) so that the fusion phase is
    never starved on small data.
    """
    per_epoch = math.ceil(n_cells / config.schedule_batch_size)
    floor = min(config.min_steps, config.min_steps_epochs * per_epoch)
    total = min(max_steps or config.max_steps, max(config.max_epochs * per_epoch, floor))
    total = max(total, 1)
    return total, min(config.warmup_steps, total // 2)


def reaches_step_floor(total: int, config: SCHelixConfig) -> bool:
    """Whether a ``total``-step run reaches the step floor (``config.min_steps``): the boundary
    between the small-data schedule (below about 770 cells with the defaults) and the rest,
    where the fusion warm start and the wide decoders apply."""
    return total >= config.min_steps


def warm_starts_fusion(total: int, config: SCHelixConfig) -> bool:
    """Whether the warm-up of a ``total``-step run also fits the fusion path (warm start).

    Only ``config.fusion_warm_start`` runs of at least ``config.min_steps`` steps: on shorter
    runs (the small-data schedule, below about 770 cells with the defaults) the streams are
    still unstructured at the switch, and the large first gradients of a random fusion path
    are what structures them (benchmarks/EXPERIMENTS.md, "Issue 17, session 21").
    """
    return config.fusion_warm_start and reaches_step_floor(total, config)


def decoder_width(total: int, config: SCHelixConfig) -> int:
    """Hidden width of the decoders of a ``total``-step run.

    ``config.decoder_hidden`` from the step floor up (the runs that also get the fusion warm
    start, :func:`warm_starts_fusion`); shorter runs (small data) use at most
    ``config.decoder_hidden_small``: wide decoders fit the few cells themselves instead of
    shaping the embedding (benchmarks/EXPERIMENTS.md, "Issue 17, session 23").
    """
    if reaches_step_floor(total, config):
        return config.decoder_hidden
    return min(config.decoder_hidden, config.decoder_hidden_small)


def sized_for_run(config: SCHelixConfig, total: int) -> SCHelixConfig:
    """``config`` with the decoder width this ``total``-step run uses (:func:`decoder_width`),
    so that the recorded and saved settings are the ones the network was built with."""
    return config.replace(decoder_hidden=decoder_width(total, config))


def _mix(data: TrainData, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    xv, xi = data.x_variant[idx], data.x_anchor[idx]
    labels = data.labels[idx] if data.labels is not None else None
    if data.neighbors is None:
        return xv, xi, labels
    nb = data.neighbors[idx]
    pick = torch.randint(nb.shape[1], (len(idx),), generator=gen)
    j = nb[torch.arange(len(idx)), pick].long()
    a = torch.rand(len(idx), 1, generator=gen).to(xv.device)
    xv = a * xv + (1 - a) * data.x_variant[j]
    xi = a * xi + (1 - a) * data.x_anchor[j]
    if labels is not None:  # a mixed cell keeps its label only if both parents share it
        labels = torch.where(labels == data.labels[j], labels, torch.full_like(labels, -1))
    return xv, xi, labels


def _to_device(data: TrainData, device: str) -> bool:
    """Put the scaled rows on a CUDA device when they fit (:meth:`ScaledRows.to_device`)."""
    from schelix.rows import ScaledRows

    if not str(device).startswith("cuda"):
        return False
    for rows in (data.x_variant, data.x_anchor):
        if isinstance(rows, ScaledRows) and rows.device_rows is None:
            rows.to_device(device)
    return True


def _full_rows(x: np.ndarray, rows: np.ndarray | None, n: int) -> np.ndarray:
    """``x`` (one row per cell of ``rows``) as ``n`` rows, NaN for cells left out."""
    if rows is None:
        return x
    out = np.full((n, x.shape[1]), np.nan, dtype=x.dtype)
    out[rows] = x
    return out


def _flush(log: list, state: TrainState, total: int, start: int, callbacks, bar) -> None:
    """Read the pending steps' losses from the device in one transfer; record and report them.

    On a GPU this runs every :data:`LOG_EVERY` steps (and at snapshots), not every step, so
    the device is never waited on just to log; on the CPU every step.
    """
    flat = torch.cat([entry[3] for entry in log]).tolist()
    pos = 0
    for step, phase, names, _, elapsed in log:
        values = flat[pos : pos + len(names)]
        pos += len(names)
        losses = dict(zip(names, values))
        eta = elapsed / max(step - start, 1) * (total - step)
        record = StepRecord(step, total, phase, losses, state.seconds + elapsed, eta)
        state.history.append({"step": step, "phase": phase, **losses})
        if not all(math.isfinite(v) for v in values):
            log.clear()
            raise FloatingPointError(f"scHelix loss became non-finite at step {step}: {losses}")
        for cb in callbacks:
            cb.on_step(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(phase=phase, loss=f"{losses['total']:.3f}")
    log.clear()


@torch.no_grad()
def embed_all(
    module: SCHelixModule,
    data: TrainData,
    device: str,
    *,
    stages: Sequence[str] = STAGES,
    chunk: int | None = None,
    rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every stage embedding of all cells (or of the cells ``rows``), in eval mode, ``chunk``
    cells at a time (only those are ever dense)."""
    limit_cpu_threads()
    was_training = module.training
    module.eval()
    parts: dict[str, list[np.ndarray]] = {s: [] for s in stages}
    from schelix import rows as rows_mod

    chunk = chunk or rows_mod.CHUNK
    rows = np.arange(data.n_cells) if rows is None else np.asarray(rows)
    for s in range(0, len(rows), chunk):
        idx = torch.as_tensor(rows[s : s + chunk])
        out = module.embed(data.x_variant[idx].to(device), data.x_anchor[idx].to(device))
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
    snapshot_rows: np.ndarray | None = None,
) -> TrainState:
    """Train ``module`` on ``data``; resumes from ``state`` when given.

    Mini-batches are drawn without replacement per epoch; kNN MixUp
    (training only) mixes each cell with one of its PCA neighbours; the
    warm-up phase optimises Eq. 9 (recon + align + connectivity), the fusion
    phase adds Eq. 10 (fused recon + KD + fused connectivity, and the
    supervised head when labels are given). AdamW with gradient clipping.
    Snapshots embed the cells ``snapshot_rows`` only (the display sample,
    :func:`schelix.display.sample`; other rows NaN), all cells when ``None``.
    """
    limit_cpu_threads()
    state = state or TrainState()
    total, warmup = schedule(data.n_cells, config, max_steps)
    warm_fusion = warm_starts_fusion(total, config)
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
    on_device = _to_device(data, device)
    log: list[tuple] = []
    try:
        while state.step < total:
            if pos + batch_size > data.n_cells:
                perm, pos = torch.randperm(data.n_cells, generator=gen), 0
            idx = perm[pos : pos + batch_size]
            pos += batch_size
            xv, xi, labels = _mix(data if config.mixup else plain, idx, gen)
            fuse = state.step >= warmup
            x_partner = x_partner_anchor = has_partner = None
            if data.partners is not None:
                pp = data.partners[idx]
                pp = pp[
                    torch.arange(len(idx)), torch.randint(pp.shape[1], (len(idx),), generator=gen)
                ].long()
                has_partner = pp >= 0
                rows = pp[has_partner]
                if config.w_mnn_variant > 0:
                    x_partner = data.x_variant[rows].to(device)
                if config.w_mnn_anchor > 0:
                    x_partner_anchor = data.x_anchor[rows].to(device)
                has_partner = has_partner.to(device)
            clusters = data.triplet_clusters
            clusters = None if clusters is None else clusters[idx].to(device)
            total_loss, terms = module.losses(
                xv.to(device), xi.to(device), data.batch[idx].to(device),
                None if labels is None else labels.to(device), fuse=fuse, generator=gen,
                x_partner=x_partner, x_partner_anchor=x_partner_anchor, has_partner=has_partner,
                triplet_clusters=clusters, warm_fusion=warm_fusion,
            )  # fmt: skip
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            opt.step()
            state.step += 1
            phase = "fusion" if fuse else "warmup"
            values = torch.stack([*(v.detach() for v in terms.values()), total_loss.detach()])
            log.append((state.step, phase, [*terms, "total"], values, time.perf_counter() - t0))
            snap = state.step % snap_every == 0 or state.step == total
            if not on_device or snap or state.step % LOG_EVERY == 0:
                _flush(log, state, total, start_step, callbacks, bar)
            if snap:
                fused = embed_all(module, data, device, stages=("fused",), rows=snapshot_rows)
                fused = _full_rows(fused["fused"], snapshot_rows, data.n_cells)
                state.snapshots[state.step] = fused
                for cb in callbacks:
                    cb.on_snapshot(state.step, fused)
            if any(cb.should_stop() for cb in callbacks):
                raise StopTraining
    except StopTraining:
        state.stopped_early = True
    finally:
        if log:
            _flush(log, state, total, start_step, callbacks, bar)
        if bar is not None:
            bar.close()
        state.seconds += time.perf_counter() - t0
        state.optimizer = opt.state_dict()
    return state
