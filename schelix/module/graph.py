"""Learnable sparse gene–gene graph with stop-gradient caching (paper §3.3, App. J, Alg. 3)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["LearnableGeneGraph"]


def _to_csr(p: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch flags sparse CSR as "beta" on every conversion
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return p.to_sparse_csr()


class LearnableGeneGraph(nn.Module):
    """``P = sym_norm(symmetrize(top_k(ReLU(Q K^T / tau))) + I)`` over one stream's genes.

    The graph is rebuilt every ``rebuild_every`` training steps. On a rebuild
    step :meth:`propagate` returns the differentiable dense ``P`` for the first
    (1-hop) product so that ``Q`` and ``K`` learn; every other product uses the
    cached, detached sparse ``P`` (stop-gradient on the multi-hop powers).

    Parameters
    ----------
    n_genes
        Number of genes in the stream.
    dim
        Query/key size ``d_a``.
    temperature
        ``tau`` of the similarity.
    top_k
        Neighbours kept per gene before symmetrisation.
    rebuild_every
        Steps between rebuilds (``T``).
    """

    def __init__(
        self,
        n_genes: int,
        *,
        dim: int = 64,
        temperature: float = 0.1,
        top_k: int = 22,
        rebuild_every: int = 25,
    ) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.temperature = temperature
        self.top_k = min(top_k, max(n_genes - 1, 1))
        self.rebuild_every = rebuild_every
        self.query = nn.Parameter(torch.randn(n_genes, dim) / dim**0.5)
        self.key = nn.Parameter(torch.randn(n_genes, dim) / dim**0.5)
        self._cached: torch.Tensor | None = None  # detached sparse CSR P
        self._step = 0

    def build(self) -> torch.Tensor:
        """The differentiable dense ``P`` (G x G) from the current ``Q``, ``K``."""
        s = torch.relu(self.query @ self.key.T / self.temperature)
        s = s - torch.diag_embed(torch.diagonal(s))  # zero diagonal
        vals, idx = torch.topk(s, self.top_k, dim=1)
        a = torch.zeros_like(s).scatter(1, idx, vals)
        a = 0.5 * (a + a.T) + torch.eye(self.n_genes, device=s.device, dtype=s.dtype)
        d = a.sum(1).rsqrt()
        return d[:, None] * a * d[None, :]

    def operators(self, training: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(P_grad or None, P_cached)`` for this forward pass; advances the rebuild clock.

        ``P_grad`` (dense, differentiable) is returned only on rebuild steps in
        training mode; ``P_cached`` is the detached sparse CSR copy used for
        every other hop.
        """
        rebuild = self._cached is None or (training and self._step % self.rebuild_every == 0)
        p_grad = None
        if rebuild:
            p = self.build()
            self._cached = _to_csr(p.detach())
            if training:
                p_grad = p
        if training:
            self._step += 1
        return p_grad, self._cached

    def cached_dense(self) -> torch.Tensor:
        """The current cached ``P`` as a dense tensor (for inspection and tests)."""
        if self._cached is None:
            with torch.no_grad():
                self._cached = _to_csr(self.build())
        return self._cached.to_dense()

    def get_extra_state(self) -> dict:
        """Saved with the weights: the cached ``P`` the model was trained with, and the clock."""
        cached = (
            None if self._cached is None else self._cached.to_dense().to_sparse_coo().coalesce()
        )
        return {"step": self._step, "cached": cached}

    def set_extra_state(self, state: dict) -> None:
        self._step = int(state["step"])
        cached = state["cached"]
        self._cached = None if cached is None else _to_csr(cached.to(self.query.device))

    def _apply(self, fn, recurse: bool = True):  # keep the cache on the module's device
        out = super()._apply(fn, recurse)
        if self._cached is not None and self._cached.device != self.query.device:
            self._cached = self._cached.to(self.query.device)
        return out
