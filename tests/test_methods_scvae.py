"""scVAE (schelix.methods.scvae): connection updates, scScore, and that it integrates."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import torch

from schelix.datasets import synthetic
from schelix.errors import SchelixError
from schelix.methods import get_method
from schelix.methods.scvae import _build, _update_connections, fit_scvae, scscore

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def adata():
    adata = synthetic(600, 300, seed=0)  # counts in X and layers["counts"]
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.var["highly_variable"] = True  # scVAE ignores it: it uses every gene
    return adata


def test_registered_needs_counts_and_gpu_flag():
    spec = get_method("scvae")
    assert spec.label == "scVAE (sparse)" and spec.uses_gpu and spec.needs_counts


def test_connection_update_keeps_total_and_limits():
    gen = torch.Generator().manual_seed(0)
    G, H, n_min, n_max = 200, 20, 2, 10
    mask = torch.rand(G, H, generator=gen).argsort(1) < 4  # 4 connections per gene
    w = torch.randn(G, H, generator=gen)
    mse = torch.arange(G, dtype=torch.float32)  # gene 0 best reconstructed, gene 199 worst
    before = mask.clone()
    for _ in range(30):
        _update_connections(
            mask,
            w,
            mse,
            n_min=n_min,
            n_max=n_max,
            n_al=12,
            n_pl=16,
            n_pw=4,
            q_w=0.001,
            v_w=1e-5,
            gen=gen,
        )
    n = mask.sum(1)
    assert int(mask.sum()) == int(before.sum())  # random adjustment refills what was removed
    assert int(n.min()) >= n_min and int(n.max()) <= n_max
    assert n[:16].float().mean() < 4 < n[-12:].float().mean()  # loss-based adjustment
    assert not torch.equal(mask, before)


def test_scscore_at_initialisation_is_the_paper_value(adata):
    # no training: every gene keeps n_init connections -> (0.2 - 0.05) / (0.5 - 0.05)
    ad = adata.copy()
    s = scscore(ad, batch_key="batch", epochs=0, n_hidden=40, device="cpu")
    assert s.index.equals(ad.var_names) and np.allclose(s, 6 / 18)
    assert np.allclose(ad.var["scvae_scscore"], 6 / 18)
    assert ad.uns["schelix"]["scscore"]["n_repeats"] == 1


def test_missing_counts_is_a_clear_error(adata):
    ad = adata.copy()
    del ad.layers["counts"]
    with pytest.raises(SchelixError, match="counts"):
        fit_scvae(ad, batch_key="batch", epochs=1)


def test_scvae_mixes_batches_better_than_pca_and_scores_markers(adata):
    import scib_metrics

    progress = []
    res = fit_scvae(
        adata,
        batch_key="batch",
        seed=0,
        device="cpu",
        epochs=60,
        batch_size=64,
        n_hidden=128,
        progress=lambda f, m: progress.append(f),
    )
    emb = res.embedding
    assert emb.shape == (adata.n_obs, 10) and np.isfinite(emb).all()
    assert len(progress) == 60 and progress[-1] == pytest.approx(1.0)

    labels, batch = adata.obs["cell_type"].to_numpy(), adata.obs["batch"].to_numpy()
    hvg = adata.copy()
    sc.pp.pca(hvg, n_comps=10, random_state=0)
    asw_b_pca = float(scib_metrics.silhouette_batch(hvg.obsm["X_pca"], labels, batch))
    asw_b = float(scib_metrics.silhouette_batch(emb, labels, batch))
    asw_l = float(scib_metrics.silhouette_label(emb, labels))
    assert asw_b > asw_b_pca + 0.05, (asw_b, asw_b_pca)
    assert asw_l > 0.6, asw_l
    # the connections kept per gene favour the cell-type markers (paper §3.2)
    s = res.scscore
    assert (
        s[adata.var["is_marker"].to_numpy()].mean() > s[~adata.var["is_marker"].to_numpy()].mean()
    )
    assert s.between(0, 1).all()


def test_kl_warmup_raises_the_kl_weight_linearly(adata):
    messages = []
    fit_scvae(
        adata[:200].copy(),
        batch_key="batch",
        epochs=6,
        n_hidden=32,
        device="cpu",
        kl_warmup_epochs=4,
        progress=lambda f, m: messages.append(m),
    )
    weights = [float(m.rsplit("KL weight ", 1)[1]) for m in messages]
    assert weights == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


@pytest.mark.parametrize("sc_activation", [False, True])
def test_sc_activation_puts_the_nonlinearity_before_the_ebm(sc_activation):
    model = _build(50, 16, 4, 2, 0.2, 1.0, 0, sc_activation=sc_activation, bm_at="sc")
    seen = []
    model.ebm.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    model.train()
    masks = torch.ones(2, 50, 16)
    model.encode([(0, torch.rand(8, 50) * 3), (1, torch.rand(8, 50) * 3)], masks)
    ebm_input_min = min(float(h.min()) for h in seen)
    assert (ebm_input_min >= 0) == sc_activation  # ReLU output only with the option


def test_fc_after_sc_false_drops_the_optional_fc_layers():
    def n_linear(seq):
        return sum(isinstance(m, torch.nn.Linear) for m in seq)

    with_fc = _build(50, 16, 4, 1, 0.2, 1.0, 0)
    without = _build(50, 16, 4, 1, 0.2, 1.0, 0, fc_after_sc=False)
    assert (n_linear(with_fc.enc_fc), n_linear(with_fc.dec_fc)) == (1, 2)
    assert (n_linear(without.enc_fc), n_linear(without.dec_fc)) == (0, 1)
    z = torch.randn(8, 4)
    out = without.decode(z, [(0, 8)], torch.ones(1, 50, 16))
    assert out.shape == (8, 50)


@pytest.mark.parametrize("shared", [True, False])
def test_initial_masks_shared_or_independent(shared):
    from schelix.methods.scvae_sc import _initial_masks

    masks = _initial_masks(3, 40, 16, 4, shared=shared, gen=torch.Generator().manual_seed(0))
    assert masks.shape == (3, 40, 16) and bool((masks.sum(2) == 4).all())  # App. A.2 (a)
    same = torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])
    assert same == shared
    masks[0, 0] = ~masks[0, 0]  # each batch's mask is its own tensor, updated alone
    assert not torch.equal(masks[0], masks[1])


def test_update_every_sets_how_often_connections_change(adata, monkeypatch):
    import schelix.methods.scvae as scvae_mod

    calls = []
    real = scvae_mod._update_connections
    monkeypatch.setattr(
        scvae_mod, "_update_connections", lambda *a, **k: (calls.append(1), real(*a, **k))
    )
    n_b = adata.obs["batch"].nunique()
    # updates only in the first 80 % of the epochs; the default interval is 10 epochs
    for every, epochs, expected in ((1, 10, 8), (3, 10, 2), (None, 30, 2), (None, 10, 0)):
        calls.clear()
        options = {} if every is None else {"update_every": every}
        fit_scvae(adata[:120].copy(), batch_key="batch", epochs=epochs, n_hidden=16,
                  device="cpu", **options)  # fmt: skip
        assert len(calls) == expected * n_b, (every, epochs, len(calls))


def test_bm_at_latent_moves_the_ebm_after_the_fc_layer():
    model = _build(50, 16, 4, 2, 0.2, 1.0, 0, bm_at="latent")
    fc_out, ebm_in = [], []
    model.enc_fc.register_forward_hook(lambda mod, args, out: fc_out.append(out))
    model.ebm.register_forward_hook(lambda mod, args, out: ebm_in.append(args[0]))
    model.train()
    model.encode([(0, torch.rand(8, 50)), (1, torch.rand(6, 50))], torch.ones(2, 50, 16))
    assert torch.equal(torch.cat(ebm_in), fc_out[0])  # the eBM reads the FC layer's output
    out = model.decode(torch.randn(14, 4), [(0, 8), (1, 6)], torch.ones(2, 50, 16))
    assert out.shape == (14, 50)


def test_encoder_input_is_log1p_counts_unless_normalized():
    from schelix.methods.scvae_sc import _encoder_input

    raw = torch.tensor([[1.0, 3.0], [2.0, 6.0]])  # cell 2 = cell 1 sequenced twice as deep
    assert torch.allclose(_encoder_input(raw, normalize=False), torch.log1p(raw))
    norm = _encoder_input(raw, normalize=True)
    assert torch.allclose(norm[0], norm[1]) and torch.allclose(
        norm.expm1().sum(1), torch.tensor(1e4)
    )


def test_unknown_options_fail_before_training(adata):
    for bad in ({"mask_init": "random"}, {"bm_at": "input"}, {"update_every": 0}):
        with pytest.raises(SchelixError, match=next(iter(bad))):
            fit_scvae(adata, batch_key="batch", **bad)
