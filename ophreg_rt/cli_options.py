"""What every command that registers shares: the exit codes, the registration options, and
the one reading of them into a :class:`RegistrarConfig` (with the checks that refuse nonsense
before any file is read). ``cli``, ``cohort.cli`` and ``evaluation.cli`` import it; it imports
none of them.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

from .config import (DEFAULT_MATCHERS, MAX_SEED, MAX_THREADS, NETWORK_SIDE_RANGE, Device,
                     FeatureName, MatcherName, Precision, PreprocessMode, RegistrarConfig,
                     TransformModel, resolved_matcher)
from .errors import InvalidConfigError

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILED = 3


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
