"""The ``schelix`` command line: run -> re-open the h5ad -> evaluate; one-line errors."""

from __future__ import annotations

import anndata as ad
import pytest

import schelix
from schelix import layouts
from schelix.cli import main
from schelix.config import SCHelixConfig

FAST = ["--set", "batch_size=64", "--set", "n_prototypes=6", "--set", "mixup_k=20"]


@pytest.fixture(scope="module")
def counts_h5ad(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "counts.h5ad"
    schelix.datasets.synthetic(500, 400, batch_strength=0.8, seed=2).write_h5ad(path)
    return path


def test_run_then_evaluate(counts_h5ad, tmp_path, capsys):
    out = tmp_path / "out.h5ad"
    code = main(["run", str(counts_h5ad), "--batch-key", "batch", "--label-key", "cell_type",
                 "-o", str(out), "--steps", "16", "--seed", "3", "--quiet",
                 "--save-model", str(tmp_path / "model"), *FAST])  # fmt: skip
    assert code == 0
    back = ad.read_h5ad(out)
    # opens on its UMAP in cellxgene: X_umap, and no latent offered as a 2-d layout
    assert layouts.layout_names(back)[0] == "umap"
    assert all(back.obsm[k].shape[1] == 2 for k in back.obsm if k.startswith("X_"))
    assert back.obsm["schelix"].shape == (back.n_obs, SCHelixConfig().latent_dim)
    for stage in ("variant", "variant_aligned", "anchor", "anchor_refined"):
        assert f"schelix_{stage}" in back.obsm
    streams = set(back.var["schelix_stream"].astype(str))
    assert {"anchor", "variant"} <= streams <= {"anchor", "variant", "unused"}
    uns = back.uns["schelix"]
    assert (
        uns["train"]["steps"] == 16
        and uns["train"]["seed"] == 3
        and uns["train"]["batch_size"] == 64
    )
    for step in ("preprocess", "anchor_split", "train", "metrics"):
        assert step in uns, step
    assert (tmp_path / "model" / "model.pt").exists()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--batch-key", "batch", "--label-key", "cell_type",
                 "--keys", "X_schelix", "X_schelix_anchor", "--csv", str(tmp_path / "m.csv")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "Overall" in printed and "X_schelix_anchor" in printed
    assert (tmp_path / "m.csv").read_text().count("\n") == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.h5ad", "--batch-key", "batch", "-o", "x.h5ad"], "missing.h5ad"),
        (["run", "{bad}", "--batch-key", "batch", "-o", "x.h5ad"], "Fix:"),
        (["run", "{counts}", "--batch-key", "donor", "-o", "x.h5ad"], "donor"),
        (
            ["run", "{counts}", "--batch-key", "batch", "-o", "x.h5ad", "--set", "tau_dum=1"],
            "tau_dum",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, counts_h5ad, tmp_path, capsys):
    bad = tmp_path / "bad.h5ad"
    bad.write_text("this is not an h5ad file")
    args = [a.format(bad=bad, counts=counts_h5ad) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("schelix: error:") and message in err[-1]


def test_run_preset_sets_config_and_set_overrides_it(counts_h5ad, tmp_path):
    out = tmp_path / "preset.h5ad"
    code = main(["run", str(counts_h5ad), "--batch-key", "batch", "-o", str(out), "--steps", "8",
                 "--quiet", "--no-evaluate", "--preset", "scaffold_48d", "--set", "fusion_delta_scale=1.5",
                 *FAST])  # fmt: skip
    assert code == 0
    train = ad.read_h5ad(out).uns["schelix"]["train"]
    assert train["w_mnn_variant"] == 0.0 and train["w_kd"] == 0.5  # from the preset
    assert train["latent_dim"] == 48
    assert train["fusion_delta_scale"] == 1.5  # --set wins


def test_run_prints_the_per_batch_qc_summary_and_fixed_qc_is_one_flag_away(
    counts_h5ad, tmp_path, capsys
):
    out = tmp_path / "qc.h5ad"
    code = main(["run", str(counts_h5ad), "--batch-key", "batch", "-o", str(out), "--steps", "4",
                 "--quiet", "--no-evaluate", *FAST])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "QC (adaptive): kept" in err and "few counts/genes" in err and "max mito %" in err
    for batch in ("batch0", "batch1", "batch2"):
        assert batch in err
    assert ad.read_h5ad(out).uns["schelix"]["preprocess"]["qc"]["qc"] == "adaptive"
    code = main(["run", str(counts_h5ad), "--batch-key", "batch", "-o", str(out), "--quiet",
                 "--qc", "fixed", "--max-mito-pct", "0"])  # fmt: skip
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "batch 'batch0' keeps" in last and "above 0 % mitochondrial" in last and "Fix:" in last
