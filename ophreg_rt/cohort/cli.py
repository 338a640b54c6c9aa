"""``ophreg pairs`` and ``ophreg batch``: a cohort's manifest to pairs, pairs to results."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from ..cli_options import (
    EXIT_FAILED,
    EXIT_OK,
    add_registration_options,
    matcher_graph_option,
    registration_config,
)
from ..config import DETECTION_CACHE_IMAGES
from ..imageio import check_writable, write_bytes_atomic
from .batch import RESULTS_FILE, WorkerSpec, local_engine, run_batch, summary_table
from .dicom_manifest import add_options as add_dicom_manifest_options
from .dicom_manifest import manifest_from_folder, refuse_folder_options
from .manifest import COLUMNS, read_manifest
from .pairing import (
    ACROSS_DATES,
    SAME_DATE,
    TASK_NAMES,
    pair_images,
    pairs_csv,
    read_pairs,
)
from .report import add_command as add_report_command
from .report import add_options as add_report_options
from .report import write_outputs

#: What a shell reports for a process stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
ENGINES = ("local", "ray")


def add_commands(commands) -> None:
    pairs = commands.add_parser(
        "pairs", help="list the method's pairs of a cohort manifest",
        description="Pair the images of a manifest by the method's rules (one patient, eye and "
                    "field centre; tasks 1-3) and write the pairs file that `ophreg batch` reads.")
    pairs.add_argument("manifest", type=Path,
                       help=f"CSV with the columns {', '.join(COLUMNS)}, or a folder of DICOM "
                            "files (the manifest is read from their tags)")
    pairs.add_argument("--out", type=Path, help="write the pairs CSV there (default: stdout)")
    pairs.add_argument("--force", action="store_true",
                       help="overwrite an existing --out (and --manifest-out)")
    add_dicom_manifest_options(pairs)
    pairs.set_defaults(handler=pairs_command)

    batch = commands.add_parser(
        "batch", help="register every pair of a pairs file (resumable)",
        description=f"Register every pair of PAIRS (written by `ophreg pairs`). Results go to "
                    f"OUT_DIR/{RESULTS_FILE}, one JSON line per pair, as they finish; running "
                    "the same command again skips the finished pairs.")
    batch.add_argument("pairs", type=Path, help="the pairs CSV")
    batch.add_argument("--out-dir", type=Path, required=True, help="folder of the results")
    batch.add_argument("--workers", type=int, default=1,
                       help="worker processes (local) or actors (ray), each loading the models "
                            "once (default: %(default)s)")
    batch.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: processes on this machine; ray: a Ray cluster (RAY_ADDRESS, "
                            "or a local one), needs the 'cluster' extra (default: %(default)s)")
    batch.add_argument("--no-detection-cache", action="store_true",
                       help="register every pair on its own, detecting both of its images "
                            "(same results, slower); by default a worker takes all pairs that "
                            "share images and detects each image once, keeping at most "
                            f"{DETECTION_CACHE_IMAGES} images' detections (~1 MiB each)")
    add_registration_options(batch)
    add_report_options(batch)
    batch.set_defaults(handler=batch_command)
    add_report_command(commands)


def pairs_command(args: argparse.Namespace) -> int:
    if args.out:
        check_writable([args.out], args.force)
    if args.manifest.is_dir():
        images = manifest_from_folder(args)
    else:
        refuse_folder_options(args)
        images = read_manifest(args.manifest)
    pairing = pair_images(images)
    text = pairs_csv(pairing.pairs)
    if args.out:
        write_bytes_atomic(args.out, text.encode())
    else:
        sys.stdout.write(text)
    counts = Counter((pair.task, pair.row["dates"]) for pair in pairing.pairs)
    for task, name in TASK_NAMES.items():
        by_dates = {dates: counts[(str(task), dates)] for dates in (SAME_DATE, ACROSS_DATES)}
        detail = ", ".join(f"{n} {dates.replace('_', ' ')}" for dates, n in by_dates.items())
        print(f"task {task} ({name}): {sum(by_dates.values())} pairs ({detail})", file=sys.stderr)
    if pairing.unassigned:
        print(f"{pairing.unassigned} healthy pairs of different image types belong to no task "
              "and are not listed", file=sys.stderr)
    return EXIT_OK


def batch_command(args: argparse.Namespace) -> int:
    config = registration_config(args)
    pairs = read_pairs(args.pairs)
    engine = local_engine
    if args.engine == "ray":
        from .ray_engine import ray_engine

        engine = ray_engine
    # Absolute: Ray actors do not run in this folder.
    spec = WorkerSpec(config, *(path and path.absolute()
                                for path in (args.superpoint, matcher_graph_option(args))),
                      detection_cache=0 if args.no_detection_cache else DETECTION_CACHE_IMAGES)
    try:
        outcome = run_batch(pairs, args.out_dir, spec, args.workers, engine)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished pairs are in {args.out_dir / RESULTS_FILE}; run the same "
              "command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary_table(outcome.records))
    if args.report or args.dicom:
        made = write_outputs(args.out_dir, report=args.report, dicom=args.dicom,
                             show_paths=args.show_paths, records=outcome.records)
        print(made.summary(), file=sys.stderr)
    rate = f", {outcome.new / outcome.wall_s:.2f} pairs/s" if outcome.new else ""
    print(f"{outcome.new} pairs processed by this run in {outcome.wall_s:.1f} s{rate} "
          f"({len(pairs) - outcome.new} already done); results: {args.out_dir / RESULTS_FILE}",
          file=sys.stderr)
    all_registered = all(record.get("status") == "ok" for record in outcome.records)
    return EXIT_OK if all_registered else EXIT_FAILED
