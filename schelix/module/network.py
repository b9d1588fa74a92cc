"""The scHelix network: two streams, Align -> Refine -> Fuse, and every loss term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from schelix.config import SCHelixConfig
from schelix.module.fusion import HyperFusion, SumFusion
from schelix.module.interaction import Aligner, Refiner
from schelix.module.losses import (
    TeacherPrototypes,
    connectivity_loss,
    distillation_loss,
    mnn_contrastive_loss,
    reconstruction_loss,
)
from schelix.module.streams import Decoder, DiffusionEncoder, LinearEncoder
from schelix.triplets import triplet_loss

__all__ = ["SCHelixModule", "STAGES", "LOSS_TERMS"]

#: Stage embeddings, in the order of the Align -> Refine -> Fuse trajectory.
STAGES = ("variant", "variant_aligned", "anchor", "anchor_refined", "fused")
#: Every loss term a step can report (warm-up terms first); "total" is their weighted sum.
LOSS_TERMS = (
    "rec_variant", "rec_anchor", "align", "conn_variant", "conn_anchor",
    "mnn_variant", "mnn_anchor", "rec_fused", "kd", "conn_fused", "triplet", "supervised",
)  # fmt: skip


class SCHelixModule(nn.Module):
    """Anchor (teacher) and Variant (student) streams with their interaction.

    Parameters
    ----------
    n_variant, n_anchor
        Genes in each stream (hard barrier: each encoder sees only its own).
    n_batches
        Batches, for the batch-conditioned decoders.
    n_labels
        Cell-type classes for the semi-supervised head (0 = unsupervised).
    config
        Hyperparameters.
    """

    def __init__(
        self, n_variant: int, n_anchor: int, n_batches: int, n_labels: int, config: SCHelixConfig
    ) -> None:
        super().__init__()
        c = self.config = config
        d = c.latent_dim
        enc = LinearEncoder if c.linear_encoder else DiffusionEncoder
        kw = dict(
            n_scales=c.n_scales, xi1=c.hp_alpha, xi2=c.hp_beta, graph_dim=c.graph_dim,
            temperature=c.graph_temperature, top_k=c.graph_top_k, rebuild_every=c.graph_rebuild_every,
        )  # fmt: skip
        self.enc_variant = enc(n_variant, d, **kw)
        self.enc_anchor = enc(n_anchor, d, **kw)
        nb = n_batches if c.decoder_batch_conditioning else 0
        self.dec_variant = Decoder(d, n_variant, hidden=c.decoder_hidden, n_batches=nb)
        self.dec_anchor = Decoder(d, n_anchor, hidden=c.decoder_hidden, n_batches=nb)
        self.dec_fused = Decoder(d, n_variant + n_anchor, hidden=c.decoder_hidden, n_batches=nb)
        self.aligner = Aligner(d)
        self.aligned_norm = nn.LayerNorm(d)
        self.refiner = Refiner(
            d, n_tokens=c.refine_tokens, temperature=c.refine_temperature,
            alpha_init=c.refine_alpha_init, alpha_max=c.refine_alpha_max,
        )  # fmt: skip
        fusion = HyperFusion if c.fusion == "hyper" else SumFusion
        self.fusion = fusion(d, rank=c.fusion_rank, delta_scale=c.fusion_delta_scale)
        self.prototypes = TeacherPrototypes(c.n_prototypes, d, momentum=c.prototype_momentum)
        self.classifier = nn.Linear(d, n_labels) if n_labels > 1 else None
        self.n_batches = n_batches

    def forward(
        self, x_var: torch.Tensor, x_inv: torch.Tensor, *, fuse: bool = True,
        detach_streams: bool = False,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Every stage embedding of a batch of cells (``fuse=False`` stops after Align;
        ``detach_streams`` lets no gradient from Refine and Fuse reach the two streams)."""
        w_var = self.enc_variant.effective_weight()
        h_var = self.enc_variant(x_var, w_var)
        w_inv = self.enc_anchor.effective_weight()
        h_inv = self.enc_anchor(x_inv, w_inv)
        p_s, align = self.aligner(h_var, h_inv)
        out = {
            "variant": h_var,
            "variant_aligned": p_s,
            "anchor": h_inv,
            "align": align,
            "w_var": w_var,
            "w_inv": w_inv,
        }
        if fuse:
            # the variant details that Refine and HyperFusion read: aligned (denoised) or raw
            detail = self.aligned_norm(p_s) if self.config.refine_from_aligned else h_var
            if detach_streams:
                h_inv, detail = h_inv.detach(), detail.detach()
            h_ref, alpha = self.refiner(h_inv, detail)
            h_fused, gate = self.fusion(h_ref, detail)
            out.update(anchor_refined=h_ref, fused=h_fused, alpha=alpha, gate=gate)
        return out

    def losses(
        self,
        x_var: torch.Tensor,
        x_inv: torch.Tensor,
        batch: torch.Tensor,
        labels: torch.Tensor | None,
        *,
        fuse: bool,
        generator: torch.Generator | None = None,
        x_partner: torch.Tensor | None = None,
        x_partner_anchor: torch.Tensor | None = None,
        has_partner: torch.Tensor | None = None,
        triplet_clusters: torch.Tensor | None = None,
        warm_fusion: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, terms)`` of one training step (paper Eq. 9 + I_fuse * Eq. 10).

        ``x_partner`` holds the variant inputs of one cross-batch MNN partner for each cell
        where ``has_partner`` is true (:func:`schelix.neighbors.mnn_partners`); with them the
        ``mnn_variant`` term ``1 - cos(h_var(i), h_var(partner))`` is added; ``x_partner_anchor``
        (the same partners' anchor inputs) adds the ``mnn_anchor`` term, InfoNCE over the pairs
        in the anchor embedding (:func:`schelix.module.losses.mnn_contrastive_loss`).
        ``triplet_clusters`` (``(n, 2)``: anchor cluster, fine within-batch cluster;
        :mod:`schelix.triplets`) adds the ``triplet`` term on the fused embedding.
        ``warm_fusion`` (warm-up steps only): Refine, HyperFusion and the fused decoder also
        learn the fused reconstruction, from the streams' detached embeddings, so that the
        fusion phase starts from a fitted fusion path (:func:`schelix.train.warm_starts_fusion`).
        """
        c = self.config
        warm_fit = warm_fusion and not fuse
        out = self.forward(x_var, x_inv, fuse=fuse or warm_fit, detach_streams=warm_fit)
        onehot = F.one_hot(batch, self.n_batches).to(x_var.dtype)
        self.prototypes.update(out["anchor"], generator)
        target = self.prototypes.pseudo_labels(out["anchor"].detach())
        t = c.conn_temperature
        terms = {
            "rec_variant": reconstruction_loss(self.dec_variant(out["variant"], onehot), x_var),
            "rec_anchor": reconstruction_loss(self.dec_anchor(out["anchor"], onehot), x_inv),
            "align": out["align"],
            "conn_variant": connectivity_loss(self.prototypes.logits(out["variant"], t), target),
            "conn_anchor": connectivity_loss(self.prototypes.logits(out["anchor"], t), target),
        }
        weights = {
            "rec_variant": c.w_rec_variant, "rec_anchor": c.w_rec_anchor, "align": c.w_align,
            "conn_variant": c.w_conn_variant, "conn_anchor": c.w_conn_anchor,
        }  # fmt: skip
        # cross-batch MNN pairs (found in the batch-stable anchor space) pulled together in the
        # variant embedding: the variants keep their own biology but lose the batch shift
        paired = has_partner is not None and bool(has_partner.any())
        if paired and x_partner is not None and c.w_mnn_variant > 0:
            h_p = self.enc_variant(x_partner, out["w_var"])
            cos = F.cosine_similarity(out["variant"][has_partner], h_p, dim=1)
            terms["mnn_variant"] = (1 - cos).mean()
            weights["mnn_variant"] = c.w_mnn_variant
        # the same pairs made each other's nearest in the anchor embedding (contrastive)
        if paired and x_partner_anchor is not None and c.w_mnn_anchor > 0:
            h_pa = self.enc_anchor(x_partner_anchor, out["w_inv"])
            terms["mnn_anchor"] = mnn_contrastive_loss(
                out["anchor"][has_partner], h_pa, temperature=c.mnn_temperature
            )
            weights["mnn_anchor"] = c.w_mnn_anchor
        if fuse or warm_fit:
            x_full = torch.cat([x_var, x_inv], 1)
            terms["rec_fused"] = reconstruction_loss(self.dec_fused(out["fused"], onehot), x_full)
            weights["rec_fused"] = c.w_rec_fused
        if fuse:
            fused = out["fused"]
            terms["kd"] = distillation_loss(
                self.prototypes.logits(out["anchor_refined"], t), self.prototypes.logits(fused, t),
                threshold=c.kd_conf_threshold, power=c.kd_conf_power,
            )  # fmt: skip
            terms["conn_fused"] = connectivity_loss(self.prototypes.logits(fused, t), target)
            weights.update(kd=c.w_kd, conn_fused=c.w_conn_fused)
            if triplet_clusters is not None and c.w_triplet > 0:
                anchor, fine = triplet_clusters.unbind(1)
                terms["triplet"] = triplet_loss(
                    fused, batch, anchor, fine, c.triplet_margin, generator
                )
                weights["triplet"] = c.w_triplet
            if self.classifier is not None and labels is not None:
                known = labels >= 0
                if bool(known.any()):
                    terms["supervised"] = F.cross_entropy(
                        self.classifier(fused[known]), labels[known]
                    )
                    weights["supervised"] = c.w_supervised
        total = sum(weights[k] * v for k, v in terms.items())
        return total, terms

    @torch.no_grad()
    def embed(self, x_var: torch.Tensor, x_inv: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage embedding (eval mode, no graph rebuild)."""
        out = self.forward(x_var, x_inv, fuse=True)
        return {k: out[k] for k in STAGES}
