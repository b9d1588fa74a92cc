"""Every scHelix hyperparameter in one frozen dataclass (SPEC §2–4, paper Tables 6–7).

Names follow the paper's code names where it gives them. Each field has a
``help`` text (``field(metadata={"help": ...})``) that the CLI and the app show.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from schelix.errors import SchelixError

__all__ = ["SCHelixConfig", "ABLATIONS", "config_help"]


def _f(default: Any, help: str, group: str = "model") -> Any:
    return field(default=default, metadata={"help": help, "group": group})


@dataclass(frozen=True)
class SCHelixConfig:
    """scHelix hyperparameters. Defaults follow SPEC.md; every one can be changed."""

    # --- anchor split (SPEC §2) ---
    tau_dom: float = _f(
        0.0, "Anchors need domain-sensitivity z-score <= tau_dom (paper: tau_dom).", "anchors"
    )
    tau_str: float = _f(
        0.0, "Anchors need structure-separability z-score >= tau_str (paper: tau_str).", "anchors"
    )
    random_anchors: bool = _f(
        False, "Ablation S1: random anchors of the same size instead of the quadrant.", "ablation"
    )
    # --- variant gate (SPEC §3) ---
    gate: bool = _f(
        True, "Variant-only layered domain gate (paper Eq. 4). Off = ablation S2.", "gate"
    )
    gate_strength: float = _f(
        0.5, "Gate strength lambda: how much batch-sensitive variant values are damped.", "gate"
    )
    gate_low_res: float = _f(0.5, "Leiden resolution of the coarse gate clustering.", "gate")
    gate_high_res: float = _f(2.0, "Leiden resolution of the fine gate clustering.", "gate")
    gate_min_cells: int = _f(20, "Clusters smaller than this get no gate.", "gate")
    # --- graph + diffusion (SPEC §4, App. J) ---
    # 16, not the paper's 64, together with the cross-batch MNN term below (mnn_k 20), raw variant
    # detail into Refine/Fuse, a HyperFusion residual of 2.0 and no fused-phase KD/connectivity:
    # measured over 3 seeds on the three benchmark datasets (benchmarks/EXPERIMENTS.md, session 4).
    # SPEC's values for these five settings are the preset "paper_spec"; the session-3 default
    # is "scaffold_48d".
    latent_dim: int = _f(16, "Size of every stream embedding (paper: 64; 16 measured better here).")
    graph_dim: int = _f(64, "Query/key size of the learnable gene-gene graph.")
    graph_temperature: float = _f(
        0.1, "Temperature tau of the gene-gene similarity ReLU(QK^T/tau)."
    )
    graph_top_k: int = _f(22, "Neighbours kept per gene in the sparse gene graph (top-k).")
    graph_rebuild_every: int = _f(
        25, "Steps between rebuilds of the gene graph (stop-gradient caching)."
    )
    n_scales: int = _f(5, "Diffusion scales k = 1..n_scales.")
    hp_alpha: float = _f(0.8, "High-pass mixing xi_1 (weight of X - X P^k).")
    hp_beta: float = _f(0.2, "High-pass mixing xi_2 (weight of X (I - P)).")
    linear_encoder: bool = _f(
        False, "Ablation S6: linear encoder instead of graph diffusion.", "ablation"
    )
    # 256 (was 128; benchmarks/EXPERIMENTS.md, "Issue 17, session 23"): wider decoders explain
    # more of each batch's expression from the batch input, so the embeddings mix the batches
    # better (ASW_batch up on all four benchmark tasks); pbmc_3chem +0.010 over five seeds (no
    # T/NK split), the other tasks level. On 300 cells it cost pbmc_3chem 0.06 (the decoders
    # fit the few cells instead of shaping the embedding), hence decoder_hidden_small below
    # the step floor.
    decoder_hidden: int = _f(
        256, "Hidden width of the reconstruction decoders (runs of at least min_steps steps)."
    )
    decoder_hidden_small: int = _f(
        128,
        "Largest decoder width on runs shorter than min_steps steps (small data, below about "
        "770 cells with the defaults): such runs use min(decoder_hidden, decoder_hidden_small).",
    )
    decoder_batch_conditioning: bool = _f(
        True,
        "Give the decoders the batch (one-hot), so embeddings need not carry it to reconstruct.",
    )
    # --- align / refine / fuse (SPEC §4) ---
    w_align: float = _f(1.0, "Align loss weight lambda_align (BYOL/SimSiam). 0 = ablation S3.1.")
    refine_alpha_init: float = _f(0.3, "Initial refinement gate alpha.")
    refine_alpha_max: float = _f(1.5, "Refinement bound alpha_max. 0 = ablation S3.2 (no Refine).")
    refine_temperature: float = _f(0.3, "Softmax temperature of the Refine cross-attention.")
    refine_tokens: int = _f(8, "Tokens each cell's embedding is split into for cross-attention.")
    refine_from_aligned: bool = _f(
        False,
        "Refine and fuse with the aligned variant embedding (predictor output); off = the raw "
        "variant embedding, as SPEC §4 writes it.",
    )
    fusion: str = _f("hyper", "'hyper' = HyperFusion; 'sum' = simple sum (ablation S4).")
    fusion_rank: int = _f(8, "Rank of the hypernetwork's low-rank MLP factors.")
    fusion_delta_scale: float = _f(
        2.0, "Residual scaling lambda_Delta of HyperFusion (paper: 0.6)."
    )
    # Warm start (benchmarks/EXPERIMENTS.md, "Issue 17, session 21"): the idea of linear probing
    # before fine-tuning (Kumar et al., ICLR 2022). Over the four benchmark tasks the mean Overall
    # rose by 0.006 (pbmc_3chem and the donor task +0.010 over five seeds, none down); on 300
    # cells, where the streams have formed no neighbourhoods by the switch, it cost up to 0.05,
    # hence only from the step floor up (with the defaults, from about 770 cells).
    fusion_warm_start: bool = _f(
        True,
        "Fit Refine, HyperFusion and the fused decoder during the warm-up, on the streams' "
        "detached embeddings, so the fusion phase starts from a fitted fusion, not a random "
        "one. Used when the run has at least min_steps steps; shorter runs (small data) and "
        "False keep the paper's schedule.",
        "training",
    )
    # --- self-training (SPEC §4) ---
    # 48 (was 24): finer pseudo-labels for the connectivity loss. Over the four benchmark tasks
    # (3 seeds each) the mean Overall rose by 0.004, Leiden ARI rose on Kang and pbmc_3chem, and
    # no task fell by more than about one seed's spread (benchmarks/EXPERIMENTS.md, "Issue 17,
    # session 11").
    n_prototypes: int = _f(48, "Teacher prototypes K (EMA over anchor embeddings).")
    prototype_momentum: float = _f(0.99, "EMA momentum of the teacher prototypes.")
    conn_temperature: float = _f(0.1, "Temperature of the prototype softmax in L_conn.")
    w_conn_variant: float = _f(0.08, "Connectivity loss weight, variant stream.")
    w_conn_anchor: float = _f(0.2, "Connectivity loss weight, anchor stream.")
    w_conn_fused: float = _f(
        0.0,
        "Connectivity loss weight, fused embedding (paper: 0.2; 0 = ablation S5.2, the default here).",
    )
    w_mnn_variant: float = _f(
        1.0,
        "Weight of the cross-batch MNN term: mutual nearest neighbours across batches in the anchor-gene "
        "PCA are pulled together in the variant embedding (1 - cosine). 0 = off.",
    )
    # Contrastive MNN pairs on the anchor stream (benchmarks/EXPERIMENTS.md, "Issue 17, sessions
    # 17 and 18"). Off by default: with `latent_dim` 32 it lifts all four benchmark tasks (CellBench
    # and Kang (donor) +0.010), but random anchors (ablation S1) then do as well as the real ones
    # on CellBench and better on pbmc_3chem: the anchors would no longer matter.
    w_mnn_anchor: float = _f(
        0.0,
        "Weight of the contrastive cross-batch MNN term on the anchor stream: InfoNCE making each "
        "cell's MNN partner its nearest among the mini-batch's partners. 0 = off.",
    )
    mnn_temperature: float = _f(0.2, "Temperature of the contrastive MNN term (cosine / T).")
    # Anchor-guided within-batch triplets on the fused embedding (scCRAFT's dual-resolution
    # triplet term, with negatives from the anchor genes' clusters; schelix/triplets.py). Off by
    # default: on the four benchmark tasks it lifts CellBench (+0.020) and pbmc_3chem, leaves
    # Kang level and the donor task 0.011 lower, but costs 300-cell data 0.03-0.045, makes random
    # anchors (ablation S1) nearly as good and adds ~40 s before training on Kang
    # (benchmarks/EXPERIMENTS.md, "Issue 17, session 13").
    w_triplet: float = _f(
        0.0,
        "Weight of the anchor-guided within-batch triplet term on the fused embedding (fusion "
        "phase; more compact, better-mixed clusters on data of 1,000+ cells). 0 = off.",
    )
    triplet_margin: float = _f(
        5.0, "Margin of the triplet term, in squared distance (scCRAFT's 5)."
    )
    triplet_coarse_resolution: float = _f(
        0.1, "Leiden resolution of the anchor clusters that decide the triplets' negatives."
    )
    triplet_fine_resolution: float = _f(
        7.0, "Leiden resolution of the within-batch clusters that decide the positives."
    )
    mnn_k: int = _f(
        20, "Neighbours searched in each other batch when pairing cells for the MNN term."
    )
    w_kd: float = _f(
        0.0,
        "Confidence-weighted distillation weight (paper: 0.5; 0 = ablation S5.1, the default here).",
    )
    kd_conf_threshold: float = _f(0.75, "Teacher confidence below which a cell gets no KD weight.")
    kd_conf_power: float = _f(1.0, "Exponent p of the KD confidence weight max_prob^p.")
    w_rec_variant: float = _f(1.0, "Reconstruction weight, variant stream.")
    w_rec_anchor: float = _f(1.0, "Reconstruction weight, anchor stream.")
    w_rec_fused: float = _f(1.0, "Reconstruction weight, fused decoder (all HVGs).")
    semi_supervised: bool = _f(
        False,
        "Train a cell-type head on the labelled cells (paper Table 4). Off: labels only score.",
    )
    w_supervised: float = _f(
        1.0, "Cross-entropy weight of the semi-supervised head (labelled cells only)."
    )
    # --- augmentation ---
    mixup: bool = _f(True, "kNN MixUp augmentation during training.")
    mixup_k: int = _f(300, "Neighbours (PCA space) a cell is mixed with.")
    # --- schedule / optimiser ---
    # The cap: 2,000 steps (was 6,000) measured on Kang, the one shared dataset it binds on
    # (14k cells: 3,300 steps before), condition and donor tasks, 3 seeds each: the same mean
    # Overall (benchmarks/EXPERIMENTS.md, "The step cap"); large data trains in a third of the
    # time (benchmarks/SCALE_RESULTS.md, "Session 10").
    max_steps: int = _f(
        2000,
        "Upper bound on training steps (default: 2000 or 60 epochs, whichever is fewer).",
        "training",
    )
    max_epochs: int = _f(
        60, "Upper bound on epochs (an epoch: n_cells / schedule_batch_size steps).", "training"
    )
    # The floor: measured on stratified 300- and 1,000-cell subsamples of the three benchmark
    # datasets (benchmarks/EXPERIMENTS.md, "A schedule that fits the data size"). 60 epochs
    # are 120-240 steps there, too few; 1,000 steps helped at 1,000 cells but over-trained
    # 300 cells (500 epochs), where 500 steps (250 epochs) was best.
    min_steps: int = _f(
        1000,
        "Floor on training steps for small data (used when max_epochs gives fewer; at most "
        "min_steps_epochs epochs; max_steps still caps it).",
        "training",
    )
    min_steps_epochs: int = _f(
        250, "The step floor never asks for more than this many epochs.", "training"
    )
    warmup_steps: int = _f(
        3000, "Align-only warm-up steps before fusion (capped at half the run).", "training"
    )
    # 128, not 256: three seeds on each of the four tasks, mean Overall +0.006, no task down,
    # and neither of the two seeds that split a label at 256 split it (benchmarks/EXPERIMENTS.md,
    # "Issue 17, session 30"). The schedule still counts its epochs in 256-cell steps
    # (schedule_batch_size), so every data size trains as many steps as before.
    batch_size: int = _f(128, "Cells per mini-batch.", "training")
    schedule_batch_size: int = _f(
        256,
        "Cells per step in which max_epochs and min_steps_epochs count an epoch (the mini-batch "
        "the schedule was measured with), so the number of steps does not depend on batch_size.",
        "training",
    )
    lr: float = _f(1e-3, "AdamW learning rate.", "training")
    weight_decay: float = _f(1e-4, "AdamW weight decay.", "training")
    grad_clip: float = _f(1.0, "Gradient-norm clip.", "training")
    snapshot_every: int = _f(
        0, "Steps between fused-embedding snapshots (0 = 10 snapshots per run).", "training"
    )

    def __post_init__(self) -> None:
        from schelix.checks import check_config

        check_config(self)  # types (latent_dim="abc"), NaN, ranges (lr > 0, gate_strength 0..1)
        if self.fusion not in ("hyper", "sum"):
            raise SchelixError(
                f"fusion must be 'hyper' or 'sum', got {self.fusion!r}", "use 'hyper' or 'sum'"
            )
        if self.latent_dim % self.refine_tokens:
            raise SchelixError(
                f"latent_dim ({self.latent_dim}) must be divisible by refine_tokens ({self.refine_tokens})",
                "pick values such as 64 and 8",
            )

    @property
    def uses_mnn_partners(self) -> bool:
        """Whether training needs cross-batch MNN partners (either MNN term on)."""
        return self.w_mnn_variant > 0 or self.w_mnn_anchor > 0

    def replace(self, **changes: Any) -> SCHelixConfig:
        """A copy with ``changes`` applied; unknown names raise :class:`SchelixError`."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise SchelixError(
                f"Unknown scHelix setting(s): {', '.join(sorted(unknown))}",
                "see schelix.SCHelixConfig for the valid names",
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SCHelixConfig:
        return cls().replace(**d)


#: The paper's ablations (Table 2) as config changes.
ABLATIONS: dict[str, dict[str, Any]] = {
    "S0_full": {},
    "S1_random_split": {"random_anchors": True},
    "S2_no_gate": {"gate": False},
    "S3_no_interaction": {"w_align": 0.0, "refine_alpha_max": 0.0},
    "S3.1_no_align": {"w_align": 0.0},
    "S3.2_no_refine": {"refine_alpha_max": 0.0},
    "S4_simple_fusion": {"fusion": "sum"},
    "S5_no_self_training": {"w_kd": 0.0, "w_conn_fused": 0.0},
    "S5.1_no_kd": {"w_kd": 0.0},
    "S5.2_no_conn": {"w_conn_fused": 0.0},
    "S6_linear_encoder": {"linear_encoder": True},
    # not ablations, presets. The default already runs without fused-phase self-training (S5),
    # so S5/S5.1/S5.2 equal it; "self_training" puts SPEC's KD and fused connectivity back on it.
    # "paper_spec" has SPEC §4's values for the six settings that the default changes (see
    # latent_dim and n_prototypes); "scaffold_48d" is the session-3 default (anchor scaffold,
    # self-training on, no MNN term, 24 prototypes), kept to compare against
    # (benchmarks/EXPERIMENTS.md).
    "self_training": {"w_kd": 0.5, "w_conn_fused": 0.2},
    "paper_spec": {
        "latent_dim": 64,
        "w_mnn_variant": 0.0,
        "fusion_delta_scale": 0.6,
        "w_kd": 0.5,
        "w_conn_fused": 0.2,
        "n_prototypes": 24,
    },
    "scaffold_48d": {
        "latent_dim": 48,
        "w_mnn_variant": 0.0,
        "refine_from_aligned": True,
        "fusion_delta_scale": 0.6,
        "w_kd": 0.5,
        "w_conn_fused": 0.2,
        "n_prototypes": 24,
    },
}


def config_help() -> dict[str, dict[str, Any]]:
    """``{name: {"default", "help", "group", "type"}}`` for every setting (CLI and app forms)."""
    return {
        f.name: {
            "default": f.default,
            "help": f.metadata.get("help", ""),
            "group": f.metadata.get("group", "model"),
            "type": type(f.default).__name__,
        }
        for f in dataclasses.fields(SCHelixConfig)
    }
