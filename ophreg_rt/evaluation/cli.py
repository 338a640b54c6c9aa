"""``ophreg evaluate fire DIR`` and ``ophreg evaluate points CSV``.

Both register every pair with the options ``ophreg register`` takes, print one table row per
pair as it finishes and a summary, and write the JSON report to ``--out``. Exit code 0 when
the evaluation ran (whatever the pairs scored), 2 for bad input (one line naming the file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_options import (EXIT_OK, add_registration_options, matcher_graph_option,
                           registration_config)
from ..config import RegistrarConfig
from ..errors import InvalidConfigError, OutputWriteError
from ..imageio import check_writable, write_bytes_atomic
from ..registrar import Registrar
from . import control_points, fire, protocol, runner

#: Largest --auc-limit: thresholds past any image's size measure nothing, and each one is a
#: row of the success-rate table (10**9 of them would need gigabytes).
MAX_AUC_LIMIT_PX = 10_000


def add_commands(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="score registrations against a data set's truth",
        description="Register every pair of a data set and score it against its truth.")
    datasets = evaluate.add_subparsers(dest="dataset", required=True, metavar="DATASET",
                                       parser_class=type(evaluate))
    fire_parser = datasets.add_parser(
        "fire", help="FIRE's layout: Images/, Ground Truth/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Evaluate on FIRE (Hernandez-Matas et al. 2017) or a folder in its layout: "
                     "DIR/Images/<pair>_1.jpg and <pair>_2.jpg, DIR/Ground Truth/"
                     "control_points_<pair>_1_2.txt (x1 y1 x2 y2 a line). Image 1 is fixed, "
                     "image 2 moving. Reports per pair the mean control-point error (px, image "
                     "1's native resolution) and failed / inaccurate (max error > "
                     f"{protocol.INACCURATE_MAX_ERROR_PX:g} or median > "
                     f"{protocol.INACCURATE_MEDIAN_ERROR_PX:g} px) / acceptable; AUC over "
                     f"1..{protocol.AUC_LIMIT_PX} px per category S, P, A and mAUC. A failed "
                     f"registration counts as an infinite error. Pair "
                     f"{', '.join(fire.EXCLUDED_PAIRS)} is left out (wrong annotation)."))
    fire_parser.add_argument("root", type=Path, metavar="DIR", help="the data set's folder")
    _add_output_options(fire_parser)
    fire_parser.set_defaults(handler=fire_command)

    points_parser = datasets.add_parser(
        "points", help="a CSV of pairs with control points or a true affine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate on the pairs a CSV lists.\n\n" + control_points.SCHEMA_HELP,
        epilog=("Scores as FIRE's protocol: failed / inaccurate / acceptable and the AUC over "
                "1..--auc-limit px (one group, 'all')."))
    points_parser.add_argument("csv", type=Path, metavar="CSV", help="the pairs and their truth")
    points_parser.add_argument("--auc-limit", type=int, default=protocol.AUC_LIMIT_PX,
                               help="largest AUC threshold, px at the fixed image's native "
                                    "resolution (default: %(default)s)")
    _add_output_options(points_parser)
    points_parser.set_defaults(handler=points_command)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="write the JSON report there")
    add_registration_options(parser)
    parser.add_argument("--force", action="store_true", help="overwrite an existing report")


def fire_command(args: argparse.Namespace) -> int:
    config = registration_config(args)
    pairs, excluded = fire.discover(args.root)
    _evaluate(args, config, pairs, list(fire.CATEGORIES), protocol.AUC_LIMIT_PX, "fire",
              args.root, {**fire.PROTOCOL_NOTES, "excluded": excluded})
    return EXIT_OK


def points_command(args: argparse.Namespace) -> int:
    config = registration_config(args)
    if not 1 <= args.auc_limit <= MAX_AUC_LIMIT_PX:
        raise InvalidConfigError(f"--auc-limit {args.auc_limit}: must be from 1 to "
                                 f"{MAX_AUC_LIMIT_PX}")
    pairs, schema = control_points.read_pairs(args.csv)
    notes = {"schema": schema, "fixed": "tgt; src is mapped onto it",
             "pair_error": ("mean distance between x_tgt and the estimate applied to x_src, px "
                            "in tgt's native resolution" if schema == "points" else
                            "mean distance between the truth and the estimate applied to a "
                            f"{runner.GRID_POINTS_PER_SIDE}x{runner.GRID_POINTS_PER_SIDE} grid "
                            "spanning src, px in tgt's native resolution"),
             **protocol.NOTES,
             "auc": f"mean over thresholds 1..{args.auc_limit} px of the share of pairs whose "
                    "mean error is below the threshold",
             "paths": "relative to the CSV's folder"}
    _evaluate(args, config, pairs, [control_points.GROUP], args.auc_limit, "points", args.csv,
              notes)
    return EXIT_OK


def _evaluate(args: argparse.Namespace, config: RegistrarConfig, pairs: list[runner.Pair],
              groups: list[str], auc_limit: int, dataset: str, source: Path,
              notes: dict) -> None:
    matcher_model = matcher_graph_option(args)
    if args.out:
        # Refuse before any work: an evaluation can take an hour.
        check_writable([args.out], args.force)
    registrar = Registrar(config, superpoint_model=args.superpoint, matcher_model=matcher_model)
    width = runner.name_width(pairs)
    print(runner.table_header(width), flush=True)

    def show(outcome: runner.PairOutcome) -> None:
        print(runner.table_row(outcome, width), flush=True)

    outcomes = runner.register_pairs(registrar, pairs, show)
    summary = runner.summary(outcomes, groups, auc_limit)
    runner.print_summary(summary, sys.stdout)
    if args.out:
        document = runner.report(dataset, source, outcomes, summary, registrar, notes)
        # allow_nan=False: a non-finite number would make the report invalid JSON.
        text = json.dumps(document, indent=2, allow_nan=False) + "\n"
        try:
            write_bytes_atomic(args.out, text.encode())
        except OutputWriteError as exc:
            raise OutputWriteError(f"{exc}; the rows and summary printed above are the "
                                   "evaluation's results") from None
        print(f"report: {args.out}", file=sys.stderr)
