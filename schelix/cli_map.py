"""``schelix map``: map new samples onto a saved model (see :mod:`schelix.mapping`).

``schelix map QUERY... --model DIR --batch-key K -o OUT.h5ad [--transfer-labels LABEL]
[--adapt-steps N]`` reads the query (one file with a ``K`` column, or several files, one batch
each), runs QC and normalization, embeds it with the saved model (adapting to its batches),
transfers labels and writes reference and query together (``obs["schelix_origin"]``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_map_parser", "cmd_map"]


def add_map_parser(sub: Any) -> None:
    """Add the ``map`` subcommand to the ``schelix`` parser's subparsers."""
    from schelix.cli import _add_qc_args
    from schelix.mapping import DEFAULT_ADAPT_STEPS

    p = sub.add_parser(
        "map", help="map new samples onto a saved model (embed, adapt, transfer labels)"
    )
    p.add_argument("input", nargs="+",
                   help="query .h5ad, 10x .h5, mtx folder or .zip; several files: one batch "
                   "each, named after the file")  # fmt: skip
    p.add_argument("--model", required=True, help="folder a model was saved in (--save-model)")
    p.add_argument("--batch-key", required=True, help="obs column with the query's batches")
    p.add_argument("-o", "--output", required=True, help="joint (reference + query) .h5ad")
    p.add_argument("--transfer-labels", action="append", default=[], metavar="LABEL",
                   help="reference obs column to transfer (repeatable), e.g. cell_type")  # fmt: skip
    p.add_argument("--adapt-steps", type=int, default=DEFAULT_ADAPT_STEPS,
                   help=f"steps adapting to the query batches (default {DEFAULT_ADAPT_STEPS}; "
                   "0 = none)")  # fmt: skip
    p.add_argument("--uncertainty", type=float, default=None,
                   help="cells above this label uncertainty are 'Unknown' (default 0.5)")  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu", "mps"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels-csv", default=None, help="also write the transferred labels as CSV")
    _add_qc_args(p)


def cmd_map(args: argparse.Namespace) -> int:
    """Run ``schelix map``; every input problem is a :class:`~schelix.errors.SchelixError`."""
    import schelix
    from schelix import checks, jit_cache
    from schelix.combine import read_many
    from schelix.errors import SchelixError
    from schelix.mapping import load_reference, map_query, prepare_query

    checks.check_seed(args.seed)
    checks.check_device(args.device)
    if args.adapt_steps != 0:
        checks.check_steps(args.adapt_steps)
    checks.check_output(args.output, inputs=args.input)
    if args.labels_csv:
        checks.check_output(args.labels_csv, inputs=args.input, what="--labels-csv file")
    if not Path(args.model).is_dir():
        raise SchelixError(
            f"--model '{args.model}' is not a folder", "pass the --save-model folder"
        )
    model = load_reference(args.model, device=args.device)  # before reading: fail fast
    if len(args.input) > 1:  # one batch per file, named after it
        query = read_many(args.input, batch_key=args.batch_key)
    else:  # one file: its own batch column (a single batch is fine for a query)
        query = schelix.io.read(args.input[0])
    checks.check_data(query)
    query = prepare_query(
        query, batch_key=args.batch_key, qc=args.qc, min_genes=args.min_genes,
        max_mito_pct=args.max_mito_pct,
    )  # fmt: skip
    print(f"query: {query.n_obs:,} cells after QC", file=sys.stderr)
    jit_cache.enable()
    joint = map_query(
        model, query, batch_key=args.batch_key, transfer=args.transfer_labels,
        adapt_steps=args.adapt_steps, seed=args.seed, uncertainty_threshold=args.uncertainty,
    )  # fmt: skip
    rec = joint.uns["schelix"]["map"]
    print(
        f"mapped {rec['n_query']:,} query cells beside {rec['n_reference']:,} reference cells "
        f"in {rec['seconds']:.1f} s",
        file=sys.stderr,
    )
    for label in args.transfer_labels:
        q = joint.obs[joint.obs["schelix_origin"] == "query"]
        print(q[f"{label}_transferred"].value_counts().to_string(), file=sys.stderr)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    joint.write_h5ad(out)
    if args.labels_csv:
        from schelix.mapping import labels_frame

        labels_frame(joint, args.transfer_labels).to_csv(args.labels_csv)
    print(f"wrote {out}", file=sys.stderr)
    return 0
