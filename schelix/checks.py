"""Checks that run before any long computation: settings, output paths and the data itself.

Each raises :class:`~schelix.errors.SchelixError` naming the problem and the fix, so that a
mistake costs the user a second, not a training run (and never the raw input: ``-o`` equal to
the input is refused).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from schelix.errors import SchelixError

__all__ = [
    "DEVICES",
    "SEED_MAX",
    "check_config",
    "check_counts_layer",
    "check_data",
    "check_device",
    "check_labels",
    "check_model_dir",
    "check_n_top_genes",
    "check_output",
    "check_seed",
    "check_steps",
]

SEED_MAX = 2**32 - 1
DEVICES = ("auto", "cpu", "cuda", "gpu", "mps")

# ------------------------------------------------------------------ settings
#: (low, high, low inclusive) bounds of config fields beyond their type.
_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "lr": (0.0, math.inf, False),
    "gate_strength": (0.0, 1.0, True),
    "weight_decay": (0.0, math.inf, True),
    "grad_clip": (0.0, math.inf, False),
    "prototype_momentum": (0.0, 1.0, True),
    "kd_conf_threshold": (0.0, 1.0, True),
    "graph_temperature": (0.0, math.inf, False),
    "conn_temperature": (0.0, math.inf, False),
    "refine_temperature": (0.0, math.inf, False),
    "mnn_temperature": (0.0, math.inf, False),
    # every size that sets memory is bounded above, so that no setting can exhaust a shared
    # machine's memory or crash with an allocation traceback. Measured at 2,000 HVGs:
    # latent_dim 1,024 builds 41 M weights (0.66 GB with their gradients and AdamW state; the
    # default 16: 1.7 M), with fusion_rank 64 as well 71 M (1.1 GB); decoder_hidden 4,096:
    # 17.3 M (0.28 GB). mixup_k and mnn_k size the neighbour tables (cells x k), batch_size
    # the dense rows of a step, graph_top_k the sparse gene graph, n_scales its diffusion.
    "latent_dim": (1, 1024, True),
    "graph_dim": (1, 1024, True),
    "refine_tokens": (1, 1024, True),
    "decoder_hidden": (1, 4096, True),
    "decoder_hidden_small": (1, 4096, True),
    "fusion_rank": (1, 64, True),
    "n_prototypes": (1, 4096, True),
    "mixup_k": (1, 1000, True),
    "mnn_k": (1, 500, True),
    "batch_size": (1, 16384, True),
    "schedule_batch_size": (1, math.inf, True),
    "graph_top_k": (1, 512, True),
    "n_scales": (1, 10, True),
    "graph_rebuild_every": (1, math.inf, True),
    "max_steps": (1, math.inf, True),
    "max_epochs": (1, math.inf, True),
    "min_steps": (0, math.inf, True),
    "min_steps_epochs": (0, math.inf, True),
    "warmup_steps": (0, math.inf, True),
    "gate_min_cells": (1, math.inf, True),
    "snapshot_every": (0, math.inf, True),
    "triplet_margin": (0.0, math.inf, True),
    "triplet_coarse_resolution": (0.0, math.inf, False),
    "triplet_fine_resolution": (0.0, math.inf, False),
}


def _coerce(name: str, value: Any, kind: type) -> Any:
    bad = SchelixError(
        f"Setting {name} must be {'a whole number' if kind is int else 'a number' if kind is float else 'true or false' if kind is bool else 'text'}, "
        f"got {value!r}",
        f"write it like {name}=<{kind.__name__}> (see schelix.SCHelixConfig)",
    )
    if kind is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise bad
    if isinstance(value, (bool, np.bool_)) or (kind is not str and isinstance(value, str)):
        raise bad
    if kind is int:
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise bad
    if kind is float:
        if isinstance(value, (int, float, np.integer, np.floating)):
            if not math.isfinite(float(value)):
                raise SchelixError(f"Setting {name} is {value!r}", f"give {name} a finite number")
            return float(value)
        raise bad
    if not isinstance(value, kind):
        raise bad
    return value


def check_config(config: Any) -> None:
    """Types (coerced in place: 16.0 -> 16) and ranges of every field of a SCHelixConfig."""
    for f in dataclasses.fields(config):
        value = _coerce(f.name, getattr(config, f.name), type(f.default))
        object.__setattr__(config, f.name, value)
        if f.name in _BOUNDS or f.name.startswith("w_"):
            low, high, closed = _BOUNDS.get(f.name, (0.0, math.inf, True))
            if value < low or value > high or (not closed and value == low):
                rng = (
                    f"in [{low:g}, {high:g}]"
                    if high < math.inf
                    else f"{'>=' if closed else '>'} {low:g}"
                )
                raise SchelixError(
                    f"Setting {f.name} must be {rng}, got {value!r}",
                    f"choose a value {rng} (default {f.default!r})",
                )


def check_steps(steps: int | None) -> None:
    """``None`` (the schedule's) or a whole number >= 1."""
    if steps is None:
        return
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise SchelixError(
            f"Training steps must be a whole number >= 1, got {steps!r}",
            "give --steps a positive number, or leave it out for the default schedule",
        )


def check_seed(seed: Any) -> None:
    """A whole number in 0..2**32 - 1 (what numpy and torch accept)."""
    if (
        isinstance(seed, bool)
        or not isinstance(seed, (int, np.integer))
        or not 0 <= seed <= SEED_MAX
    ):
        raise SchelixError(
            f"The seed must be a whole number from 0 to {SEED_MAX}, got {seed!r}",
            "choose a seed in that range, e.g. 0",
        )


#: The most highly variable genes a run takes: the learnable gene graph scores every gene
#: pair (a dense genes x genes matrix and its gradient), 0.4 GB each at 10,000 genes.
MAX_TOP_GENES = 10_000


def check_n_top_genes(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_TOP_GENES:
        raise SchelixError(
            f"The number of highly variable genes must be from 1 to {MAX_TOP_GENES:,}, got {n!r}",
            "leave --n-top-genes out (2,000) or give a number in that range, e.g. 2000",
        )


def check_device(device: Any) -> None:
    ok = isinstance(device, str) and (
        device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit())
    )
    if device is not None and not ok:
        raise SchelixError(
            f"Unknown device {device!r}", f"choose one of: {', '.join(DEVICES)} (or cuda:N)"
        )


# ------------------------------------------------------------------ paths
def _writable_dir(folder: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".schelix_probe_"):
            return True
    except OSError:
        return False


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(
    path: str | Path, *, inputs: Iterable[str | Path] = (), what: str = "output"
) -> Path:
    """Refuse an output file path that cannot be written, or that is one of the inputs.

    Checks, before anything runs: the path is not a folder; no part of its parent is a file;
    its folder (or the nearest one that exists) is writable; it is not one of ``inputs``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise SchelixError(
            f"The {what} '{path}' is a folder", f"give a file name, e.g. {path / 'integrated.h5ad'}"
        )
    base = _nearest_existing(path.absolute().parent)
    if not base.is_dir():
        raise SchelixError(
            f"The {what} '{path}' cannot be written: '{base}' is a file, not a folder",
            "choose a path inside a folder",
        )
    if not _writable_dir(base):
        raise SchelixError(
            f"The {what} '{path}' cannot be written: no permission to write in '{base}'",
            "choose a folder you can write to",
        )
    for src in inputs:
        src = Path(src)
        if (
            path.exists() and src.exists() and os.path.samefile(path, src)
        ) or path.absolute() == src.absolute():
            raise SchelixError(
                f"The {what} '{path}' is the input file: writing it would overwrite your raw data",
                "choose another output name, e.g. integrated.h5ad",
            )
    return path


def check_model_dir(path: str | Path) -> Path:
    """A folder to save a model in: refused when it is an existing file or cannot be made."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise SchelixError(
            f"--save-model '{path}' is a file; a model is saved as a folder of files",
            "give the name of a new or empty folder, e.g. model/",
        )
    base = _nearest_existing(path.absolute())
    if not base.is_dir() or not _writable_dir(base):
        raise SchelixError(
            f"--save-model '{path}' cannot be created ('{base}' is not a writable folder)",
            "choose a folder you can write to",
        )
    return path


# ------------------------------------------------------------------ data
def _values(m: Any) -> np.ndarray:
    return m.data if sp.issparse(m) else np.asarray(m).ravel()


def check_counts_layer(adata: ad.AnnData) -> None:
    """NaN, Inf or negative values in ``layers["counts"]`` are refused, never skipped silently."""
    if "counts" not in adata.layers:
        return
    v = _values(adata.layers["counts"])
    if v.size and not np.isfinite(v).all():
        n = int((~np.isfinite(v)).sum())
        raise SchelixError(
            f"layers['counts'] holds {n:,} NaN or infinite values; counts are whole numbers >= 0",
            "repair the counts layer (or delete it: del adata.layers['counts']) and save again",
        )
    if v.size and v.min() < 0:
        n = int((v < 0).sum())
        raise SchelixError(
            f"layers['counts'] holds {n:,} negative values; counts are whole numbers >= 0",
            "put the raw counts in layers['counts'] (or delete that layer) and save again",
        )


def check_labels(adata: ad.AnnData, label_key: str | None) -> None:
    """A label column with a single value for every labelled cell is refused before training."""
    if label_key is None or label_key not in adata.obs:
        return
    col = adata.obs[label_key].astype(str)
    col = col[adata.obs[label_key].notna() & (col.str.lower() != "unlabelled")]
    values = col.unique()
    if len(values) < 2:
        raise SchelixError(
            f"Cell-type column '{label_key}' has the same value for every cell "
            f"({values[0] if len(values) else 'none'}): label-based scores cannot be computed",
            "choose a column with at least two cell types, or leave the cell-type column out",
        )


def check_data(adata: ad.AnnData, *, batch_key: str | None = None) -> None:
    """All-zero data, and too few cells or genes (said plainly when QC is not the cause)."""
    from schelix.preprocess import MIN_CELLS_AFTER_QC, MIN_GENES_AFTER_QC

    m = adata.layers["counts"] if "counts" in adata.layers else adata.X
    if m is not None and not np.any(_values(m)):
        raise SchelixError(
            "Every value in the matrix is zero: there is no expression to integrate",
            "check that the right matrix was exported (e.g. the counts, not an empty layer)",
        )
    if adata.n_obs < MIN_CELLS_AFTER_QC or adata.n_vars < MIN_GENES_AFTER_QC:
        raise SchelixError(
            f"The data has {adata.n_obs:,} cells and {adata.n_vars:,} genes before any QC; "
            f"integration needs at least {MIN_CELLS_AFTER_QC} cells and {MIN_GENES_AFTER_QC} "
            "genes, so loosening QC cannot help",
            "use a larger dataset (more cells, or the whole-transcriptome matrix, not a gene panel "
            "subset)",
        )
