"""The nn.Modules: gene graph, diffusion encoder (Horner == explicit powers), Refine, fusion, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schelix.config import ABLATIONS, SCHelixConfig
from schelix.module import LOSS_TERMS, STAGES, SCHelixModule
from schelix.module.fusion import HyperFusion
from schelix.module.graph import LearnableGeneGraph
from schelix.module.interaction import Refiner
from schelix.module.losses import TeacherPrototypes, distillation_loss, mnn_contrastive_loss
from schelix.module.streams import DiffusionEncoder


def test_gene_graph_is_sparse_symmetric_normalised():
    torch.manual_seed(0)
    g = LearnableGeneGraph(120, dim=16, top_k=5)
    p = g.build().detach()
    assert torch.allclose(p, p.T, atol=1e-6)
    assert torch.all(torch.diagonal(p) > 0)  # self-loops
    nnz = (p > 0).sum(1)
    assert int(nnz.sum()) <= 120 * (2 * 5 + 1)  # top-k, symmetrised, plus self
    assert int(nnz.min()) >= 2  # every gene keeps neighbours
    # symmetric normalisation: the largest eigenvalue of D^-1/2 A D^-1/2 is 1
    assert torch.linalg.eigvalsh(p.double()).max().item() == pytest.approx(1.0, abs=1e-5)


def test_graph_gradient_only_on_rebuild_steps():
    torch.manual_seed(0)
    enc = DiffusionEncoder(40, 8, n_scales=3, graph_dim=8, top_k=4, rebuild_every=3)
    x = torch.randn(16, 40)
    grads = []
    for _ in range(4):
        enc.zero_grad()
        enc(x).sum().backward()
        grads.append(
            enc.graph.query.grad is not None and enc.graph.query.grad.abs().sum().item() > 0
        )
    assert grads == [True, False, False, True]


def test_horner_equals_explicit_multiscale_diffusion():
    """X M + b must equal sum_k w_k lin_k([X P^k, xi1 (X - X P^k) + xi2 X (I - P)]) (SPEC §4)."""
    torch.manual_seed(1)
    g, d, n_scales = 50, 6, 5
    enc = DiffusionEncoder(g, d, n_scales=n_scales, xi1=0.8, xi2=0.2, graph_dim=8, top_k=6).eval()
    with torch.no_grad():
        enc.theta.copy_(torch.randn(n_scales))
    x = torch.randn(20, g)
    with torch.no_grad():
        fast = x @ enc.effective_weight() + enc.bias
        p = enc.graph.cached_dense()
        w = enc.scale_weights()
        slow = torch.zeros(20, d)
        pk = torch.eye(g)
        for k in range(n_scales):
            pk = pk @ p
            z_low = x @ pk
            z_high = 0.8 * (x - z_low) + 0.2 * (x - x @ p)
            slow += w[k] * (z_low @ enc.a[k] + z_high @ enc.b[k])
        slow += enc.bias
    assert torch.allclose(fast, slow, atol=1e-4)


def test_refine_update_is_bounded_by_alpha_max():
    torch.manual_seed(2)
    ref = Refiner(16, n_tokens=4, alpha_init=0.3, alpha_max=1.5)
    h_inv = torch.randn(32, 16)
    _, alpha = ref(h_inv, torch.randn(32, 16))
    assert torch.allclose(alpha, torch.full_like(alpha, 0.3), atol=1e-5)  # starts at alpha_init
    with torch.no_grad():
        ref.gate.bias.fill_(50.0)
    refined, alpha = ref(h_inv, 1e6 * torch.randn(32, 16))  # a wild variant input
    assert float(alpha.max()) <= 1.5 + 1e-6
    bound = 1.5 * (16**0.5 * ref.norm.weight.abs().max() + ref.norm.bias.norm())
    assert float((refined - h_inv).norm(dim=1).max()) <= float(bound) + 1e-3
    off = Refiner(16, n_tokens=4, alpha_max=0.0)  # ablation S3.2
    assert torch.equal(off(h_inv, torch.randn(32, 16))[0], h_inv)


def test_hyperfusion_is_per_cell():
    torch.manual_seed(3)
    fus = HyperFusion(16, rank=4)
    h_inv, h_var = torch.randn(10, 16), torch.randn(10, 16)
    out, gate = fus(h_inv, h_var)
    assert out.shape == (10, 16) and gate.min() >= 0 and gate.max() <= 1
    out2, _ = fus(h_inv[:3], h_var[:3])  # a cell's output does not depend on other cells
    assert torch.allclose(out[:3], out2, atol=1e-5)


def test_prototypes_follow_anchor_clusters():
    torch.manual_seed(4)
    centers = torch.nn.functional.normalize(torch.randn(3, 8), dim=1) * 5
    h = torch.cat([c + 0.1 * torch.randn(50, 8) for c in centers])
    protos = TeacherPrototypes(3, 8, momentum=0.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        protos.update(h, gen)
    labels = protos.pseudo_labels(h)
    assert len(set(labels[:50].tolist())) == 1 and len(set(labels.tolist())) == 3


def test_distillation_ignores_unconfident_cells():
    t = torch.tensor([[10.0, 0.0], [0.1, 0.0]])  # confident, unconfident
    s = torch.tensor([[0.0, 10.0], [0.0, 10.0]])
    both = distillation_loss(t, s, threshold=0.75)
    first = distillation_loss(t[:1], s[:1], threshold=0.75)
    assert both.item() == pytest.approx(first.item() / 2, rel=1e-5)
    assert distillation_loss(t[1:], s[1:], threshold=0.75).item() == 0.0


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_every_ablation_builds_and_steps(ablation):
    small = {"latent_dim": 16, "refine_tokens": 4, "n_prototypes": 4}  # sizes only, for speed
    cfg = SCHelixConfig().replace(**{**ABLATIONS[ablation], **small})
    torch.manual_seed(0)
    m = SCHelixModule(30, 20, 2, 3, cfg)
    xv, xi = torch.randn(12, 30), torch.randn(12, 20)
    batch, labels = torch.randint(0, 2, (12,)), torch.randint(-1, 3, (12,))
    for fuse in (False, True):
        total, terms = m.losses(xv, xi, batch, labels, fuse=fuse)
        total.backward()
        assert torch.isfinite(total) and set(terms) <= set(LOSS_TERMS)
    assert set(m.embed(xv, xi)) == set(STAGES)


def test_mnn_partners_are_mutual_and_cross_batch():
    from schelix.neighbors import mnn_partners

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 5, (3, 8))
    types = np.repeat(np.arange(3), 40)
    batch = np.tile([0, 1], 60)
    shift = np.where(batch[:, None] == 1, 2.0, 0.0)  # a batch shift along every gene
    x = (centers[types] + shift + rng.normal(0, 0.3, (120, 8))).astype(np.float32)
    partners = mnn_partners(x, batch, k=5).numpy()
    rows, cols = np.nonzero(partners >= 0)
    assert len(rows) > 0
    for i, j in zip(rows, partners[rows, cols]):
        assert batch[i] != batch[j]  # only across batches
        assert i in partners[j]  # mutual
        assert types[i] == types[j]  # the shift is smaller than the type gaps
    assert (mnn_partners(x, np.zeros(120, dtype=int), k=5).numpy() == -1).all()  # one batch: none


def test_mnn_term_pulls_partners_and_is_recorded():
    cfg = SCHelixConfig().replace(latent_dim=16, refine_tokens=4, n_prototypes=4, w_mnn_variant=1.0)
    torch.manual_seed(0)
    m = SCHelixModule(30, 20, 2, 0, cfg)
    xv, xi, batch = torch.randn(12, 30), torch.randn(12, 20), torch.randint(0, 2, (12,))
    has = torch.tensor([True, False] * 6)
    _, terms = m.losses(xv, xi, batch, None, fuse=True, x_partner=xv[has], has_partner=has)
    assert terms["mnn_variant"].item() == pytest.approx(0.0, abs=1e-5)  # each its own partner
    _, terms = m.losses(xv, xi, batch, None, fuse=True, x_partner=-xv[has], has_partner=has)
    assert terms["mnn_variant"].item() > 0.05 and "mnn_variant" in LOSS_TERMS
    _, terms = m.losses(xv, xi, batch, None, fuse=True)
    assert "mnn_variant" not in terms


def test_mnn_contrastive_loss_rewards_each_partner_nearest():
    torch.manual_seed(0)
    h = torch.randn(16, 8)
    paired = mnn_contrastive_loss(h, h + 0.01 * torch.randn(16, 8), temperature=0.2)
    shuffled = mnn_contrastive_loss(h, h[torch.roll(torch.arange(16), 1)], temperature=0.2)
    assert paired.item() < 0.5 < shuffled.item()  # chance is ln(16) = 2.8
    sharper = mnn_contrastive_loss(h, h + 0.01 * torch.randn(16, 8), temperature=0.05)
    assert sharper.item() < paired.item()


def test_contrastive_mnn_term_on_the_anchor_stream_is_optional_and_recorded():
    cfg = SCHelixConfig().replace(latent_dim=16, refine_tokens=4, n_prototypes=4)
    assert cfg.w_mnn_anchor == 0.0  # off by default (the anchors must still matter: S1)
    torch.manual_seed(0)
    xv, xi, batch = torch.randn(12, 30), torch.randn(12, 20), torch.randint(0, 2, (12,))
    has = torch.tensor([True, False] * 6)
    kw = {"x_partner": xv[has], "x_partner_anchor": xi[has], "has_partner": has}
    _, terms = SCHelixModule(30, 20, 2, 0, cfg).losses(xv, xi, batch, None, fuse=True, **kw)
    assert "mnn_anchor" not in terms and "mnn_variant" in terms
    m = SCHelixModule(30, 20, 2, 0, cfg.replace(w_mnn_anchor=1.0, w_mnn_variant=0.0))
    _, terms = m.losses(xv, xi, batch, None, fuse=False, **kw)
    assert "mnn_variant" not in terms and "mnn_anchor" in LOSS_TERMS
    own = terms["mnn_anchor"]  # each cell its own partner: below chance, ln(6)
    kw["x_partner_anchor"] = xi[has].flip(0)
    _, terms = m.losses(xv, xi, batch, None, fuse=False, **kw)
    assert own.item() < terms["mnn_anchor"].item() and own.item() < np.log(6)
    own.backward()  # gradients reach the anchor encoder
    assert any(p.grad is not None for p in m.enc_anchor.parameters())


@pytest.mark.parametrize("warm_start", [False, True])
def test_fusion_warm_start_fits_the_fusion_path_on_detached_streams(warm_start):
    cfg = SCHelixConfig().replace(latent_dim=16, refine_tokens=4, n_prototypes=4)
    torch.manual_seed(0)
    m = SCHelixModule(30, 20, 2, 0, cfg)
    xv, xi, batch = torch.randn(12, 30), torch.randn(12, 20), torch.randint(0, 2, (12,))
    _, terms = m.losses(xv, xi, batch, None, fuse=False, warm_fusion=warm_start)  # warm-up
    assert ("rec_fused" in terms) is warm_start
    if not warm_start:
        return
    terms["rec_fused"].backward()  # the fused reconstruction alone
    fusion_path = [*m.refiner.parameters(), *m.fusion.parameters(), *m.dec_fused.parameters()]
    assert all(p.grad is not None for p in fusion_path)
    streams = [*m.enc_variant.parameters(), *m.enc_anchor.parameters()]
    assert all(p.grad is None for p in streams)  # detached: the streams learn only their own terms
    m.zero_grad(set_to_none=True)
    _, terms = m.losses(xv, xi, batch, None, fuse=True)  # the fusion phase: gradients flow on
    terms["rec_fused"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.enc_variant.parameters())
