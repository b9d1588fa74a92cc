"""The ``schelix`` command line: ``run``, ``evaluate``, ``compare``, ``map``.

Every failure caused by the input prints one line, ``schelix: error: <problem>.
Fix: <fix>``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schelix import jit_cache
from schelix.config import ABLATIONS
from schelix.errors import SchelixError, SchelixWarning

__all__ = ["main", "build_parser"]


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    if not p.exists():
        raise SchelixError(
            f"Config file {p} does not exist", "pass the path of a .json or .yaml file"
        )
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}  # safe_load: no python/* tags, nothing runs
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            raise SchelixError(
                f"Config file {p} was refused: {getattr(err, 'problem', None) or err}"
                + (f" (line {where.line + 1})" if where else ""),
                "write plain `setting: value` lines; YAML tags such as !!python/... are not allowed",
            ) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SchelixError(
                f"Config file {p} is not valid JSON ({err})", "fix the file or use YAML"
            ) from err
    if not isinstance(data, dict):
        raise SchelixError(
            f"Config file {p} must hold a mapping of setting: value", "see schelix.SCHelixConfig"
        )
    return data


def _add_data_args(p: argparse.ArgumentParser, *, label_required: bool = False) -> None:
    p.add_argument("--batch-key", required=True, help="obs column with the batch of each cell")
    p.add_argument("--label-key", required=label_required, default=None,
                   help="obs column with cell types (optional; used for scoring only)")  # fmt: skip


def _add_qc_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quality control (schelix.qc)")
    g.add_argument("--qc", default="adaptive", choices=["adaptive", "fixed"],
                   help="adaptive (default): per-batch outliers by 5 median absolute deviations "
                   "in counts, genes and mitochondrial %% (mito cut-off at least 10 %%); "
                   "fixed: the paper's 200 genes and 5 %% mitochondrial")  # fmt: skip
    g.add_argument("--min-genes", type=int, default=None,
                   help="cells need this many detected genes (default: 200 for fixed; for "
                   "adaptive 200 x genes measured / 20,000, at most 200)")  # fmt: skip
    g.add_argument("--max-mito-pct", type=float, default=None,
                   help="mitochondrial %% cut-off (default: 5 for fixed; for adaptive none "
                   "beyond the per-batch rule, else an extra cap)")  # fmt: skip
    g.add_argument("--min-cells", type=int, default=3, help="genes need this many kept cells")


def _qc_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "qc": args.qc,
        "min_genes": args.min_genes,
        "min_cells": args.min_cells,
        "max_mito_pct": args.max_mito_pct,
    }


def print_qc(adata: Any, file: Any = None) -> None:
    """Print the per-batch QC summary of a preprocessed AnnData (as the app's QC page shows it)."""
    from schelix.qc import summary_frame

    rec = adata.uns["schelix"]["preprocess"]
    summary = rec["qc"]
    file = file or sys.stderr
    print(
        f"QC ({summary['qc']}): kept {rec['cells_kept']:,} of {rec['cells_before']:,} cells and "
        f"{rec['genes_kept']:,} of {rec['genes_before']:,} genes",
        file=file,
    )
    print(summary_frame(summary).to_string(), file=file)
    for note in rec.get("notes", []):
        print(f"schelix: note: {note}", file=file)


def build_parser() -> argparse.ArgumentParser:
    from schelix import __version__

    parser = argparse.ArgumentParser(
        prog="schelix", description="scHelix single-cell batch integration"
    )
    parser.add_argument("--version", action="version", version=f"schelix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="preprocess, split anchors, train scHelix, write an integrated h5ad"
    )
    run.add_argument("input", nargs="+",
                     help=".h5ad, 10x .h5, 10x mtx folder or .zip of one; several files: one "
                     "batch each, named after the file, in the column --batch-key")  # fmt: skip
    _add_data_args(run)
    run.add_argument("-o", "--output", required=True, help="integrated .h5ad to write")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu", "mps"])
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the schedule's)"
    )
    run.add_argument("--config", default=None, help="JSON/YAML file of SCHelixConfig settings")
    run.add_argument(
        "--preset",
        default=None,
        choices=sorted(ABLATIONS),
        help="a named setting group: a Table 2 ablation (S1..S6), self_training, paper_spec or "
        "scaffold_48d; "
        "--config and --set override it",
    )
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="override one setting, e.g. --set tau_dom=0.2 (repeatable)")  # fmt: skip
    _add_qc_args(run)
    run.add_argument("--n-top-genes", type=int, default=2000, help="size of the HVG pool")
    run.add_argument("--save-model", default=None, help="folder to save the trained model in")
    run.add_argument("--no-evaluate", action="store_true", help="skip scoring the result")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    ev = sub.add_parser("evaluate", help="score embeddings of an integrated h5ad (paper protocol)")
    ev.add_argument("input", help="integrated .h5ad")
    _add_data_args(ev)
    ev.add_argument(
        "--keys", nargs="*", default=None, help="obsm keys (default: every X_* embedding)"
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--csv", default=None, help="also write the table as CSV")

    cmp_ = sub.add_parser(
        "compare", help="run scHelix and peer methods side by side and score them"
    )
    cmp_.add_argument("input")
    _add_data_args(cmp_)
    cmp_.add_argument("--methods", nargs="+", default=["pca", "harmony", "schelix"])
    cmp_.add_argument("--seeds", nargs="+", type=int, default=[0])
    cmp_.add_argument("--device", default="auto")
    _add_qc_args(cmp_)
    cmp_.add_argument("-o", "--output", default=None, help="CSV of the comparison table")
    cmp_.add_argument("--h5ad", default=None, help="also write the AnnData with every embedding")
    from schelix.cli_map import add_map_parser

    add_map_parser(sub)
    return parser


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SchelixError(
                f"--set {item!r} is not NAME=VALUE", "write it like --set tau_dom=0.2"
            )
        name, value = item.split("=", 1)
        out[name.strip()] = yaml_scalar(value.strip())
    return out


def yaml_scalar(text: str) -> Any:
    """``"0.2" -> 0.2``, ``"true" -> True``, ``"hyper" -> "hyper"``."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _read_input(args: argparse.Namespace) -> Any:
    """One file (its --batch-key column), or several files (one batch each, in --batch-key)."""
    import schelix
    from schelix.checks import check_data, check_labels
    from schelix.combine import read_many

    inputs = args.input if isinstance(args.input, list) else [args.input]
    if len(inputs) > 1:
        adata = read_many(inputs, batch_key=args.batch_key, label_key=args.label_key)
    else:
        adata = schelix.io.read(inputs[0], batch_key=args.batch_key, label_key=args.label_key)
    check_labels(adata, args.label_key)
    check_data(adata, batch_key=args.batch_key)
    return adata


def _check_run(args: argparse.Namespace) -> None:
    """Every setting and path of ``schelix run``, before anything is read or trained."""
    from schelix import checks

    checks.check_steps(args.steps)
    checks.check_seed(args.seed)
    checks.check_n_top_genes(args.n_top_genes)
    checks.check_output(args.output, inputs=args.input)
    if args.save_model:
        checks.check_model_dir(args.save_model)
        if Path(args.save_model).absolute() in [Path(i).absolute() for i in args.input]:
            raise SchelixError(
                f"--save-model '{args.save_model}' is the input", "choose another folder"
            )


def run_config(args: argparse.Namespace) -> Any:
    """The :class:`~schelix.SCHelixConfig` of ``schelix run``: --preset, then --config, --set."""
    from schelix.config import SCHelixConfig

    preset = ABLATIONS[args.preset] if args.preset else {}
    return SCHelixConfig.from_dict({**preset, **_load_config(args.config), **_parse_sets(args.set)})


def prepare_run(args: argparse.Namespace) -> tuple[Any, Any]:
    """``schelix run`` up to training: check, read, preprocess; ``(adata, config)``."""
    import schelix

    _check_run(args)
    config = run_config(args)
    adata = _read_input(args)
    adata = schelix.pp.preprocess(  # copy=False: the input is not needed again
        adata, batch_key=args.batch_key, n_top_genes=args.n_top_genes, copy=False,
        **_qc_options(args),
    )  # fmt: skip
    print_qc(adata)
    jit_cache.enable()  # the input is good: load the neighbour search and UMAP (numba's cache)
    return adata, config


def finish_run(args: argparse.Namespace, model: Any) -> None:
    """``schelix run`` after training: report, score, save the model, write the h5ad."""
    import schelix

    adata = model.adata
    print(
        f"trained {model.state.step} steps on {model.device} in {model.state.seconds:.1f} s",
        file=sys.stderr,
    )
    if not args.no_evaluate:
        table = schelix.evaluate.evaluate(
            adata, ["X_schelix"], batch_key=args.batch_key, label_key=model.label_key
        )
        print(table.to_string(), file=sys.stderr)
    if args.save_model:
        model.save(args.save_model)
    from schelix import layouts, stages

    print("UMAP of the integrated embedding (obsm['X_umap'])", file=sys.stderr)
    stages.add_umaps(adata, ["X_schelix"], seed=args.seed)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    layouts.for_viewers(adata).write_h5ad(out)  # opens on X_umap in cellxgene
    print(f"wrote {out}", file=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    from schelix.pipeline import integrate

    adata, config = prepare_run(args)
    label_key = args.label_key if args.label_key in adata.obs else None
    model = integrate(
        adata, batch_key=args.batch_key, label_key=label_key, config=config, seed=args.seed,
        device=args.device, max_steps=args.steps, progress_bar=not args.quiet,
    )  # fmt: skip
    finish_run(args, model)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import schelix
    from schelix import checks

    checks.check_seed(args.seed)
    if args.csv:
        checks.check_output(args.csv, inputs=[args.input], what="--csv file")

    from schelix.layouts import original_names

    adata = schelix.io.read(args.input, batch_key=args.batch_key, label_key=args.label_key)
    for old, new in original_names(adata).items():  # a written file: "schelix" is X_schelix
        if old not in adata.obsm:
            adata.obsm[old] = adata.obsm[new]
    keys = args.keys or [
        k
        for k in adata.obsm
        if k.startswith("X_") and "_snapshot_" not in k and adata.obsm[k].shape[1] > 2
    ]
    if not keys:
        raise SchelixError(f"{args.input} holds no embeddings in obsm", "run `schelix run` first")
    jit_cache.enable()
    table = schelix.evaluate.evaluate(
        adata, keys, batch_key=args.batch_key, label_key=args.label_key, seed=args.seed
    )
    print(table.to_string())
    if args.csv:
        table.to_csv(args.csv)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import schelix
    from schelix import checks
    from schelix.compare import compare, summarize

    for seed in args.seeds:
        checks.check_seed(seed)
    checks.check_device(args.device)
    for out, what in ((args.output, "-o file"), (args.h5ad, "--h5ad file")):
        if out:
            checks.check_output(out, inputs=[args.input], what=what)
    adata = schelix.io.read(args.input, batch_key=args.batch_key, label_key=args.label_key)
    checks.check_labels(adata, args.label_key)
    checks.check_data(adata, batch_key=args.batch_key)
    adata = schelix.pp.preprocess(adata, batch_key=args.batch_key, copy=False, **_qc_options(args))
    print_qc(adata)
    jit_cache.enable()
    table = compare(
        adata, batch_key=args.batch_key, label_key=args.label_key, methods=tuple(args.methods),
        seeds=tuple(args.seeds), device=args.device,
    )  # fmt: skip
    summary = summarize(table)
    print(summary.to_string())
    if args.output:
        summary.to_csv(args.output)
    if args.h5ad:
        adata.write_h5ad(args.h5ad)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``schelix`` console script."""
    args = build_parser().parse_args(argv)
    warnings.simplefilter("ignore", FutureWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("always", SchelixWarning)
        warnings.showwarning = lambda m, c, *a, **k: print(f"schelix: note: {m}", file=sys.stderr)
        try:
            from schelix.cli_map import cmd_map

            commands = {"run": _cmd_run, "evaluate": _cmd_evaluate, "compare": _cmd_compare}
            return {**commands, "map": cmd_map}[args.command](args)
        except SchelixError as err:
            print(f"schelix: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # a disk full, a permission changed during the run, ...
            print(f"schelix: error: {err}. Fix: check the path and the free space", file=sys.stderr)
            return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
