"""scCRAFT (He et al. 2025, Commun. Biol. 8:7988), written from ``papers/sccraft.txt``.

A VAE whose encoder never sees the batch, a dual generator-decoder that does,
a batch discriminator trained adversarially against the encoder, a cosine
reconstruction term, and a dual-resolution triplet loss on within-batch Leiden
clusters that keeps each batch's own topology while batches are mixed.
"""

from __future__ import annotations

import itertools
import math
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from schelix.device import resolve_device
from schelix.errors import SchelixError, SchelixWarning
from schelix.methods.base import ProgressCallback, register
from schelix.obs import require_column
from schelix.preprocess import hvg_mask
from schelix.triplets import triplet_loss, within_batch_clusters

__all__ = ["dual_resolution_clusters", "sccraft"]


def _hvg_matrix(adata: ad.AnnData) -> np.ndarray:
    """Log-normalized HVGs as dense float32 (the shared pool of :func:`schelix.preprocess.hvg_mask`)."""
    mask = hvg_mask(adata)
    X = adata.X[:, mask]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return np.ascontiguousarray(X, dtype=np.float32)


def dual_resolution_clusters(
    adata: ad.AnnData,
    *,
    batch_key: str,
    low_resolution: float = 0.5,
    high_resolution: float = 7.0,
    n_pcs: int = 50,
    n_neighbors: int = 15,
    seed: int = 0,
) -> pd.DataFrame:
    """Leiden clusters computed *within each batch* at two resolutions (scCRAFT's triplets).

    For every batch separately: PCA of the log-normalized HVGs, a kNN graph,
    Leiden at ``low_resolution``, then Leiden at ``high_resolution`` inside each
    low-resolution cluster (scanpy's ``restrict_to``), so high-resolution
    clusters nest in low-resolution ones.

    Returns
    -------
    DataFrame indexed like ``adata.obs`` with integer columns ``"low"`` and
    ``"high"``; codes are unique across batches.
    """
    X = _hvg_matrix(adata)
    low, high = within_batch_clusters(
        X,
        adata.obs[batch_key].to_numpy(),
        low_resolution,
        high_resolution,
        n_pcs=n_pcs,
        n_neighbors=n_neighbors,
        seed=seed,
    )
    return pd.DataFrame({"low": low, "high": high}, index=adata.obs_names)


def _build(p: int, n_batches: int, n_latent: int, hidden: tuple[int, ...]):
    import torch
    from torch import nn

    def mlp(dims: list[int]) -> nn.Sequential:  # Linear -> BatchNorm -> ReLU per layer
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        return nn.Sequential(*layers)

    class Encoder(nn.Module):  # batch-ignorant: sees only the expression profile
        def __init__(self) -> None:
            super().__init__()
            self.body = mlp([p, *hidden])
            self.mean = nn.Linear(hidden[-1], n_latent)
            self.logvar = nn.Linear(hidden[-1], n_latent)

        def forward(self, x):
            h = self.body(x)
            return self.mean(h), self.logvar(h).clamp(-10, 10)

    class Decoder(nn.Module):  # dual generator G1(Z, v) + G2(v), then f -> NB (mu, r)
        def __init__(self) -> None:
            super().__init__()
            rev = list(hidden[::-1])
            self.g1 = nn.Sequential(mlp([n_latent + n_batches, *rev]), nn.Linear(rev[-1], p))
            self.g2 = nn.Linear(n_batches, p)
            self.f_mean = nn.Linear(p, p)
            self.log_r = nn.Parameter(torch.zeros(p))

        def forward(self, z, v):
            z_hat = torch.relu(self.g1(torch.cat([z, v], 1)) + self.g2(v))
            mean = torch.exp(self.f_mean(z_hat).clamp(-12, 12))
            return mean, torch.exp(self.log_r.clamp(-8, 8)).expand_as(mean)

    disc = nn.Sequential(
        nn.Linear(n_latent, 256),
        nn.LeakyReLU(0.2),
        nn.Linear(256, 256),
        nn.LeakyReLU(0.2),
        nn.Linear(256, n_batches),
    )
    return Encoder(), Decoder(), disc


def _nb_nll(x, mean, r):
    """Negative log-likelihood of the (continuous) negative binomial, mean over entries."""
    import torch

    eps = 1e-8
    log_r_mu = torch.log(r + mean + eps)
    ll = (
        torch.lgamma(x + r)
        - torch.lgamma(x + 1.0)
        - torch.lgamma(r)
        + r * (torch.log(r + eps) - log_r_mu)
        + x * (torch.log(mean + eps) - log_r_mu)
    )
    return -ll.mean()


@register("sccraft", label="scCRAFT", uses_gpu=True)
def sccraft(
    adata: ad.AnnData,
    *,
    batch_key: str,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    epochs: int = 150,
    warmup_epochs: int = 50,
    batch_size: int = 512,
    n_latent: int = 256,
    hidden: tuple[int, ...] = (1024, 512),
    kl_coef: float = 0.005,
    lambda_d: float = 0.2,
    lambda_t: float = 1.0,
    lambda_cos: float = 20.0,
    margin: float = 5.0,
    low_resolution: float = 0.5,
    high_resolution: float = 7.0,
    n_disc_steps: int = 10,
    lr: float = 1e-3,
) -> np.ndarray:
    """scCRAFT embedding of the log-normalized HVGs (``var["highly_variable"]``).

    Loss of encoder E and generator G (paper eq. 6)::

        NB-NLL + kl_coef * KL + lambda_cos * (1 - cos(x, x_hat))
        - lambda_d * CE(D(z), batch)        (only after warmup_epochs)
        + lambda_t * triplet

    with the discriminator D taking ``n_disc_steps`` Adam steps (cross-entropy)
    per step of E and G. Mini-batches hold ``batch_size`` cells, an equal number
    from each batch. Returns the posterior mean (``n_latent`` dims).

    Values from the paper: encoder p -> 1024 -> 512 -> 256 with BatchNorm+ReLU,
    kl_coef 0.005, lambda_D 0.2, lambda_T 1, lambda_cos 20, margin 5, Leiden
    resolutions 0.5 / 7 within each batch, 10 discriminator updates, learning
    rate 1e-3, mini-batch 512, 50 warm-up epochs.

    Choices where the paper leaves a value open (the same on every dataset):
    150 epochs in all, one epoch = ceil(n_cells / batch_size) steps; the
    generator mirrors the encoder (latent+batch -> 512 -> 1024 -> p) and G2 is
    one linear layer of the batch one-hot; ``f`` is one fully connected p -> p
    layer with ``exp`` giving the NB mean, with a learned per-gene dispersion
    ``r``; NB and cosine terms are averaged over genes and cells, KL summed over
    latent dimensions; the NB mean is the reconstruction in the cosine term;
    the discriminator is 256 -> 256 (LeakyReLU) -> batches, trained on the
    step's (detached) embeddings during warm-up too; triplets are drawn inside
    each mini-batch; clusters use a 50-PC, 15-neighbour (Gaussian kernel) graph per batch.
    """
    import torch
    import torch.nn.functional as F

    require_column(adata, batch_key)
    if warmup_epochs >= epochs and lambda_d > 0:
        warnings.warn(
            f"scCRAFT: warmup_epochs ({warmup_epochs}) >= epochs ({epochs}), so the "
            "adversarial batch term is never used",
            SchelixWarning,
            stacklevel=2,
        )
    dev = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)

    X_np = _hvg_matrix(adata)
    codes = pd.Categorical(adata.obs[batch_key]).codes.astype(np.int64)
    n_b = int(codes.max()) + 1
    low, high = within_batch_clusters(X_np, codes, low_resolution, high_resolution, seed=seed)
    X = torch.from_numpy(X_np).to(dev)
    b_t = torch.from_numpy(codes).to(dev)
    low_t, high_t = torch.from_numpy(low).to(dev), torch.from_numpy(high).to(dev)
    onehot = F.one_hot(b_t, n_b).float()

    enc, dec, disc = _build(X.shape[1], n_b, n_latent, tuple(hidden))
    enc, dec, disc = enc.to(dev), dec.to(dev), disc.to(dev)
    opt_eg = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr)

    members = [np.flatnonzero(codes == b) for b in range(n_b)]
    members = [m for m in members if len(m)]
    per_batch = max(2, batch_size // len(members))
    steps = max(1, math.ceil(adata.n_obs / batch_size))
    for epoch in range(epochs):
        adversarial = epoch >= warmup_epochs and lambda_d > 0
        enc.train(), dec.train(), disc.train()
        for _ in range(steps):
            idx = np.concatenate(
                [rng.choice(m, per_batch, replace=len(m) < per_batch) for m in members]
            )
            idx_t = torch.from_numpy(idx).to(dev)
            x, v, b = X[idx_t], onehot[idx_t], b_t[idx_t]
            mu, logvar = enc(x)
            z = mu + torch.randn(mu.shape, generator=gen, device=dev) * torch.exp(0.5 * logvar)
            z_fixed = z.detach()
            for _ in range(n_disc_steps):  # the discriminator's inner minimisation
                opt_d.zero_grad()
                F.cross_entropy(disc(z_fixed), b).backward()
                opt_d.step()
            mean, r = dec(z, v)
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
            cos = (1 - F.cosine_similarity(x, mean, dim=1, eps=1e-8)).mean()
            loss = _nb_nll(x, mean, r) + kl_coef * kl + lambda_cos * cos
            if lambda_t > 0:
                loss = loss + lambda_t * triplet_loss(
                    z, b, low_t[idx_t], high_t[idx_t], margin, gen
                )
            if adversarial:
                loss = loss - lambda_d * F.cross_entropy(disc(z), b)
            opt_eg.zero_grad()
            loss.backward()
            opt_eg.step()
        if not math.isfinite(loss.item()):
            raise SchelixError(
                "scCRAFT training diverged (the loss is not finite)",
                "lower lr or lambda_d, or check the input for NaN values",
            )
        if progress is not None:
            phase = "adversarial" if adversarial else "warm-up"
            progress(
                (epoch + 1) / epochs,
                f"scCRAFT epoch {epoch + 1}/{epochs} ({phase}), loss {loss.item():.3f}",
            )

    enc.eval()
    with torch.no_grad():
        out = [enc(X[i : i + 4096])[0].cpu() for i in range(0, X.shape[0], 4096)]
    return torch.cat(out).numpy().astype(np.float32)
