"""``ophreg COMMAND ...``: a thin command line over :class:`Registrar`.

``register`` lives here; other commands add their sub-parser from their own module through an
``add_commands(commands)`` function that sets ``handler`` (a function of the parsed arguments
returning the exit code), so this file stays the one home of exit codes and error reporting.

Exit codes: 0 registered; 3 registration refused (too few inliers, implausible transform);
2 bad input or usage, with one line on stderr naming the file and the problem.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from .config import (DEFAULT_MATCHERS, MAX_SEED, MAX_THREADS, NETWORK_SIDE_RANGE, Device,
                     FeatureName, MatcherName, Precision, PreprocessMode, RegistrarConfig,
                     TransformModel, resolved_matcher)
from .dicom import dicom_output_path, warped_instance
from .errors import ImageDecodeWarning, InvalidConfigError, OphregError
from .imageio import check_writable, encode_image, read_image, write_files_atomic
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


EPILOG = """\
example:
  ophreg register fixed.jpg moving.jpg --out-dir out --json out/result.json

exit codes:
  0    registered (evaluate, pairs: the command ran)
  2    bad input or usage: one line on stderr names the file and the problem
  3    registration refused (too few inliers, implausible transform; batch: some pair was)
  130  batch interrupted (run the same command again to resume)
"""


class _Version(argparse.Action):
    """``--version``: this package's and the runtime's versions, for a bug report."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import cv2
        import numpy

        from . import __version__
        from .runtime_check import installed_builds

        builds = installed_builds()
        runtime = "no onnxruntime installed"
        if builds:
            from importlib.metadata import version

            runtime = ", ".join(f"{build} {version(build)}" for build in builds)
        print(f"ophreg {__version__} ({runtime}; numpy {numpy.__version__}; "
              f"opencv {cv2.__version__})")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is also 2
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ophreg", description="Register ophthalmic images (SuperPoint + "
                     "LightGlue/SuperGlue/MNN, RANSAC, warp) with ONNX graphs.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="show the versions and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    reg = commands.add_parser("register", help="register MOVING onto FIXED",
                              description="Register MOVING onto FIXED and write the results.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    reg.add_argument("fixed", type=Path, help="the target image (its frame is kept)")
    reg.add_argument("moving", type=Path, help="the source image (warped into FIXED's frame)")
    reg.add_argument("--out-dir", type=Path,
                     help=f"write {', '.join(OUTPUT_FILES.values())} there")
    reg.add_argument("--json", type=Path, dest="json_path",
                     help="write the result object there (default: print it on stdout)")
    add_registration_options(reg)
    reg.add_argument("--force", action="store_true", help="overwrite existing output files")
    reg.add_argument("--dicom", action="store_true",
                     help="with --out-dir, also write warped.dcm: the warped image as a new "
                          "series of FIXED's study (FIXED must be DICOM; needs the dicom extra)")
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
    parser.add_argument("--threads", type=int,
                        help=f"onnxruntime intra-op threads, 1..{MAX_THREADS}")
    parser.add_argument("--transform", choices=[t.value for t in TransformModel],
                        default=defaults.ransac.model.value,
                        help="affine: the method's; quadratic: 12 parameters for the curved "
                             "retina, grown from the affine's inliers, refused when they "
                             "cannot support it; auto: per pair, the quadratic when it predicts "
                             "held-out inliers better, else the affine (default: %(default)s)")
    parser.add_argument("--preprocess", choices=[p.value for p in PreprocessMode],
                        default=defaults.preprocess.mode.value, help="default: %(default)s")
    parser.add_argument("--size", type=int, default=defaults.preprocess.size[0],
                        help="side of the square network input, a multiple of 8 from "
                             f"{NETWORK_SIDE_RANGE[0]} to {NETWORK_SIDE_RANGE[1]} "
                             "(default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=defaults.ransac.threshold,
                        help="RANSAC inlier threshold, px at 1024 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="RANSAC seed, 0..2**63-1 (default: %(default)s)")
    parser.add_argument("--no-mask", action="store_true",
                        help="use keypoints everywhere, also outside the fundus field of view, "
                             "on the frame and on burnt-in text (masked by default)")
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                        help="largest image accepted, width x height, checked from the file's "
                             "header before decoding (default: %(default)s)")
    parser.add_argument("--precision", choices=[p.value for p in Precision],
                        default=defaults.precision.value,
                        help="which shipped SuperPoint graph: fp32 (superpoint.onnx) or int8 "
                             "(superpoint_int8.onnx, static QDQ, faster on CPU); --superpoint "
                             "overrides it (default: %(default)s)")
    parser.add_argument("--superpoint", type=Path, help="SuperPoint graph (default: models/)")
    parser.add_argument("--superglue", type=Path, help="SuperGlue graph (default: models/)")
    parser.add_argument("--lightglue", type=Path, help="LightGlue graph (default: models/)")


def matcher_graph_option(args: argparse.Namespace) -> Path | None:
    """The graph file the command line names for the chosen matcher (None: the default).

    A graph option that the chosen features and matcher would not load is refused: silently
    ignored, ``--superglue X`` without ``--matcher superglue`` would run LightGlue instead.
    """
    features = FeatureName(args.features)
    matcher = resolved_matcher(features, None if args.matcher is None else MatcherName(args.matcher))
    unused = {"--superglue": args.superglue if matcher is not MatcherName.SUPERGLUE else None,
              "--lightglue": args.lightglue if matcher is not MatcherName.LIGHTGLUE else None,
              "--superpoint": args.superpoint if features is not FeatureName.SUPERPOINT else None}
    for option, path in unused.items():
        if path is not None:
            raise InvalidConfigError(
                f"{option} {path}: not used with --features {features.value} and matcher "
                f"{matcher.value} (choose the matcher with --matcher)")
    if matcher is MatcherName.LIGHTGLUE:
        return args.lightglue
    if matcher is MatcherName.SUPERGLUE:
        return args.superglue
    return None


def registration_config(args: argparse.Namespace) -> RegistrarConfig:
    """The RegistrarConfig that add_registration_options' arguments ask for; every handler calls
    it first, so that a nonsense option is refused before any file is read."""
    matcher_graph_option(args)  # refuses a graph option the chosen matcher would not load
    defaults = RegistrarConfig()
    low, high = NETWORK_SIDE_RANGE
    if not low <= args.size <= high or args.size % 8:
        raise InvalidConfigError(f"--size {args.size}: must be a multiple of 8 from {low} to "
                                 f"{high}")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise InvalidConfigError(f"--threads {args.threads}: must be from 1 to {MAX_THREADS}")
    if not (math.isfinite(args.threshold) and args.threshold > 0):
        raise InvalidConfigError(f"--threshold {args.threshold}: must be a finite number above 0")
    if not 0 <= args.seed <= MAX_SEED:
        raise InvalidConfigError(f"--seed {args.seed}: must be from 0 to 2**63-1")
    if args.max_pixels < 1:
        raise InvalidConfigError(f"--max-pixels {args.max_pixels}: must be at least 1")
    return replace(
        defaults,
        features=FeatureName(args.features),
        matcher=None if args.matcher is None else MatcherName(args.matcher),
        device=Device(args.device), precision=Precision(args.precision),
        allow_cpu_fallback=args.allow_cpu_fallback, threads=args.threads, seed=args.seed,
        max_pixels=args.max_pixels,
        mask=replace(defaults.mask, enabled=not args.no_mask),
        preprocess=replace(defaults.preprocess, size=(args.size, args.size),
                           mode=PreprocessMode(args.preprocess)),
        ransac=replace(defaults.ransac, model=TransformModel(args.transform),
                       threshold=args.threshold))


def register_command(args: argparse.Namespace) -> int:
    config = registration_config(args)
    matcher_model = matcher_graph_option(args)
    outputs = {key: args.out_dir / name for key, name in OUTPUT_FILES.items()} if args.out_dir else {}
    if args.dicom:  # checked here, before any work (ophreg_rt/dicom.py)
        outputs["dicom"] = dicom_output_path(args.out_dir, args.fixed, args.moving)
    targets = list(outputs.values()) + ([args.json_path] if args.json_path else [])
    # Refuse before any work: never lose an hour of compute to an output that cannot be written.
    check_writable(targets, args.force)
    fixed = read_image(args.fixed, max_pixels=config.max_pixels)
    moving = read_image(args.moving, max_pixels=config.max_pixels)
    registrar = Registrar(config, superpoint_model=args.superpoint, matcher_model=matcher_model)
    result = registrar.register(fixed, moving, fixed_name=str(args.fixed),
                                moving_name=str(args.moving))
    # Everything is encoded in memory first and written together (write_files_atomic): a
    # failure leaves none of this run's files rather than pictures without their JSON.
    files: dict[Path, bytes] = {}
    if outputs:
        picture = draw_matches(fixed, moving, result.keypoints_fixed, result.keypoints_moving,
                               result.matches, result.inliers)
        files[outputs["matches"]] = encode_image(outputs["matches"], picture)
        if result.ok:
            warped = registrar.warp(moving, result)
            files[outputs["warped"]] = encode_image(outputs["warped"], warped)
            files[outputs["blend"]] = encode_image(outputs["blend"], blend(fixed, warped))
            files[outputs["checkerboard"]] = encode_image(outputs["checkerboard"],
                                                          checkerboard(fixed, warped))
            if "dicom" in outputs:
                files[outputs["dicom"]] = warped_instance(args.fixed, args.moving, warped, result)
    document = json.dumps(result.to_json(), indent=2) + "\n"
    if args.json_path:
        files[args.json_path] = document.encode()
    write_files_atomic(files)
    if outputs and not result.ok:
        # Only there with --force: an earlier run's warp must not pass for this refusal's.
        for key in ("warped", "blend", "checkerboard", "dicom"):
            if key in outputs:
                outputs[key].unlink(missing_ok=True)
    if not args.json_path:
        sys.stdout.write(document)
    summary = (f"{result.status}: {result.num_inliers}/{len(result.matches)} inliers, "
               f"keypoints {len(result.keypoints_fixed)}/{len(result.keypoints_moving)}, "
               f"{result.timings_ms['total']:.0f} ms on {result.provider}")
    if not result.ok:
        summary += f" ({result.reason})"
    print(summary, file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    _quiet_opencv()
    args = build_parser().parse_args(argv)
    try:
        with _engine_warnings_as_lines():
            return args.handler(args)
    except OphregError as exc:
        print(f"ophreg: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # e.g. an output folder that cannot be created
        name = exc.filename or ""
        print(f"ophreg: error: {name}{': ' if name else ''}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE


@contextlib.contextmanager
def _engine_warnings_as_lines() -> Iterator[None]:
    """The engine's warnings as one ``ophreg: warning: ...`` line each, like its errors; and a
    codec's own complaints caught and turned into such a warning (imageio). Undone on return,
    for callers of main() in a longer-lived process (tests)."""
    from . import imageio

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ImageDecodeWarning):
            print(f"ophreg: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    imageio.capture_codec_messages, warnings.showwarning = True, show
    try:
        yield
    finally:
        imageio.capture_codec_messages, warnings.showwarning = False, default


def _quiet_opencv() -> None:
    """OpenCV logs a codec's complaint (libtiff's, say) on stderr before the engine turns the
    failure into its own one line; the command line keeps stderr to that line."""
    import cv2

    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None:
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)


if __name__ == "__main__":
    sys.exit(main())
