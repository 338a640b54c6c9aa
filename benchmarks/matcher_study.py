"""Why does LightGlue lose to mutual nearest neighbours on fundus images, and which matcher
should be the default? A study of the levers, on the known-truth cases.

Method:
* Cases: ``known_truth.make_category_cases`` (the accuracy benchmark's three categories:
  small motion, large motion with illumination and blur, angio-like), ``--per-image`` per
  image of ``data/dev/single/`` (21 images), seeded. Success: mean field-of-view error below
  ``known_truth.SUCCESS_PX`` (5 px at 1024); also reported below 2 px.
* Features: the shipped SuperPoint graph through the runtime (``Registrar.detect``: same
  preprocessing, same graph as the engine), computed once per image and preprocessing mode
  (``grey``: luminance, the paper's; ``clahe``: CLAHE on the green channel, the engine's
  default) and shared by every matcher.
* Matchers: MNN (cosine >= ``MnnConfig().min_similarity``), and the shipped LightGlue graph,
  whose log-assignment is filtered here at several thresholds with the graph's own rule
  (mutual arg-max, probability > threshold; at 0.1 it reproduces the graph's matches exactly,
  checked per case). Keypoint count: the K best SuperPoint keypoints of each image
  (K in ``--keypoints``; the graph gives at most 1024).
* Geometry: ``Registrar.fit`` (RANSAC affine, 4 px at 1024, refusals), as the engine does.
* Rotation: ``--rotation-images`` images rotated about their centre by each of
  ``--angles`` (no scale, shift or appearance change), CLAHE input, 1024 keypoints: isolates
  rotation, against which neither SuperPoint's descriptors nor LightGlue's relative positional
  encoding is invariant.

Run: ``python -m benchmarks.matcher_study [--per-image 1] [--out benchmarks/results/
matcher_study.json]``. Prints Markdown tables; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from benchmarks.known_truth import (
    CATEGORIES,
    SUCCESS_PX,
    Case,
    make_category_cases,
    mean_fov_error,
)
from ophreg_rt import Registrar, RegistrarConfig
from ophreg_rt.config import MatcherName, PreprocessMode
from ophreg_rt.contract import LIGHTGLUE_OUTPUTS, LightGlueIO
from ophreg_rt.matching import LightGlueRunner, mutual_nearest_neighbours
from ophreg_rt.model_files import default_matcher_graph
from ophreg_rt.types import Features, Matches

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"
STRICT_PX = 2.0


def filter_assignment(log_assignment: np.ndarray, threshold: float) -> Matches:
    """LightGlue's filter on a ``(M + 1, N + 1)`` log-assignment: mutual arg-max of the inner
    block whose probability exceeds ``threshold`` (the graph's rule, in NumPy)."""
    inner = log_assignment[:-1, :-1]
    if inner.size == 0:
        return Matches(np.zeros((0, 2), np.int64), np.zeros(0, np.float32))
    best1 = inner.argmax(axis=1)
    best0 = inner.argmax(axis=0)
    index0 = np.arange(inner.shape[0])
    score = np.exp(inner[index0, best1])
    keep = (best0[best1] == index0) & (score > threshold)
    return Matches(np.stack([index0[keep], best1[keep]], 1).astype(np.int64),
                   score[keep].astype(np.float32))


class LightGlueAssignment:
    """The shipped LightGlue graph, returning its full log-assignment for re-filtering."""

    def __init__(self, runner: LightGlueRunner):
        self.runner = runner
        self.names = [spec.name for spec in LIGHTGLUE_OUTPUTS]

    def __call__(self, f0: Features, f1: Features, size: tuple[int, int]):
        feeds = {}
        for i, f in enumerate((f0, f1)):
            feeds[LightGlueIO.KEYPOINTS[i]] = f.keypoints[None].astype(np.float32)
            feeds[LightGlueIO.DESCRIPTORS[i]] = f.descriptors[None].astype(np.float32)
            feeds[LightGlueIO.MASK[i]] = np.ones((1, len(f)), bool)
            feeds[LightGlueIO.IMAGE_SIZE[i]] = np.array([size], np.float32)
        out = dict(zip(self.names, self.runner.model.session.run(self.names, feeds)))
        return out[LightGlueIO.LOG_ASSIGNMENT][0], out[LightGlueIO.MATCHES[0]][0]


def truncate(detections, k: int):
    f = detections.features
    return replace(detections, features=Features(f.keypoints[:k], f.scores[:k],
                                                 f.descriptors[:k]),
                   keypoints=detections.keypoints[:k])


def evaluate(registrars, lightglue, cases: list[Case], keypoints: list[int],
             thresholds: list[float], cache: dict) -> list[dict]:
    """One row per (case, preprocessing, keypoint count, matcher): error, matches, inliers."""
    rows = []
    for case in cases:
        for mode, registrar in registrars.items():
            key = (id(case.fixed), mode)
            if key not in cache:
                cache[key] = registrar.detect([case.fixed])[0]
            fixed = cache[key]
            moving = registrar.detect([case.moving])[0]
            size = fixed.network_size
            for k in keypoints:
                d0, d1 = truncate(fixed, k), truncate(moving, k)
                candidates = {"mnn": mutual_nearest_neighbours(d0.features, d1.features,
                                                               registrar.config.mnn)}
                log_assignment, graph_matches = lightglue(d0.features, d1.features, size)
                for threshold in thresholds:
                    matches = filter_assignment(log_assignment, threshold)
                    if threshold == 0.1:
                        graph_pairs = np.flatnonzero(graph_matches >= 0)
                        if not np.array_equal(graph_pairs, matches.pairs[:, 0]):
                            raise RuntimeError(f"{case.name}: NumPy filter disagrees with graph")
                    candidates[f"lightglue@{threshold:g}"] = matches
                for name, matches in candidates.items():
                    result = registrar.fit(d0, d1, matches)
                    rows.append({"case": case.name, "preprocess": mode, "keypoints": k,
                                 "matcher": name, "matches": len(matches),
                                 "inliers": result.num_inliers,
                                 "error_px": _finite(mean_fov_error(result, case))})
    return rows


def _finite(value: float) -> float | None:
    """None for a refused registration (infinite error), so the JSON stays standard."""
    return value if np.isfinite(value) else None


def rotation_cases(paths: list[Path], angles: list[float]) -> list[tuple[float, Case]]:
    from ophreg_rt.imageio import read_image

    out = []
    for path in paths:
        fixed = read_image(path)
        h, w = fixed.shape[:2]
        for angle in angles:
            forward = np.eye(3)
            forward[:2] = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
            moving = cv2.warpAffine(fixed, forward[:2], (w, h), flags=cv2.INTER_LINEAR)
            out.append((angle, Case(f"{path.stem}@{angle:g}", fixed, moving,
                                    np.linalg.inv(forward))))
    return out


def summarise(rows: list[dict], by: tuple[str, ...]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    table = []
    for key, group in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        errors = np.array([np.inf if r["error_px"] is None else r["error_px"] for r in group])
        table.append({**dict(zip(by, key)), "cases": len(group),
                      "success": float((errors < SUCCESS_PX).mean()),
                      "success_2px": float((errors < STRICT_PX).mean()),
                      "median_matches": float(np.median([r["matches"] for r in group])),
                      "median_inliers": float(np.median([r["inliers"] for r in group]))})
    return table


def markdown(table: list[dict], by: tuple[str, ...]) -> str:
    head = "| " + " | ".join(by) + f" | n | < {SUCCESS_PX:g} px | < {STRICT_PX:g} px | " \
           "median matches | median inliers |"
    lines = [head, "|" + "---|" * (len(by) + 5)]
    for row in table:
        lines.append("| " + " | ".join(str(row[k]) for k in by)
                     + f" | {row['cases']} | {100 * row['success']:.0f} % | "
                       f"{100 * row['success_2px']:.0f} % | {row['median_matches']:.0f} | "
                       f"{row['median_inliers']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--per-image", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keypoints", type=int, nargs="+", default=[1024, 512])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.01])
    parser.add_argument("--rotation-images", type=int, default=4)
    parser.add_argument("--angles", type=float, nargs="+",
                        default=[0, 10, 20, 30, 45, 60, 90, 135, 180])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-images", type=int, default=None, help="first N images only")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "matcher_study.json")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    base = replace(RegistrarConfig(), matcher=MatcherName.MNN, threads=args.threads)
    registrars = {mode.value: Registrar(replace(base, preprocess=replace(base.preprocess,
                                                                         mode=mode)))
                  for mode in (PreprocessMode.GREY, PreprocessMode.CLAHE)}
    lightglue = LightGlueAssignment(LightGlueRunner(default_matcher_graph(MatcherName.LIGHTGLUE),
                                                    threads=args.threads))
    paths = sorted((args.data_dir / "single").rglob("*.jpg")) + \
        sorted((args.data_dir / "single").rglob("*.tif"))
    paths = paths[:args.max_images]
    categories = make_category_cases(paths, args.per_image, args.seed)
    cache: dict = {}
    rows = []
    for name in CATEGORIES:
        for row in evaluate(registrars, lightglue, categories[name], args.keypoints,
                            args.thresholds, cache):
            rows.append({"category": name, **row})
        print(f"{name}: done after {time.perf_counter() - started:.0f} s", flush=True)

    rotation_rows = []
    clahe = {"clahe": registrars["clahe"]}
    for angle, case in rotation_cases(paths[1:1 + args.rotation_images], args.angles):
        for row in evaluate(clahe, lightglue, [case], [1024], [0.1], cache):
            rotation_rows.append({"angle": angle, **row})
    print(f"rotation: done after {time.perf_counter() - started:.0f} s", flush=True)

    by = ("category", "preprocess", "keypoints", "matcher")
    table = summarise(rows, by)
    rotation_table = summarise(rotation_rows, ("angle", "matcher"))
    print(markdown(table, by))
    print()
    print(markdown(rotation_table, ("angle", "matcher")))
    document = {
        "method": __doc__,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": args.threads},
        "seed": args.seed, "per_image": args.per_image, "images": len(paths),
        "success_px": SUCCESS_PX, "strict_px": STRICT_PX,
        "models": {name: {"file": r.model.path.name, "sha256": r.model.sha256}
                   for name, r in (("superpoint", registrars["clahe"].superpoint),
                                   ("lightglue", lightglue.runner))},
        "summary": table, "rotation_summary": rotation_table,
        "rows": rows, "rotation_rows": rotation_rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
