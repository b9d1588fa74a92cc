"""scVAE's training pieces (``papers/scvae_sparse.txt`` App. A.2): the ZINB likelihood and
one connection update of a sparsely connected (SC) layer's binary mask.

Kept apart from :mod:`schelix.methods.scvae` (the model and its training loop) so each
module stays one concept and under the size limit.
"""

from __future__ import annotations

__all__: list[str] = []


def _zinb_nll(x, mu, theta, pi_logits):
    """Negative log-likelihood of a zero-inflated NB (mean mu, inverse dispersion theta)."""
    import torch
    import torch.nn.functional as F

    eps = 1e-8
    log_t_mu = torch.log(theta + mu + eps)
    nb_zero = theta * (torch.log(theta + eps) - log_t_mu)  # log NB(0)
    log_pi_free = -F.softplus(pi_logits)  # log(1 - pi)
    zero = torch.logaddexp(pi_logits + log_pi_free, log_pi_free + nb_zero)
    nonzero = (
        log_pi_free
        + nb_zero
        + x * (torch.log(mu + eps) - log_t_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )
    return -torch.where(x < eps, zero, nonzero).sum(1).mean()


def _encoder_input(raw, *, normalize: bool):
    """log1p of the counts (App. A.1.1); ``normalize`` first scales each cell to 10,000 counts
    (size normalisation: *not* the paper's input, kept as an experiment)."""
    import torch

    if normalize:
        raw = raw / raw.sum(1, keepdim=True).clamp(min=1.0) * 1e4
    return torch.log1p(raw)


def _initial_masks(n_b: int, G: int, H: int, n_init: int, *, shared: bool, gen):
    """One (G x H) bool mask per batch, each gene with ``n_init`` random outputs (App. A.2 (a)).

    ``shared``: every batch starts from the same random mask; otherwise each batch draws its
    own. Either way the masks are then updated independently (App. A.2.2).
    """
    import torch

    start = torch.rand(1 if shared else n_b, G, H, generator=gen, device=gen.device)
    return (start.argsort(2) < n_init).expand(n_b, G, H).clone()


def _update_connections(mask, w_enc, mse, *, n_min, n_max, n_al, n_pl, n_pw, q_w, v_w, gen):
    """One connection update of one batch mask (G x H bool), in place; weights are fixed."""
    import torch

    def pick(rows, active: bool):  # a random active (or inactive) output per row
        r = torch.rand(len(rows), mask.shape[1], generator=gen, device=mask.device)
        return torch.where(mask[rows] == active, r, -1.0).argmax(1)

    n = mask.sum(1)
    order = torch.argsort(mse)
    low = order[:n_pl][n[order[:n_pl]] > n_min]  # well reconstructed: drop one connection
    mask[low, pick(low, True)] = False
    high = order.flip(0)[:n_al]
    high = high[n[high] < n_max]  # poorly reconstructed: add one connection
    mask[high, pick(high, False)] = True
    removed, added = len(low), len(high)

    absw = w_enc.detach().abs()[mask]  # prune by weights, below min(q_w quantile, v_w)
    if absw.numel():
        k = max(1, int(q_w * absw.numel()))
        cut = min(float(absw.kthvalue(k).values), v_w)
        weak = mask & (w_enc.detach().abs() < cut)
        rows = torch.nonzero(weak.any(1) & (mask.sum(1) > n_min)).flatten()
        rows = rows[torch.randperm(len(rows), generator=gen, device=rows.device)[:n_pw]]
        if len(rows):
            r = torch.rand(len(rows), mask.shape[1], generator=gen, device=mask.device)
            mask[rows, torch.where(weak[rows], r, -1.0).argmax(1)] = False
            removed += len(rows)

    need = removed - added  # random adjustment keeps the total constant (adds, or removes
    while need != 0:  # when loss-based additions outnumbered the removals)
        n = mask.sum(1)
        free = torch.nonzero(n < n_max if need > 0 else n > n_min).flatten()
        if not len(free):
            break
        rows = free[torch.randperm(len(free), generator=gen, device=free.device)[: abs(need)]]
        mask[rows, pick(rows, need < 0)] = need > 0
        need -= len(rows) if need > 0 else -len(rows)
