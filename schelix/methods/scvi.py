"""scVI (Lopez et al., 2018) through scvi-tools, with the paper's Table 8 settings.

Also holds the small pieces shared with :mod:`schelix.methods.sysvi`: the HVG
copy the models train on, the Lightning progress/cancel callback, the device
mapping and a quiet-logging context.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from schelix.device import resolve_device
from schelix.errors import SchelixError
from schelix.methods.base import ProgressCallback, register
from schelix.obs import require_column
from schelix.preprocess import hvg_mask

__all__ = ["ScviProgress", "hvg_copy", "quiet", "scvi", "trainer_device"]

_NOISY_LOGGERS = ("scvi", "lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence scvi-tools / Lightning info logs and chatty warnings, then restore them."""
    import scvi as scvi_tools

    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    verbosity = scvi_tools.settings.verbosity
    try:
        scvi_tools.settings.verbosity = logging.WARNING
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            for msg in (
                ".*does not have many workers.*",
                ".*GPU available but not used.*",
                ".*num_workers.*",
                ".*LightningDeprecationWarning.*",
                ".*not (yet )?supported.*MPS.*",
                ".*Trying to infer the `batch_size`.*",
            ):
                warnings.filterwarnings("ignore", message=msg)
            warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
            warnings.filterwarnings("ignore", category=UserWarning, module="scvi")
            yield
    finally:
        scvi_tools.settings.verbosity = verbosity
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def trainer_device(device: str = "auto") -> dict[str, Any]:
    """Lightning ``accelerator``/``devices`` for a schelix device string.

    ``"auto"`` is resolved with :func:`schelix.methods.base.resolve_device`;
    ``"cuda:1"`` selects GPU 1.
    """
    dev = resolve_device(device)
    if dev.startswith("cuda"):
        index = int(dev.split(":", 1)[1]) if ":" in dev else 0
        return {"accelerator": "gpu", "devices": [index]}
    if dev == "mps":
        return {"accelerator": "mps", "devices": 1}
    if dev != "cpu":
        raise SchelixError(f"Unknown device '{device}'", "choose 'auto', 'cpu', 'cuda' or 'mps'")
    return {"accelerator": "cpu", "devices": 1}


def hvg_copy(adata: ad.AnnData, *, batch_key: str, layer: str | None, method: str) -> ad.AnnData:
    """A new, minimal AnnData: the HVG pool of ``layers[layer]`` (or ``X``) plus the batch column.

    The input is never modified. The pool is :func:`schelix.preprocess.hvg_mask`'s.
    """
    require_column(adata, batch_key)
    batch = adata.obs[batch_key]
    if batch.isna().any():
        raise SchelixError(
            f"{int(batch.isna().sum())} cells have no value in batch column '{batch_key}'",
            "fill in or remove those cells before integrating",
        )
    mask = hvg_mask(adata)  # the shared HVG pool (all genes, with a warning, without one)
    if layer is not None and layer not in adata.layers:
        raise SchelixError(
            f"{method} needs adata.layers['{layer}'], which is missing",
            "load a file with raw UMI counts (not log-normalized values)",
        )
    matrix = adata.layers[layer] if layer is not None else adata.X
    matrix = matrix[:, np.flatnonzero(mask)]
    matrix = (
        sp.csr_matrix(matrix, dtype=np.float32)
        if sp.issparse(matrix)
        else np.asarray(matrix, dtype=np.float32)
    )
    obs = pd.DataFrame(
        {batch_key: pd.Categorical(batch.astype(str).to_numpy())}, index=adata.obs_names.copy()
    )
    return ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=adata.var_names[mask].copy()))


class ScviProgress:
    """Reports ``progress(fraction, message)`` from Lightning; a raise cancels training.

    ``progress`` is called after every epoch and, at most every ``interval``
    seconds, after training batches (so long epochs stay responsive to cancel).
    If it raises, training stops at once (``trainer.should_stop``) and the
    exception is kept in :attr:`error`; :meth:`raise_if_cancelled` re-raises it.
    :meth:`callback` builds the Lightning callback (Lightning is imported lazily:
    it takes seconds, and listing methods should not pay for it).
    """

    def __init__(self, progress: ProgressCallback | None, label: str, interval: float = 1.0):
        self.progress = progress
        self.label = label
        self.interval = interval
        self.error: Exception | None = None
        self._last = 0.0

    def report(self, trainer: Any, fraction: float, message: str) -> None:
        if self.progress is None or self.error is not None:
            return
        try:
            self.progress(float(min(max(fraction, 0.0), 1.0)), message)
        except Exception as err:  # cancel: stop now, re-raised by raise_if_cancelled
            self.error = err
            trainer.should_stop = True
        self._last = time.monotonic()

    def on_batch(self, trainer: Any, batch_idx: int) -> None:
        if self.progress is None or time.monotonic() - self._last < self.interval:
            return
        n_batches = max(float(trainer.num_training_batches), 1.0)
        max_epochs = max(int(trainer.max_epochs or 1), 1)
        done = trainer.current_epoch + (batch_idx + 1) / n_batches
        self.report(
            trainer,
            done / max_epochs,
            f"{self.label}: epoch {trainer.current_epoch + 1}/{max_epochs}",
        )

    def on_epoch(self, trainer: Any) -> None:
        max_epochs = max(int(trainer.max_epochs or 1), 1)
        epoch = trainer.current_epoch + 1
        metrics = trainer.callback_metrics
        loss = metrics.get("train_loss_epoch", metrics.get("train_loss"))
        msg = f"{self.label}: epoch {epoch}/{max_epochs}"
        if loss is not None:
            msg += f", loss {float(loss):.4g}"
        self.report(trainer, epoch / max_epochs, msg)

    def callback(self) -> Any:
        """The ``lightning.pytorch.Callback`` to pass to ``model.train(callbacks=[...])``."""
        from lightning.pytorch import Callback

        owner = self

        class _Progress(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                owner.on_batch(trainer, batch_idx)

            def on_train_epoch_end(self, trainer, pl_module):
                owner.on_epoch(trainer)

        return _Progress()

    def raise_if_cancelled(self) -> None:
        """Re-raise the exception that ``progress`` raised, if any."""
        if self.error is not None:
            raise self.error


@register("scvi", label="scVI", needs_counts=True, uses_gpu=True)
def scvi(
    adata: ad.AnnData,
    *,
    batch_key: str,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    max_epochs: int | None = None,
    n_hidden: int = 128,
    n_latent: int = 10,
    n_layers: int = 2,
    dispersion: str = "gene",
    gene_likelihood: str = "nb",
    batch_size: int = 128,
    early_stopping: bool = False,
    n_epochs_kl_warmup: int = 400,
) -> np.ndarray:
    """scVI latent space of the HVG counts, with the batch as covariate.

    Parameters
    ----------
    adata
        Preprocessed AnnData with raw counts in ``layers["counts"]`` and the HVG
        pool in ``var["highly_variable"]``. Not modified.
    batch_key
        Column of ``adata.obs`` used as scVI's batch covariate.
    seed
        Seed for ``scvi.settings.seed`` (torch, numpy, python).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"mps"``.
    progress
        ``progress(fraction, message)`` after each epoch (and during long ones);
        raising from it cancels training and the exception propagates.
    max_epochs
        Training epochs; ``None`` = scvi-tools' heuristic
        (``min(400, round(400 * 20000 / n_cells))``).
    n_hidden, n_latent, n_layers, dispersion, gene_likelihood
        Model settings; defaults are the paper's Table 8 (128, 10, 2, 'gene', 'nb').
    batch_size, early_stopping
        Passed to ``SCVI.train``.
    n_epochs_kl_warmup
        Epochs over which the KL weight ramps from 0 to 1 (scvi-tools' default
        400); lower it for short runs.

    Returns
    -------
    ``(n_cells, n_latent)`` float32 posterior means.
    """
    import scvi as scvi_tools

    data = hvg_copy(adata, batch_key=batch_key, layer="counts", method="scVI")
    with quiet():
        scvi_tools.settings.seed = seed
        scvi_tools.model.SCVI.setup_anndata(data, batch_key=batch_key)
        model = scvi_tools.model.SCVI(
            data,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dispersion=dispersion,
            gene_likelihood=gene_likelihood,
        )
        callback = ScviProgress(progress, "scVI")
        model.train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            early_stopping=early_stopping,
            plan_kwargs={"n_epochs_kl_warmup": n_epochs_kl_warmup},
            enable_progress_bar=False,
            callbacks=[callback.callback()],
            **trainer_device(device),
        )
        callback.raise_if_cancelled()
        latent = model.get_latent_representation(batch_size=1024)
    if progress is not None:
        progress(1.0, "scVI: done")
    return np.asarray(latent, dtype=np.float32)
