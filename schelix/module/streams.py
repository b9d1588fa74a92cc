"""Stream encoders (multi-scale low/high-pass graph diffusion, Eq. 5) and decoders."""

from __future__ import annotations

import torch
from torch import nn

from schelix.module.graph import LearnableGeneGraph

__all__ = ["DiffusionEncoder", "LinearEncoder", "Decoder"]


class _SymmetricSpMM(torch.autograd.Function):
    """``P @ X`` for a constant symmetric sparse ``P``: the gradient is ``P @ g`` (no transpose)."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.p = p
        return torch.sparse.mm(p, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        return None, torch.sparse.mm(ctx.p, grad)


def _spmm(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _SymmetricSpMM.apply(p, x)


class _Head(nn.Module):
    """Post-projection block shared by both encoders: residual MLP, then LayerNorm.

    The final LayerNorm puts both streams' embeddings on the scale of the
    LayerNorm'd Refine residual (norm ~ sqrt(d)), so ``alpha_max`` bounds the
    Refine update *relative* to the anchor embedding, as App. A.2 intends.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ff = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h + self.ff(h))


class DiffusionEncoder(nn.Module):
    """Multi-scale graph-diffusion encoder of one stream (paper Eq. 5, SPEC §4).

    For scales ``k = 1..K``: ``Z_low = X P^k``, ``Z_high = xi1 (X - X P^k) +
    xi2 X (I - P)``; a per-scale linear map ``[Z_low, Z_high] -> d`` (split as
    ``Z_low A_k + Z_high B_k``) and ``softmax(theta)`` scale weights. Because
    ``P`` is constant between rebuilds, the weighted sum over scales is exactly
    ``X M + b`` with

    ``M = sum_k w_k P^k (A_k - xi1 B_k) + (xi1 + xi2) Bbar - xi2 P Bbar``,
    ``Bbar = sum_k w_k B_k``,

    and ``sum_k w_k P^k C_k`` is evaluated by Horner's rule with ``K`` sparse
    ``G x G`` by ``G x d`` products, independent of the batch size. On a graph
    rebuild step the outermost product uses the differentiable ``P`` (1-hop
    gradient to ``Q``, ``K``); all others use the cached stop-gradient ``P``.
    This is the same function and the same gradients as forming the powers,
    at a small fraction of the cost (never a dense ``P^k``).
    """

    def __init__(
        self,
        n_genes: int,
        latent_dim: int,
        *,
        n_scales: int = 5,
        xi1: float = 0.8,
        xi2: float = 0.2,
        graph_dim: int = 64,
        temperature: float = 0.1,
        top_k: int = 22,
        rebuild_every: int = 25,
    ) -> None:
        super().__init__()
        self.graph = LearnableGeneGraph(
            n_genes,
            dim=graph_dim,
            temperature=temperature,
            top_k=top_k,
            rebuild_every=rebuild_every,
        )
        self.xi1, self.xi2 = xi1, xi2
        scale = (2 * n_genes) ** -0.5
        self.a = nn.Parameter(torch.randn(n_scales, n_genes, latent_dim) * scale)
        self.b = nn.Parameter(torch.randn(n_scales, n_genes, latent_dim) * scale)
        self.bias = nn.Parameter(torch.zeros(latent_dim))
        self.theta = nn.Parameter(torch.zeros(n_scales))
        self.head = _Head(latent_dim)

    def scale_weights(self) -> torch.Tensor:
        """``softmax(theta)``: how much each diffusion scale contributes."""
        return torch.softmax(self.theta, 0)

    def effective_weight(self) -> torch.Tensor:
        """The ``G x d`` matrix ``M`` for this step (advances the graph's rebuild clock)."""
        p_grad, p = self.graph.operators(self.training)
        w = self.scale_weights()
        b_bar = torch.einsum("k,kgd->gd", w, self.b)
        c = self.a - self.xi1 * self.b  # (K, G, d)
        # Horner: P(w1 C1 - xi2 Bbar + P(w2 C2 + P(... + P(wK CK))))
        acc = w[-1] * c[-1]
        for k in range(c.shape[0] - 2, -1, -1):
            acc = _spmm(p, acc) + w[k] * c[k]
        acc = acc - self.xi2 * b_bar
        acc = (p_grad @ acc) if p_grad is not None else _spmm(p, acc)
        return acc + (self.xi1 + self.xi2) * b_bar

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Embed cells ``x`` (n x G). ``weight`` reuses an ``M`` computed for this step."""
        m = self.effective_weight() if weight is None else weight
        return self.head(x @ m + self.bias)


class LinearEncoder(nn.Module):
    """Ablation S6: one linear projection instead of graph diffusion (same head)."""

    def __init__(self, n_genes: int, latent_dim: int, **_: object) -> None:
        super().__init__()
        self.proj = nn.Linear(n_genes, latent_dim)
        self.head = _Head(latent_dim)

    def effective_weight(self) -> None:
        return None

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.proj(x))


class Decoder(nn.Module):
    """Reconstructs a stream's input from its embedding, optionally given the batch.

    Conditioning the decoder on the batch (one-hot) lets the embedding drop the
    batch signal that reconstruction of batch-shifted genes would otherwise
    demand (the scVI decoder does the same).
    """

    def __init__(
        self, latent_dim: int, n_out: int, *, hidden: int = 128, n_batches: int = 0
    ) -> None:
        super().__init__()
        self.n_batches = n_batches
        self.net = nn.Sequential(
            nn.Linear(latent_dim + n_batches, hidden), nn.GELU(), nn.Linear(hidden, n_out)
        )

    def forward(self, h: torch.Tensor, batch_onehot: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_batches and batch_onehot is not None:
            h = torch.cat([h, batch_onehot], dim=1)
        return self.net(h)
