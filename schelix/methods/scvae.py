"""scVAE, the sparsely connected VAE (``papers/scvae_sparse.txt``), written from the paper.

A ZINB VAE on the *full* gene space: the first encoder layer and the last
decoder layer are sparsely connected (SC) layers, ``x (M ⊙ W) + b``, with one
binary mask per batch over shared weights; a pair of batchified modules (BM,
``h + beta * tanhshrink(W_b h)`` with one sub-module per batch) sits in the
encoder and decoder. Training alternates weight updates (back-propagation,
masks fixed) with connection updates (weights fixed): adjustment by
reconstruction loss, pruning by weight magnitude, and random adjustment that
keeps the number of connections constant. The connections kept per gene give
the gene-informativeness score scScore.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from schelix.device import resolve_device
from schelix.errors import SchelixError
from schelix.methods.base import ProgressCallback, register
from schelix.methods.scvae_module import _build
from schelix.methods.scvae_sc import (
    _encoder_input,
    _initial_masks,
    _update_connections,
    _zinb_nll,
)

__all__ = ["ScVAEResult", "fit_scvae", "scscore", "scvae"]


@dataclass(frozen=True)
class ScVAEResult:
    """A trained scVAE: the embedding and the SC layer's connections per gene and batch."""

    embedding: np.ndarray  # (n_cells, n_latent) posterior means
    connections: np.ndarray  # (n_batches, n_genes) connections per gene in each batch mask
    n_min: int
    n_max: int
    gene_names: list[str]

    @property
    def scscore(self) -> pd.Series:
        """Connections per gene (mean over batch masks), scaled so n_min -> 0 and n_max -> 1."""
        score = (self.connections.mean(0) - self.n_min) / max(self.n_max - self.n_min, 1)
        return pd.Series(np.clip(score, 0.0, 1.0), index=self.gene_names, name="scscore")


def fit_scvae(
    adata: ad.AnnData,
    *,
    batch_key: str,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    epochs: int = 100,
    batch_size: int = 128,
    n_hidden: int = 128,
    n_latent: int = 10,
    alpha_init: float = 0.2,
    alpha_min: float = 0.05,
    alpha_max: float = 0.5,
    frac_add_loss: float = 0.06,
    frac_remove_loss: float = 0.08,
    frac_prune_weight: float = 0.02,
    q_w: float = 0.001,
    v_w: float = 1e-5,
    beta_bm: float = 1.0,
    depth_jitter: float = 0.02,
    lr: float = 3e-3,
    kl_warmup_epochs: int = 0,
    sc_activation: bool = False,
    fc_after_sc: bool = True,
    mask_init: str = "shared",
    update_every: int = 10,
    bm_at: str = "latent",
    normalize_input: bool = False,
) -> ScVAEResult:
    """Train scVAE on all genes of ``layers["counts"]``; return embedding and connections.

    Paper values: alpha_init 0.2, alpha_min 0.05, alpha_max 0.5, n_al = 0.06 G,
    n_pl = 0.08 G, n_pw = 0.02 G, q_w = 0.1 %, v_w = 1e-5, beta_bm = 1; input
    log1p(counts) (no gene selection, no size normalisation); mini-batches drawn
    with replacement, equally from every batch; each cell's counts scaled by
    U[0.98, 1.02] (sequencing-depth augmentation); decoder mask = encoder mask
    transposed; one mask per batch over shared weights.

    Choices where the paper is open (the same on every dataset): 100 epochs of
    ceil(n_cells / 128) steps; SC width 128 (the paper's parameter count
    implies ~64, which scored CellBench Overall 0.553 against 0.700 for 128,
    seed 0, and did not close the single-batch gap to scVI either:
    benchmarks/EXPERIMENTS.md, issue 14)
    and a 10-d latent (the paper's "emb10"); one FC layer after the
    SC layer (and mirrored in the decoder), BatchNorm + ReLU; every batch mask
    starts from the same random mask (``mask_init="shared"``; ``"independent"``
    draws one per batch); a connection update after every ``update_every``
    epochs but in the last 20 %, using each gene's MSE (raw counts vs the ZINB
    mean) accumulated since the last update. The interval is open too: the
    updated connections "will be used in the upcoming training epochs"
    (App. A.2.1 (f)), plural, so the default is 10 epochs (8 updates in 100
    epochs; none in runs of 10 epochs or fewer). With 1 epoch the batches'
    masks drift apart (Jaccard 0.67 against 0.91) and one seed in three to
    five aligned one batch's T/NK cells onto the B cells on pbmc_3chem
    (benchmarks/EXPERIMENTS.md, issue 14, session 9); ZINB mean = softmax(decoder) x
    library size, per-gene dispersion and per-batch-and-gene dropout logits;
    ZINB summed over genes, KL over latent dimensions; Adam, lr 3e-3.

    Where the BM pair sits is open ("injected into the encoder (eBM) and
    decoder (dBM) symmetrically", App. A.3.1). ``bm_at="latent"`` (default)
    puts the eBM on the encoder's last hidden layer (after the FC layer,
    before the mean / log-variance heads) and the dBM on the decoder's first
    hidden layer; ``bm_at="sc"`` puts the eBM right after the encoder's SC
    layer and the dBM right before the decoder's. The paper is silent on the
    KL term; the default is the plain VAE objective (KL weight 1 throughout,
    ``kl_warmup_epochs=0``); ``kl_warmup_epochs=N`` raises the weight linearly
    from 0 to 1 over N epochs, as scvi-tools does with 400. Together the two
    defaults scored Overall 0.907 +- 0.013 on CellBench (PCA 0.877) and
    0.856 +- 0.068 on pbmc_3chem (PCA 0.826), 3 seeds, against 0.670 and 0.714
    for ``bm_at="sc"`` with a 400-epoch warm-up; either change alone stays
    below PCA (benchmarks/EXPERIMENTS.md, issue 14, session 8). With the
    10-epoch update interval as well: 0.915 +- 0.016 and 0.864 +- 0.005
    (session 9).
    ``sc_activation=True`` applies eq. (1)'s sigma (BatchNorm + ReLU) to the SC
    output *before* the eBM rather than after it (with ``bm_at="sc"``), and
    ``fc_after_sc=False`` drops the paper's "optional FC layer" after the SC
    layer (and its mirror in the decoder); neither beat the scores beyond seed
    noise on one batch. ``normalize_input=True`` scales each cell to 10,000
    counts before log1p: *not* the paper's input (App. A.1.1), an experiment.
    """
    import torch

    for name, value, allowed in (
        ("mask_init", mask_init, ("shared", "independent")),
        ("bm_at", bm_at, ("sc", "latent")),
    ):
        if value not in allowed:
            raise SchelixError(f"scVAE: {name}={value!r} is unknown", f"use one of {allowed}")
    if int(update_every) < 1:
        raise SchelixError(f"scVAE: update_every={update_every} is < 1", "use 1 or more epochs")
    if "counts" not in adata.layers:
        raise SchelixError(
            "scVAE models raw counts, but adata.layers['counts'] is missing",
            "load a file with raw UMI counts (not log-normalized values)",
        )
    dev = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    counts = sp.csr_matrix(adata.layers["counts"], dtype=np.float32)
    G, H = adata.n_vars, n_hidden
    codes = pd.Categorical(adata.obs[batch_key]).codes.astype(np.int64)
    n_b = int(codes.max()) + 1
    n_min, n_max = max(1, int(alpha_min * H)), max(1, int(alpha_max * H))
    n_init = min(max(int(alpha_init * H), n_min), n_max)
    masks = _initial_masks(n_b, G, H, n_init, shared=mask_init == "shared", gen=gen)
    weights = masks.float()  # the same masks as 0/1 factors, refreshed after each update
    model = _build(
        G,
        H,
        n_latent,
        n_b,
        alpha_init,
        beta_bm,
        seed,
        sc_activation=sc_activation,
        fc_after_sc=fc_after_sc,
        bm_at=bm_at,
    ).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    limits = {
        "n_min": n_min,
        "n_max": n_max,
        "n_al": int(frac_add_loss * G),
        "n_pl": int(frac_remove_loss * G),
        "n_pw": int(frac_prune_weight * G),
        "q_w": q_w,
        "v_w": v_w,
        "gen": gen,
    }

    def to_torch(rows: np.ndarray, jitter: bool):
        """Dense ``(log1p(counts), counts)`` of one mini-batch (at most ``batch_size`` x genes):
        small enough to hold dense, and it spares the sparse-COO build and conversions."""
        m = counts[rows].toarray()
        if jitter:
            m *= rng.uniform(1 - depth_jitter, 1 + depth_jitter, (len(rows), 1)).astype(np.float32)
        raw = torch.from_numpy(m).to(dev)
        return _encoder_input(raw, normalize=normalize_input), raw

    members = [np.flatnonzero(codes == b) for b in range(n_b)]
    present = [b for b in range(n_b) if len(members[b])]
    per_batch = max(2, batch_size // len(present))
    steps = max(1, math.ceil(adata.n_obs / batch_size))
    last_update = int(0.8 * epochs)
    se = torch.zeros(n_b, G, device=dev)
    for epoch in range(epochs):
        model.train()
        kl_weight = min(1.0, epoch / kl_warmup_epochs) if kl_warmup_epochs > 0 else 1.0
        for _ in range(steps):
            groups = [(b, rng.choice(members[b], per_batch, replace=True)) for b in present]
            xs = [(b, *to_torch(rows, True)) for b, rows in groups]
            mu_z, logvar = model.encode([(b, x) for b, x, _ in xs], weights)
            z = mu_z + torch.randn(mu_z.shape, generator=gen, device=dev) * (0.5 * logvar).exp()
            logits = model.decode(z, [(b, per_batch) for b in present], weights)
            raw = torch.cat([r for _, _, r in xs])
            bidx = torch.tensor(np.repeat(present, per_batch), device=dev)
            mean = torch.softmax(logits, 1) * raw.sum(1, keepdim=True)
            pi = model.pi_logits[bidx]
            nll = _zinb_nll(raw, mean, model.log_theta.clamp(-8, 8).exp(), pi)
            kl = -0.5 * (1 + logvar - mu_z.pow(2) - logvar.exp()).sum(1).mean()
            loss = nll + kl_weight * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # per-gene squared error of the ZINB mean, per batch
                err = (raw - torch.sigmoid(-pi) * mean).pow(2)
                se.index_add_(0, bidx, err)
        if not math.isfinite(loss.item()):
            raise SchelixError(
                "scVAE training diverged (the loss is not finite)",
                "lower lr, or check layers['counts'] for negative or NaN values",
            )
        if epoch < last_update and (epoch + 1) % update_every == 0:  # stage II, weights fixed
            with torch.no_grad():
                for b in present:  # each gene's squared error since the last update
                    _update_connections(masks[b], model.w_enc, se[b], **limits)
                weights = masks.float()
            se.zero_()
        if progress is not None:
            warm = f", KL weight {kl_weight:.2f}" if kl_warmup_epochs > 0 else ""
            progress(
                (epoch + 1) / epochs,
                f"scVAE epoch {epoch + 1}/{epochs}, loss {loss.item():.1f}{warm}",
            )

    model.eval()
    emb = np.zeros((adata.n_obs, n_latent), dtype=np.float32)
    with torch.no_grad():
        for b in present:
            for i in range(0, len(members[b]), 2048):
                rows = members[b][i : i + 2048]
                emb[rows] = model.encode([(b, to_torch(rows, False)[0])], weights)[0].cpu().numpy()
    return ScVAEResult(
        emb, masks.sum(2).cpu().numpy(), n_min, n_max, list(map(str, adata.var_names))
    )


@register("scvae", label="scVAE (sparse)", needs_counts=True, uses_gpu=True)
def scvae(
    adata: ad.AnnData,
    *,
    batch_key: str,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    **params: object,
) -> np.ndarray:
    """scVAE embedding (posterior means) over all genes; options as in :func:`fit_scvae`."""
    return fit_scvae(
        adata, batch_key=batch_key, seed=seed, device=device, progress=progress, **params
    ).embedding  # type: ignore[arg-type]


def scscore(
    adata: ad.AnnData,
    *,
    batch_key: str,
    n_repeats: int = 1,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    key_added: str | None = "scvae_scscore",
    **params: object,
) -> pd.Series:
    """scScore_n: per-gene SC-layer connections averaged over ``n_repeats`` models, in [0, 1].

    Trains ``n_repeats`` scVAE models (seeds ``seed .. seed + n_repeats - 1``;
    the paper's scScore_20 uses 20). At initialisation every gene scores
    ``(alpha_init - alpha_min) / (alpha_max - alpha_min)`` (0.33 by default);
    higher means more informative. Writes ``var[key_added]`` unless
    ``key_added`` is None, with parameters in ``uns["schelix"]["scscore"]``.
    """
    scores = []
    for r in range(n_repeats):
        sub = (
            None
            if progress is None
            else (
                lambda f, m, r=r: progress((r + f) / n_repeats, f"repeat {r + 1}/{n_repeats}: {m}")
            )
        )
        scores.append(
            fit_scvae(
                adata, batch_key=batch_key, seed=seed + r, device=device, progress=sub, **params
            ).scscore
        )  # type: ignore[arg-type]
    score = pd.concat(scores, axis=1).mean(1).rename(f"scscore_{n_repeats}")
    if key_added is not None:
        adata.var[key_added] = score.to_numpy()
        adata.uns.setdefault("schelix", {})["scscore"] = {
            "batch_key": batch_key,
            "n_repeats": n_repeats,
            "seed": seed,
            "key_added": key_added,
            **{k: v for k, v in params.items() if isinstance(v, str | int | float | bool)},
        }
    return score
