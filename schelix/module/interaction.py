"""Align (Eq. 6, BYOL/SimSiam) and bounded Refine (Eq. 7, App. A.2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Aligner", "Refiner"]


def _mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, dim_out)
    )


class Aligner(nn.Module):
    """Asymmetric Variant -> Anchor alignment.

    A projector shared by both streams (as in SimSiam) and a predictor on the
    variant (student) side only; the anchor (teacher) target is stop-gradient,
    so the anchor manifold is a fixed guide: ``L_align = 2 - 2 cos(p_S, sg(z_T))``.
    """

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.projector = _mlp(dim, hidden, dim)
        self.predictor = _mlp(dim, hidden // 2, dim)

    def forward(
        self, h_var: torch.Tensor, h_inv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p_S, loss)``: the aligned variant embedding and the align loss."""
        p_s = self.predictor(self.projector(h_var))
        z_t = self.projector(h_inv).detach()
        loss = 2 - 2 * F.cosine_similarity(p_s, z_t, dim=-1).mean()
        return p_s, loss


class Refiner(nn.Module):
    """Conservative reverse refinement: ``H_inv + alpha * LN(CrossAttn(H_inv, H_var))``.

    Each cell's ``d``-dim embedding is split into ``n_tokens`` tokens; anchor
    tokens query variant tokens of the *same cell* (never across cells) with a
    softmax temperature. ``alpha = alpha_max * sigmoid(W [H_inv, H_var] + b)``
    is element-wise, bounded by ``alpha_max``, and starts at ``alpha_init``
    (``W = 0``, ``b = logit(alpha_init / alpha_max)``). ``alpha_max = 0``
    disables Refine (ablation S3.2).
    """

    def __init__(
        self,
        dim: int,
        *,
        n_tokens: int = 8,
        temperature: float = 0.3,
        alpha_init: float = 0.3,
        alpha_max: float = 1.5,
    ) -> None:
        super().__init__()
        self.n_tokens, self.tok = n_tokens, dim // n_tokens
        self.temperature = temperature
        self.alpha_max = alpha_max
        self.q = nn.Linear(self.tok, self.tok)
        self.k = nn.Linear(self.tok, self.tok)
        self.v = nn.Linear(self.tok, self.tok)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.gate = nn.Linear(2 * dim, dim)
        nn.init.zeros_(self.gate.weight)
        ratio = min(max(alpha_init / alpha_max, 1e-4), 1 - 1e-4) if alpha_max > 0 else 0.5
        nn.init.constant_(self.gate.bias, math.log(ratio / (1 - ratio)))

    def forward(
        self, h_inv: torch.Tensor, h_var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(H_inv_refined, alpha)``."""
        if self.alpha_max == 0:
            return h_inv, torch.zeros_like(h_inv)
        n = h_inv.shape[0]
        ti = h_inv.reshape(n, self.n_tokens, self.tok)
        tv = h_var.reshape(n, self.n_tokens, self.tok)
        att = self.q(ti) @ self.k(tv).transpose(1, 2) / (self.tok**0.5 * self.temperature)
        dh = (torch.softmax(att, -1) @ self.v(tv)).reshape(n, -1)
        dh = self.norm(self.out(dh))
        alpha = self.alpha_max * torch.sigmoid(self.gate(torch.cat([h_inv, h_var], 1)))
        return h_inv + alpha * dh, alpha
