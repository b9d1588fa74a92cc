"""scArches-style query adaptation: batch-specific parameters for new batches, the rest frozen.

The trained network has one batch-dependent part, the decoders' batch one-hot; the encoders
never see the batch. A :class:`QueryAdapter` gives each new (query) batch

- an input shift per gene, added to the scaled variant and anchor inputs of that batch's cells
  before the frozen encoders (zero at the start: adaptation starts from the plain embedding);
- its own decoder column per decoder (the hidden-layer offset the one-hot would add),
  started at the mean of the reference batches' columns.

Only these are trained, on the frozen network's reconstruction and Align losses of the query
cells, plus (``pull``) the query-reference MNN term of :mod:`schelix.mixing`. Reference
batches have no shift, so the reference embedding cannot move.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from schelix.module.network import SCHelixModule
from schelix.module.streams import Decoder

__all__ = ["QueryAdapter"]

_DECODERS = ("dec_variant", "dec_anchor", "dec_fused")


class QueryAdapter(nn.Module):
    """Trainable batch-specific parameters of ``n_query`` new batches of a frozen module."""

    def __init__(self, module: SCHelixModule, n_query: int, n_variant: int, n_anchor: int) -> None:
        super().__init__()
        self.shift_variant = nn.Parameter(torch.zeros(n_query, n_variant))
        self.shift_anchor = nn.Parameter(torch.zeros(n_query, n_anchor))
        d = module.config.latent_dim
        cols = {}
        for name in _DECODERS:
            dec: Decoder = getattr(module, name)
            w = dec.net[0].weight.detach()  # (hidden, d + n_batches)
            start = w[:, d:].mean(1) if dec.n_batches else torch.zeros(w.shape[0])
            cols[name] = nn.Parameter(start.repeat(n_query, 1).clone())
        self.columns = nn.ParameterDict(cols)
        #: fraction of the query cells with a reference MNN partner (set by mapping.adapt)
        self.paired = 0.0

    def shift(
        self, x_var: torch.Tensor, x_inv: torch.Tensor, q: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs of cells of query batches ``q`` (indices into this adapter's batches)."""
        return x_var + self.shift_variant[q], x_inv + self.shift_anchor[q]

    def decode(self, module: SCHelixModule, name: str, h: torch.Tensor, q: torch.Tensor):
        """Decoder ``name`` of the frozen module with the query batches' own column."""
        dec: Decoder = getattr(module, name)
        lin = dec.net[0]
        d = h.shape[1]
        hidden = F.linear(h, lin.weight[:, :d], lin.bias) + self.columns[name][q]
        return dec.net[2](dec.net[1](hidden))

    def losses(
        self,
        module: SCHelixModule,
        x_var: torch.Tensor,
        x_inv: torch.Tensor,
        q: torch.Tensor,
        weights: tuple[torch.Tensor, torch.Tensor],
        pull: tuple[str, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Reconstruction (variant, anchor, fused) and Align losses of query cells.

        ``weights`` are the frozen encoders' effective matrices (computed once); the module
        must be in eval mode, so nothing in it changes (no graph rebuild, no prototype update).
        ``pull = (stage, has, targets)`` adds the mixing term ``1 - cos(stage(i), target(i))``
        for the cells where ``has`` is true (targets: their reference partners' stored
        embeddings, :func:`schelix.mixing.sample_targets`), weighted by ``w_mnn_variant``.
        """
        c = module.config
        xv, xa = self.shift(x_var, x_inv, q)
        h_var = module.enc_variant(xv, weights[0])
        h_inv = module.enc_anchor(xa, weights[1])
        p_s, align = module.aligner(h_var, h_inv)
        detail = module.aligned_norm(p_s) if c.refine_from_aligned else h_var
        h_ref, _ = module.refiner(h_inv, detail)
        fused, _ = module.fusion(h_ref, detail)
        rec = F.mse_loss
        total = (
            c.w_rec_variant * rec(self.decode(module, "dec_variant", h_var, q), x_var)
            + c.w_rec_anchor * rec(self.decode(module, "dec_anchor", h_inv, q), x_inv)
            + c.w_rec_fused
            * rec(self.decode(module, "dec_fused", fused, q), torch.cat([x_var, x_inv], 1))
            + c.w_align * align
        )
        if pull is not None and bool(pull[1].any()):
            stage, has, targets = pull
            emb = {"variant": h_var, "variant_aligned": p_s, "anchor": h_inv,
                   "anchor_refined": h_ref, "fused": fused}[stage]  # fmt: skip
            cos = F.cosine_similarity(emb[has], targets, dim=1)
            total = total + c.w_mnn_variant * (1 - cos).mean()
        return total
