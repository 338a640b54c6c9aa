"""How much the runtime's answer on real pairs depends on its RANSAC seed.

The runtime draws RANSAC's samples from ``RegistrarConfig.seed`` (0 by default), so a run is
reproducible; another seed is another draw from the same distribution. On each real pair
(``real_pairs/control_points.csv``), detection and matching run once; the default fit (``auto``:
affine RANSAC, then the quadratic grown from its inliers and from a 6-point RANSAC; or
``--transform``) is repeated with seeds 0..``--seeds``-1 on the same matches. Reported per pair, px at 1024:

* the mean control-point error of seed 0, and its minimum, median and maximum over the seeds
  (the points were made without any keypoint pipeline: ``real_pairs/README.md``);
* the model chosen and the inlier count over the seeds;
* the largest distance between each seed's transform and seed 0's, over a 21 x 21 grid of the
  shared field (``transforms.transform_difference``), and over the part of that grid inside
  the convex hull of seed 0's inliers (where the matches constrain the fit; outside it, the
  quadratic extrapolates).

``--unrefined`` fits as the runtime did before the quadratic's Cauchy refinement
(``QuadraticConfig.cauchy_rounds = 0``): the comparison that made the refinement the default.

Run: ``python -m benchmarks.seed_spread [--seeds 32]`` (a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from benchmarks.harness import cpu_model, load_average, write_report
from benchmarks.real_pairs_precision import CONTROL_POINTS, load_points
from ophreg_rt import Registrar
from ophreg_rt.config import REFERENCE_SIZE, RegistrarConfig, TransformModel
from ophreg_rt.imageio import read_image
from ophreg_rt.transforms import shared_grid

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def inside_hull(points: np.ndarray, hull_of: np.ndarray) -> np.ndarray:
    """Which ``points`` lie in the convex hull of ``hull_of`` (edges included)."""
    hull = cv2.convexHull(hull_of.astype(np.float32))
    return np.array([cv2.pointPolygonTest(hull, (float(x), float(y)), False) >= 0
                     for x, y in points], dtype=bool)


def pair_spread(registrar: Registrar, entry: dict, seeds: int,
                model: TransformModel = TransformModel.AUTO) -> dict:
    fixed, moving = read_image(entry["fixed"]), read_image(entry["moving"])
    detections = registrar.detect([fixed, moving], {})
    matches = registrar.match(*detections)
    base = registrar.config
    src, dst = np.asarray(entry["src"], float), np.asarray(entry["dst"], float)
    results = []
    try:
        for seed in range(seeds):
            registrar.config = replace(base, seed=seed)
            results.append(registrar.fit(*detections, matches, model=model))
    finally:
        registrar.config = base
    reference = results[0]
    if not reference.ok:
        return {"seed0_status": reference.status, "seed0_reason": reference.reason}
    to_1024 = REFERENCE_SIZE / max(reference.fixed_size)
    mappers = [result.map_points if result.ok else None for result in results]
    grid = shared_grid(mappers[0], reference.fixed_size, reference.moving_size)
    src_inliers = reference.keypoints_moving[reference.matches[reference.inliers, 1]]
    constrained = grid[inside_hull(grid, src_inliers)]
    errors, field, hull = [], [], []
    for mapper in mappers:
        if mapper is None:
            errors.append(float("nan")); field.append(float("nan")); hull.append(float("nan"))
            continue
        errors.append(float(np.linalg.norm(mapper(src) - dst, axis=1).mean() * to_1024))
        field.append(float(np.linalg.norm(mapper(grid) - mappers[0](grid), axis=1).max()
                           * to_1024))
        hull.append(float(np.linalg.norm(mapper(constrained) - mappers[0](constrained),
                                         axis=1).max() * to_1024)
                    if len(constrained) else float("nan"))
    models = [result.transform.value if result.ok else "failed" for result in results]
    inliers = [result.num_inliers for result in results if result.ok]
    return {
        "seeds": seeds, "matches": int(len(matches.pairs)),
        "control_points": int(len(src)),
        "error_px": {"seed0": errors[0], "min": float(np.nanmin(errors)),
                     "median": float(np.nanmedian(errors)), "max": float(np.nanmax(errors))},
        "models": {model: models.count(model) for model in sorted(set(models))},
        "inliers": [min(inliers), max(inliers)],
        "max_difference_px": {"shared_field": float(np.nanmax(field)),
                              "inlier_hull": float(np.nanmax(hull)),
                              "grid_points": [int(len(grid)), int(len(constrained))]},
        "errors_px": errors,
    }


def markdown(document: dict) -> str:
    lines = ["# RANSAC seed spread on the real pairs", "",
             f"Seeds 0..{document['seeds'] - 1} on the same matches, transform "
             f"`{document['transform']}`{' unrefined' if document['unrefined'] else ''}. "
             "Control-point error: mean over the pair's points, px at 1024. "
             "Difference: largest distance to seed 0's transform, px at 1024, over the shared "
             "field's 21 x 21 grid and over its part inside seed 0's inlier hull.", "",
             "| pair | error seed 0 | min / median / max over seeds | models | inliers "
             "| difference: shared field | inside the inlier hull |",
             "|---|---|---|---|---|---|---|"]
    for name, row in document["pairs"].items():
        if "error_px" not in row:
            lines.append(f"| {name} | {row['seed0_status']} ({row['seed0_reason']}) | | | | | |")
            continue
        e, d = row["error_px"], row["max_difference_px"]
        models = ", ".join(f"{k} {v}" for k, v in row["models"].items())
        lines.append(f"| {name} | {e['seed0']:.3f} | {e['min']:.3f} / {e['median']:.3f} / "
                     f"{e['max']:.3f} | {models} | {row['inliers'][0]}-{row['inliers'][1]} | "
                     f"{d['shared_field']:.2f} | {d['inlier_hull']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--transform", default=TransformModel.AUTO.value,
                        choices=[m.value for m in (TransformModel.AUTO, TransformModel.AFFINE,
                                                   TransformModel.QUADRATIC)],
                        help="the model fitted (default: the runtime's, %(default)s)")
    parser.add_argument("--unrefined", action="store_true",
                        help="without the quadratic's Cauchy refinement (cauchy_rounds 0)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "seed_spread.json")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds: at least 2")
    config = RegistrarConfig()
    if args.unrefined:
        config = replace(config, quadratic=replace(config.quadratic, cauchy_rounds=0))
    registrar = Registrar(config)
    model = TransformModel(args.transform)
    document = {"seeds": args.seeds, "transform": model.value, "unrefined": args.unrefined,
                "machine": {"cpu": cpu_model(), "load": load_average(),
                                                 "python": platform.python_version()},
                "pairs": {}}
    for name, entry in load_points(CONTROL_POINTS).items():
        document["pairs"][name] = pair_spread(registrar, entry, args.seeds, model)
        print(f"{name}: done", flush=True)
    write_report(args.out, document, markdown(document))
    print(markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
