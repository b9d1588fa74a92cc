"""Reference mapping benchmark: leave one batch out, map it, transfer labels (issue 13).

For each shared dataset, one batch is held out (the query); the other batches are the
reference. Per seed:

- **scHelix**: what ``schelix run REF --batch-key K --save-model DIR`` does (QC, HVGs, anchors,
  gate, training with the defaults), then what ``schelix map QUERY --model DIR
  --transfer-labels L`` does (load the saved model, QC + normalize the query, adapt with the
  default steps, embed, weighted-kNN transfer). Time to map = that second part.
- **scVI + scArches** (scvi-tools, the anchor): SCVI on the same reference HVG counts with the
  scArches settings of scvi-tools' reference-mapping tutorial (``use_layer_norm="both"``,
  ``use_batch_norm="none"``, ``encode_covariates=True``, ``dropout_rate=0.2``, ``n_layers=2``)
  and its default training length; ``SCVI.load_query_data`` + 200 query epochs
  (``weight_decay=0``), as the tutorial; the same kNN transfer on its latent.
- **Retrain**: what a user does without mapping: ``schelix run`` on reference + query
  (measured once per dataset, seed 0, after that dataset's first mapping).

Scores on the held-out cells with a usable label ("Unknown" counts as wrong): accuracy and
macro-F1; on the joint embedding with origin (reference / query) as the batch: ASW_batch
(scib-metrics, per cell type) and iLISI (k = 90, scaled).

    python benchmarks/mapping.py [--datasets cellbench pbmc3 kang] [--seeds 0 1 2]
        [--mix on off] [--models DIR] [--skip-scvi] [--no-retrain]

``--mix on off`` maps each reference twice, with and without the query-reference MNN term of
the adaptation (rows "scHelix" and "scHelix (no mix)"); ``--models DIR`` keeps the trained
reference models (and the retrain time) so that a later run maps onto the same ones; an
existing ``--out`` file is resumed (rows already there are not run again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

# Imported before scanpy/numba: schelix holds numba and torch to OMP_NUM_THREADS (numba's OpenMP
# layer otherwise resets the process to every core; measured: a mapping step 50x slower on the
# shared 2-core machine; schelix.device.limit_cpu_threads).
import schelix

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: file, batch column, label column, held-out batch (a data description, not a tuning flag)
DATASETS = {
    "cellbench": ("cellbench_lung_lines.h5ad", "batch", "cell_line", "Drop-seq"),
    "pbmc3": ("pbmc_3chem.h5ad", "tech", "cell_type", "VDJ"),
    # Kang's README batch column is `condition` (ctrl / stim): holding one out leaves a one-batch
    # reference, which scHelix refuses (anchors need two batches). So the batch is the donor and
    # donor 101 (488 ctrl + 729 stim cells, all labelled) is held out; the reference keeps the
    # other donors of both conditions (and the unlabelled donor-"unknown" cells).
    "kang": ("kang_ifnb_pbmc.h5ad", "donor", "cell_type", "101"),
}


def _scores(ref_emb, query_emb, ref_labels, truth) -> dict:
    import scib_metrics
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.neighbors import NearestNeighbors

    from schelix.obs import label_mask
    from schelix.transfer import UNKNOWN, transfer_labels

    res = transfer_labels(ref_emb, ref_labels, query_emb)
    ok = label_mask(truth)
    pred, true = res.labels[ok], truth[ok]
    out = {
        "accuracy": float(accuracy_score(true, pred)),
        "macro_F1": float(f1_score(true, pred, labels=np.unique(true), average="macro")),
        "unknown": float((res.labels == UNKNOWN).mean()),
    }
    x = np.vstack([ref_emb, query_emb]).astype(np.float32)
    origin = np.r_[np.zeros(len(ref_emb), int), np.ones(len(query_emb), int)]
    labels = np.r_[ref_labels, truth].astype(str)
    keep = label_mask(labels)
    out["ASW_batch"] = float(
        scib_metrics.silhouette_batch(x[keep], labels[keep], origin[keep], rescale=True)
    )
    dist, idx = NearestNeighbors(n_neighbors=90).fit(x).kneighbors(x)
    nn = NeighborsResults(indices=idx.astype(np.int64), distances=dist.astype(np.float32))
    out["iLISI"] = float(scib_metrics.ilisi_knn(nn, origin, scale=True))
    return out


def _reference(raw, bkey, lkey, held, seed, cache: Path | None, tmp: str) -> tuple[Path, dict]:
    """The saved reference model (trained here, or read from ``cache``) and its training time."""
    from schelix.pipeline import integrate

    folder = cache / f"{bkey}_{held}_s{seed}" if cache else Path(tmp) / "model"
    info = folder / "bench.json"
    if info.is_file():
        return folder, json.loads(info.read_text())
    t0 = time.perf_counter()
    ref = schelix.pp.preprocess(raw[raw.obs[bkey] != held].copy(), batch_key=bkey)
    model = integrate(ref, batch_key=bkey, label_key=lkey, seed=seed)
    meta = {"train_ref_s": time.perf_counter() - t0, "train_load": os.getloadavg()}
    model.save(folder)
    info.write_text(json.dumps(meta))
    return folder, meta


def _schelix(raw, bkey, lkey, held, seed, *, mix: bool, cache: Path | None) -> dict:
    from schelix.mapping import load_reference, map_query, prepare_query

    q_raw = raw[raw.obs[bkey] == held].copy()
    with tempfile.TemporaryDirectory() as tmp:
        folder, meta = _reference(raw, bkey, lkey, held, seed, cache, tmp)
        t0 = time.perf_counter()
        loaded = load_reference(folder)
        query = prepare_query(q_raw, batch_key=bkey)
        joint = map_query(loaded, query, batch_key=bkey, transfer=[lkey], seed=seed, mix=mix)
        t_map = time.perf_counter() - t0
    is_q = (joint.obs["schelix_origin"] == "query").to_numpy()
    emb = joint.obsm["X_schelix"]
    truth = joint.obs[lkey].astype(str).to_numpy()
    out = _scores(emb[~is_q], emb[is_q], truth[~is_q], truth[is_q])
    out.update(meta, map_s=t_map, map_load=os.getloadavg(), n_query=int(is_q.sum()))
    return out


def _scvi(raw, bkey, lkey, held, seed) -> dict:
    import scvi

    from schelix.methods.scvi import quiet

    ref = schelix.pp.preprocess(raw[raw.obs[bkey] != held].copy(), batch_key=bkey)
    ref = ref[:, ref.var["highly_variable"].to_numpy()].copy()
    ref.X = ref.layers["counts"].copy()
    q = raw[raw.obs[bkey] == held].copy()
    q.obs[bkey] = q.obs[bkey].astype(str)
    from schelix.mapping import prepare_query

    q = q[prepare_query(q, batch_key=bkey).obs_names].copy()  # the cells scHelix maps (its QC)
    t0 = time.perf_counter()
    with quiet():
        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(ref, batch_key=bkey)
        arches = dict(use_layer_norm="both", use_batch_norm="none", encode_covariates=True,
                      dropout_rate=0.2, n_layers=2)  # fmt: skip
        model = scvi.model.SCVI(ref, **arches)
        model.train(enable_progress_bar=False, accelerator="cpu", devices=1)
        t_ref = time.perf_counter() - t0
        ref_emb = model.get_latent_representation()
        t0 = time.perf_counter()
        q = q[:, [g for g in ref.var_names if g in q.var_names]].copy()
        scvi.model.SCVI.prepare_query_anndata(q, model)
        qm = scvi.model.SCVI.load_query_data(q, model)
        qm.train(max_epochs=200, plan_kwargs={"weight_decay": 0.0}, enable_progress_bar=False,
                 accelerator="cpu", devices=1)  # fmt: skip
        q_emb = qm.get_latent_representation()
        t_map = time.perf_counter() - t0
    truth = q.obs[lkey].astype(str).to_numpy()
    out = _scores(ref_emb, q_emb, ref.obs[lkey].astype(str).to_numpy(), truth)
    out.update(train_ref_s=t_ref, map_s=t_map, n_query=int(q.n_obs))
    return out


def _retrain(raw, bkey, lkey, cache: Path | None) -> float:
    from schelix.pipeline import integrate

    info = cache / f"{bkey}_retrain.json" if cache else None
    if info is not None and info.is_file():
        return json.loads(info.read_text())["retrain_s"]
    t0 = time.perf_counter()
    adata = schelix.pp.preprocess(raw.copy(), batch_key=bkey)
    integrate(adata, batch_key=bkey, label_key=lkey, seed=0)
    seconds = time.perf_counter() - t0
    if info is not None:
        info.parent.mkdir(parents=True, exist_ok=True)
        info.write_text(json.dumps({"retrain_s": seconds, "load": os.getloadavg()}))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--skip-scvi", action="store_true")
    parser.add_argument("--skip-schelix", action="store_true", help="only the scVI rows")
    parser.add_argument("--no-retrain", action="store_true", help="skip the retrain timing")
    parser.add_argument("--mix", nargs="+", default=["on"], choices=["on", "off"],
                        help="map with the query-reference MNN term on and/or off")  # fmt: skip
    parser.add_argument("--models", default=None,
                        help="folder that keeps trained reference models for reuse")  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/mapping.json")
    parser.add_argument("--report", default=None, help="only print the table of a results JSON")
    args = parser.parse_args()
    if args.report:
        print(summarize(json.loads(Path(args.report).read_text())["rows"]))
        return
    warnings.filterwarnings("ignore")
    meta = {"machine": platform.platform(), "cpus": os.cpu_count()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []  # resume
    done = {(r["dataset"], r["method"], r["seed"]) for r in rows}
    cache = Path(args.models) if args.models else None
    raws, retrain = {}, {}
    for seed in args.seeds:  # seed-major: every dataset has results as early as possible
        for name in args.datasets:
            file, bkey, lkey, held = DATASETS[name]
            if name not in raws:
                raws[name] = ad.read_h5ad(DATA / file)
                raws[name].obs[bkey] = raws[name].obs[bkey].astype(str)
            raw = raws[name]
            todo = [] if args.skip_schelix else [m == "on" for m in args.mix]
            for mix in todo:
                method = "scHelix" if mix else "scHelix (no mix)"
                if (name, method, seed) in done:
                    continue
                res = _schelix(raw, bkey, lkey, held, seed, mix=mix, cache=cache)
                rows.append({"dataset": name, "method": method, "seed": seed, **res})
                print(rows[-1], flush=True)
            if todo and not args.no_retrain and name not in retrain:
                retrain[name] = _retrain(raw, bkey, lkey, cache)
                print(f"{name}: retrain {retrain[name]:.1f} s (load {os.getloadavg()})",
                      flush=True)  # fmt: skip
            for r in rows:
                if r["dataset"] in retrain and r["method"].startswith("scHelix"):
                    r["retrain_s"] = retrain[r["dataset"]]
            out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
            if not args.skip_scvi and (name, "scVI+scArches", seed) not in done:
                res = _scvi(raw, bkey, lkey, held, seed)
                rows.append({"dataset": name, "method": "scVI+scArches", "seed": seed, **res})
                print(rows[-1], flush=True)
            meta["load"] = os.getloadavg()
            out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(summarize(rows))


def summarize(rows: list[dict]) -> str:
    """Markdown table: mean ± std over seeds per dataset and method; map vs retrain time."""
    table = pd.DataFrame(rows)
    cols = ["accuracy", "macro_F1", "unknown", "ASW_batch", "iLISI", "map_s", "train_ref_s"]
    lines = [
        "| dataset | method | seeds | " + " | ".join(cols) + " | retrain s | retrain / map |",
        "|---|---|---:|" + "---:|" * (len(cols) + 2),
    ]
    for (name, method), g in table.groupby(["dataset", "method"], sort=False):
        cells = [f"{g[c].mean():.3f} ± {g[c].std(ddof=0):.3f}" if c not in ("map_s", "train_ref_s")
                 else f"{g[c].mean():.1f}" for c in cols]  # fmt: skip
        retrain = (
            g["retrain_s"].mean() if "retrain_s" in g and g["retrain_s"].notna().any() else None
        )
        ratio = f"{retrain / g['map_s'].mean():.1f}x" if retrain else "–"
        lines.append(
            f"| {name} | {method} | {len(g)} | " + " | ".join(cells)
            + f" | {retrain:.1f} | {ratio} |" if retrain else
            f"| {name} | {method} | {len(g)} | " + " | ".join(cells) + " | – | – |"
        )  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
