"""``ophreg COMMAND ...``: a thin command line over :class:`Registrar`.

``register`` lives here; other commands add their sub-parser from their own module through an
``add_commands(commands)`` function that sets ``handler`` (a function of the parsed arguments
returning the exit code), so this file stays the one home of exit codes and error reporting.

Exit codes: 0 registered; 3 registration refused (too few inliers, implausible transform);
2 bad input or usage, with one line on stderr naming the file and the problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from .config import (DEFAULT_MATCHERS, Device, FeatureName, MatcherName, Precision,
                     PreprocessMode, RegistrarConfig, TransformModel, resolved_matcher)
from .errors import OphregError
from .imageio import check_writable, read_image, write_bytes_atomic, write_image
from .registrar import Registrar
from .visualize import blend, checkerboard, draw_matches

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILED = 3

OUTPUT_FILES = {
    "warped": "warped.png",
    "blend": "blend.png",
    "checkerboard": "checkerboard.png",
    "matches": "matches.png",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is also 2
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ophreg", description="Register ophthalmic images (SuperPoint + "
                     "SuperGlue/MNN, RANSAC, warp) with ONNX graphs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    reg = commands.add_parser("register", help="register MOVING onto FIXED",
                              description="Register MOVING onto FIXED and write the results.")
    reg.add_argument("fixed", type=Path, help="the target image (its frame is kept)")
    reg.add_argument("moving", type=Path, help="the source image (warped into FIXED's frame)")
    reg.add_argument("--out-dir", type=Path,
                     help=f"write {', '.join(OUTPUT_FILES.values())} there")
    reg.add_argument("--json", type=Path, dest="json_path",
                     help="write the result object there (default: print it on stdout)")
    add_registration_options(reg)
    reg.add_argument("--force", action="store_true", help="overwrite existing output files")
    reg.set_defaults(handler=register_command)
    from .evaluation.cli import add_commands as add_evaluation_commands  # imports this module
    add_evaluation_commands(commands)
    from .cohort.cli import add_commands as add_cohort_commands  # imports this module
    add_cohort_commands(commands)
    return parser


def add_registration_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that registers takes; read back by registration_config."""
    defaults = RegistrarConfig()
    parser.add_argument("--features", choices=[f.value for f in FeatureName],
                        default=defaults.features.value,
                        help="superpoint: the ONNX graph; sift: OpenCV SIFT with Lowe's ratio "
                             "test, no graph, only with --matcher mnn (default: %(default)s)")
    parser.add_argument("--matcher", choices=[m.value for m in MatcherName], default=None,
                        help="lightglue: the shipped LightGlue graph (or --lightglue); mnn: "
                             "mutual nearest neighbour (NumPy); superglue: needs a graph "
                             "exported from trained weights (--superglue) (default: "
                             + ", ".join(f"{m.value} with --features {f.value}"
                                         for f, m in DEFAULT_MATCHERS.items()) + ")")
    parser.add_argument("--device", choices=[d.value for d in Device],
                        default=defaults.device.value)
    parser.add_argument("--allow-cpu-fallback", action="store_true",
                        help="run on CPU when the CUDA provider is unavailable instead of failing")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    parser.add_argument("--transform", choices=[t.value for t in TransformModel],
                        default=defaults.ransac.model.value, help="default: %(default)s")
    parser.add_argument("--preprocess", choices=[p.value for p in PreprocessMode],
                        default=defaults.preprocess.mode.value, help="default: %(default)s")
    parser.add_argument("--size", type=int, default=defaults.preprocess.size[0],
                        help="side of the square network input, multiple of 8 "
                             "(default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=defaults.ransac.threshold,
                        help="RANSAC inlier threshold, px at 1024 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="RANSAC seed")
    parser.add_argument("--precision", choices=[p.value for p in Precision],
                        default=defaults.precision.value,
                        help="which shipped SuperPoint graph: fp32 (superpoint.onnx) or int8 "
                             "(superpoint_int8.onnx, static QDQ, faster on CPU); --superpoint "
                             "overrides it (default: %(default)s)")
    parser.add_argument("--superpoint", type=Path, help="SuperPoint graph (default: models/)")
    parser.add_argument("--superglue", type=Path, help="SuperGlue graph (default: models/)")
    parser.add_argument("--lightglue", type=Path, help="LightGlue graph (default: models/)")


def matcher_graph_option(args: argparse.Namespace) -> Path | None:
    """The graph file the command line names for the chosen matcher (None: the default)."""
    features = FeatureName(args.features)
    matcher = resolved_matcher(features, None if args.matcher is None else MatcherName(args.matcher))
    if matcher is MatcherName.LIGHTGLUE:
        return args.lightglue
    return args.superglue


def registration_config(args: argparse.Namespace) -> RegistrarConfig:
    """The RegistrarConfig that add_registration_options' arguments ask for."""
    defaults = RegistrarConfig()
    if args.size <= 0 or args.size % 8:
        raise OphregError(f"--size {args.size}: must be a positive multiple of 8")
    if args.threads is not None and args.threads < 1:
        raise OphregError(f"--threads {args.threads}: must be at least 1")
    if not args.threshold > 0:
        raise OphregError(f"--threshold {args.threshold}: must be positive")
    return replace(
        defaults,
        features=FeatureName(args.features),
        matcher=None if args.matcher is None else MatcherName(args.matcher),
        device=Device(args.device), precision=Precision(args.precision),
        allow_cpu_fallback=args.allow_cpu_fallback, threads=args.threads, seed=args.seed,
        preprocess=replace(defaults.preprocess, size=(args.size, args.size),
                           mode=PreprocessMode(args.preprocess)),
        ransac=replace(defaults.ransac, model=TransformModel(args.transform),
                       threshold=args.threshold))


def register_command(args: argparse.Namespace) -> int:
    config = registration_config(args)
    outputs = {key: args.out_dir / name for key, name in OUTPUT_FILES.items()} if args.out_dir else {}
    targets = list(outputs.values()) + ([args.json_path] if args.json_path else [])
    # Refuse before any work: never lose an hour of compute to an output that cannot be written.
    check_writable(targets, args.force)
    fixed = read_image(args.fixed)
    moving = read_image(args.moving)
    registrar = Registrar(config, superpoint_model=args.superpoint,
                          matcher_model=matcher_graph_option(args))
    result = registrar.register(fixed, moving, fixed_name=str(args.fixed),
                                moving_name=str(args.moving))
    if outputs:
        picture = draw_matches(fixed, moving, result.keypoints_fixed, result.keypoints_moving,
                               result.matches, result.inliers)
        write_image(outputs["matches"], picture)
        if result.ok:
            warped = registrar.warp(moving, result)
            write_image(outputs["warped"], warped)
            write_image(outputs["blend"], blend(fixed, warped))
            write_image(outputs["checkerboard"], checkerboard(fixed, warped))
    document = json.dumps(result.to_json(), indent=2) + "\n"
    if args.json_path:
        write_bytes_atomic(args.json_path, document.encode())
    else:
        sys.stdout.write(document)
    summary = (f"{result.status}: {result.num_inliers}/{len(result.matches)} inliers, "
               f"keypoints {len(result.keypoints_fixed)}/{len(result.keypoints_moving)}, "
               f"{result.timings_ms['total']:.0f} ms on {result.provider}")
    if not result.ok:
        summary += f" ({result.reason})"
    print(summary, file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except OphregError as exc:
        print(f"ophreg: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # e.g. an output folder that cannot be created
        name = exc.filename or ""
        print(f"ophreg: error: {name}{': ' if name else ''}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
