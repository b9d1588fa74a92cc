"""Map new samples onto a trained model: embed, adapt to new batches, transfer labels.

A lab integrates its reference once; new samples arrive later. :func:`map_query` places them
beside the reference without retraining:

1. **Embed** (:func:`embed`): the query's genes are matched to the model's by name; a missing
   gene is set to the reference mean (scaled value 0) with a note giving the fraction; fewer
   than half of the model's anchor genes is refused. The stored variant gate is applied:
   each query cell is put in the gate clusters whose centroid, in the model's scaled
   anchor-gene space, is nearest (anchors are the batch-stable genes).
2. **Adapt** (scArches-style, :func:`adapt`): each query batch gets its own entry
   (:class:`schelix.module.adapter.QueryAdapter`: an input shift and decoder columns) trained
   for ``adapt_steps`` steps with every network weight frozen; reference cells have no entry,
   so their embedding does not move. With ``mix`` (default) the model's cross-batch MNN term
   pulls query cells toward their reference partners (:mod:`schelix.mixing`).
3. **Transfer labels** (:func:`schelix.transfer.transfer_labels`): weighted kNN from the
   reference's labels on the fused embedding, with probability, uncertainty and "Unknown".

The result holds reference and query together, ``obs["schelix_origin"]`` saying which is which.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from schelix import data as data_step
from schelix.device import limit_cpu_threads
from schelix.errors import SchelixError
from schelix.mixing import MIX_STAGE
from schelix.model import SCHelix
from schelix.module.adapter import QueryAdapter
from schelix.module.network import STAGES
from schelix.obs import require_column
from schelix.reference import read_reference

__all__ = [
    "DEFAULT_ADAPT_STEPS", "ORIGIN_KEY", "adapt", "embed", "labels_frame", "load_reference", "map_query",
    "prepare_query",
]  # fmt: skip

#: Steps of query adaptation by default ("a few hundred"; see benchmarks/MAPPING_RESULTS.md).
#: Adaptation steps by default: none. The encoders never see the batch (only the decoders do),
#: so a new batch is embedded as it is; the scArches-style adaptation (:func:`adapt`) stays one
#: option away. Measured on the three shared datasets (leave one batch out, seed 0; the models of
#: ``benchmarks/mapping.py``): 200 adaptation steps never helped and moved the query away from the
#: reference (iLISI CellBench 0.22 -> 0.07, PBMC 0.57 -> 0.19, Kang 0.11 -> 0.06; Kang accuracy
#: 0.893 -> 0.871; CellBench and PBMC accuracy equal within one cell), and made mapping 15-25x
#: slower (``benchmarks/EXPERIMENTS.md``, "How many adaptation steps").
DEFAULT_ADAPT_STEPS = 0
#: ``obs`` column of the joint AnnData: "reference" or "query".
ORIGIN_KEY = "schelix_origin"
Progress = Callable[[float, str], None]


def load_reference(path: str | Path, *, device: str = "auto") -> SCHelix:
    """A saved model with its stored reference cells as ``model.adata`` (no expression needed).

    Raises a :class:`~schelix.errors.SchelixError` naming the fix for a model saved before
    mapping existed (no ``reference.npz`` or no gate centroids).
    """
    path = Path(path)
    try:
        info = json.loads((path / "model.json").read_text())
        genes = [str(g) for g in info["variants"] + info["anchors"]]
    except Exception:
        return SCHelix.load(path, ad.AnnData(np.zeros((0, 0))), device=device)  # its message
    ref, stages = read_reference(path, genes)
    ref.uns["schelix"] = {"reference_only": True}
    model = SCHelix.load(path, ref, device=device)
    if model.gate is not None:
        model.gate.require_centroids()
    if set(stages) != set(STAGES):
        raise SchelixError(f"{path / 'reference.npz'} lacks stage embeddings", "save it again")
    model._latent = stages
    return model


def prepare_query(
    query: ad.AnnData,
    *,
    batch_key: str,
    qc: str = "adaptive",
    min_genes: int | None = None,
    max_mito_pct: float | None = None,
) -> ad.AnnData:
    """Input type, QC and normalize + log1p of a raw query, as :func:`schelix.pp.preprocess`
    does for training, but without gene filtering or HVG selection (the model fixes the genes)."""
    from schelix.input_type import apply, detect
    from schelix.preprocess import filter_qc, normalize, qc_metrics
    from schelix.validate import validate

    out = query.copy()
    out = apply(out, detect(out))
    validate(out, batch_key=None)
    require_column(out, batch_key, "Batch")
    out.obs[batch_key] = out.obs[batch_key].astype(str).astype("category")
    out.uns.setdefault("schelix", {})["preprocess"] = {}
    qc_metrics(out)
    out = filter_qc(
        out, batch_key=batch_key, qc=qc, min_genes=min_genes, min_cells=0,
        max_mito_pct=max_mito_pct,
    )  # fmt: skip
    normalize(out)
    return out


def _query_data(model: SCHelix, query: ad.AnnData, batch_key: str | None):
    """The query's tensors (matched genes, scaling, gate) and the adapter entry of each cell."""
    bk = model.batch_key
    batches = query.obs[batch_key].astype(str).to_numpy() if batch_key else None
    view = ad.AnnData(
        query.X,
        obs=pd.DataFrame({bk: batches if batches is not None else "query"}, index=query.obs_names),
        var=pd.DataFrame(index=query.var_names),
    )
    data, _ = data_step.prepare(
        view, model.config, batch_key=bk, meta=model.meta, gate=model.gate, training=False
    )
    # the query's rows are shifted in place by its adapter (embed): a dense copy (query-sized)
    data.x_variant, data.x_anchor = data.x_variant[:], data.x_anchor[:]
    q = np.full(query.n_obs, -1)
    adapter = getattr(model, "adapter", None)
    if adapter is not None and batches is not None:
        names = [b for b in adapter[1] if b not in model.meta["batches"]]
        q = pd.Index(adapter[1]).get_indexer(batches)
        q[~np.isin(batches, names)] = -1
    return data, q


def embed(model: SCHelix, query: ad.AnnData, *, batch_key: str | None = None) -> dict:
    """Every stage embedding of the cells of ``query`` (log-normalized) under ``model``.

    ``batch_key`` names the query's batch column; cells of a batch the model was adapted to
    (:func:`adapt`) get that batch's adaptation. Reference batches are never shifted.
    """
    from schelix.train import embed_all

    if not model.is_trained or model.module is None:
        raise SchelixError("The model is not trained yet", "call model.train() first")
    data, q = _query_data(model, query, batch_key)
    adapter = getattr(model, "adapter", None)
    if adapter is not None and (q >= 0).any():
        rows = torch.as_tensor(np.flatnonzero(q >= 0))
        qq = torch.as_tensor(q[q >= 0])
        with torch.no_grad():
            xv, xa = adapter[0].cpu().shift(data.x_variant[rows], data.x_anchor[rows], qq)
        data.x_variant[rows], data.x_anchor[rows] = xv, xa
    return embed_all(model.module, data, model.device or "cpu")


def adapt(
    model: SCHelix,
    query: ad.AnnData,
    *,
    batch_key: str,
    steps: int = DEFAULT_ADAPT_STEPS,
    seed: int = 0,
    lr: float = 1e-2,
    mix: bool = True,
    mix_stage: str = MIX_STAGE,
    progress: Progress | None = None,
) -> SCHelix:
    """Train a new entry for each query batch, every network weight frozen (scArches-style).

    Query batch names that are also reference batch names must be renamed first
    (:func:`map_query` does it). Stores ``model.adapter``; :func:`embed` then uses it.
    ``mix`` adds the query-reference MNN term (:mod:`schelix.mixing`; weight
    ``w_mnn_variant``, partners ``mnn_k``) on the ``mix_stage`` embedding; ``False`` trains
    on reconstruction and Align alone. ``model.adapter[0].paired``: the fraction of query
    cells with a reference partner.
    """
    from schelix import mixing
    from schelix.checks import check_steps

    check_steps(steps)
    require_column(query, batch_key, "Batch")
    names = sorted(query.obs[batch_key].astype(str).unique())
    clash = set(names) & set(model.meta["batches"])
    if clash:
        raise SchelixError(
            f"Query batches {sorted(clash)} have the names of reference batches",
            "rename them (map_query adds ' (query)' itself)",
        )
    model.adapter = None
    data, _ = _query_data(model, query, None)
    codes = pd.Categorical(query.obs[batch_key].astype(str), names).codes
    q = torch.as_tensor(codes.astype(np.int64))
    module, dev = model.module, model.device or "cpu"
    pull = mixing.prepare(model, data, codes, stage=mix_stage) if mix else None
    limit_cpu_threads()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    adapter = QueryAdapter(module, len(names), data.x_variant.shape[1], data.x_anchor.shape[1])
    adapter.to(dev)
    was = [(p, p.requires_grad) for p in module.parameters()]
    was_training = module.training
    for p, _ in was:
        p.requires_grad_(False)
    module.eval()  # no graph rebuild, no prototype update: nothing in the network changes
    try:
        with torch.no_grad():
            weights = (module.enc_variant.effective_weight(), module.enc_anchor.effective_weight())
        opt = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=0.0)
        bs = min(model.config.batch_size, data.n_cells)
        for step in range(steps):
            idx = torch.randint(0, data.n_cells, (bs,), generator=gen)
            pair = None
            if pull is not None:
                has, targets = mixing.sample_targets(pull[0], pull[1], idx, gen)
                pair = (mix_stage, has.to(dev), targets.to(dev))
            loss = adapter.losses(
                module, data.x_variant[idx].to(dev), data.x_anchor[idx].to(dev),
                q[idx].to(dev), weights, pair,
            )  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None and (step % 10 == 0 or step == steps - 1):
                progress((step + 1) / steps, f"adapting step {step + 1}/{steps}")
    finally:
        for p, flag in was:
            p.requires_grad_(flag)
        module.train(was_training)
    adapter.paired = float((pull[0][:, 0] >= 0).float().mean()) if pull is not None else 0.0
    model.adapter = (adapter.eval(), names)
    return model


def _joint_x(model: SCHelix, query: ad.AnnData) -> sp.csr_matrix:
    """Model genes of reference (empty when the model holds no expression) and query rows."""
    genes = model.meta["variants"] + model.meta["anchors"]
    ref = model.adata
    if ref.uns.get("schelix", {}).get("reference_only"):
        top = sp.csr_matrix((ref.n_obs, len(genes)), dtype=np.float32)
    else:
        top = sp.csr_matrix(ref[:, genes].X, dtype=np.float32)
    idx = pd.Index(query.var_names).get_indexer(genes)
    x = sp.csr_matrix(query.X, dtype=np.float32)[:, np.maximum(idx, 0)]
    x = x @ sp.diags((idx >= 0).astype(np.float32))  # genes the query lacks: empty columns
    return sp.vstack([top, x]).tocsr()


def labels_frame(joint: ad.AnnData, labels: Sequence[str]) -> pd.DataFrame:
    """The query cells' transferred labels, probabilities and uncertainties (one row a cell)."""
    q = joint.obs[joint.obs[ORIGIN_KEY] == "query"]
    cols = [f"{lab}_{s}" for lab in labels for s in ("transferred", "probability", "uncertainty")]
    return q[[c for c in cols if c in q]].copy()


def map_query(
    model: SCHelix,
    query: ad.AnnData,
    *,
    batch_key: str,
    transfer: Sequence[str] = (),
    adapt_steps: int = DEFAULT_ADAPT_STEPS,
    mix: bool = True,
    seed: int = 0,
    uncertainty_threshold: float | None = None,
    progress: Progress | None = None,
    key_added: str = "X_schelix",
) -> ad.AnnData:
    """Map a log-normalized ``query`` onto ``model``; return reference and query together.

    Parameters
    ----------
    model
        A trained model (in memory, or :func:`load_reference` of a saved one).
    query
        Log-normalized AnnData (:func:`prepare_query` from raw counts), batches in ``batch_key``.
    transfer
        Reference ``obs`` columns (cell types) to transfer: writes ``<label>_transferred``,
        ``<label>_probability`` and ``<label>_uncertainty`` (see :mod:`schelix.transfer`).
    adapt_steps
        Steps of query-batch adaptation (0: embed with the reference model as it is).
    mix
        Pull query cells toward their reference MNN partners while adapting (:func:`adapt`).
    uncertainty_threshold
        Cells above it are labelled "Unknown" (default :data:`schelix.transfer.UNKNOWN_ABOVE`).

    Returns
    -------
    AnnData: reference cells then query cells; ``obs[ORIGIN_KEY]``, the batch in the model's
    batch column, ``obsm[key_added]`` (fused) and every stage, ``X`` on the model's genes
    (reference rows empty when the model holds no expression), ``uns["schelix"]["map"]``.
    """
    from schelix import transfer as transfer_mod

    require_column(query, batch_key, "Batch")
    ref = model.adata
    for label in transfer:
        if label not in ref.obs:
            cols = ", ".join(f"'{c}'" for c in ref.obs.columns)
            raise SchelixError(
                f"The reference has no column '{label}' to transfer", f"choose one of: {cols}"
            )
    t0 = time.perf_counter()
    query = query.copy()
    known = set(model.meta["batches"])
    query.obs[batch_key] = [
        f"{b} (query)" if b in known else b for b in query.obs[batch_key].astype(str)
    ]
    if adapt_steps > 0:
        adapt(model, query, batch_key=batch_key, steps=adapt_steps, seed=seed, mix=mix,
              progress=progress)  # fmt: skip
    if progress is not None:
        progress(1.0, "embedding the query")
    q_emb = embed(model, query, batch_key=batch_key)
    obs_r = ref.obs.copy()
    obs_q = query.obs.copy()
    if batch_key != model.batch_key:
        obs_q[model.batch_key] = obs_q[batch_key]
    obs_r[ORIGIN_KEY], obs_q[ORIGIN_KEY] = "reference", "query"
    obs = pd.concat([obs_r, obs_q], join="outer")
    for col in obs:
        if not pd.api.types.is_numeric_dtype(obs[col]) or pd.api.types.is_bool_dtype(obs[col]):
            vals = obs[col].astype(object)
            obs[col] = pd.Categorical(vals.where(vals.isna(), vals.astype(str)))
    genes = model.meta["variants"] + model.meta["anchors"]
    joint = ad.AnnData(_joint_x(model, query), obs=obs, var=pd.DataFrame(index=genes))
    joint.obs_names_make_unique()
    for stage in STAGES:
        key = key_added if stage == "fused" else f"{key_added}_{stage}"
        joint.obsm[key] = np.vstack([model.get_latent_representation(stage), q_emb[stage]])
    is_q = (joint.obs[ORIGIN_KEY] == "query").to_numpy()
    fused = joint.obsm[key_added]
    for label in transfer:
        res = transfer_mod.transfer_labels(
            fused[~is_q], ref.obs[label].astype(str).to_numpy(), fused[is_q],
            threshold=uncertainty_threshold,
        )  # fmt: skip
        transfer_mod.write(joint, label, res, is_q)
    joint.uns["schelix"] = {
        "map": {
            "batch_key": model.batch_key,
            "query_batches": sorted(set(query.obs[batch_key].astype(str))),
            "adapt_steps": int(adapt_steps),
            "mix": bool(mix and adapt_steps > 0),
            "mix_paired": model.adapter[0].paired if adapt_steps > 0 else 0.0,
            "transfer": list(transfer),
            "seconds": float(time.perf_counter() - t0),
            "reference_expression": not ref.uns.get("schelix", {}).get("reference_only", False),
            "n_reference": int((~is_q).sum()),
            "n_query": int(is_q.sum()),
        }
    }
    return joint
