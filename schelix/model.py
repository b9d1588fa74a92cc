"""The user-facing model class :class:`SCHelix` (scvi-tools style)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from schelix import data as data_step
from schelix.checks import check_seed, check_steps
from schelix.config import SCHelixConfig
from schelix.device import resolve_device
from schelix.errors import SchelixError
from schelix.gate import VariantGate
from schelix.module.network import STAGES, SCHelixModule
from schelix.obs import require_column
from schelix.reference import write_reference
from schelix.train import Callback, TrainData, TrainState, embed_all, fit, schedule, sized_for_run

__all__ = ["SCHelix"]

#: Version of the saved-model folder layout (see :meth:`SCHelix.save`).
SAVE_FORMAT = 2


def _uns(adata: ad.AnnData) -> dict:
    return adata.uns.setdefault("schelix", {})


def _why(err: Exception) -> str:
    """The line of torch's refusal that names what was found (e.g. 'Unsupported global: ...')."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    hit = next((ln for ln in lines if "global" in ln.lower()), lines[0] if lines else "")
    return hit[:200]


def _load_weights(path: Path) -> dict[str, Any]:
    """``model.pt`` as tensors only (``weights_only=True``): a pickle payload is refused, not run."""
    import pickle

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise SchelixError(
            f"{path} holds more than weights (Python objects or code in a pickle); it was not "
            f"run and the model was not loaded ({_why(err)})",
            "only load models you trust; train and save the model again with model.save()",
        ) from None
    if not isinstance(blob, dict) or not isinstance(blob.get("module"), dict):
        raise SchelixError(
            f"{path} is not a scHelix model file (no network weights in it)",
            "pass the folder that model.save() wrote",
        )
    return blob


def _check_info(info: dict[str, Any], blob: dict[str, Any], path: Path) -> None:
    """``model.json`` must hold the lists and numbers :meth:`SCHelix.save` writes."""
    ok = (
        all(
            isinstance(info.get(k), list) and all(isinstance(x, str) for x in info[k])
            for k in ("variants", "anchors", "batches", "labels")
        )
        and isinstance(info.get("setup"), dict)
        and isinstance(info["setup"].get("batch_key"), str)
        and isinstance(info.get("state"), dict)
        and isinstance(info["state"].get("step"), int)
        and isinstance(info["state"].get("history"), list)
        and isinstance(info.get("seed"), (int, type(None)))
    )
    if not ok:
        raise SchelixError(
            f"{path / 'model.json'} is damaged or was edited (a field is missing or of the "
            "wrong type)",
            "save the model again with model.save()",
        )


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
        self.label_key: str | None = setup.get("label_key") or None
        self.module: SCHelixModule | None = None
        self.gate: VariantGate | None = None
        self.state = TrainState()
        self.device: str | None = None
        self.seed: int | None = None
        self.meta: dict[str, Any] = {}
        self._data: TrainData | None = None
        self._latent: dict[str, np.ndarray] | None = None
        self.adapter: Any = None  # (QueryAdapter, batch names) of mapped query batches

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(cls, adata: ad.AnnData, batch_key: str, label_key: str | None = None) -> None:
        """Check and record which ``obs`` columns hold batches and (optional) cell types."""
        require_column(adata, batch_key, "Batch")
        require_column(adata, label_key, "Label")
        n_batches = adata.obs[batch_key].nunique()
        if n_batches < 2:
            raise SchelixError(
                f"Batch column '{batch_key}' has only one batch",
                "integration needs at least two batches; pick another column",
            )
        setup = {"batch_key": batch_key, "n_batches": int(n_batches)}
        if label_key is not None:
            setup["label_key"] = label_key
        _uns(adata)["setup"] = setup

    def _prepare(self, *, training: bool = True) -> TrainData:
        """The run's tensors (:func:`schelix.data.prepare`) with this model's gate and scaling."""
        data, self.meta = data_step.prepare(
            self.adata, self.config, batch_key=self.batch_key, label_key=self.label_key,
            meta=self.meta or None, gate=self.gate, training=training, seed=self.seed or 0,
        )  # fmt: skip
        return data

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
        check_steps(max_steps)
        check_seed(seed)
        self.device = resolve_device(device)
        if self.module is None:
            self.seed = seed
            total = schedule(self.adata.n_obs, self.config, max_steps)[0]
            self.config = sized_for_run(self.config, total)  # small data: narrower decoders
            torch.manual_seed(seed)
            self.gate = data_step.fit_gate(self.adata, self.config, seed=seed)  # once, kept
            self._data = self._prepare()
            self._build()
        elif self._data is None or not self._ready_to_train(self._data):
            self._data = self._prepare()
        from schelix.display import sample

        self.state = fit(
            self.module, self._data, self.config, device=self.device, seed=seed,
            max_steps=max_steps, callbacks=callbacks, state=self.state, progress_bar=progress_bar,
            snapshot_rows=sample(self.adata, batch_key=self.batch_key),
        )  # fmt: skip
        self._latent = None
        return self

    def _ready_to_train(self, data: TrainData) -> bool:
        """Whether ``data`` has the MixUp kNN, MNN partners and triplet clusters this config
        trains with."""
        c = self.config
        return (
            (data.neighbors is not None or not c.mixup)
            and (data.partners is not None or not c.uses_mnn_partners)
            and (data.triplet_clusters is not None or c.w_triplet <= 0)
        )

    @property
    def is_trained(self) -> bool:
        return self.state.step > 0

    @property
    def total_steps(self) -> int:
        return schedule(self.adata.n_obs, self.config)[0]

    # ---------------------------------------------------------------- results
    def get_latent_representation(
        self, stage: str = "fused", adata: ad.AnnData | None = None
    ) -> np.ndarray:
        """Embedding of every cell at one stage of Align -> Refine -> Fuse.

        ``"variant"`` (variant-stream encoder), ``"variant_aligned"`` (its
        predictor output, the representation aligned to the anchors),
        ``"anchor"`` (anchor-stream encoder), ``"anchor_refined"`` (after the
        bounded Refine) or ``"fused"`` (HyperFusion output, the integrated
        embedding). ``adata``: other (new) cells, log-normalized, embedded without retraining
        (genes matched by name, the stored gate applied; see :func:`schelix.mapping.embed`).
        """
        if adata is not None and adata is not self.adata:
            from schelix.mapping import embed

            key = self.batch_key if self.batch_key in adata.obs else None
            if stage not in STAGES:
                raise SchelixError(
                    f"Unknown stage '{stage}'", f"choose one of: {', '.join(STAGES)}"
                )
            return embed(self, adata, batch_key=key)[stage]
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
        """Write the model to the folder ``path``, with no pickles anywhere.

        ``model.pt`` (network weights and optimiser state, tensors only), ``model.json`` (genes,
        batch and label categories, set-up, seed, step count, loss history), ``arrays.npz``
        (gene scaling and the fused snapshots), ``gate.npz`` (the fitted variant gate, when the
        gate is on), ``config.json`` and ``reference.npz`` (the training cells' stage embeddings
        and short obs columns, for mapping new samples: :mod:`schelix.mapping`).
        """
        if self.module is None:
            raise SchelixError("There is no trained model to save", "call model.train() first")
        path = Path(path)
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise SchelixError(
                f"{path} is not empty", "choose an empty folder or pass overwrite=True"
            )
        path.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"module": self.module.state_dict(), "optimizer": self.state.optimizer},
            path / "model.pt",
        )
        m = self.meta
        info = {
            "format": SAVE_FORMAT,
            **{k: list(m[k]) for k in ("variants", "anchors", "batches", "labels")},
            "setup": {"batch_key": self.batch_key, "label_key": self.label_key or ""},
            "seed": self.seed,
            "state": {
                "step": self.state.step,
                "seconds": self.state.seconds,
                "history": self.state.history,
            },
        }
        (path / "model.json").write_text(json.dumps(info))
        snaps = {f"snapshot_{k}": v for k, v in self.state.snapshots.items()}
        with open(path / "arrays.npz", "wb") as fh:
            np.savez(fh, mean=m["mean"], std=m["std"], **snaps)
        (path / "gate.npz").unlink(missing_ok=True)
        if self.gate is not None:
            self.gate.save(path / "gate.npz")
        stages = {s: self.get_latent_representation(s) for s in STAGES}
        write_reference(path, self.adata.obs, stages, [self.batch_key, self.label_key or ""])
        (path / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, adata: ad.AnnData, *, device: str = "auto") -> SCHelix:
        """Rebuild a saved model on ``adata`` (which must hold the same genes and cells).

        Nothing is refitted: the gene scaling and the variant gate are the saved ones, so
        :meth:`get_latent_representation` gives the embedding the model had when it was saved,
        also on a freshly read copy of the data.
        """
        path = Path(path)
        if not (path / "model.json").is_file() or not (path / "model.pt").is_file():
            raise SchelixError(
                f"No saved scHelix model in {path}", "pass the folder that model.save() wrote"
            )
        try:
            info = json.loads((path / "model.json").read_text())
            config = SCHelixConfig.from_dict(json.loads((path / "config.json").read_text()))
            blob = _load_weights(path / "model.pt")
            with np.load(path / "arrays.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            gate = VariantGate.load(path / "gate.npz") if (path / "gate.npz").is_file() else None
        except SchelixError:
            raise
        except Exception as err:
            raise SchelixError(
                f"The saved model in {path} cannot be read ({type(err).__name__}: {err})",
                "save the model again with this version of scHelix",
            ) from None
        if not isinstance(info, dict) or info.get("format") != SAVE_FORMAT:
            fmt = info.get("format") if isinstance(info, dict) else None
            raise SchelixError(
                f"The model in {path} was saved in another format ({fmt})",
                "train and save it again with this version of scHelix",
            )
        _check_info(info, blob, path)
        missing = set(info["variants"] + info["anchors"]) - set(adata.var_names)
        if missing:
            raise SchelixError(
                f"{len(missing)} genes the model was trained on are missing from this AnnData",
                "load the model on the preprocessed data it was trained on",
            )
        setup = info["setup"]
        if "setup" not in _uns(adata):
            cls.setup_anndata(adata, setup["batch_key"], setup["label_key"] or None)
        if "schelix_stream" not in adata.var:
            stream = pd.Series("unused", index=adata.var_names)
            stream[info["anchors"]], stream[info["variants"]] = "anchor", "variant"
            adata.var["schelix_stream"] = pd.Categorical(
                stream, categories=["anchor", "variant", "unused"]
            )
        model = cls(adata, config)
        model.meta = {
            **{k: list(info[k]) for k in ("variants", "anchors", "batches", "labels")},
            "mean": arrays["mean"],
            "std": arrays["std"],
        }
        model.seed, model.gate = info["seed"], gate
        model._build()
        try:
            model.module.load_state_dict(blob["module"])
        except (RuntimeError, KeyError, TypeError) as err:
            raise SchelixError(
                f"The weights in {path / 'model.pt'} do not fit the model described by its "
                f"model.json and config.json ({str(err).splitlines()[0][:200]})",
                "save the model again with model.save()",
            ) from None
        s = info["state"]
        snapshots = {
            int(k.split("_", 1)[1]): v for k, v in arrays.items() if k.startswith("snapshot_")
        }
        model.state = TrainState(
            s["step"],
            s["history"],
            dict(sorted(snapshots.items())),
            blob["optimizer"],
            s["seconds"],
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
