"""HyperFusion (Eq. 8) and the simple-sum fusion of ablation S4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HyperFusion", "SumFusion"]


class HyperFusion(nn.Module):
    """``H_fused = LN(H_inv_ref + g * lambda_Delta * MLP(H_var; theta_i))``.

    A hypernetwork reads the refined anchor embedding and emits, per cell,
    rank-``r`` factors ``U, V`` that add to the static weights of a two-layer
    MLP applied to the variant embedding, and a gate ``g = sigmoid(theta_gate)``.
    Each layer is ``(W_l + U_l V_l^T / r) h``: the low-rank term is divided by the rank ``r``
    (not in Eq. 8), so its size does not grow with ``r`` (a sum of ``r`` rank-one terms) and
    the per-cell update stays on the scale of ``W_l`` whatever rank is chosen. The factors are
    never materialised as ``d x d`` matrices: ``(W + U V^T / r) h = W h + U (V^T h) / r``.
    """

    def __init__(
        self, dim: int, *, rank: int = 8, delta_scale: float = 0.6, hidden: int = 128
    ) -> None:
        super().__init__()
        self.dim, self.rank, self.delta_scale = dim, rank, delta_scale
        n_factor = 2 * (2 * dim * rank)  # U and V for each of the two layers
        self.hyper = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, n_factor + dim)
        )
        with torch.no_grad():  # start with small per-cell factors
            self.hyper[-1].weight.mul_(0.1)
        self.w1 = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, h_inv_ref: torch.Tensor, h_var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(H_fused, gate)``."""
        n, d, r = h_var.shape[0], self.dim, self.rank
        theta = self.hyper(h_inv_ref)
        u1, v1, u2, v2 = theta[:, : 4 * d * r].reshape(n, 4, d, r).unbind(1)
        gate = torch.sigmoid(theta[:, 4 * d * r :])

        def layer(
            lin: nn.Linear, u: torch.Tensor, v: torch.Tensor, x: torch.Tensor
        ) -> torch.Tensor:
            low = torch.einsum("ndr,nd->nr", v, x)
            return lin(x) + torch.einsum("ndr,nr->nd", u, low) / r

        mlp = layer(self.w2, u2, v2, F.gelu(layer(self.w1, u1, v1, h_var)))
        return self.norm(h_inv_ref + gate * self.delta_scale * mlp), gate


class SumFusion(nn.Module):
    """Ablation S4: ``H_fused = LN(H_inv_ref + H_var)``."""

    def __init__(self, dim: int, **_: object) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, h_inv_ref: torch.Tensor, h_var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.norm(h_inv_ref + h_var), torch.ones_like(h_var)
