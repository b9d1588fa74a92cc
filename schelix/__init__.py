"""scHelix: asymmetric dual-stream single-cell integration via anchor/variant gene split.

Quick start::

    import schelix
    adata = schelix.read("data.h5ad", batch_key="batch")
    adata = schelix.pp.preprocess(adata, batch_key="batch")
    schelix.SCHelix.setup_anndata(adata, batch_key="batch", label_key="cell_type")
    model = schelix.SCHelix(adata)
    model.train()
    adata.obsm["X_schelix"] = model.get_latent_representation()
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from schelix.device import cpu_threads
from schelix.errors import SchelixError, SchelixWarning

__version__ = "0.1.0"

# numba's parallel loops (scanpy, UMAP, pynndescent) keep to the user's OpenMP limit: its OpenMP
# layer otherwise starts one thread per core (and resets torch's count with it; see
# schelix.device.limit_cpu_threads). Only before numba's import: numba refuses a change later.
if "numba" not in sys.modules and (_limit := cpu_threads()) is not None:  # read at its import
    os.environ.setdefault("NUMBA_NUM_THREADS", str(_limit))

# Submodules and names are loaded lazily so that `import schelix` (and the CLI's
# --help) stays fast; torch, scanpy and jax are only imported when used.
_LAZY = {
    "pp": "schelix.preprocess",
    "preprocess": "schelix.preprocess",
    "io": "schelix.io",
    "anchors": "schelix.anchors",
    "gate": "schelix.gate",
    "datasets": "schelix.datasets",
    "evaluate": "schelix.evaluate",
    "batch_mixing": "schelix.batch_mixing",
    "methods": "schelix.methods",
    "train": "schelix.train",
    "pipeline": "schelix.pipeline",
    "compare": "schelix.compare",
    "stages": "schelix.stages",
    "data": "schelix.data",
    "mapping": "schelix.mapping",
    "transfer": "schelix.transfer",
}
_LAZY_ATTR = {
    "SCHelix": ("schelix.model", "SCHelix"),
    "SCHelixConfig": ("schelix.config", "SCHelixConfig"),
    "read": ("schelix.io", "read"),
}

__all__ = ["SchelixError", "SchelixWarning", "__version__", *_LAZY, *_LAZY_ATTR]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name in _LAZY_ATTR:
        mod, attr = _LAZY_ATTR[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'schelix' has no attribute {name!r}")
