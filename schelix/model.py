"""The user-facing model class :class:`SCHelix` (scvi-tools style)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from schelix.config import SCHelixConfig
from schelix.device import resolve_device
from schelix.errors import SchelixError
from schelix.module.network import STAGES, SCHelixModule
from schelix.train import (
    Callback,
    TrainData,
    TrainState,
    embed_all,
    fit,
    mixup_neighbors,
    mnn_partners,
    schedule,
)

__all__ = ["SCHelix", "UNLABELLED"]

#: Label values that mean "no label": such cells train without the supervised head.
UNLABELLED = ("unlabelled", "unlabeled", "unknown", "Unknown", "nan", "NaN", "")


def _uns(adata: ad.AnnData) -> dict:
    return adata.uns.setdefault("schelix", {})


class SCHelix:
    """scHelix integration model.

    Call :meth:`setup_anndata` once, split the genes into anchors and variants
    (:func:`schelix.anchors.score_genes` + :func:`schelix.anchors.split_anchors`,
    or let :func:`schelix.pipeline.integrate` do it all), then::

        model = SCHelix(adata)
        model.train()
        adata.obsm["X_schelix"] = model.get_latent_representation()

    Parameters
    ----------
    adata
        Preprocessed AnnData (log-normalized ``X``) with ``var["schelix_stream"]``.
    config
        Hyperparameters; ``overrides`` change single fields (``SCHelix(adata, max_steps=500)``).
    """

    def __init__(
        self, adata: ad.AnnData, config: SCHelixConfig | None = None, **overrides: Any
    ) -> None:
        setup = _uns(adata).get("setup")
        if not setup:
            raise SchelixError(
                "The AnnData was not set up for scHelix",
                "call schelix.SCHelix.setup_anndata(adata, batch_key=...) first",
            )
        if "schelix_stream" not in adata.var:
            raise SchelixError(
                "No anchor/variant split found (adata.var['schelix_stream'])",
                "run schelix.anchors.score_genes and schelix.anchors.split_anchors, "
                "or use schelix.pipeline.integrate",
            )
        self.adata = adata
        self.config = (config or SCHelixConfig()).replace(**overrides)
        self.batch_key: str = setup["batch_key"]
        self.labels_key: str | None = setup.get("labels_key") or None
        self.module: SCHelixModule | None = None
        self.state = TrainState()
        self.device: str | None = None
        self.seed: int | None = None
        self.meta: dict[str, Any] = {}
        self._data: TrainData | None = None
        self._latent: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls, adata: ad.AnnData, batch_key: str, labels_key: str | None = None
    ) -> None:
        """Check and record which ``obs`` columns hold batches and (optional) cell types."""
        for role, key in (("Batch", batch_key), ("Label", labels_key)):
            if key is not None and key not in adata.obs:
                raise SchelixError(
                    f"{role} column '{key}' is not in adata.obs",
                    f"choose one of: {', '.join(map(str, adata.obs.columns))}",
                )
        n_batches = adata.obs[batch_key].nunique()
        if n_batches < 2:
            raise SchelixError(
                f"Batch column '{batch_key}' has only one batch",
                "integration needs at least two batches; pick another column",
            )
        setup = {"batch_key": batch_key, "n_batches": int(n_batches)}
        if labels_key is not None:
            setup["labels_key"] = labels_key
        _uns(adata)["setup"] = setup

    def _prepare(self, *, training: bool = True) -> TrainData:
        """Dense scaled matrices (variants first, anchors never gated), batches, labels and, for
        ``training``, the MixUp kNN and the cross-batch MNN partners (embedding needs neither)."""
        from schelix import gate as gate_mod

        adata, c = self.adata, self.config
        stream = adata.var["schelix_stream"].astype(str)
        anchors = list(adata.var_names[stream == "anchor"])
        variants = list(adata.var_names[stream == "variant"])
        if not self.meta:
            x = adata[:, variants + anchors].X
            x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)
            mean, std = x.mean(0), x.std(0) + 1e-6
            batches = [str(b) for b in adata.obs[self.batch_key].astype("category").cat.categories]
            labels = []
            if self.labels_key and c.semi_supervised:
                labels = sorted(
                    {str(v) for v in adata.obs[self.labels_key].astype(str)} - set(UNLABELLED)
                )
            self.meta = {"variants": variants, "anchors": anchors, "mean": mean, "std": std,
                         "batches": batches, "labels": labels}  # fmt: skip
        else:
            variants, anchors = self.meta["variants"], self.meta["anchors"]
            x = adata[:, variants + anchors].X
            x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)
        x = np.clip((x - self.meta["mean"]) / self.meta["std"], -10, 10)
        x_var, x_anc = x[:, : len(variants)], np.ascontiguousarray(x[:, len(variants) :])
        if c.gate and c.gate_strength > 0:
            g = gate_mod.fit_gate(
                adata, low_res=c.gate_low_res, high_res=c.gate_high_res,
                min_cells=c.gate_min_cells, seed=self.seed or 0,
            )  # fmt: skip
            order = pd.Index(g.variant_genes).get_indexer(variants)
            x_var = x_var * (1 - c.gate_strength * g.gamma()[:, order])
        batch = pd.Categorical(
            adata.obs[self.batch_key].astype(str), categories=self.meta["batches"]
        ).codes
        labels = None
        if self.meta["labels"]:
            labels = torch.as_tensor(
                pd.Categorical(
                    adata.obs[self.labels_key].astype(str), categories=self.meta["labels"]
                ).codes,
                dtype=torch.long,
            )  # unknown labels -> -1
        neighbors = partners = None
        if training and c.mixup:
            pca = adata.obsm.get("X_schelix_pca")
            if pca is None:
                from sklearn.decomposition import PCA

                pca = PCA(30, random_state=0).fit_transform(x)
            neighbors = mixup_neighbors(np.asarray(pca)[:, :30], c.mixup_k)
        if training and c.w_mnn_variant > 0:
            partners = mnn_partners(x_anc, batch, k=c.mnn_k, seed=self.seed or 0)
        return TrainData(
            torch.as_tensor(np.ascontiguousarray(x_var, dtype=np.float32)),
            torch.as_tensor(x_anc),
            torch.as_tensor(batch.astype(np.int64)),
            labels,
            neighbors,
            partners,
        )

    def _build(self) -> None:
        m = self.meta
        self.module = SCHelixModule(
            len(m["variants"]), len(m["anchors"]), len(m["batches"]), len(m["labels"]), self.config
        )

    # ------------------------------------------------------------------ train
    def train(
        self,
        *,
        max_steps: int | None = None,
        device: str = "auto",
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
        progress_bar: bool = False,
    ) -> SCHelix:
        """Train (or resume training) for ``max_steps`` total steps (default: the schedule's).

        Runs on ``device`` (``"auto"``: CUDA, then Apple MPS, then CPU). With a
        fixed ``seed`` a CPU run is repeatable.
        """
        self.device = resolve_device(device)
        if self.module is None:
            self.seed = seed
            torch.manual_seed(seed)
            self._data = self._prepare()
            self._build()
        elif self._data is None or not self._ready_to_train(self._data):
            self._data = self._prepare()
        self.state = fit(
            self.module, self._data, self.config, device=self.device, seed=seed,
            max_steps=max_steps, callbacks=callbacks, state=self.state, progress_bar=progress_bar,
        )  # fmt: skip
        self._latent = None
        return self

    def _ready_to_train(self, data: TrainData) -> bool:
        """Whether ``data`` has the MixUp kNN and MNN partners this config trains with."""
        c = self.config
        return (data.neighbors is not None or not c.mixup) and (
            data.partners is not None or c.w_mnn_variant <= 0
        )

    @property
    def is_trained(self) -> bool:
        return self.state.step > 0

    @property
    def total_steps(self) -> int:
        return schedule(self.adata.n_obs, self.config)[0]

    # ---------------------------------------------------------------- results
    def get_latent_representation(self, stage: str = "fused") -> np.ndarray:
        """Embedding of every cell at one stage of Align -> Refine -> Fuse.

        ``"variant"`` (variant-stream encoder), ``"variant_aligned"`` (its
        predictor output, the representation aligned to the anchors),
        ``"anchor"`` (anchor-stream encoder), ``"anchor_refined"`` (after the
        bounded Refine) or ``"fused"`` (HyperFusion output, the integrated
        embedding).
        """
        if stage not in STAGES:
            raise SchelixError(f"Unknown stage '{stage}'", f"choose one of: {', '.join(STAGES)}")
        if not self.is_trained or self.module is None:
            raise SchelixError("The model is not trained yet", "call model.train() first")
        if self._latent is None:
            if self._data is None:
                self._data = self._prepare(training=False)
            self._latent = embed_all(self.module, self._data, self.device or "cpu")
        return self._latent[stage]

    @property
    def history(self) -> pd.DataFrame:
        """One row per step: ``step``, ``phase`` and every loss term (unweighted) plus ``total``."""
        return pd.DataFrame(self.state.history)

    @property
    def snapshots(self) -> dict[int, np.ndarray]:
        """Fused embedding of all cells at steps taken during training."""
        return self.state.snapshots

    # ------------------------------------------------------------- save/load
    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write ``model.pt`` (weights, optimiser, history) and ``config.json`` to ``path``."""
        if self.module is None:
            raise SchelixError("There is no trained model to save", "call model.train() first")
        path = Path(path)
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise SchelixError(
                f"{path} is not empty", "choose an empty folder or pass overwrite=True"
            )
        path.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "module": self.module.state_dict(),
                "meta": self.meta,
                "setup": {"batch_key": self.batch_key, "labels_key": self.labels_key or ""},
                "state": {
                    "step": self.state.step,
                    "history": self.state.history,
                    "optimizer": self.state.optimizer,
                    "seconds": self.state.seconds,
                    "snapshots": self.state.snapshots,
                },
                "seed": self.seed,
            },
            path / "model.pt",
        )
        (path / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, adata: ad.AnnData, *, device: str = "auto") -> SCHelix:
        """Rebuild a saved model on ``adata`` (which must hold the same genes)."""
        path = Path(path)
        if not (path / "model.pt").exists():
            raise SchelixError(
                f"No saved scHelix model in {path}", "pass the folder that model.save() wrote"
            )
        blob = torch.load(path / "model.pt", map_location="cpu", weights_only=False)
        config = SCHelixConfig.from_dict(json.loads((path / "config.json").read_text()))
        missing = set(blob["meta"]["variants"] + blob["meta"]["anchors"]) - set(adata.var_names)
        if missing:
            raise SchelixError(
                f"{len(missing)} genes the model was trained on are missing from this AnnData",
                "load the model on the preprocessed data it was trained on",
            )
        setup = blob["setup"]
        if "setup" not in _uns(adata):
            cls.setup_anndata(adata, setup["batch_key"], setup["labels_key"] or None)
        if "schelix_stream" not in adata.var:
            m = blob["meta"]
            stream = pd.Series("unused", index=adata.var_names)
            stream[m["anchors"]], stream[m["variants"]] = "anchor", "variant"
            adata.var["schelix_stream"] = pd.Categorical(
                stream, categories=["anchor", "variant", "unused"]
            )
        model = cls(adata, config)
        model.meta, model.seed = blob["meta"], blob["seed"]
        model._build()
        model.module.load_state_dict(blob["module"])
        s = blob["state"]
        model.state = TrainState(
            s["step"], s["history"], s["snapshots"], s["optimizer"], s["seconds"]
        )
        model.device = resolve_device(device)
        model.module.to(model.device)
        return model

    def __repr__(self) -> str:
        n_var, n_anc = len(self.meta.get("variants", [])), len(self.meta.get("anchors", []))
        status = (
            f"trained {self.state.step} steps on {self.device}"
            if self.is_trained
            else "not trained"
        )
        return f"SCHelix({self.adata.n_obs} cells, {n_anc} anchors, {n_var} variants; {status})"
