"""Mapping new cells onto a trained model: embed, gate, adapt, transfer labels, save/load."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

import schelix
from schelix import anchors, mapping, mixing
from schelix.errors import SchelixError, SchelixWarning
from schelix.gate import VariantGate
from schelix.model import SCHelix
from schelix.pipeline import integrate
from schelix.transfer import UNKNOWN, transfer_labels

FAST = dict(batch_size=64, n_prototypes=6, mixup_k=20, snapshot_every=10)
ROOT = Path(__file__).resolve().parents[1]


def _split(counts: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    """Reference (batches 0, 1), log-normalized and split; query (batch 2), raw counts."""
    ref = counts[counts.obs["batch"] != "batch2"].copy()
    query = counts[counts.obs["batch"] == "batch2"].copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    ref.var["highly_variable"] = True
    anchors.score_genes(ref, batch_key="batch", n_pcs=20, seed=0)
    anchors.split_anchors(ref)
    return ref, query


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained on two batches of synthetic data and saved; the third batch as query."""
    counts = schelix.datasets.synthetic(600, 300, batch_strength=0.8, seed=3)
    ref, query_raw = _split(counts)
    model = integrate(ref, batch_key="batch", label_key="cell_type", max_steps=40, **FAST)
    path = tmp_path_factory.mktemp("mapping") / "model"
    model.save(path)
    query = mapping.prepare_query(query_raw, batch_key="batch")
    return model, ref, query, query_raw, path


def test_get_latent_representation_embeds_new_cells_with_genes_matched_by_name(trained):
    model, ref, query, _, _ = trained
    emb = model.get_latent_representation(adata=query)
    assert emb.shape == (query.n_obs, model.config.latent_dim) and np.isfinite(emb).all()
    # genes in another order, plus genes the model never saw: the same embedding
    extra = ad.AnnData(np.ones((query.n_obs, 2), np.float32), obs=query.obs[[]])
    extra.var_names = ["NOT_A_GENE_1", "NOT_A_GENE_2"]
    shuffled = ad.concat([query, extra], axis=1)[:, ::-1].copy()
    shuffled.obs = query.obs.copy()
    np.testing.assert_allclose(
        model.get_latent_representation(adata=shuffled), emb, rtol=1e-5, atol=1e-5
    )
    # the reference itself, embedded as "new" data, is unchanged
    fresh = ad.AnnData(ref.X.copy(), obs=ref.obs[["batch"]].copy())
    fresh.var_names = ref.var_names.copy()
    np.testing.assert_allclose(
        model.get_latent_representation(adata=fresh), model.get_latent_representation(), atol=1e-5
    )


def test_missing_genes_are_filled_with_a_note_and_too_few_anchors_refused(trained):
    model, _, query, _, _ = trained
    anchor_genes = model.meta["anchors"]
    drop = set(anchor_genes[: len(anchor_genes) // 4])
    part = query[:, [g for g in query.var_names if g not in drop]].copy()
    with pytest.warns(SchelixWarning, match=r"missing from the data.*reference mean"):
        emb = model.get_latent_representation(adata=part)
    assert np.isfinite(emb).all()
    few = query[:, [g for g in query.var_names if g not in set(anchor_genes[:-3])]].copy()
    with pytest.raises(SchelixError, match="anchor genes"):
        model.get_latent_representation(adata=few)


def test_unseen_cells_get_the_gate_cluster_of_their_nearest_centroid(trained):
    model, ref, _, _, _ = trained
    gate = model.gate
    assert gate is not None and gate.can_assign
    x = np.asarray(ref[:, list(gate.anchor_genes)].X.toarray())
    idx = [model.meta["variants"].__len__() + model.meta["anchors"].index(g)
           for g in gate.anchor_genes]  # fmt: skip
    low, high = gate.assign(x, mean=model.meta["mean"][idx], std=model.meta["std"][idx])
    assert (low == gate.low_labels).mean() > 0.8  # the coarse clusters are found again
    assert low.max() < len(gate.gamma_low) and high.max() < len(gate.gamma_high)


def test_adaptation_leaves_the_reference_embedding_and_the_network_unchanged(trained):
    model, ref, query, _, _ = trained
    before_ref = model.get_latent_representation()
    fresh = ad.AnnData(ref.X.copy(), obs=ref.obs[["batch"]].copy())
    fresh.var_names = ref.var_names.copy()
    before_fresh = model.get_latent_representation(adata=fresh)
    plain = model.get_latent_representation(adata=query)
    weights = {k: v.clone() for k, v in model.module.state_dict().items() if hasattr(v, "clone")}
    mapping.adapt(model, query, batch_key="batch", steps=30)
    try:
        after = model.get_latent_representation(adata=query)
        assert not np.allclose(after, plain)  # the query batch has its own entry now
        np.testing.assert_allclose(model.get_latent_representation(adata=fresh), before_fresh,
                                   atol=1e-6)  # fmt: skip
        np.testing.assert_array_equal(model.get_latent_representation(), before_ref)
        for k, v in weights.items():
            assert (model.module.state_dict()[k] == v).all(), k
        assert all(p.requires_grad for p in model.module.parameters())
    finally:
        model.adapter = None


def _partner_distance(query_variant: np.ndarray, ref_variant: np.ndarray, partners) -> float:
    """Mean ``1 - cos`` between paired query cells and their reference partners (variant)."""
    has = partners[:, 0] >= 0
    q = query_variant[has] / np.linalg.norm(query_variant[has], axis=1, keepdims=True)
    r = ref_variant[partners[has]]
    r = r / np.linalg.norm(r, axis=2, keepdims=True)
    return float((1 - np.einsum("nd,nkd->nk", q, r)).mean())


def test_query_reference_mnn_pairs_are_mutual_nearest_neighbours():
    ref = np.array([[0.0, 0.0], [10.0, 0.0], [0.1, 0.0], [10.1, 0.0], [50.0, 50.0]])
    ref_batch = np.array(["r1", "r1", "r2", "r2", "r2"])
    q = np.array([[0.05, 0.0], [10.05, 0.0], [-50.0, 0.0]])
    partners = mixing.query_partners(q, np.array(["q"] * 3), ref, ref_batch, k=1).numpy()
    # the first two pair with their mutual nearest reference cells; the far one with none
    # (its nearest reference cell, 0, has a nearer query cell)
    np.testing.assert_array_equal(partners[:, 0], [0, 1, -1])
    alone = mixing.query_partners(q, np.array(["q"] * 3), ref[2:], ref_batch[2:], k=1).numpy()
    np.testing.assert_array_equal(alone[:, 0], [0, 1, -1])  # within each reference batch


def test_the_mixing_term_pulls_query_cells_toward_their_reference_partners(trained):
    _, _, query, _, path = trained
    model = mapping.load_reference(path)
    plain = mapping.embed(model, query)  # the frozen network's view, before any adaptation
    partners = mixing.query_partners(
        plain["anchor"], np.zeros(query.n_obs), model.get_latent_representation("anchor"),
        model.adata.obs["batch"].astype(str).to_numpy(), k=model.config.mnn_k,
    ).numpy()  # fmt: skip
    assert (partners[:, 0] >= 0).mean() > 0.3  # the pairs are found
    ref_variant = model.get_latent_representation("variant")
    dist = {}
    for mix in (False, True):
        loaded = mapping.load_reference(path)
        joint = mapping.map_query(loaded, query, batch_key="batch", mix=mix, adapt_steps=60)
        info = joint.uns["schelix"]["map"]
        assert info["mix"] is mix and (info["mix_paired"] > 0.3 if mix else True), info
        is_q = (joint.obs["schelix_origin"] == "query").to_numpy()
        dist[mix] = _partner_distance(joint.obsm["X_schelix_variant"][is_q], ref_variant, partners)
    assert dist[True] < 0.8 * dist[False], dist  # the pull brings the pairs together
    loaded = mapping.load_reference(path)
    off = dataclasses.replace(loaded.config, w_mnn_variant=0.0)  # the model's weight: 0 = off
    loaded.config = loaded.module.config = off
    joint = mapping.map_query(loaded, query, batch_key="batch", mix=True, adapt_steps=60)
    is_q = (joint.obs["schelix_origin"] == "query").to_numpy()
    variant = joint.obsm["X_schelix_variant"][is_q]
    assert abs(_partner_distance(variant, ref_variant, partners) - dist[False]) < 1e-6


def test_label_transfer_marks_a_new_cell_state_unknown():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    ref = np.vstack([c + rng.normal(size=(100, 2)) for c in centres])
    labels = np.repeat(np.array(["a", "b", "c"], dtype=object), 100)
    labels[::10] = "unlabelled"  # missing labels do not vote
    query = np.vstack([centres + rng.normal(size=(3, 2)) * 0.3, [[60.0, 60.0], [-50.0, 40.0]]])
    res = transfer_labels(ref, labels, query)
    assert list(res.labels) == ["a", "b", "c", UNKNOWN, UNKNOWN]
    assert (res.uncertainty[:3] < 0.1).all() and (res.uncertainty[3:] == 1).all()
    assert np.allclose(res.probabilities.sum(1), 1) and "unlabelled" not in res.classes
    # a region where two types are interleaved: uncertain, so "Unknown" under a strict threshold
    blob = np.vstack([ref, np.array([20.0, 20.0]) + rng.normal(size=(200, 2))])
    both = np.r_[labels, np.tile(["a", "b"], 100)]
    mixed = transfer_labels(blob, both, np.array([[20.0, 20.0]]), threshold=0.2)
    assert mixed.labels[0] == UNKNOWN and 0.2 < mixed.uncertainty[0] < 1


def test_map_query_writes_joint_anndata_with_origin_and_transferred_labels(trained):
    _, _, query, _, path = trained
    model = mapping.load_reference(path)
    joint = mapping.map_query(model, query, batch_key="batch", transfer=["cell_type"],
                              adapt_steps=20)  # fmt: skip
    is_q = (joint.obs["schelix_origin"] == "query").to_numpy()
    assert is_q.sum() == query.n_obs and (~is_q).sum() == model.adata.n_obs
    assert joint.obsm["X_schelix"].shape == (joint.n_obs, model.config.latent_dim)
    for col in ("cell_type_transferred", "cell_type_probability", "cell_type_uncertainty"):
        assert col in joint.obs
    pred = joint.obs["cell_type_transferred"].astype(str).to_numpy()[is_q]
    truth = joint.obs["cell_type"].astype(str).to_numpy()[is_q]
    assert (pred == truth).mean() > 0.7  # distinct synthetic types are recovered
    assert set(joint.obs["batch"].astype(str)[is_q]) == {"batch2"}
    assert joint.uns["schelix"]["map"]["adapt_steps"] == 20
    genes = list(joint.var_names)  # the query's own values; the reference rows hold none
    np.testing.assert_allclose(joint.X[is_q].toarray(), query[:, genes].X.toarray(), rtol=1e-6)
    assert joint.X[~is_q].nnz == 0 and not joint.uns["schelix"]["map"]["reference_expression"]
    with pytest.raises(SchelixError, match="no column 'cell_kind'"):
        mapping.map_query(model, query, batch_key="batch", transfer=["cell_kind"])


def test_a_model_saved_in_one_process_maps_a_query_in_another(trained, tmp_path):
    _, _, _, query_raw, path = trained
    query_file, out = tmp_path / "query.h5ad", tmp_path / "joint.h5ad"
    query_raw.write_h5ad(query_file)
    code = "import sys; from schelix.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["map", str(query_file), "--model", str(path), "--batch-key", "batch", "-o", str(out),
            "--transfer-labels", "cell_type", "--adapt-steps", "10",
            "--labels-csv", str(tmp_path / "labels.csv")]  # fmt: skip
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    joint = ad.read_h5ad(out)
    assert set(joint.obs["schelix_origin"]) == {"reference", "query"}
    assert "cell_type_transferred" in joint.obs
    assert (tmp_path / "labels.csv").read_text().startswith(",cell_type_transferred")


def _strip_centroids(path: Path) -> None:
    g = VariantGate.load(path / "gate.npz")
    import dataclasses

    dataclasses.replace(g, anchor_genes=None, low_centroids=None, high_centroids=None).save(
        path / "gate.npz"
    )


def test_a_model_saved_before_mapping_existed_gets_a_clear_message(trained, tmp_path, capsys):
    import shutil

    from schelix.cli import main

    _, ref, query, query_raw, path = trained
    old = tmp_path / "old"
    shutil.copytree(path, old)
    (old / "reference.npz").unlink()
    with pytest.raises(SchelixError, match="saved before mapping"):
        mapping.load_reference(old)
    query_raw.write_h5ad(tmp_path / "q.h5ad")
    assert main(["map", str(tmp_path / "q.h5ad"), "--model", str(old), "--batch-key", "batch",
                 "-o", str(tmp_path / "j.h5ad")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "saved before mapping" in err and "Fix:" in err and "Traceback" not in err
    # an old gate (no centroids) on new cells: the same kind of message, on the API path too
    gate_only = tmp_path / "gate_only"
    shutil.copytree(path, gate_only)
    _strip_centroids(gate_only)
    loaded = SCHelix.load(gate_only, ref.copy())
    with pytest.raises(SchelixError, match="saved before mapping"):
        loaded.get_latent_representation(adata=query)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(  # its own cells still embed as before
            loaded.get_latent_representation(), trained[0].get_latent_representation(), atol=1e-6
        )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "{missing}"], "not a folder"),
        (["--model", "{model}", "--transfer-labels", "cell_kind"], "cell_kind"),
        (["--model", "{model}", "--adapt-steps", "-3"], "Fix:"),
    ],
)
def test_cli_map_refuses_bad_input_with_one_line(trained, tmp_path, capsys, extra, message):
    from schelix.cli import main

    _, _, _, query_raw, path = trained
    query_raw.write_h5ad(tmp_path / "q.h5ad")
    extra = [e.format(missing=tmp_path / "nope", model=path) for e in extra]
    code = main(["map", str(tmp_path / "q.h5ad"), "--batch-key", "batch",
                 "-o", str(tmp_path / "j.h5ad"), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
