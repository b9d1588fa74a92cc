"""The one interface every integration method (scHelix's peers) implements.

A method is a plain function registered under a short name::

    @register("harmony", label="Harmony")
    def harmony(adata, *, batch_key, seed=0, device="auto", progress=None, **params):
        ...
        return embedding  # (n_cells, d) float32 numpy array

Every method receives the same *preprocessed* AnnData (see
:func:`schelix.preprocess.preprocess`): ``X`` log-normalized over all genes
that passed QC, ``layers["counts"]`` raw counts (when the input had them),
``var["highly_variable"]`` the shared 2,000-gene HVG pool, ``obs[batch_key]``
the batch labels. It must not modify ``adata``; :func:`run_method` writes the
returned embedding to ``obsm["X_<name>"]`` and records runtime, peak memory and
parameters in ``uns["schelix"]["methods"][name]``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anndata as ad
import numpy as np

from schelix.errors import SchelixError
from schelix.obs import require_column

__all__ = [
    "ProgressCallback",
    "MethodFn",
    "MethodSpec",
    "MethodResult",
    "register",
    "get_method",
    "available_methods",
    "run_method",
]

#: ``progress(fraction_done in [0, 1], message)``; may raise to cancel.
ProgressCallback = Callable[[float, str], None]


class MethodFn(Protocol):
    def __call__(
        self,
        adata: ad.AnnData,
        *,
        batch_key: str,
        seed: int = 0,
        device: str = "auto",
        progress: ProgressCallback | None = None,
        **params: Any,
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its short name, display label and function."""

    name: str
    label: str
    fn: MethodFn
    needs_counts: bool = False
    uses_gpu: bool = False

    @property
    def obsm_key(self) -> str:
        return f"X_{self.name}"


@dataclass(frozen=True)
class MethodResult:
    """What :func:`run_method` measured."""

    name: str
    obsm_key: str
    seconds: float
    peak_memory_mb: float
    params: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, MethodSpec] = {}


def register(
    name: str, *, label: str, needs_counts: bool = False, uses_gpu: bool = False
) -> Callable[[MethodFn], MethodFn]:
    """Decorator that registers an integration method under ``name``."""

    def deco(fn: MethodFn) -> MethodFn:
        _REGISTRY[name] = MethodSpec(name, label, fn, needs_counts, uses_gpu)
        return fn

    return deco


#: Modules that register a method when imported: every peer in its own module here, and
#: scHelix itself (:func:`schelix.pipeline.as_method`), loaded by name on first lookup so the
#: registry never depends on scHelix's training code at import time.
BUILTIN = (
    "schelix.methods.pca",
    "schelix.methods.harmony",
    "schelix.pipeline",
    "schelix.methods.scvi",
    "schelix.methods.sysvi",
    "schelix.methods.sccraft",
    "schelix.methods.scbiot",
    "schelix.methods.scvae",
)


def _load_builtin() -> None:
    import importlib

    for mod in BUILTIN:  # imported for the side effect of registration
        importlib.import_module(mod)


def available_methods() -> list[str]:
    """Names of every registered method."""
    _load_builtin()
    return list(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    """The registered method called ``name``; a clear error otherwise."""
    _load_builtin()
    if name not in _REGISTRY:
        raise SchelixError(
            f"Unknown integration method '{name}'",
            f"choose one of: {', '.join(sorted(_REGISTRY))}",
        )
    return _REGISTRY[name]


class _PeakRSS:
    """Samples this process's resident memory in a thread; reports the peak above start."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        try:
            with open(f"/proc/{os.getpid()}/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def run_method(
    adata: ad.AnnData,
    name: str,
    *,
    batch_key: str,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    key_added: str | None = None,
    **params: Any,
) -> MethodResult:
    """Run a registered method, write ``obsm[key_added or "X_<name>"]``, measure it.

    Runtime is wall time; peak memory is the peak resident-set growth of this
    process during the run (plus peak CUDA memory when the method used a GPU).
    Memory freed by earlier work in the same process is reused without growth, so
    the figure is a lower bound unless the method runs in a fresh process.
    """
    spec = get_method(name)
    require_column(adata, batch_key)
    if spec.needs_counts and "counts" not in adata.layers:
        raise SchelixError(
            f"{spec.label} needs raw counts, but adata.layers['counts'] is missing",
            "load a file with raw UMI counts (not log-normalized values)",
        )
    cuda = False
    try:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
    except ImportError:  # pragma: no cover
        pass
    t0 = time.perf_counter()
    with _PeakRSS() as mem:
        emb = spec.fn(
            adata, batch_key=batch_key, seed=seed, device=device, progress=progress, **params
        )
    seconds = time.perf_counter() - t0
    peak = mem.peak_mb
    if cuda:
        import torch

        peak += torch.cuda.max_memory_allocated() / 2**20
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != adata.n_obs:
        raise RuntimeError(f"{name} returned an embedding of shape {emb.shape}")
    key = key_added or spec.obsm_key
    adata.obsm[key] = emb
    result = MethodResult(name, key, seconds, peak, dict(params, seed=seed, device=device))
    adata.uns.setdefault("schelix", {}).setdefault("methods", {})[name] = {
        "obsm_key": key,
        "seconds": seconds,
        "peak_memory_mb": peak,
        "params": {k: v for k, v in result.params.items() if _is_scalar(v)},
    }
    return result


def _is_scalar(v: object) -> bool:
    return isinstance(v, str | int | float | bool)  # h5ad cannot store None
