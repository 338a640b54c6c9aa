"""Accuracy benchmark: every pipeline the engine offers on known-truth warps and on real pairs.

Method:
* Known truth (``known_truth.py``): each image of ``data/dev/single/`` is warped by
  ``--per-image`` seeded random affines in three categories standing for the method's tasks:
  ``small`` (small motion, mild photometric change), ``large`` (large motion with partial
  overlap, uneven illumination, blur) and ``angio`` (moderate motion, green channel inverted).
  The error of a registration is the mean distance over the fixed image's field of view, px at
  a 1024-px longer side; a refused registration has an infinite error. Per pipeline, transform
  model and category: success rate (error < 5 px), median error of the accepted ones, AUC of
  the cumulative success curve over 0-10 px (normalised to 1), refusals, and the median time
  of one pair as the engine's ``register`` would spend it (detection of both images, matching,
  RANSAC), although the benchmark computes each image's detections once per front end, each
  case's matches once per matcher and fits the three transform models to the same matches.
* Pipelines are RegistrarConfig values (front end, preprocessing, matcher, transform model):
  SIFT (grey and CLAHE on green), SuperPoint + MNN (grey and CLAHE), SuperPoint + LightGlue
  when ``models/lightglue.onnx`` exists and the registrar runs it, SuperPoint + SuperGlue with
  ``--superglue PATH`` (a graph exported from the user's checkpoint).
* Real pairs (``data/dev/pairs/``, no ground truth): each pipeline (default transform model)
  registers each pair both ways; the forward/backward consistency is the mean distance a moving field-of-view pixel
  travels through A(moving->fixed) then A(fixed->moving), px at 1024. A blend and a checkerboard
  of the fixed image and the warped moving image go into one report page.

Run: ``python -m benchmarks.accuracy [--per-image 2] [--superglue PATH]``. Writes
``results/accuracy.json``, ``results/accuracy.md``, ``results/accuracy_curves.png`` and
``results/real_pairs.md`` with its pictures in ``results/real_pairs/``. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from benchmarks.harness import timed
from benchmarks.known_truth import (CATEGORIES, SUCCESS_PX, Case, make_category_cases,
                                    mean_fov_error, overlap, round_trip_error)
from ophreg_rt import Registrar, RegistrarConfig
from ophreg_rt.config import FeatureName, MatcherName, PreprocessMode, SiftConfig, TransformModel
from ophreg_rt.errors import OphregError
from ophreg_rt.evaluation.protocol import success_rates
from ophreg_rt.imageio import read_image, write_bytes_atomic, write_image
from ophreg_rt.model_files import models_dir
from ophreg_rt.visualize import blend, checkerboard

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The AUC integrates the cumulative success curve over 0..AUC_MAX_PX px at 1024.
AUC_MAX_PX = 10.0
_AUC_STEPS = 1000
#: Longer side of each picture of the real-pairs page (blend and checkerboard side by side).
PICTURE_SIDE = 384
MODELS = tuple(TransformModel)
#: Success within 5 px (small / large / angio-like) measured before issue 7 with PyTorch and
#: OpenCV references, RANSAC affine (DESIGN.md). The engine's best should beat the best row.
#: The curved category came later (issue 12) and has no reference level.
REFERENCE_CATEGORIES = ("small", "large", "angio")
REFERENCE_LEVELS = {
    "SIFT, grey": (0.68, 0.64, 0.0),
    "SIFT, CLAHE green": (1.00, 0.95, 0.0),
    "SuperPoint + MNN, grey": (1.00, 0.91, 0.68),
    "SuperPoint + LightGlue, grey": (0.95, 0.77, 0.45),
}


@dataclass(frozen=True)
class Pipeline:
    """One way the engine registers: a RegistrarConfig (its ransac.model is set per fit)."""

    name: str
    config: RegistrarConfig
    matcher_model: Path | None = None

    @property
    def front_end(self) -> tuple:
        """Pipelines with equal front ends share detections."""
        return (self.config.features, self.config.preprocess)

    @property
    def matching(self) -> tuple:
        """Pipelines with equal matching share matches (and differ only in the transform)."""
        return (self.front_end, self.config.matcher, self.config.mnn, self.config.sift,
                self.matcher_model)


def pipelines(superglue: Path | None = None, lightglue: bool = True,
              size: int | None = None) -> list[Pipeline]:
    """Every pipeline the engine offers; ``size`` overrides the network input's side."""
    # MNN pinned: the pipelines below are labelled by matcher, and the default is now per front end.
    default = replace(RegistrarConfig(), matcher=MatcherName.MNN)
    if size is not None:
        default = replace(default, preprocess=replace(default.preprocess, size=(size, size)))
    grey = replace(default.preprocess, mode=PreprocessMode.GREY)
    clahe = replace(default.preprocess, mode=PreprocessMode.CLAHE)
    sift = replace(default, features=FeatureName.SIFT)
    found = [
        Pipeline("SIFT, grey", replace(sift, preprocess=grey)),
        Pipeline("SIFT, CLAHE green", replace(sift, preprocess=clahe)),
        Pipeline("SIFT, CLAHE green, ratio test only (no mutual check)",
                 replace(sift, preprocess=clahe, sift=SiftConfig(mutual=False))),
        Pipeline("SuperPoint + MNN, grey", replace(default, preprocess=grey)),
        Pipeline("SuperPoint + MNN, CLAHE green", replace(default, preprocess=clahe)),
    ]
    lightglue_name = getattr(MatcherName, "LIGHTGLUE", None)
    if lightglue and lightglue_name is not None and (models_dir() / "lightglue.onnx").is_file():
        for label, mode in (("grey", grey), ("CLAHE green", clahe)):
            found.append(Pipeline(f"SuperPoint + LightGlue, {label}",
                                  replace(default, preprocess=mode, matcher=lightglue_name)))
    if superglue is not None:
        found.append(Pipeline("SuperPoint + SuperGlue (user checkpoint), CLAHE green",
                              replace(default, preprocess=clahe, matcher=MatcherName.SUPERGLUE),
                              matcher_model=superglue))
    return found


def build_registrars(candidates: list[Pipeline]) -> tuple[dict[str, Registrar], dict[str, str]]:
    """A registrar per pipeline; a pipeline whose matcher the registrar does not run is skipped."""
    registrars, skipped = {}, {}
    for pipeline in candidates:
        try:
            registrar = Registrar(pipeline.config, matcher_model=pipeline.matcher_model)
        except OphregError as exc:
            skipped[pipeline.name] = str(exc)
            continue
        matcher = MatcherName(pipeline.config.matcher)
        # A registrar that silently fell back to another matcher would mislabel every number.
        if matcher is not MatcherName.MNN and matcher.value not in registrar.models:
            skipped[pipeline.name] = f"the registrar does not run {matcher.value} yet"
            continue
        registrars[pipeline.name] = registrar
    return registrars, skipped


def evaluate_known_truth(chosen: list[Pipeline], registrars: dict[str, Registrar],
                         cases: dict[str, list[Case]], models=MODELS) -> list[dict]:
    """One entry per (pipeline, transform model, category) with every case's error and time."""
    detections: dict[tuple, tuple] = {}  # (front end, image id) -> (detections, ms)

    def detect(pipeline: Pipeline, image: np.ndarray):
        key = (pipeline.front_end, id(image))
        if key not in detections:
            found, elapsed = timed(registrars[pipeline.name].detect, [image])
            detections[key] = (found[0], elapsed)
        return detections[key]

    entries = []
    for category in CATEGORIES:
        records = {(p.name, m): {"errors": [], "times": []} for p in chosen for m in models}
        for case in cases[category]:
            matched: dict[tuple, tuple] = {}
            for pipeline in chosen:
                registrar = registrars[pipeline.name]
                fixed, fixed_ms = detect(pipeline, case.fixed)
                moving, moving_ms = detect(pipeline, case.moving)
                if pipeline.matching not in matched:
                    matched[pipeline.matching] = timed(registrar.match, fixed, moving)
                matches, match_ms = matched[pipeline.matching]
                for model in models:
                    result, fit_ms = timed(registrar.fit, fixed, moving, matches, model)
                    record = records[(pipeline.name, model)]
                    record["errors"].append(mean_fov_error(result, case))
                    record["times"].append(fixed_ms + moving_ms + match_ms + fit_ms)
            # Moving images are used once: keep only the fixed images' detections.
            for key in [k for k in detections if k[1] == id(case.moving)]:
                del detections[key]
        for (name, model), record in records.items():
            entries.append(summarise(name, model, category, record["errors"], record["times"]))
    return entries


def summarise(pipeline: str, model: TransformModel, category: str, errors: list[float],
              times_ms: list[float]) -> dict:
    errors_array = np.asarray(errors, dtype=np.float64)
    accepted = errors_array[np.isfinite(errors_array)]
    return {
        "pipeline": pipeline,
        "transform": TransformModel(model).value,
        "category": category,
        "cases": len(errors),
        "success_rate": float((errors_array < SUCCESS_PX).mean()),
        "median_error_px": float(np.median(accepted)) if accepted.size else None,
        "auc": auc(errors_array),
        "failures": int((~np.isfinite(errors_array)).sum()),
        "accepted_but_wrong": int((np.isfinite(errors_array)
                                   & (errors_array >= SUCCESS_PX)).sum()),
        "median_time_ms": float(np.median(times_ms)),
        "errors_px": [round(float(e), 4) if np.isfinite(e) else None for e in errors_array],
    }


def auc(errors: np.ndarray, limit: float = AUC_MAX_PX) -> float:
    """Area under the cumulative success curve over [0, limit] px, divided by limit.

    The curve is the evaluation protocol's (``protocol.success_rates``); the area is taken over
    continuous thresholds (trapezoids), not over FIRE's integer thresholds as ``protocol.auc``
    does, because the published known-truth figures were measured so.
    """
    thresholds = np.linspace(0.0, limit, _AUC_STEPS + 1)
    curve = success_rates(errors, thresholds)
    return float(np.sum((curve[1:] + curve[:-1]) / 2.0) / _AUC_STEPS)


def evaluate_real_pairs(chosen: list[Pipeline], registrars: dict[str, Registrar],
                        pairs_dir: Path, picture_dir: Path | None) -> dict:
    """Each pair, each pipeline (default transform model): status both ways, consistency, and its picture."""
    report: dict[str, dict] = {}
    for folder in sorted(p for p in pairs_dir.iterdir() if p.is_dir()):
        fixed = read_image(next(folder.glob("fixed.*")))
        moving = read_image(next(folder.glob("moving.*")))
        report[folder.name] = {}
        detections: dict[tuple, tuple] = {}
        for pipeline in chosen:
            registrar = registrars[pipeline.name]
            if pipeline.front_end not in detections:
                detections[pipeline.front_end] = timed(registrar.detect, [fixed, moving])
            (found_fixed, found_moving), detect_ms = detections[pipeline.front_end]
            forward_matches, match_ms = timed(registrar.match, found_fixed, found_moving)
            forward, fit_ms = timed(registrar.fit, found_fixed, found_moving, forward_matches)
            backward = registrar.fit(found_moving, found_fixed,
                                     registrar.match(found_moving, found_fixed))
            entry = {"status": [forward.status, backward.status],
                     "reason": [forward.reason, backward.reason],
                     "inliers": [forward.num_inliers, backward.num_inliers],
                     "matches": [len(forward.matches), len(backward.matches)],
                     "time_ms": round(detect_ms + match_ms + fit_ms, 1)}
            if forward.ok and backward.ok:
                entry["round_trip_px"] = round_trip_error(forward, backward, moving)
            if forward.ok and picture_dir is not None:
                name = f"{folder.name}__{_slug(pipeline.name)}.jpg"
                write_image(picture_dir / name,
                            picture(fixed, registrar.warp(moving, forward)))
                entry["picture"] = f"{picture_dir.name}/{name}"
            report[folder.name][pipeline.name] = entry
    return report


def picture(fixed: np.ndarray, warped: np.ndarray) -> np.ndarray:
    """Blend (left) and checkerboard (right), each PICTURE_SIDE on its longer side."""
    panels = []
    for panel in (blend(fixed, warped), checkerboard(fixed, warped)):
        scale = PICTURE_SIDE / max(panel.shape[:2])
        size = (round(panel.shape[1] * scale), round(panel.shape[0] * scale))
        panels.append(cv2.resize(panel, size, interpolation=cv2.INTER_AREA))
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1)


def _slug(name: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def best_configuration(entries: list[dict]) -> dict:
    """The (pipeline, transform) with the highest mean success over the categories, then AUC."""
    by_config: dict[tuple, dict] = {}
    for entry in entries:
        by_config.setdefault((entry["pipeline"], entry["transform"]), {})[entry["category"]] = entry
    def rank(item):
        per_category = item[1]
        return (np.mean([e["success_rate"] for e in per_category.values()]),
                np.mean([e["auc"] for e in per_category.values()]))
    (pipeline, transform), per_category = max(by_config.items(), key=rank)
    reference_best = [max(levels[i] for levels in REFERENCE_LEVELS.values())
                      for i in range(len(REFERENCE_CATEGORIES))]
    return {
        "pipeline": pipeline, "transform": transform,
        "success_rate": {c: per_category[c]["success_rate"] for c in CATEGORIES},
        "reference_best": dict(zip(REFERENCE_CATEGORIES, reference_best)),
        "beats_reference_in_every_category": all(
            per_category[c]["success_rate"] > ref or per_category[c]["success_rate"] == 1.0
            for c, ref in zip(REFERENCE_CATEGORIES, reference_best)),
    }


def markdown_table(report: dict) -> str:
    header = ("| pipeline | model | " + " | ".join(
        f"{c}: success / median / AUC" for c in CATEGORIES) +
        " | refused (" + "/".join(CATEGORIES) + ") | median time per pair |")
    lines = [header, "|" + "---|" * (len(CATEGORIES) + 4)]
    table: dict[tuple, dict] = {}
    for entry in report["known_truth"]:
        table.setdefault((entry["pipeline"], entry["transform"]), {})[entry["category"]] = entry
    for (pipeline, transform), per_category in table.items():
        cells = []
        for category in CATEGORIES:
            e = per_category[category]
            median = "n/a" if e["median_error_px"] is None else f"{e['median_error_px']:.2f} px"
            cells.append(f"{e['success_rate']:.0%} / {median} / {e['auc']:.3f}")
        refused = "/".join(str(per_category[c]["failures"]) for c in CATEGORIES)
        time_ms = np.median([per_category[c]["median_time_ms"] for c in CATEGORIES])
        lines.append(f"| {pipeline} | {transform} | " + " | ".join(cells) +
                     f" | {refused} | {time_ms:.0f} ms |")
    best = report["best"]
    lines += ["", f"Best configuration: **{best['pipeline']}, {best['transform']}** — success "
              + ", ".join(f"{c} {best['success_rate'][c]:.0%}" for c in CATEGORIES)
              + "; best reference level before issue 7: "
              + ", ".join(f"{c} {best['reference_best'][c]:.0%}" for c in REFERENCE_CATEGORIES)
              + (" (beaten or matched at 100 % in every category)."
                 if best["beats_reference_in_every_category"]
                 else " (not beaten in every category).")]
    return "\n".join(lines) + "\n"


#: RGB colours of the curves, one per pipeline in order.
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def plot_curves(report: dict, transform: str = TransformModel.AFFINE.value) -> np.ndarray:
    """Cumulative success vs threshold (0-10 px) per pipeline, one panel per category (RGB).

    Drawn with OpenCV so that the benchmark needs nothing beyond the runtime's dependencies.
    """
    names = list(report["pipelines"])
    panel_w, panel_h, margin = 420, 300, 44
    legend_h = 18 * len(names) + 10
    canvas = np.full((panel_h + 2 * margin + legend_h, len(CATEGORIES) * (panel_w + margin)
                      + margin, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    thresholds = np.linspace(0.0, AUC_MAX_PX, 201)
    for column, category in enumerate(CATEGORIES):
        left, top = margin + column * (panel_w + margin), margin
        cv2.rectangle(canvas, (left, top), (left + panel_w, top + panel_h), (0, 0, 0), 1)
        cv2.putText(canvas, f"{category} ({transform})", (left, top - 12), font, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
        for tick in range(0, int(AUC_MAX_PX) + 1, 2):
            x = left + round(tick / AUC_MAX_PX * panel_w)
            cv2.line(canvas, (x, top + panel_h), (x, top + panel_h + 4), (0, 0, 0), 1)
            cv2.putText(canvas, str(tick), (x - 4, top + panel_h + 18), font, 0.4, (0, 0, 0), 1,
                        cv2.LINE_AA)
        for share in (0.0, 0.5, 1.0):
            y = top + panel_h - round(share * panel_h)
            cv2.line(canvas, (left, y), (left + panel_w, y), (225, 225, 225), 1)
            cv2.putText(canvas, f"{share:.1f}", (left - 30, y + 4), font, 0.4, (0, 0, 0), 1,
                        cv2.LINE_AA)
        cv2.putText(canvas, "error threshold, px at 1024", (left + panel_w // 2 - 90,
                    top + panel_h + 34), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for index, name in enumerate(names):
            entry = next((e for e in report["known_truth"] if e["pipeline"] == name
                          and e["transform"] == transform and e["category"] == category), None)
            if entry is None:
                continue
            errors = np.array([np.inf if e is None else e for e in entry["errors_px"]])
            curve = success_rates(errors, thresholds)
            points = np.stack([left + thresholds / AUC_MAX_PX * panel_w,
                               top + panel_h - curve * panel_h], axis=1)
            cv2.polylines(canvas, [np.round(points).astype(np.int32)], False,
                          _COLOURS[index % len(_COLOURS)], 2, cv2.LINE_AA)
    for index, name in enumerate(names):
        y = panel_h + 2 * margin + 14 + 18 * index
        colour = _COLOURS[index % len(_COLOURS)]
        cv2.line(canvas, (margin, y - 4), (margin + 30, y - 4), colour, 2, cv2.LINE_AA)
        cv2.putText(canvas, name, (margin + 40, y), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def real_pairs_page(report: dict) -> str:
    lines = ["# Real pairs, every pipeline (default transform model)", "",
             "No ground truth: judge the blend (left) and the checkerboard (right; vessels must "
             "run on across tile edges). Consistency: mean distance a moving field-of-view pixel "
             "travels through A(moving→fixed) then A(fixed→moving), px at 1024 (0 is perfectly "
             "consistent; a wrong but consistent pair of estimates also scores low).",
             f"Written by `python -m benchmarks.accuracy` ({report['command']}).",
             "The pictures land in `real_pairs/` beside this page when the benchmark runs; they "
             "are not committed (git ignores them): the pairs of ../shared/data are for research "
             "use only, and so are pictures made from them.", ""]
    for pair, per_pipeline in report["real_pairs"].items():
        lines += [f"## {pair}", "", "| pipeline | forward / backward | inliers | consistency "
                  "| time |", "|---|---|---|---|---|"]
        for name, entry in per_pipeline.items():
            consistency = (f"{entry['round_trip_px']:.2f} px" if "round_trip_px" in entry
                           else "n/a")
            lines.append(f"| {name} | {' / '.join(entry['status'])} | "
                         f"{entry['inliers'][0]} / {entry['inliers'][1]} | {consistency} | "
                         f"{entry['time_ms']:.0f} ms |")
        lines.append("")
        for name, entry in per_pipeline.items():
            if "picture" in entry:
                lines += [f"**{name}**", "", f"![{pair}, {name}]({entry['picture']})", ""]
            else:
                lines += [f"**{name}**: refused ({entry['reason'][0]})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--per-image", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--superglue", type=Path,
                        help="a SuperGlue graph exported from your checkpoint: adds its pipeline")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-real-pairs", action="store_true")
    parser.add_argument("--size", type=int, help="network input side (default: the engine's)")
    parser.add_argument("--only", action="append", metavar="PIPELINE",
                        help="run only this pipeline (its exact name; repeatable)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    paths = sorted((args.data_dir / "single").rglob("*.jpg")) + \
        sorted((args.data_dir / "single").rglob("*.tif"))
    cases = make_category_cases(paths, args.per_image, args.seed)
    candidates = [p for p in pipelines(args.superglue, size=args.size)
                  if not args.only or p.name in args.only]
    if args.only and len(candidates) != len(set(args.only)):
        unknown = sorted(set(args.only) - {p.name for p in candidates})
        parser.error(f"--only: no pipeline named {unknown}")
    registrars, skipped = build_registrars(candidates)
    chosen = [p for p in candidates if p.name in registrars]
    report = {
        "method": __doc__,
        "command": "python -m benchmarks.accuracy " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv),
        "machine": platform.platform(), "processor": platform.processor(),
        "seed": args.seed, "per_image": args.per_image, "images": len(paths),
        "network_size": list(chosen[0].config.preprocess.size) if chosen else None,
        "success_px": SUCCESS_PX, "auc_max_px": AUC_MAX_PX,
        "categories": {c: {"cases": len(cases[c]),
                           "median_overlap": float(np.median([overlap(k) for k in cases[c]]))}
                       for c in CATEGORIES},
        "pipelines": {p.name: {"features": p.config.features.value,
                               "preprocess": p.config.preprocess.mode.value,
                               "matcher": registrars[p.name].matcher_name,
                               "models": registrars[p.name].models} for p in chosen},
        "skipped_pipelines": skipped,
        "reference_levels": {k: dict(zip(REFERENCE_CATEGORIES, v))
                             for k, v in REFERENCE_LEVELS.items()},
    }
    report["known_truth"] = evaluate_known_truth(chosen, registrars, cases)
    report["best"] = best_configuration(report["known_truth"])
    if not args.no_real_pairs:
        report["real_pairs"] = evaluate_real_pairs(chosen, registrars, args.data_dir / "pairs",
                                                   args.out_dir / "real_pairs")
    report["wall_s"] = time.perf_counter() - started
    out = args.out_dir
    write_bytes_atomic(out / "accuracy.json", (json.dumps(report, indent=2) + "\n").encode())
    table = markdown_table(report)
    write_bytes_atomic(out / "accuracy.md", table.encode())
    write_image(out / "accuracy_curves.png", plot_curves(report))
    if not args.no_real_pairs:
        write_bytes_atomic(out / "real_pairs.md", real_pairs_page(report).encode())
    print(table)
    print(f"wall time {report['wall_s']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
