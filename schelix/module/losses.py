"""Self-training signals: EMA teacher prototypes, connectivity (Eq. 9) and KD (Eq. 10) losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TeacherPrototypes", "connectivity_loss", "distillation_loss", "reconstruction_loss"]


class TeacherPrototypes(nn.Module):
    """``K`` unit-norm prototypes kept by EMA over the anchor (teacher) embeddings.

    Pseudo-label of a cell = its nearest prototype by cosine similarity.
    Prototypes are initialised by k-means++ seeding on the first batch and a
    prototype that wins no cell for ``revive_after`` updates is re-seeded on a
    random cell, so none stays dead.
    """

    def __init__(
        self, n_prototypes: int, dim: int, *, momentum: float = 0.99, revive_after: int = 200
    ) -> None:
        super().__init__()
        self.momentum = momentum
        self.revive_after = revive_after
        self.register_buffer("centers", torch.zeros(n_prototypes, dim))
        self.register_buffer("idle", torch.zeros(n_prototypes, dtype=torch.long))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    def _seed(self, z: torch.Tensor, generator: torch.Generator | None) -> None:
        k = self.centers.shape[0]
        idx = [int(torch.randint(len(z), (1,), generator=generator, device="cpu"))]
        for _ in range(1, k):
            d = 1 - (z @ z[idx].T).max(1).values  # cosine distance to the nearest chosen
            p = (d.clamp_min(0) ** 2).cpu()
            p = p / p.sum() if p.sum() > 0 else torch.full_like(p, 1 / len(p))
            idx.append(int(torch.multinomial(p, 1, generator=generator)))
        self.centers.copy_(z[idx])
        self.ready.fill_(True)

    @torch.no_grad()
    def update(self, h_anchor: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """One EMA step towards the mean of the (detached) anchor embeddings assigned to each prototype."""
        z = F.normalize(h_anchor.detach().float(), dim=1)
        if not bool(self.ready):
            self._seed(z, generator)
            return
        assign = (z @ self.centers.T).argmax(1)
        k = self.centers.shape[0]
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(self.centers).index_add_(0, assign, z)
        hit = counts > 0
        means = sums[hit] / counts[hit, None]
        self.centers[hit] = F.normalize(
            self.momentum * self.centers[hit] + (1 - self.momentum) * means, dim=1
        )
        self.idle[hit] = 0
        self.idle[~hit] += 1
        dead = torch.nonzero(self.idle > self.revive_after).flatten()
        if len(dead):
            pick = torch.randint(len(z), (len(dead),), generator=generator, device="cpu").to(
                z.device
            )
            self.centers[dead] = z[pick]
            self.idle[dead] = 0

    def logits(self, h: torch.Tensor, temperature: float) -> torch.Tensor:
        """``cos(H, C) / temperature``."""
        return F.normalize(h, dim=1) @ self.centers.T / temperature

    @torch.no_grad()
    def pseudo_labels(self, h_anchor: torch.Tensor) -> torch.Tensor:
        return (F.normalize(h_anchor, dim=1) @ self.centers.T).argmax(1)


def connectivity_loss(logits: torch.Tensor, pseudo_labels: torch.Tensor) -> torch.Tensor:
    """``L_conn``: cross-entropy of the prototype softmax against the teacher's pseudo-labels."""
    return F.cross_entropy(logits, pseudo_labels)


def distillation_loss(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    *,
    threshold: float = 0.75,
    power: float = 1.0,
) -> torch.Tensor:
    """Confidence-weighted KD: ``mean_i w_i KL(q_T,i || q_S,i)``, ``w_i = max_prob^p`` if ``>= threshold`` else 0."""
    q_t = torch.softmax(teacher_logits.detach(), 1)
    conf = q_t.max(1).values
    w = torch.where(conf >= threshold, conf**power, torch.zeros_like(conf))
    kl = (q_t * (torch.log(q_t.clamp_min(1e-8)) - torch.log_softmax(student_logits, 1))).sum(1)
    return (w * kl).sum() / max(len(w), 1)


def mnn_contrastive_loss(
    h: torch.Tensor, h_partner: torch.Tensor, *, temperature: float
) -> torch.Tensor:
    """Symmetric InfoNCE over cross-batch MNN pairs.

    Row ``i`` of ``h_partner`` is the embedding of cell ``i``'s partner. Each cell's partner
    must be nearer to it (cosine / ``temperature``) than every other cell's partner in the
    mini-batch, and each partner's cell nearer than every other cell: a pull that mixes the
    batches locally, where ``1 - cos`` only moves the pair closer.
    """
    z = F.normalize(h, dim=1)
    z_partner = F.normalize(h_partner, dim=1)
    logits = z @ z_partner.T / temperature
    target = torch.arange(len(z), device=z.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared reconstruction error."""
    return F.mse_loss(x_hat, x)
