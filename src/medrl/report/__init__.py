"""``medrl report``: one self-contained HTML page (figures inline) for a run or an evaluation.

The page shows, for each evaluated scan, three orthogonal slices through every landmark with
the true, predicted and baseline positions and the agent's search path (coarse to fine); the
error per landmark against the 10 mm failure line; the cumulative error curve; the training
curves from the run's TensorBoard logs; and agent and baseline side by side in every table.
Only argument parsing lives here, so that ``medrl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MAX_SCANS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir",
        help="run folder of `medrl train`/`medrl demo` (with evaluation/ inside) "
        "or an output folder of `medrl evaluate`",
    )
    parser.add_argument(
        "--evaluation", help="evaluation folder (default: RUN_DIR/evaluation or RUN_DIR)"
    )
    parser.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    parser.add_argument(
        "--max-scans",
        type=int,
        default=DEFAULT_MAX_SCANS,
        help=f"scans drawn slice by slice (default {DEFAULT_MAX_SCANS}; 0: all); "
        "the tables always cover every scan",
    )
    parser.add_argument("--dpi", type=int, default=80, help="resolution of the slice figures")


def run_from_args(args: argparse.Namespace) -> int:
    from medrl.report.page import write_report

    path = write_report(
        Path(args.run_dir),
        evaluation_dir=None if args.evaluation is None else Path(args.evaluation),
        out=None if args.out is None else Path(args.out),
        max_scans=args.max_scans,
        dpi=args.dpi,
    )
    print(path)
    print(f"report written to {path} (open it in a browser)", file=sys.stderr)
    return 0
