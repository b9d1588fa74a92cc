"""SCHelix API, training loop, callbacks, snapshots, save/load/resume, pipeline slots."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from schelix import SCHelix, SchelixError
from schelix.config import ABLATIONS, SCHelixConfig
from schelix.module import STAGES
from schelix.pipeline import integrate
from schelix.train import Callback, StepRecord

FAST = dict(batch_size=64, n_prototypes=6, mixup_k=20, snapshot_every=10)


def _model(adata, **kw):
    SCHelix.setup_anndata(adata, batch_key="batch")
    return SCHelix(adata, **{**FAST, **kw})


def test_setup_errors_name_problem_and_fix(adata_split):
    with pytest.raises(SchelixError, match=r"not in adata\.obs.*Fix: choose one of"):
        SCHelix.setup_anndata(adata_split, batch_key="donor")
    one = adata_split.copy()
    one.obs["batch"] = "b0"
    with pytest.raises(SchelixError, match="only one batch"):
        SCHelix.setup_anndata(one, batch_key="batch")
    fresh = adata_split.copy()
    fresh.uns.pop("schelix")
    with pytest.raises(SchelixError, match="setup_anndata"):
        SCHelix(fresh)


def test_cpu_training_is_repeatable_and_records_every_term(adata_split):
    a = _model(adata_split.copy()).train(max_steps=24, seed=5)
    b = _model(adata_split.copy()).train(max_steps=24, seed=5)
    c = _model(adata_split.copy()).train(max_steps=24, seed=6)
    np.testing.assert_allclose(
        a.get_latent_representation(), b.get_latent_representation(), atol=1e-5
    )
    assert not np.allclose(a.get_latent_representation(), c.get_latent_representation(), atol=1e-3)
    hist = a.history
    assert list(hist["step"]) == list(range(1, 25))
    assert set(hist["phase"]) == {"warmup", "fusion"}  # warm-up capped at half the run
    warm, fuse = hist[hist.phase == "warmup"], hist[hist.phase == "fusion"]
    assert warm["kd"].isna().all() and fuse["kd"].notna().all()
    for term in ("rec_variant", "rec_anchor", "align", "conn_variant", "conn_anchor", "total"):
        assert hist[term].notna().all()
    assert hist["mnn_variant"].notna().all()  # on by default; every batch here has MNN partners
    assert a.device == "cpu"
    old = _model(adata_split.copy(), **ABLATIONS["scaffold_48d"]).train(max_steps=6, seed=5)
    assert "mnn_variant" not in old.history  # the preset without the MNN term
    # the contrastive MNN term alone still gets its partners, and the curves record it
    nce = _model(adata_split.copy(), w_mnn_variant=0.0, w_mnn_anchor=1.0).train(max_steps=6, seed=5)
    assert nce.history["mnn_anchor"].notna().all() and "mnn_variant" not in nce.history
    assert "mnn_anchor" not in hist  # off by default


def test_callbacks_see_steps_snapshots_and_can_cancel(adata_split):
    class Recorder(Callback):
        def __init__(self):
            self.records: list[StepRecord] = []
            self.snaps: list[int] = []

        def on_step(self, record):
            self.records.append(record)

        def on_snapshot(self, step, fused):
            assert fused.shape == (adata_split.n_obs, SCHelixConfig().latent_dim)
            self.snaps.append(step)

        def should_stop(self):
            return len(self.records) >= 15

    rec = Recorder()
    model = _model(adata_split).train(max_steps=40, callbacks=[rec])
    assert model.state.stopped_early and model.state.step == 15
    assert [r.step for r in rec.records] == list(range(1, 16))
    assert rec.snaps == [10] and sorted(model.snapshots) == [10]
    assert rec.records[-1].eta > 0 and rec.records[0].total_steps == 40


def test_stages_and_save_load_resume(adata_split, tmp_path):
    model = _model(adata_split).train(max_steps=20)
    lat = {s: model.get_latent_representation(s) for s in STAGES}
    assert all(v.shape == (adata_split.n_obs, SCHelixConfig().latent_dim) for v in lat.values())
    with pytest.raises(SchelixError, match="Unknown stage"):
        model.get_latent_representation("teacher")
    model.save(tmp_path / "m")
    loaded = SCHelix.load(tmp_path / "m", adata_split)
    np.testing.assert_allclose(loaded.get_latent_representation(), lat["fused"], atol=1e-5)
    assert (
        loaded._data.partners is None and loaded._data.neighbors is None
    )  # embedding needs neither
    loaded.train(max_steps=30)  # resume: continues the step count and the history
    assert loaded.state.step == 30 and len(loaded.history) == 30
    assert (
        loaded.history["mnn_variant"].notna().all()
    )  # resumed steps have their MNN partners again
    with pytest.raises(SchelixError, match="No saved scHelix model"):
        SCHelix.load(tmp_path / "nothing", adata_split)


def _fresh(adata):
    """The same cells and genes as read from disk: no graph, no gate, no scores, no split."""
    fresh = ad.AnnData(adata.X.copy(), obs=adata.obs[["batch", "cell_type"]].copy())
    fresh.var_names = adata.var_names.copy()
    return fresh


def test_load_on_fresh_data_gives_the_saved_embedding_without_refitting(adata_split, tmp_path):
    model = _model(adata_split).train(max_steps=20)
    assert model.gate is not None and adata_split.obs["schelix_gate_low"].nunique() > 1
    before = model.get_latent_representation()
    model.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "model.pt", "model.json", "arrays.npz", "gate.npz", "config.json", "reference.npz"
    }  # fmt: skip
    fresh = _fresh(adata_split)
    loaded = SCHelix.load(tmp_path / "m", fresh)
    np.testing.assert_array_equal(loaded.get_latent_representation(), before)
    assert "schelix_gate_low" not in fresh.obs and not len(fresh.obsp)  # nothing refitted
    np.testing.assert_array_equal(loaded.gate.gamma(), model.gate.gamma())
    # the same cells in another order: each keeps its own gate and embedding
    order = np.random.default_rng(0).permutation(fresh.n_obs)
    shuffled = SCHelix.load(tmp_path / "m", _fresh(adata_split)[order].copy())
    np.testing.assert_allclose(shuffled.get_latent_representation(), before[order], atol=1e-5)
    # cells the gate never saw are placed in the clusters of the nearest centroids
    # (tests/test_mapping.py): the same expression under new names embeds close to before
    other = _fresh(adata_split)
    other.obs_names = [f"new{i}" for i in range(other.n_obs)]
    emb = SCHelix.load(tmp_path / "m", other).get_latent_representation()
    assert np.corrcoef(emb.ravel(), before.ravel())[0, 1] > 0.9


def test_saved_model_holds_no_pickle(adata_split, tmp_path):
    import pickle

    _model(adata_split).train(max_steps=4).save(tmp_path / "m")
    (tmp_path / "m" / "model.pt").write_bytes(pickle.dumps({"module": object()}))
    with pytest.raises(SchelixError, match="it was not run"):
        SCHelix.load(tmp_path / "m", adata_split)


def test_a_saved_model_asking_for_a_huge_network_is_refused_before_building_it(
    adata_split, tmp_path
):
    import json

    _model(adata_split).train(max_steps=4).save(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    settings = json.loads(config.read_text())
    settings["latent_dim"] = 100_000  # 80 GB of encoder weights if it were built
    config.write_text(json.dumps(settings))
    with pytest.raises(SchelixError, match=r"latent_dim must be in \[1, 1024\]"):
        SCHelix.load(tmp_path / "m", adata_split)


def test_integrate_writes_documented_slots(adata_split):
    integrate(adata_split, batch_key="batch", max_steps=20, seed=1, **FAST)
    for key in ("X_schelix", "X_schelix_variant", "X_schelix_variant_aligned", "X_schelix_anchor",
                "X_schelix_anchor_refined", "X_schelix_snapshot_10", "X_schelix_snapshot_20"):  # fmt: skip
        assert adata_split.obsm[key].shape == (adata_split.n_obs, SCHelixConfig().latent_dim)
    train = adata_split.uns["schelix"]["train"]
    assert train["steps"] == 20 and train["seed"] == 1 and train["device"] == "cpu"
    assert train["batch_size"] == 64 and list(train["snapshot_steps"]) == [10, 20]
    assert len(adata_split.uns["schelix"]["history"]["total"]) == 20
    assert train["fusion_warm_started"] is False  # 20 steps: below the step floor
    assert set(adata_split.var["schelix_stream"].astype(str)) <= {"anchor", "variant", "unused"}


def test_the_warm_start_is_recorded_and_fits_the_fused_reconstruction_in_the_warm_up(adata_split):
    integrate(adata_split, batch_key="batch", max_steps=20, seed=1, min_steps=20, **FAST)
    uns = adata_split.uns["schelix"]
    assert uns["train"]["fusion_warm_started"] is True  # the run reaches the step floor
    phase, rec_fused = uns["history"]["phase"], uns["history"]["rec_fused"]
    assert (phase == "warmup").any() and np.isfinite(rec_fused[phase == "warmup"]).all()


def test_the_decoder_width_follows_the_run_and_is_saved(adata_split, tmp_path):
    short = _model(adata_split).train(max_steps=20)  # below the step floor: narrow decoders
    assert short.config.decoder_hidden == 128 and short.module.dec_fused.net[0].out_features == 128
    model = _model(adata_split, min_steps=20).train(max_steps=20)  # reaches the floor
    assert model.config.decoder_hidden == 256 and model.module.dec_fused.net[0].out_features == 256
    model.save(tmp_path / "m")
    loaded = SCHelix.load(tmp_path / "m", adata_split)
    assert loaded.module.dec_variant.net[0].out_features == 256
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5
    )


def test_semi_supervised_head_uses_only_labelled_cells(adata_split):
    adata_split.obs["cell_type"] = adata_split.obs["cell_type"].astype(str)
    adata_split.obs.loc[adata_split.obs_names[::2], "cell_type"] = "unlabelled"
    SCHelix.setup_anndata(adata_split, batch_key="batch", label_key="cell_type")
    model = SCHelix(adata_split, semi_supervised=True, **FAST).train(max_steps=12)
    assert "unlabelled" not in model.meta["labels"] and model.history["supervised"].notna().any()
    plain = SCHelix(adata_split, **FAST).train(max_steps=12)  # labels only score by default
    assert "supervised" not in plain.history
