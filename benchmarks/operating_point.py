"""Operating point by accuracy: INT8 vs float32 SuperPoint, and the network size (issue 16, 2-3).

Only accuracy is measured here; nothing is timed (the lead times the configurations on a quiet
machine). Results do not depend on timing: RANSAC is seeded (``RegistrarConfig.seed``) and
stops on counts, and onnxruntime runs with a fixed thread count (``--threads``, recorded).

Method.

* Configurations: SuperPoint precision (``VARIANTS``: fp32; int8; int8-u8u8, the INT8 graph
  with onnxruntime's ``session.x64quantprecision`` on, see below) x square network input
  (``SIZES``: 768, 896, 1024, 1280), everything else the engine's default (``RegistrarConfig()``:
  CLAHE on green, LightGlue, transform ``auto``, masks on, RANSAC seed 0). The reference is
  the default, fp32 at ``PreprocessConfig().size``. One more configuration keeps each pair's
  aspect: fp32, the default's longer side, the shorter side from the FIXED image's aspect
  (rounded to a multiple of 8; the runtime gives both images of a pair one network size, so the
  moving image takes the fixed one's); it runs on the real pairs only (the known-truth sources
  are square or nearly: DRIVE's 565 x 584 would become 992 x 1024). One Registrar per
  configuration (per network size for the aspect one), models loaded once.
* Why int8-u8u8: on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) onnxruntime multiplies
  u8 activations by s8 weights with VPMADDUBSW, whose 16-bit pair sums saturate; VNNI CPUs
  accumulate in 32 bits. The same INT8 graph therefore computes differently on the two: on
  this AVX2-only machine 0.78 / 0.86 / 0.87 of the float keypoints of DRIVE 31-33 are kept
  (471 / 380 / 414 INT8 keypoints), where the AVX-512 VNNI machine of ``results/int8.json``
  kept 0.88 / 0.91 / 0.91 (417 / 368 / 398). ``session.x64quantprecision`` = 1 makes
  onnxruntime use u8u8 kernels where the CPU has no VNNI (onnxruntime PR 12088); with it this
  machine gives exactly the VNNI machine's figures (0.881 / 0.910 / 0.909, 417 / 368 / 398
  keypoints). So int8 here is the shipped INT8 on a CPU without VNNI, int8-u8u8 what a VNNI
  CPU computes (and the runtime would compute everywhere with that option set); on a VNNI
  CPU the two are one. The option is set by the benchmark (``u8u8_sessions``), not by the
  runtime, and its speed is not measured here.
* Real pairs: the four dev pairs and their control points (``benchmarks/real_pairs``), scored
  as ``real_pairs_precision.py`` scores them: its ``load_points`` (pair names, scale to 1024),
  the same pairs (``read_pairs``) through the same registration and scoring as ``ophreg
  evaluate points`` (``Registrar.register``'s steps detect, match, fit; then the control
  points' ``errors`` and ``protocol.score``; the test checks the numbers equal the command's),
  mean / median / max distance in the fixed image's native px and x 1024 / its longer side.
  A refusal is an infinite error. Seed spread: the same matches are also fitted with RANSAC
  seeds 1-9 (``--real-pair-seeds``), because one registration of one pair moves by a few
  tenths of a px with the seed alone; it was added after the first sweep had shown the
  real-pair errors moving unevenly with the size, and its verdict is reported beside the
  primary one, not instead of it (the primary verdict uses the engine's seed, 0).
  Sensitivity (added at the same time, for the same reason): fp32 at the reference size
  +- ``--jitter`` px (8: 1016 and 1032), both benchmarks, judged like every configuration but
  never offered as a candidate: a change of input that should change nothing shows how far
  the measures move by themselves.
* Known truth (``known_truth.py``, all its CATEGORIES: small, large, angio, curved): the pool
  is ``accuracy.py``'s case set (``make_category_cases`` on ``data/dev/single`` in its order,
  ``--per-image`` 2, ``--seed`` 0) without the INT8 graph's calibration images (DRIVE 21-30,
  ``int8.CALIBRATION``), so INT8 is judged on held-out images only: DRIVE 31-40 and the CC0
  retina, 22 cases a category. Those DRIVE images are 565 x 584 px, below every size of the
  sweep, so on them a larger network input only upsamples; the pool therefore adds the fixed
  images of the real pairs that are larger than the largest size (toolbox_example,
  toolbox_fundus, cf_fa_demo; 1824-2180 px), one case each per category, each source from its
  own generator (seeded ``--seed`` + 1 + its index, so their warps are not the held-out pool's
  first draws). ``--cases N`` (default CASES_PER_CATEGORY, 20) keeps every high-resolution case
  and draws the rest of N from the held-out pool (seeded, without replacement); every
  configuration registers the same cases. Error: mean field-of-view error at 1024
  (``mean_fov_error``); success below ``SUCCESS_PX`` (5 px); a refusal is an infinite error.
  Per category: successes, median and 90th percentile (nearest rank) of every case's error
  (refusals included as infinite), refusals; also split by the source's native resolution
  (below the smallest size: upsampled at every size; above the largest: downsampled).
* Context: keypoints per image after the masks (what the matcher sees), matches, inliers and
  the model ``auto`` chose, per real pair and (medians, counts) per category.

Margins (``Margins``), fixed before the first sweep and not tuned on its results. A candidate
HOLDS against a reference when
  - every real pair is registered and its mean control-point error is at most the reference's
    + max(0.10 px, 10 % of the reference's);
  - in every known-truth category it has at most one success fewer, a median error at most
    0.10 px larger, and a 90th percentile at most max(0.25 px, 25 %) larger.
It is BETTER beyond the margin on a measure when the mirror-image test passes the other way.
Verdicts: INT8 against fp32 at each size (the lever of part 2, the headline at 1024); each
fp32 size and the aspect-kept one against the reference (part 3); every configuration against
the reference, and among those that hold, the ones no other holding configuration undercuts
in both precision (int8 < fp32) and pixel count: without timing no finer cost order is claimed.

Run: ``.venv/bin/python -m benchmarks.operating_point`` (``--resume`` continues a stopped run:
the JSON is rewritten after every configuration). Writes ``results/operating_point.json`` and
``.md`` and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import onnxruntime

from benchmarks.harness import cpu_flags
from benchmarks.int8 import CALIBRATION, DATA as SINGLE_DIR
from benchmarks.known_truth import CATEGORIES, SUCCESS_PX, Case, make_category_cases, \
    mean_fov_error
from benchmarks.real_pairs_precision import CONTROL_POINTS, load_points
from ophreg_rt import Registrar, RegistrarConfig
from ophreg_rt.config import NETWORK_SIDE_RANGE, Precision, PreprocessConfig, QuadraticConfig
from ophreg_rt.evaluation import protocol, runner
from ophreg_rt.evaluation.control_points import read_pairs
from ophreg_rt.imageio import read_image, write_bytes_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SIZES = (768, 896, 1024, 1280)
#: Precision variants: the runtime's Precision values, and int8 with u8u8 kernels on CPUs
#: without VNNI (module docstring).
U8U8 = "int8-u8u8"
VARIANTS = (Precision.FP32.value, Precision.INT8.value, U8U8)
#: onnxruntime's session option that replaces u8s8 by u8u8 products on x86 without VNNI.
X64_QUANT_PRECISION = "session.x64quantprecision"
REFERENCE_PRECISION = RegistrarConfig().precision
REFERENCE_SIZE = PreprocessConfig().size
#: Known-truth cases per category: a full sweep (9 configurations) costs about 20 s of CPU per
#: case on the 2-core development machine, so 20 a category keeps it near 30-40 min of CPU; one
#: case is then 5 points of success rate.
CASES_PER_CATEGORY = 20
#: RANSAC seeds of the real pairs' seed spread (0, the engine's default, is the reported one).
REAL_PAIR_SEEDS = 10
#: Nearest-rank percentile reported beside the median.
TAIL_PERCENTILE = 90
#: Native longer side above which a known-truth source counts as downsampled at every size.
HIGH_RES_ABOVE = max(SIZES)


@dataclass(frozen=True)
class Margins:
    """How far a candidate may fall behind its reference and still hold (module docstring)."""

    real_mean_px: float = 0.10
    real_mean_share: float = 0.10
    success_cases: int = 1
    median_px: float = 0.10
    tail_px: float = 0.25
    tail_share: float = 0.25


@dataclass(frozen=True)
class Configuration:
    precision: Precision
    #: (width, height) of the network input; None: the aspect of each pair's fixed image with
    #: the longer side ``aspect_side``.
    size: tuple[int, int] | None
    aspect_side: int | None = None
    u8u8: bool = False  # X64_QUANT_PRECISION on (INT8 only)
    #: A sensitivity check (never a candidate): module docstring.
    sensitivity: bool = False

    @property
    def variant(self) -> str:
        return U8U8 if self.u8u8 else self.precision.value

    @property
    def label(self) -> str:
        if self.size is None:
            return f"{self.variant} {self.aspect_side} aspect kept"
        label = f"{self.variant} {self.size[0]}x{self.size[1]}"
        return label + " (sensitivity)" if self.sensitivity else label

    @property
    def known_truth(self) -> bool:
        return self.size is not None

    def network_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        width, height = image_size
        longer = max(width, height)
        shorter = max(NETWORK_SIDE_RANGE[0],
                      8 * round(self.aspect_side * min(width, height) / longer / 8))
        return (self.aspect_side, shorter) if width >= height else (shorter, self.aspect_side)

    def pixels(self) -> int:
        side = self.size or (self.aspect_side, self.aspect_side)
        return side[0] * side[1]


def configurations(sizes: list[int], variants: list[str], aspect: bool,
                   jitter: int = 0) -> list[Configuration]:
    found = [Configuration(Precision.INT8 if v == U8U8 else Precision(v), (s, s),
                           u8u8=v == U8U8) for v in variants for s in sizes]
    if aspect:
        found.append(Configuration(REFERENCE_PRECISION, None, max(REFERENCE_SIZE)))
    for step in (-jitter, jitter) if jitter else ():
        side = (REFERENCE_SIZE[0] + step, REFERENCE_SIZE[1] + step)
        found.append(Configuration(REFERENCE_PRECISION, side, sensitivity=True))
    return found


def reference_label() -> str:
    return Configuration(REFERENCE_PRECISION, REFERENCE_SIZE).label


@contextmanager
def u8u8_sessions():
    """Every onnxruntime session made inside gets X64_QUANT_PRECISION = 1, on top of the
    options the runtime sets itself (it has no switch for it)."""
    original = onnxruntime.SessionOptions

    def with_u8u8():
        options = original()
        options.add_session_config_entry(X64_QUANT_PRECISION, "1")
        return options

    onnxruntime.SessionOptions = with_u8u8
    try:
        yield
    finally:
        onnxruntime.SessionOptions = original


class Registrars:
    """One Registrar per network size of a configuration, made on first use."""

    def __init__(self, configuration: Configuration, threads: int | None):
        self.configuration, self.threads = configuration, threads
        self._made: dict[tuple[int, int], Registrar] = {}

    def for_image(self, image_size: tuple[int, int]) -> Registrar:
        size = self.configuration.network_size(image_size)
        if size not in self._made:
            base = RegistrarConfig()
            config = replace(base, precision=self.configuration.precision, threads=self.threads,
                             preprocess=replace(base.preprocess, size=size))
            if self.configuration.u8u8:
                with u8u8_sessions():
                    self._made[size] = Registrar(config)
            else:
                self._made[size] = Registrar(config)
        return self._made[size]

    @property
    def models(self) -> dict:
        return next(iter(self._made.values())).models if self._made else {}


# ---------------------------------------------------------------------------------- real pairs

def real_pairs(csv_path: Path) -> tuple[dict[str, dict], list[tuple[str, runner.Pair]]]:
    """``load_points``'s entries and the pairs ``ophreg evaluate points`` reads, by pair name."""
    points = load_points(csv_path)
    by_key = {entry["key"]: name for name, entry in points.items()}
    pairs, _ = read_pairs(csv_path)
    return points, [(by_key[(p.details["src"], p.details["tgt"])], p) for p in pairs]


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def with_seed(registrar: Registrar, seed: int) -> Registrar:
    """The registrar with another RANSAC seed, sharing its loaded sessions (``fit`` only reads
    the config; detection and matching do not depend on the seed)."""
    clone = copy.copy(registrar)
    clone.config = replace(registrar.config, seed=seed)
    return clone


def auto_ratio(result) -> float | None:
    """``auto``'s evidence: the quadratic's leave-one-out RMS over the affine's (it keeps the
    quadratic below QuadraticConfig.auto_gain); None when no quadratic was grown."""
    loo = (result.model_selection or {}).get("loo_rms_px") or {}
    if not loo.get("affine") or loo.get("quadratic") is None:
        return None
    return round(loo["quadratic"] / loo["affine"], 4)


def score_real_pairs(registrars: Registrars, points: dict[str, dict],
                     pairs: list[tuple[str, runner.Pair]], seeds: int) -> dict[str, dict]:
    """Per pair: ``Registrar.register``'s three steps (detect, match, fit) and ``ophreg evaluate
    points``' scoring (the control points' ``errors``, ``protocol.score``) with the config's
    seed; then the same matches refitted with RANSAC seeds 1 .. seeds - 1 (``seed_spread``)."""
    records = {}
    for name, pair in pairs:
        registrar = registrars.for_image(tuple(points[name]["fixed_size"]))
        images = [read_image(path, str(path), registrar.config.max_pixels)
                  for path in (pair.fixed, pair.moving)]
        fixed, moving = registrar.detect(images)
        matches = registrar.match(fixed, moving)
        default_seed = registrar.config.seed
        spread, chosen = [], []
        for seed in [default_seed] + [s for s in range(seeds) if s != default_seed]:
            result = with_seed(registrar, seed).fit(fixed, moving, matches)
            score = protocol.score(pair.truth.errors(result.map_points, result.moving_size)
                                   if result.ok else None)
            if seed == default_seed:
                main_result, main_score = result, score
            spread.append(_finite(score.mean_error * points[name]["scale"]))
            chosen.append(result.transform.value if result.ok else None)
        result, score, scale = main_result, main_score, points[name]["scale"]
        native = {"mean": score.mean_error, "median": score.median_error,
                  "max": score.max_error}
        records[name] = {
            "status": result.status, "reason": result.reason,
            "transform": result.transform.value,
            "network_size": list(registrar.config.preprocess.size),
            "native_px": {k: _finite(v) for k, v in native.items()},
            "px_1024": {k: _finite(v * scale) for k, v in native.items()},
            "num_keypoints": [len(result.keypoints_fixed), len(result.keypoints_moving)],
            "num_matches": len(result.matches), "num_inliers": result.num_inliers,
            "auto_ratio": auto_ratio(result),
            # The config's seed first, then the others in order.
            "seed_spread": {"mean_px_1024": spread, "transform": chosen},
        }
    return records


# --------------------------------------------------------------------------------- known truth

def accuracy_image_order(single_dir: Path) -> list[Path]:
    """The images in ``accuracy.py``'s order, so that a seed gives its cases."""
    return sorted(single_dir.rglob("*.jpg")) + sorted(single_dir.rglob("*.tif"))


def known_truth_pool(single_dir: Path, high_res: list[Path], per_image: int, seed: int
                     ) -> tuple[dict[str, list[Case]], dict[str, list[Case]]]:
    """accuracy.py's cases without the INT8 calibration images, and one case per category of
    each high-resolution source (named ``<its folder>/<stem>#...``: the pairs' files share a
    stem)."""
    calibration = {path.stem for path in CALIBRATION}
    pool = make_category_cases(accuracy_image_order(single_dir), per_image, seed)
    held_out = {c: [case for case in cases if case.name.split("#")[0] not in calibration]
                for c, cases in pool.items()}
    extra = {c: [] for c in CATEGORIES}
    for path in high_res:
        # One call per source, each with its own seed, so that one source more or less does
        # not change the others' warps.
        made = make_category_cases([path], 1, seed + 1 + high_res.index(path))
        for category in CATEGORIES:
            extra[category] += [replace(case, name=f"{path.parent.name}/{case.name}")
                                for case in made[category]]
    return held_out, extra


def draw_cases(held_out: dict[str, list[Case]], high_res: dict[str, list[Case]],
               per_category: int | None, seed: int) -> dict[str, list[Case]]:
    """Every high-resolution case, and enough held-out cases (a seeded draw without
    replacement, kept in pool order) for ``per_category`` a category; all when None."""
    drawn = {}
    for index, category in enumerate(CATEGORIES):
        cases = held_out[category]
        wanted = None if per_category is None else max(0, per_category - len(high_res[category]))
        if wanted is not None and wanted < len(cases):
            rng = np.random.default_rng([seed, index, wanted])
            keep = np.sort(rng.choice(len(cases), size=wanted, replace=False))
            cases = [cases[i] for i in keep]
        drawn[category] = list(cases) + list(high_res[category])
    return drawn


def score_known_truth(registrars: Registrars, cases: dict[str, list[Case]]) -> dict[str, list]:
    """Per category, one record per case. Each fixed image is detected once per configuration."""
    fixed_detections: dict[int, object] = {}
    records: dict[str, list] = {}
    for category in CATEGORIES:
        records[category] = []
        for case in cases[category]:
            size = (case.fixed.shape[1], case.fixed.shape[0])
            registrar = registrars.for_image(size)
            if id(case.fixed) not in fixed_detections:
                fixed_detections[id(case.fixed)] = registrar.detect([case.fixed])[0]
            fixed = fixed_detections[id(case.fixed)]
            moving = registrar.detect([case.moving])[0]
            result = registrar.fit(fixed, moving, registrar.match(fixed, moving))
            records[category].append({
                "case": case.name, "native_side": max(case.fixed.shape[:2]),
                "error_px": _finite(mean_fov_error(result, case)),
                "status": result.status, "transform": result.transform.value,
                "num_keypoints": [len(fixed), len(moving)],
                "num_matches": len(result.matches), "num_inliers": result.num_inliers,
            })
    return records


def nearest_rank(values: list[float], percentile: float) -> float:
    """The nearest-rank percentile: defined when some values are infinite (refusals)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percentile / 100 * len(ordered)) - 1)]


def _errors(records: list[dict]) -> list[float]:
    return [math.inf if r["error_px"] is None else r["error_px"] for r in records]


def summarise_category(records: list[dict]) -> dict:
    errors = _errors(records)
    if not errors:
        return {"cases": 0}
    return {
        "cases": len(errors),
        "successes": sum(e < SUCCESS_PX for e in errors),
        "success_rate": sum(e < SUCCESS_PX for e in errors) / len(errors),
        "median_px": _finite(float(np.median(errors))),
        f"p{TAIL_PERCENTILE}_px": _finite(nearest_rank(errors, TAIL_PERCENTILE)),
        "worst_px": _finite(max(errors)),
        "refused": sum(r["status"] != "ok" for r in records),
        "quadratic_chosen": sum(r["transform"] == "quadratic" for r in records),
        "median_keypoints_moving": float(np.median([r["num_keypoints"][1] for r in records])),
        "median_inliers": float(np.median([r["num_inliers"] for r in records])),
    }


def summarise_known_truth(records: dict[str, list]) -> dict:
    summary = {}
    for category, category_records in records.items():
        summary[category] = summarise_category(category_records)
        summary[category]["by_source"] = {
            "upsampled (native below every size)": summarise_category(
                [r for r in category_records if r["native_side"] < min(SIZES)]),
            f"downsampled (native above {HIGH_RES_ABOVE} px)": summarise_category(
                [r for r in category_records if r["native_side"] > HIGH_RES_ABOVE]),
        }
    return summary


# ------------------------------------------------------------------------------------ verdicts

def _value(value: float | None) -> float:
    return math.inf if value is None else value


def _judge(name: str, candidate: float, reference: float, slack: float, unit: str,
           failures: list[str], gains: list[str], higher_is_better: bool = False) -> None:
    """Appends to failures when candidate is worse than reference by more than slack, to gains
    when it is better by more than slack; an infinite error (a refusal) is beaten by any
    finite one and beats none."""
    def show(v: float) -> str:
        return "refused" if math.isinf(v) else f"{v:.2f}{unit}" if unit else f"{v:g}"

    worse_by = reference - candidate if higher_is_better else candidate - reference
    if math.isinf(reference) or math.isinf(candidate):
        if math.isinf(reference) and math.isfinite(candidate):
            gains.append(f"{name}: {show(candidate)} where the reference is refused")
        elif math.isfinite(reference) and math.isinf(candidate):
            failures.append(f"{name}: refused where the reference has {show(reference)}")
        return
    if unit:
        text = (f"{name}: {show(candidate)} vs {show(reference)} "
                f"({candidate - reference:+.3f}{unit}; margin {slack:.3f}{unit})")
    else:
        text = (f"{name}: {show(candidate)} vs {show(reference)} "
                f"({candidate - reference:+g}; margin {slack:g})")
    if worse_by > slack:
        failures.append(text)
    elif worse_by < -slack:
        gains.append(text)


def real_pair_error(record: dict, statistic: str) -> float:
    """A pair's mean error (px at 1024, infinite when refused): with the engine's seed
    (``seed0``), or the median over the seed spread (``seed_median``)."""
    if statistic == SEED_MEDIAN:
        return float(np.median([_value(v) for v in record["seed_spread"]["mean_px_1024"]]))
    return _value(record["px_1024"]["mean"])


SEED0, SEED_MEDIAN = "seed0", "seed_median"


def compare(candidate: dict, reference: dict, margins: Margins, statistic: str = SEED0) -> dict:
    """Does ``candidate`` hold against ``reference`` (entries of the report's ``runs``)?"""
    failures: list[str] = []
    gains: list[str] = []
    for pair, ref in reference["real_pairs"].items():
        r = real_pair_error(ref, statistic)
        c = real_pair_error(candidate["real_pairs"][pair], statistic)
        slack = max(margins.real_mean_px, margins.real_mean_share * r) if math.isfinite(r) else 0
        name = f"{pair} mean" + (" (median over seeds)" if statistic == SEED_MEDIAN else "")
        _judge(name, c, r, round(slack, 4), " px", failures, gains)
    compared = "real pairs"
    if candidate.get("known_truth") and reference.get("known_truth"):
        compared += " and known truth"
        tail = f"p{TAIL_PERCENTILE}_px"
        for category, ref in reference["known_truth"].items():
            mine = candidate["known_truth"][category]
            _judge(f"{category} successes", mine["successes"], ref["successes"],
                   margins.success_cases, "", failures, gains, higher_is_better=True)
            _judge(f"{category} median", _value(mine["median_px"]), _value(ref["median_px"]),
                   margins.median_px, " px", failures, gains)
            r = _value(ref[tail])
            slack = max(margins.tail_px, margins.tail_share * r) if math.isfinite(r) else 0
            _judge(f"{category} p{TAIL_PERCENTILE}", _value(mine[tail]), r, round(slack, 4),
                   " px", failures, gains)
    return {"candidate": candidate["label"], "reference": reference["label"],
            "compared": compared, "real_pair_statistic": statistic, "holds": not failures,
            "failures": failures, "better": gains}


def _cheaper_or_equal(a: Configuration, b: Configuration) -> bool:
    """INT8 (either kernel choice) counts as cheaper than fp32; nothing finer is claimed."""
    cheaper_precision = a.precision is b.precision or a.precision is Precision.INT8
    return cheaper_precision and a.pixels() <= b.pixels()


def verdicts(runs: dict[str, dict], chosen: list[Configuration], margins: Margins) -> dict:
    ref_label = reference_label()
    if ref_label not in runs:
        return {"note": f"no verdicts: the reference {ref_label} did not run"}
    reference = runs[ref_label]
    by_label = {c.label: c for c in chosen if c.label in runs}
    out: dict = {"reference": ref_label, "margins": asdict(margins)}
    out["int8_vs_fp32_same_size"] = {}
    for config in by_label.values():
        if config.precision is Precision.INT8 and config.size is not None:
            twin = Configuration(Precision.FP32, config.size).label
            if twin in runs:
                out["int8_vs_fp32_same_size"][config.label] = compare(runs[config.label],
                                                                      runs[twin], margins)
    out["vs_reference"] = {label: compare(runs[label], reference, margins)
                           for label in by_label if label != ref_label}
    # Added after the first sweep (module docstring): the same margins on the real pairs'
    # median over RANSAC seeds; reported beside the primary verdicts, never instead of them.
    if all("seed_spread" in p for run in runs.values() for p in run["real_pairs"].values()):
        out["seed_median"] = {
            "int8_vs_fp32_same_size": {
                label: compare(runs[label], runs[v["reference"]], margins, SEED_MEDIAN)
                for label, v in out["int8_vs_fp32_same_size"].items()},
            "vs_reference": {label: compare(runs[label], reference, margins, SEED_MEDIAN)
                             for label in out["vs_reference"]}}
    holding = [by_label[label] for label, v in out["vs_reference"].items()
               if v["holds"] and not by_label[label].sensitivity]
    holding.append(by_label[ref_label])
    out["undominated_holding"] = [
        c.label for c in holding
        if not any(o is not c and _cheaper_or_equal(o, c) and not _cheaper_or_equal(c, o)
                   for o in holding)]
    out["most_accurate"] = sorted(
        (label for label, config in by_label.items()
         if runs[label].get("known_truth") and not config.sensitivity),
        key=lambda label: (-sum(s["successes"] for s in runs[label]["known_truth"].values()),
                           float(np.mean([_value(p["px_1024"]["mean"])
                                          for p in runs[label]["real_pairs"].values()]))))[:3]
    return out


# ------------------------------------------------------------------------------------- report

def _px(value: float | None) -> str:
    return "refused" if value is None else f"{value:.2f}"


def markdown(document: dict) -> str:
    runs = document["runs"]
    labels = [label for label in document["configurations"] if label in runs]
    pairs = list(document["real_pairs"]["pairs"])
    tail = f"p{TAIL_PERCENTILE}_px"
    margins = Margins(**document["margins"])
    lines = [
        "# Operating point: INT8 vs float32 and the network size, by accuracy", "",
        f"Written by `{document['command']}` on {document['machine']} "
        f"({document['cpu_count']} CPUs, flags {', '.join(document['cpu_flags']) or 'n/a'}), "
        f"onnxruntime {document['versions']['onnxruntime']}, {document['threads']} threads. "
        "Nothing here is timed. Method: the docstring of `benchmarks/operating_point.py`.",
        "", "## Margins (fixed before the first run)", "",
        f"A candidate holds against its reference when every real pair is registered with a "
        f"mean control-point error at most max({margins.real_mean_px:.2f} px, "
        f"{100 * margins.real_mean_share:.0f} %) above the reference's, and in every "
        f"known-truth category it has at most {margins.success_cases} success fewer, a median "
        f"error at most {margins.median_px:.2f} px larger and a {TAIL_PERCENTILE}th percentile "
        f"at most max({margins.tail_px:.2f} px, {100 * margins.tail_share:.0f} %) larger. "
        "Better beyond the margin: the same tests the other way.", "",
        "## Real pairs: mean / median / max control-point error, px at 1024", "",
        "Points per pair: " + ", ".join(f"{n} {document['real_pairs']['pairs'][n]['points']}"
                                        for n in pairs) + ". `[q]`: `auto` chose the quadratic,"
        " `[a]` the affine.", "",
        "| configuration | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
    for label in labels:
        cells = []
        for name in pairs:
            record = runs[label]["real_pairs"][name]
            if record["status"] != "ok":
                cells.append(f"refused ({record['reason']})")
                continue
            at = record["px_1024"]
            cells.append(f"{_px(at['mean'])} / {_px(at['median'])} / {_px(at['max'])} "
                         f"[{record['transform'][0]}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Context: keypoints fixed / moving after the masks, matches, inliers, `auto`'s "
              "quadratic / affine leave-one-out ratio (the quadratic is kept below "
              f"{QuadraticConfig().auto_gain:g}; network input in brackets when the aspect is "
              "kept).", "",
              "| configuration | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
    for label in labels:
        cells = []
        for name in pairs:
            r = runs[label]["real_pairs"][name]
            width, height = r["network_size"]
            size = "" if runs[label]["square"] else f" [{width}x{height}]"
            ratio = "" if r.get("auto_ratio") is None else f", r {r['auto_ratio']:.2f}"
            cells.append(f"{r['num_keypoints'][0]} / {r['num_keypoints'][1]}, {r['num_matches']},"
                         f" {r['num_inliers']}{ratio}{size}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if labels and all("seed_spread" in r for r in runs[labels[0]]["real_pairs"].values()):
        seeds = len(next(iter(runs[labels[0]]["real_pairs"].values()))["seed_spread"]
                    ["mean_px_1024"])
        lines += ["", f"Seed spread: the same matches refitted with RANSAC seeds 0-{seeds - 1}: "
                  "median (min - max) of the mean error, px at 1024, and how many seeds "
                  "registered / chose the quadratic.", "",
                  "| configuration | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
        for label in labels:
            cells = []
            for name in pairs:
                spread = runs[label]["real_pairs"][name]["seed_spread"]
                values = [_value(v) for v in spread["mean_px_1024"]]
                finite = [v for v in values if math.isfinite(v)]
                median = float(np.median(values))
                cells.append(
                    (f"{_px(_finite(median))} ({min(finite):.2f} - {max(finite):.2f})"
                     if finite else "refused")
                    + f", {len(finite)}/{len(values)}, "
                    f"{sum(t == 'quadratic' for t in spread['transform'])}q")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    kt = document["known_truth"]
    lines += ["", "## Known truth: successes (< 5 px), median / "
              f"{TAIL_PERCENTILE}th percentile error, px at 1024", "",
              f"{kt['cases_per_category']} cases per category (one case = "
              f"{100 / kt['cases_per_category']:.1f} points of success rate); sources: "
              + ", ".join(kt["sources"]) + ". Percentiles over every case, a refusal counting "
              "as infinite.", "",
              "| configuration | " + " | ".join(CATEGORIES) + " |",
              "|---|" + "---|" * len(CATEGORIES)]
    for label in labels:
        if not runs[label].get("known_truth"):
            continue
        cells = []
        for category in CATEGORIES:
            s = runs[label]["known_truth"][category]
            cells.append(f"{s['successes']}/{s['cases']} ({_px(s['median_px'])} / "
                         f"{_px(s[tail])})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Context per category: refused, `auto` chose the quadratic, median keypoints "
              "of the moving image, median inliers.", "",
              "| configuration | " + " | ".join(CATEGORIES) + " |",
              "|---|" + "---|" * len(CATEGORIES)]
    for label in labels:
        if not runs[label].get("known_truth"):
            continue
        cells = [f"{s['refused']}, {s['quadratic_chosen']}, {s['median_keypoints_moving']:.0f},"
                 f" {s['median_inliers']:.0f}"
                 for s in (runs[label]["known_truth"][c] for c in CATEGORIES)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    groups = list(next(iter(runs[labels[0]]["known_truth"].values()))["by_source"]) \
        if labels and runs[labels[0]].get("known_truth") else []
    for group in groups:
        lines += ["", f"By source, {group}: successes (median / {TAIL_PERCENTILE}th "
                  "percentile).", "",
                  "| configuration | " + " | ".join(CATEGORIES) + " |",
                  "|---|" + "---|" * len(CATEGORIES)]
        for label in labels:
            if not runs[label].get("known_truth"):
                continue
            cells = []
            for category in CATEGORIES:
                s = runs[label]["known_truth"][category]["by_source"][group]
                cells.append("-" if not s["cases"] else
                             f"{s['successes']}/{s['cases']} ({_px(s['median_px'])} / "
                             f"{_px(s[tail])})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Verdicts (computed from the numbers above against the margins)", ""]
    verdict = document.get("verdicts", {})
    if "note" in verdict or not verdict:
        lines.append(verdict.get("note", "not computed"))
        return "\n".join(lines) + "\n"

    def describe(v: dict) -> list[str]:
        head = (f"- **{v['candidate']}** vs {v['reference']} ({v['compared']}): "
                + ("**holds**" if v["holds"] else "**fails**"))
        out = [head]
        out += [f"  - worse beyond the margin: {t}" for t in v["failures"]]
        out += [f"  - better beyond the margin: {t}" for t in v["better"]]
        return out

    lines += ["INT8 against float32 at the same size:", ""]
    for v in verdict["int8_vs_fp32_same_size"].values():
        lines += describe(v)
    lines += ["", f"Every configuration against the reference ({verdict['reference']}):", ""]
    for v in verdict["vs_reference"].values():
        lines += describe(v)
    if "seed_median" in verdict:
        lines += ["", "Added after the first sweep (not a replacement for the verdicts above): "
                  "the same margins with each real pair's median over the RANSAC seeds in "
                  "place of seed 0; known truth as above.", ""]
        for group in ("int8_vs_fp32_same_size", "vs_reference"):
            for v in verdict["seed_median"][group].values():
                lines += describe(v)
    lines += ["", "Holding configurations that no other holding one undercuts in both precision"
              " and pixel count (the candidates to time): "
              + ", ".join(verdict["undominated_holding"]) + ".",
              "Most accurate (known-truth successes, then the real pairs' mean error): "
              + ", ".join(verdict["most_accurate"]) + "."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- main

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def high_res_sources(points: dict[str, dict]) -> list[Path]:
    return [entry["fixed"] for entry in points.values()
            if max(entry["fixed_size"]) > HIGH_RES_ABOVE]


def _write(document: dict, out: Path) -> None:
    write_bytes_atomic(out, (json.dumps(document, indent=2, allow_nan=False) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--precisions", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--no-aspect", dest="aspect", action="store_false",
                        help="leave out the aspect-kept configuration")
    parser.add_argument("--jitter", type=int, default=8,
                        help="sensitivity check: fp32 at the reference size +- this many px "
                             "(multiple of 8; 0: none; default %(default)s)")
    parser.add_argument("--cases", type=int, default=CASES_PER_CATEGORY,
                        help="known-truth cases per category (default: %(default)s; 0: the "
                             "whole pool)")
    parser.add_argument("--per-image", type=int, default=2,
                        help="cases per held-out image and category in the pool (accuracy.py's)")
    parser.add_argument("--seed", type=int, default=0, help="known-truth cases' seed")
    parser.add_argument("--real-pair-seeds", type=int, default=REAL_PAIR_SEEDS,
                        help="RANSAC seeds 0 .. N-1 refitted on each real pair's matches "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2,
                        help="onnxruntime intra-op threads (recorded; not an accuracy lever)")
    parser.add_argument("--single-dir", type=Path, default=SINGLE_DIR,
                        help="known-truth source images (default: %(default)s)")
    parser.add_argument("--no-high-res", dest="high_res", action="store_false",
                        help="leave the real pairs' large fixed images out of the pool")
    parser.add_argument("--csv", type=Path, default=CONTROL_POINTS,
                        help="control points of the real pairs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "operating_point.json")
    parser.add_argument("--resume", action="store_true",
                        help="keep the configurations --out already holds for the same cases")
    args = parser.parse_args(argv)
    if args.real_pair_seeds < 1:
        parser.error("--real-pair-seeds: at least 1 (seed 0, the engine's)")

    if args.jitter % 8:
        parser.error(f"--jitter {args.jitter}: network sides are multiples of 8")
    chosen = configurations(args.sizes, args.precisions, args.aspect, args.jitter)
    points, pairs = real_pairs(args.csv)
    sources = high_res_sources(points) if args.high_res else []
    cases = draw_cases(*known_truth_pool(args.single_dir, sources, args.per_image, args.seed),
                       args.cases or None, args.seed)
    if not all(cases.values()):
        raise SystemExit(f"{args.single_dir}: no known-truth source images (*.jpg, *.tif) "
                         "and no high-resolution pair")
    counts = {len(v) for v in cases.values()}
    case_names = {c: [case.name for case in v] for c, v in cases.items()}
    # A resumed run may only keep configurations that saw the same cases, points and threads.
    fingerprint = hashlib.sha256(
        json.dumps([case_names, _sha256(args.csv), args.threads]).encode()).hexdigest()
    document = {
        "method": __doc__,
        "command": "python -m benchmarks.operating_point "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(), "threads": args.threads,
        "versions": {"onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
                     "numpy": np.__version__},
        "margins": asdict(Margins()),
        "configurations": [c.label for c in chosen],
        "reference": reference_label(),
        "fingerprint": fingerprint,
        "real_pairs": {"csv": os.path.relpath(args.csv.resolve(), RESULTS_DIR.parent.parent),
                       "sha256": _sha256(args.csv),
                       "pairs": {name: {"points": len(entry["src"]),
                                        "fixed_size": entry["fixed_size"]}
                                 for name, entry in points.items()}},
        "known_truth": {"success_px": SUCCESS_PX, "seed": args.seed,
                        "per_image": args.per_image,
                        "cases_per_category": counts.pop() if len(counts) == 1 else None,
                        "sources": sorted({name.split("#")[0] for names in case_names.values()
                                           for name in names}),
                        "high_res_sources": [p.parent.name for p in sources],
                        "cases": case_names},
        "runs": {},
        "complete": False,
    }
    if args.resume and args.out.is_file():
        previous = json.loads(args.out.read_text())
        if previous.get("fingerprint") == fingerprint:
            document["runs"] = {k: v for k, v in previous["runs"].items()
                                if k in document["configurations"]}
            print(f"resuming: {', '.join(document['runs']) or 'nothing'} already done",
                  flush=True)
        else:
            print("not resuming: --out holds other cases", flush=True)
    started = time.perf_counter()
    for config in chosen:
        run = document["runs"].get(config.label)
        # A resumed run keeps each part that is complete for these options.
        pairs_done = run is not None and all(
            len(record.get("seed_spread", {}).get("mean_px_1024", [])) == args.real_pair_seeds
            for record in run["real_pairs"].values())
        truth_done = not config.known_truth or (run is not None and "known_truth" in run)
        if pairs_done and truth_done:
            continue
        registrars = Registrars(config, args.threads)
        if run is None:
            run = {"label": config.label, "precision": config.precision.value,
                   "session_options": {X64_QUANT_PRECISION: "1"} if config.u8u8 else {},
                   "square": config.size is not None, "sensitivity": config.sensitivity}
        if not pairs_done:
            run["real_pairs"] = score_real_pairs(registrars, points, pairs,
                                                 args.real_pair_seeds)
        if not truth_done:
            records = score_known_truth(registrars, cases)
            run["known_truth"] = summarise_known_truth(records)
            run["known_truth_cases"] = records
        run["models"] = registrars.models
        document["runs"][config.label] = run
        _write(document, args.out)
        summary = ", ".join(f"{n} {_px(r['px_1024']['mean'])}"
                            for n, r in run["real_pairs"].items())
        if config.known_truth:
            summary += "; " + ", ".join(f"{c} {s['successes']}/{s['cases']} "
                                        f"{_px(s['median_px'])}"
                                        for c, s in run["known_truth"].items())
        print(f"{config.label}: {summary} ({time.perf_counter() - started:.0f} s)", flush=True)
    document["verdicts"] = verdicts(document["runs"], chosen, Margins())
    document["complete"] = True
    _write(document, args.out)
    text = markdown(document)
    write_bytes_atomic(args.out.with_suffix(".md"), text.encode())
    print(text)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
