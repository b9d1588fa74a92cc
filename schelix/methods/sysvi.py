"""sysVI (Hrovatin et al., 2024): cVAE with VampPrior + latent cycle-consistency (VAMP + CYC).

Runs scvi-tools' :class:`scvi.external.SysVI` on the log-normalized HVG pool with
the batch as the "system" that the cycle-consistency loss corrects. Loss
settings follow the sysVI paper: 5 VampPrior components ("even a relatively
small number of prior components (e.g. five) enables good integration"), a
cycle loss weight of 5 (the weight "around 5" its tutorial recommends; 2 or 5
were selected on most benchmark datasets) and no KL warm-up. The architecture
is the scHelix paper's Table 8 (2 layers, 128 hidden units, 10 latent
dimensions, as for scVI); Table 8's ``prior='standard_normal'`` is *not* used,
since VAMP + CYC is the model the sysVI paper recommends (SPEC §6).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from schelix.errors import SchelixError
from schelix.methods.base import ProgressCallback, register
from schelix.methods.scvi import ScviProgress, hvg_copy, quiet, trainer_device

__all__ = ["sysvi"]


def _check_log_normalized(data: ad.AnnData) -> None:
    """SysVI models log-normalized values; refuse raw counts in ``X``."""
    x = data.X[: min(500, data.n_obs)]
    values = x.data if sp.issparse(x) else np.asarray(x).ravel()
    if values.size and values.max() > 50 and np.allclose(values, np.round(values)):
        raise SchelixError(
            "sysVI expects log-normalized expression in adata.X, but X holds raw counts",
            "run schelix.pp.preprocess (or schelix.pp.normalize) first",
        )


@register("sysvi", label="sysVI", uses_gpu=True)
def sysvi(
    adata: ad.AnnData,
    *,
    batch_key: str,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    max_epochs: int | None = None,
    z_distance_cycle_weight: float = 5.0,
    n_prior_components: int = 5,
    kl_weight: float = 1.0,
    n_latent: int = 10,
    n_hidden: int = 128,
    n_layers: int = 2,
    batch_size: int = 128,
    lr: float = 1e-3,
) -> np.ndarray:
    """sysVI (VAMP + CYC) latent space of the log-normalized HVGs, batch = system.

    Parameters
    ----------
    adata
        Preprocessed AnnData: log-normalized ``X`` and the HVG pool in
        ``var["highly_variable"]``. Not modified.
    batch_key
        Column of ``adata.obs`` used as the system covariate (corrected by the
        cycle-consistency loss; at least two values).
    seed
        Seed for ``scvi.settings.seed`` and for picking the VampPrior pseudoinputs.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"mps"``.
    progress
        ``progress(fraction, message)`` after each epoch (and during long ones);
        raising from it cancels training and the exception propagates.
    max_epochs
        Training epochs; ``None`` = scvi-tools' heuristic
        (``min(400, round(400 * 20000 / n_cells))``).
    z_distance_cycle_weight
        Weight of the latent cycle-consistency loss (higher = stronger batch
        correction; the paper selected 2-5, 50 only on one unbalanced case).
    n_prior_components
        Number of VampPrior components (pseudoinputs drawn from the cells).
    kl_weight
        Weight of the KL term (constant: sysVI disables KL warm-up).
    n_latent, n_hidden, n_layers
        Architecture of encoder/decoder (paper Table 8: 10, 128, 2; scvi-tools'
        own SysVAE defaults are 15, 256, 2).
    batch_size, lr
        Minibatch size and Adam learning rate (scvi-tools' defaults).

    Returns
    -------
    ``(n_cells, n_latent)`` float32 posterior means.
    """
    from scvi import settings
    from scvi.external import SysVI

    data = hvg_copy(adata, batch_key=batch_key, layer=None, method="sysVI")
    _check_log_normalized(data)
    n_systems = data.obs[batch_key].nunique()
    if n_systems < 2:
        raise SchelixError(
            f"sysVI needs at least two batches, but '{batch_key}' has {n_systems}",
            "choose a batch column with two or more values",
        )
    if not 1 <= n_prior_components <= data.n_obs:
        raise SchelixError(
            f"n_prior_components={n_prior_components} is outside 1..{data.n_obs} (number of cells)",
            "use a small number such as 5",
        )
    rng = np.random.default_rng(seed)
    pseudoinputs = np.sort(rng.choice(data.n_obs, n_prior_components, replace=False))
    with quiet():
        settings.seed = seed
        SysVI.setup_anndata(data, batch_key=batch_key)
        model = SysVI(
            data,
            prior="vamp",
            n_prior_components=n_prior_components,
            pseudoinputs_data_indices=pseudoinputs,
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
        )
        callback = ScviProgress(progress, "sysVI")
        model.train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            plan_kwargs={
                "lr": lr,
                "max_kl_weight": kl_weight,
                "z_distance_cycle_weight": z_distance_cycle_weight,
            },
            enable_progress_bar=False,
            callbacks=[callback.callback()],
            **trainer_device(device),
        )
        callback.raise_if_cancelled()
        latent = model.get_latent_representation(batch_size=1024)
    if progress is not None:
        progress(1.0, "sysVI: done")
    return np.asarray(latent, dtype=np.float32)
