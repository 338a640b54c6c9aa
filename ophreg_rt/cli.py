"""``ophreg COMMAND ...``: a thin command line over :class:`Registrar`.

``register`` lives here; other commands add their sub-parser from their own module through an
``add_commands(commands)`` function that sets ``handler`` (a function of the parsed arguments
returning the exit code), so this file stays the one home of error reporting. The options
every registering command takes, and the exit codes, live in ``cli_options``, which those
modules import instead of this one.

Exit codes: 0 registered; 3 registration refused (too few inliers, implausible transform);
2 bad input or usage, with one line on stderr naming the file and the problem.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path
from typing import Iterator

from .cli_options import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_registration_options,
                          matcher_graph_option, registration_config)
from .cohort.cli import add_commands as add_cohort_commands
from .dicom import dicom_output_path, warped_instance
from .errors import ImageDecodeWarning, OphregError
from .evaluation.cli import add_commands as add_evaluation_commands
from .imageio import check_writable, encode_image, read_image, write_files_atomic
from .registrar import Registrar
from .visualize import blend, checkerboard, draw_matches

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
    add_evaluation_commands(commands)
    add_cohort_commands(commands)
    return parser


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
