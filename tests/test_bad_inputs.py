"""Every bad input of issue 12 in one table: a clear SchelixError (problem + fix), before training.

CLI rows run ``schelix run``/``compare`` and must exit with status 2 and print one line,
``schelix: error: <problem>. Fix: <fix>``, with training never reached (``fit`` is replaced by
a function that fails the test). API rows call the library, app rows upload through AppTest,
the job row kills a background job.
"""

from __future__ import annotations

import gzip
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import schelix
from schelix import model as model_mod
from schelix.cli import main
from schelix.errors import SchelixError

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(HERE)]  # the app's pages and the test tasks import from here
RUN = ["--batch-key", "batch", "--quiet", "--no-evaluate"]


def _zip(path: Path, files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _mtx_files(matrix: bytes) -> dict[str, bytes]:
    return {"s/matrix.mtx.gz": matrix, "s/features.tsv.gz": gzip.compress(b"G1\tG1\tGene Expression\n"),
            "s/barcodes.tsv.gz": gzip.compress(b"AAAC-1\n")}  # fmt: skip


def _make(tmp: Path, kind: str) -> Path:
    """The bad input files the table refers to as ``{name}``."""
    base = schelix.datasets.synthetic(300, 220, seed=1)
    path = tmp / f"{kind}.h5ad"
    a = base.copy()
    if kind == "ok":
        pass
    elif kind == "xnone":
        a.X, a.layers = None, {}
    elif kind in ("nan", "inf", "neg"):
        x = a.layers["counts"].toarray()
        x[0, 0] = {"nan": np.nan, "inf": np.inf, "neg": -3}[kind]
        a.layers["counts"] = x
    elif kind == "onelabel":
        a.obs["cell_type"] = "T cell"
    elif kind == "zero":
        a.X = sp.csr_matrix(a.shape, dtype=np.float32)
        a.layers["counts"] = a.X.copy()
    elif kind == "fewgenes":
        a = a[:, :40].copy()
    elif kind == "fewcells":
        a = a[:30].copy()
    elif kind == "bad_yaml":
        path = tmp / "bad.yaml"
        path.write_text(f"lr: !!python/object/apply:os.system ['touch {tmp / 'pwned'}']\n")
        return path
    elif kind == "zip_nomatrix":
        return _zip(tmp / "my_sample.zip", {"notes.txt": b"hello"})
    elif kind == "zip_traversal":
        return _zip(tmp / "my_sample.zip", {"../../evil.txt": b"x", "/etc/evil": b"x"})
    elif kind == "zip_bomb":
        return _zip(tmp / "my_sample.zip", {"s/matrix.mtx": b"\0" * (60 * 2**20)})
    elif kind == "gzip_bomb":
        bomb = gzip.compress(b"\0" * (60 * 2**20))
        return _zip(tmp / "my_sample.zip", _mtx_files(bomb), zipfile.ZIP_STORED)
    else:
        raise AssertionError(kind)
    a.write_h5ad(path)
    return path


# (id, kind, arguments or callable, inputs to make, text the one line must hold)
CASES = [
    ("output parent is a file", "cli", ["run", "{ok}", *RUN, "-o", "{ok}/x.h5ad"], "is a file"),
    ("output is a folder", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}"], "is a folder"),
    ("output unwritable", "cli", ["run", "{ok}", *RUN, "-o", "/proc/x.h5ad"], "cannot be written"),
    ("-o is the input", "cli", ["run", "{ok}", *RUN, "-o", "{ok}"], "overwrite your raw data"),
    ("--save-model onto a file", "cli",
     ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--save-model", "{ok}"], "is a file"),
    ("--steps 0", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--steps", "0"], "steps"),
    ("negative steps", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--steps", "-3"], ">= 1"),
    ("negative seed", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--seed", "-1"], "seed"),
    ("seed over 2^32-1", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--seed", str(2**32)],
     "4294967295"),
    ("compare seed", "cli", ["compare", "{ok}", "--batch-key", "batch", "--seeds", "0", "-5"], "seed"),
    ("latent_dim=abc", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--set", "latent_dim=abc"],
     "latent_dim must be a whole number"),
    ("lr=0", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--set", "lr=0"], "lr must be > 0"),
    ("lr<0", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--set", "lr=-1"], "lr must be > 0"),
    ("lr=nan", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--set", "lr=nan"], "lr is nan"),
    ("gate_strength>1", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--set", "gate_strength=1.5"],
     "gate_strength must be in [0, 1]"),
    ("decoder_hidden huge", "cli",
     ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--set", "decoder_hidden=100000000"],
     "decoder_hidden must be in [1, 4096]"),
    ("latent_dim huge", "cli",
     ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--set", "latent_dim=100000"],
     "latent_dim must be in [1, 1024]"),
    ("mixup_k huge", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--set", "mixup_k=10000000"],
     "mixup_k must be in [1, 1000]"),
    ("batch_size=0", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--set", "batch_size=0"],
     "batch_size must be in [1, 16384]"),
    ("--n-top-genes huge", "cli",
     ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--n-top-genes", "1000000"], "from 1 to 10,000"),
    ("gate_strength<0", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--set", "gate_strength=-0.1"],
     "gate_strength"),
    ("YAML tag", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--config", "{bad_yaml}"],
     "was refused"),
    ("--n-top-genes 0", "cli", ["run", "{ok}", *RUN, "-o", "{tmp}/o.h5ad", "--n-top-genes", "0"],
     "highly variable genes"),
    ("X is None", "cli", ["run", "{xnone}", *RUN, "-o", "{tmp}/o.h5ad"], "no X matrix"),
    ("NaN in counts", "cli", ["run", "{nan}", *RUN, "-o", "{tmp}/o.h5ad"], "NaN or infinite"),
    ("Inf in counts", "cli", ["run", "{inf}", *RUN, "-o", "{tmp}/o.h5ad"], "NaN or infinite"),
    ("negative counts", "cli", ["run", "{neg}", *RUN, "-o", "{tmp}/o.h5ad"], "negative values"),
    ("all labels identical", "cli",
     ["run", "{onelabel}", *RUN, "--label-key", "cell_type", "-o", "{tmp}/o.h5ad"], "same value"),
    ("all-zero matrix", "cli", ["run", "{zero}", *RUN, "-o", "{tmp}/o.h5ad"], "is zero"),
    ("too few genes", "cli", ["run", "{fewgenes}", *RUN, "-o", "{tmp}/o.h5ad"],
     "loosening QC cannot help"),
    ("too few cells", "cli", ["run", "{fewcells}", *RUN, "-o", "{tmp}/o.h5ad"],
     "loosening QC cannot help"),
    ("zip without a matrix", "cli", ["run", "{zip_nomatrix}", *RUN, "-o", "{tmp}/o.h5ad"],
     "'my_sample.zip'"),
    ("zip path traversal", "cli", ["run", "{zip_traversal}", *RUN, "-o", "{tmp}/o.h5ad"],
     "'my_sample.zip' was not opened: it holds an entry with an unsafe path"),
    ("zip bomb", "cli", ["run", "{zip_bomb}", *RUN, "-o", "{tmp}/o.h5ad"], "zip bomb"),
    ("gzip bomb in a zip", "cli", ["run", "{gzip_bomb}", *RUN, "-o", "{tmp}/o.h5ad"], "gzip bomb"),
    ("device='tpu'", "api", lambda a: schelix.pipeline.integrate(a, batch_key="batch", device="tpu"),
     "Unknown device 'tpu'"),
    ("steps=0 in Python", "api", lambda a: schelix.pipeline.integrate(a, batch_key="batch", max_steps=0),
     "steps"),
    ("X is None in Python", "api",
     lambda a: schelix.io.validate(type(a)(obs=a.obs, var=a.var), batch_key="batch"), "no X"),
    ("300-character file name", "app", "a" * 296 + ".h5ad", "at most 255"),
    ("NUL in the file name", "app", "bad\x00name.h5ad", "NUL"),
    ("killed job", "job", "test_crash", "was stopped before it finished"),
]  # fmt: skip


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("training started before the bad input was refused")

    monkeypatch.setattr(model_mod, "fit", fail)


@pytest.mark.parametrize(("what", "kind", "spec", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(what, kind, spec, expected, tmp_path, capsys, no_training,
                                      monkeypatch, adata_split) -> None:  # fmt: skip
    if kind == "cli":
        names = {n for a in spec for n in ("ok", "xnone", "nan", "inf", "neg", "onelabel", "zero",
                 "fewgenes", "fewcells", "bad_yaml", "zip_nomatrix", "zip_traversal", "zip_bomb",
                 "gzip_bomb") if "{" + n + "}" in a}  # fmt: skip
        files = {n: _make(tmp_path, n) for n in names}
        before = {p: p.read_bytes() for p in files.values()}
        monkeypatch.chdir(tmp_path)
        assert main([a.format(tmp=tmp_path, **files) for a in spec]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("schelix: error:")]
        assert len(errors) == 1 and errors == err[-1:], err
        assert expected in errors[0] and "Fix:" in errors[0], errors[0]
        assert all(p.read_bytes() == b for p, b in before.items())  # inputs untouched
        assert not (tmp_path / "pwned").exists() and not (tmp_path.parent / "evil.txt").exists()
        assert not (tmp_path / "o.h5ad").exists()
    elif kind == "api":
        with pytest.raises(SchelixError) as info:
            spec(adata_split)
        assert expected in str(info.value) and info.value.fix
    elif kind == "app":
        from test_safety import upload

        at, ws = upload([(spec, b"not read")])
        assert not at.exception and at.error and expected in at.error[0].value
        assert "Traceback" not in at.error[0].value
        assert list((ws.path / "uploads").glob("*")) == []  # nothing was written
    elif kind == "job":
        import test_jobs  # noqa: F401  (registers the test tasks here; the child imports it too)

        from studio import jobs

        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
        )
        monkeypatch.setenv("SCHELIX_EXTRA_TASKS", "test_jobs")
        st = jobs.start(tmp_path / "job", spec, {}).wait(timeout=120)
        assert expected in st["message"] and "memory" not in st["message"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
