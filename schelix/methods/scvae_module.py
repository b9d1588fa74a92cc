"""scVAE's torch network (``papers/scvae_sparse.txt`` §2 and App. A.2-A.3): the sparsely
connected (SC) first encoder and last decoder layers over shared weights, and the pair of
batchified modules (eBM, dBM).

The training loop and the user function are in :mod:`schelix.methods.scvae`.
"""

from __future__ import annotations

import math

__all__: list[str] = []


def _build(
    G: int,
    H: int,
    n_latent: int,
    n_b: int,
    alpha_init: float,
    beta_bm: float,
    seed: int,
    *,
    sc_activation: bool = False,
    fc_after_sc: bool = True,
    bm_at: str = "latent",
):
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)  # CPU: parameters are created on the CPU

    class Batchified(nn.Module):  # X + beta * g_b(X), one FC + Tanhshrink sub-module per batch
        def __init__(self) -> None:
            super().__init__()
            self.sub = nn.ModuleList(
                nn.Sequential(nn.Linear(H, H), nn.Tanhshrink()) for _ in range(n_b)
            )

        def forward(self, h, b: int):
            return h + beta_bm * self.sub[b](h)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            bound = 1.0 / math.sqrt(max(1.0, alpha_init * G))
            self.w_enc = nn.Parameter(torch.empty(G, H).uniform_(-bound, bound, generator=gen))
            self.b_enc = nn.Parameter(torch.zeros(H))
            self.w_dec = nn.Parameter(torch.empty(H, G).uniform_(-0.1, 0.1, generator=gen))
            self.b_dec = nn.Parameter(torch.zeros(G))
            # eq. (1)'s sigma on the SC output: before the eBM (sc_activation) or after it
            act = [nn.BatchNorm1d(H), nn.ReLU()]
            self.sc_act = nn.Sequential(*act) if sc_activation else nn.Identity()
            fc = [nn.Linear(H, H), nn.BatchNorm1d(H), nn.ReLU()] if fc_after_sc else []
            self.enc_fc = nn.Sequential(*([] if sc_activation else act), *fc)
            self.ebm, self.dbm = Batchified(), Batchified()
            self.mean, self.logvar = nn.Linear(H, n_latent), nn.Linear(H, n_latent)
            self.dec_fc = nn.Sequential(  # mirrors the encoder; ends in sigma before the dBM
                nn.Linear(n_latent, H),
                nn.BatchNorm1d(H),
                nn.ReLU(),
                *([nn.Linear(H, H), nn.BatchNorm1d(H), nn.ReLU()] if fc_after_sc else []),
            )
            self.log_theta = nn.Parameter(torch.zeros(G))
            self.pi_logits = nn.Parameter(torch.full((n_b, G), -2.0))

        def encode(self, xs_by_batch, masks):
            # SC layer with this batch's mask, then this batch's eBM sub-module (bm_at "sc")
            sc = [
                (b, self.sc_act(xs @ (self.w_enc * masks[b]) + self.b_enc)) for b, xs in xs_by_batch
            ]
            if bm_at == "sc":
                sc = [(b, self.ebm(h, b)) for b, h in sc]
            h = self.enc_fc(torch.cat([h for _, h in sc]))
            if bm_at == "latent":  # the eBM on the last hidden layer, before mean / logvar
                h = per_batch(self.ebm, h, [(b, len(x)) for b, x in xs_by_batch])
            return self.mean(h), self.logvar(h).clamp(-10, 10)

        def decode(self, z, sizes, masks):
            if bm_at == "latent":  # mirrored: the dBM on the first hidden layer
                h = self.dec_fc[3:](per_batch(self.dbm, self.dec_fc[:3](z), sizes))
            else:
                h = per_batch(self.dbm, self.dec_fc(z), sizes)
            out, i = [], 0
            for b, n in sizes:  # decoder SC mask mirrors the encoder's (its transpose)
                out.append(h[i : i + n] @ (self.w_dec * masks[b].T) + self.b_dec)
                i += n
            return torch.cat(out)

    def per_batch(bm, h, sizes):  # each batch's rows through its own sub-module
        out, i = [], 0
        for b, n in sizes:
            out.append(bm(h[i : i + n], b))
            i += n
        return torch.cat(out)

    if bm_at not in ("sc", "latent"):
        raise ValueError(f"bm_at={bm_at!r}: use 'sc' or 'latent'")

    return Model()
