"""Accuracy benchmark: known-truth warps of real images, and the real pairs both ways.

Method (see also ``known_truth.py``):
* Known truth: every image of ``data/dev/single/`` is warped by ``--per-image`` seeded random
  affines (rotation <= 20 deg, scale 0.85-1.2, shift <= 15 %, gain and gamma change). A case
  succeeds when the mean field-of-view error is below 2 px at 1024. Small motion (the issue's
  ranges) with two appearances of the moving image: the warped photograph itself, and
  ``angio-like`` (its green channel inverted: vessels bright on dark, as in a fluorescein
  angiogram), the cross-modality case; and large motion (rotation <= 45 deg, scale 0.7-1.4,
  shift <= 25 %), same appearance.
* Real pairs (``data/dev/pairs/``, no ground truth): registered both ways; the round trip
  A(fixed->moving) . A(moving->fixed) must return field-of-view pixels within 2 px at 1024.

Run: ``python -m benchmarks.accuracy [--per-image 3] [--out benchmarks/results/accuracy.json]``.
Writes JSON and prints a Markdown table. Each configuration is a RegistrarConfig variant.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.known_truth import (LARGE_MOTION, SUCCESS_PX, Case, make_cases,
                                    mean_fov_error, round_trip_error)
from benchmarks.sift_baseline import SiftRegistrar
from ophreg_rt import Registrar, RegistrarConfig
from ophreg_rt.config import MnnConfig, PreprocessMode
from ophreg_rt.imageio import read_image

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"


def angio_like(case: Case) -> Case:
    """The same geometry with the moving image's green channel inverted (bright vessels)."""
    green = case.moving[:, :, 1] if case.moving.ndim == 3 else case.moving
    return Case(case.name + ":angio", case.fixed, (255 - green).astype(np.uint8), case.truth)


def configurations() -> dict[str, Callable[[], Registrar]]:
    default = RegistrarConfig()
    return {
        "default (clahe, mnn >= 0.5, affine)": lambda: Registrar(default),
        "mnn min_similarity 0.7 (SuperPoint demo's)": lambda: Registrar(
            replace(default, mnn=MnnConfig(0.7))),
        "grey (paper's input), mnn, affine": lambda: Registrar(
            replace(default, preprocess=replace(default.preprocess, mode=PreprocessMode.GREY))),
        "SIFT baseline (clahe, ratio 0.8, affine)": lambda: SiftRegistrar(default),
    }


def known_truth(registrar: Registrar, cases: list[Case]) -> dict:
    errors = np.array([mean_fov_error(registrar.register(c.fixed, c.moving).matrix, c)
                       for c in cases])
    finite = errors[np.isfinite(errors)]
    return {
        "cases": len(cases),
        "success_rate": float((errors < SUCCESS_PX).mean()),
        "refused": int((~np.isfinite(errors)).sum()),
        "median_error_px": float(np.median(finite)) if finite.size else None,
        "worst_accepted_error_px": float(finite.max()) if finite.size else None,
    }


def real_pairs(registrar: Registrar, data_dir: Path) -> dict:
    results = {}
    for folder in sorted((data_dir / "pairs").iterdir()):
        fixed = read_image(next(folder.glob("fixed.*")))
        moving = read_image(next(folder.glob("moving.*")))
        forward = registrar.register(fixed, moving)
        backward = registrar.register(moving, fixed)
        entry = {"status": [forward.status, backward.status],
                 "inliers": [forward.num_inliers, backward.num_inliers],
                 "matches": [len(forward.matches), len(backward.matches)]}
        if forward.ok and backward.ok:
            entry["round_trip_px"] = round_trip_error(forward.matrix, backward.matrix, moving)
        results[folder.name] = entry
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--per-image", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.json"))
    args = parser.parse_args()

    paths = sorted((args.data_dir / "single").rglob("*.jpg")) + \
        sorted((args.data_dir / "single").rglob("*.tif"))
    cases = make_cases(paths, args.per_image, args.seed)
    large_cases = make_cases(paths, args.per_image, args.seed, LARGE_MOTION)
    report = {"method": __doc__, "machine": platform.platform(), "per_image": args.per_image,
              "seed": args.seed, "images": len(paths), "configurations": {}}
    for name, make_registrar in configurations().items():
        started = time.perf_counter()
        registrar = make_registrar()
        report["configurations"][name] = {
            "models": registrar.models,
            "known_truth_same": known_truth(registrar, cases),
            "known_truth_angio_like": known_truth(registrar, [angio_like(c) for c in cases]),
            "known_truth_large_motion": known_truth(registrar, large_cases),
            "real_pairs": real_pairs(registrar, args.data_dir),
            "wall_s": time.perf_counter() - started,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))


def table(report: dict) -> str:
    lines = ["| configuration | known truth, small motion | small motion, angio-like | "
             "large motion | real pairs round trip (px at 1024) |", "|---|---|---|---|---|"]
    for name, entry in report["configurations"].items():
        same, angio = entry["known_truth_same"], entry["known_truth_angio_like"]
        large = entry["known_truth_large_motion"]
        pairs = ", ".join(
            f"{pair}: {value['round_trip_px']:.2f}" if "round_trip_px" in value
            else f"{pair}: {'/'.join(value['status'])}"
            for pair, value in entry["real_pairs"].items())
        lines.append(
            f"| {name} | {same['success_rate']:.1%} of {same['cases']} "
            f"(median {_px(same)}) | {angio['success_rate']:.1%} "
            f"(median {_px(angio)}) | {large['success_rate']:.1%} (median {_px(large)}) | {pairs} |")
    return "\n".join(lines)


def _px(summary: dict) -> str:
    value = summary["median_error_px"]
    return "n/a" if value is None else f"{value:.2f} px"


if __name__ == "__main__":
    main()
