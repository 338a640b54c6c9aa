"""Throughput benchmark: pairs per second of ``ophreg batch``, cached vs uncached detections,
1 vs 2 workers, float32 vs INT8, and the single-pair latency of the default, in one run.

Cohort: ``synthetic_cohort.write_method_cohort``, shaped like the method's data: ``--patients``
x two eyes x ``--images-per-eye`` images (default 5: colour and angiogram-like, three visits a
year apart), every eye a distinct retina, written at ``--width`` px and paired by ``ophreg
pairs``'s rules (5 images: 10 pairs an eye, 16 task 2 and 24 task 3 pairs per 2 patients).

Configurations, each in float32 and INT8 (``--precision int8``): uncached with 1 worker (the
batch before issue 16: every pair on its own, both images detected; ``--no-detection-cache``)
-- the baseline in float32 --, cached with 1 worker, cached with 2 workers and uncached with 2
workers. A worker gets cores // workers onnxruntime threads (the engine's rule: every
configuration uses all cores; on 2 cores, 1 worker x 2 threads or 2 x 1). Each run registers
every pair from scratch into a fresh folder through ``run_batch`` (the code ``ophreg batch``
runs) with the default registration options unless ``--size`` says otherwise, timed end to
end: process start-up, model loading, registration and the results file, as a user waits for
them. ``--repeats`` rounds, the configurations in a rotated order each round, so that slow
phases of a shared machine spread over all of them; a round is preceded by nothing, the run by
one untimed pair per precision (file cache, first-load costs). Reported: median pairs/s, min
and max, the ratio of each median to the baseline's, and the detections each run did.

Identical results: every run's lines are compared pair by pair with the first uncached run of
the same precision and worker count (same threads, so the same arithmetic): status, transform
model and its parameters (affine, matrix, quadratic), model selection, keypoint, match and
inlier counts must be equal, not close; a difference is reported with the largest distance
between the two transforms' images of a 11 x 11 grid over the moving image.

Single-pair latency: ``Registrar.register`` end to end (reading both files included) on the real
pair ``pairs/varia_R067_R118`` of the dev data, default options and threads, float32 and INT8
loaded side by side and run alternately, one warm-up each, median of ``--latency-runs``.

The JSON (``--out``) records the method, the machine and its load average before and after,
onnxruntime's version and each graph's sha256; a markdown table goes next to it (``.md``).

Run: ``python -m benchmarks.throughput`` (defaults: 2 patients, 5 images an eye, 40 pairs,
1024-px network input, 3 repeats). Tiny smoke run: ``--patients 1 --width 256 --size 256
--repeats 1 --latency-runs 1 --out /tmp/throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime

from benchmarks.synthetic_cohort import write_method_cohort
from ophreg_rt.cohort.batch import (
    WorkerSpec,
    available_cores,
    run_batch,
    threads_per_worker,
)
from ophreg_rt.cohort.manifest import read_manifest
from ophreg_rt.cohort.pairing import pair_images
from ophreg_rt.config import DETECTION_CACHE_IMAGES, Precision, PreprocessConfig, RegistrarConfig
from ophreg_rt.model_files import default_superpoint
from ophreg_rt.sessions import sha256_file
from ophreg_rt.transforms import fitted_from_json, map_points

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("OPHREG_DATA_DIR", REPO.parent / "shared" / "data" / "dev"))
SOURCES = [REPO / "tests" / "fixtures" / "skimage_retina.jpg",
           *sorted((DATA / "single" / "drive_training").glob("*.tif"))[:3]]
LATENCY_PAIR = DATA / "pairs" / "varia_R067_R118"
#: Fields of a result line that must be equal between cached and uncached runs.
RESULT_FIELDS = ("status", "reason", "transform", "affine", "matrix", "quadratic",
                 "model_selection", "fixed_size", "moving_size", "num_keypoints", "num_matches",
                 "num_inliers")
GRID_POINTS_PER_SIDE = 11


@dataclass(frozen=True)
class Configuration:
    precision: Precision
    workers: int
    cached: bool

    @property
    def name(self) -> str:
        return (f"{self.precision.value} {'cached' if self.cached else 'uncached'} "
                f"{self.workers}w")


#: The batch before issue 16 with the default options: what every ratio is relative to.
BASELINE = Configuration(Precision.FP32, 1, False)


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def run_configuration(pairs, config: RegistrarConfig, setting: Configuration, cores: int,
                      scratch: Path) -> tuple[float, list[dict]]:
    """(wall seconds, result lines) of one batch of ``pairs`` from scratch."""
    threads = threads_per_worker(setting.workers, cores)
    spec = WorkerSpec(replace(config, precision=setting.precision, threads=threads),
                      detection_cache=DETECTION_CACHE_IMAGES if setting.cached else 0)
    out = Path(tempfile.mkdtemp(dir=scratch))
    started = time.perf_counter()
    outcome = run_batch(pairs, out, spec, setting.workers, progress_stream=_Discard())
    wall = time.perf_counter() - started
    if outcome.new != len(pairs):
        raise RuntimeError(f"{setting.name}: {outcome.new} of {len(pairs)} pairs registered")
    return wall, outcome.records


def differences(reference: list[dict], lines: list[dict]) -> dict:
    """Pairs whose outcome differs from the reference's, and how far apart the transforms are."""
    by_id = {line["pair_id"]: line for line in lines}
    differing, largest_px = [], 0.0
    for expected in reference:
        line = by_id[expected["pair_id"]]
        if any(line.get(field) != expected.get(field) for field in RESULT_FIELDS):
            differing.append(expected["pair_id"])
            largest_px = max(largest_px, transform_distance(expected, line))
    return {"pairs_differing": differing, "max_transform_distance_px": largest_px}


def transform_distance(first: dict, second: dict) -> float:
    """Largest distance (fixed-image px) between where two lines' transforms send a grid over
    the moving image; infinite when only one of them registered."""
    if (first["status"] == "ok") != (second["status"] == "ok"):
        return float("inf")
    if first["status"] != "ok":
        return 0.0
    width, height = first["moving_size"]
    xs, ys = np.meshgrid(np.linspace(0, width - 1, GRID_POINTS_PER_SIDE),
                         np.linspace(0, height - 1, GRID_POINTS_PER_SIDE))
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
    return float(np.linalg.norm(map_points(*fitted_from_json(first), grid)
                                - map_points(*fitted_from_json(second), grid), axis=1).max())


def single_pair_latency(runs: int) -> dict:
    """Median ms of ``Registrar.register`` on the real pair, default options, fp32 and int8."""
    from ophreg_rt.registrar import Registrar

    fixed, moving = (next(LATENCY_PAIR.glob(f"{name}.*")) for name in ("fixed", "moving"))
    registrars = {precision: Registrar(replace(RegistrarConfig(), precision=precision))
                  for precision in (Precision.FP32, Precision.INT8)}
    times: dict[Precision, list[float]] = {precision: [] for precision in registrars}
    for round_ in range(runs + 1):  # round 0: warm-up
        for precision, registrar in registrars.items():
            started = time.perf_counter()
            result = registrar.register(fixed, moving)
            elapsed = (time.perf_counter() - started) * 1e3
            if round_:
                times[precision].append(elapsed)
    median = {precision: statistics.median(values) for precision, values in times.items()}
    return {"pair": LATENCY_PAIR.name, "status": result.status,
            "threads": "onnxruntime's default (all cores)",
            **{f"{precision.value}_ms": values for precision, values in times.items()},
            **{f"{precision.value}_median_ms": value for precision, value in median.items()},
            "int8_speed_up": median[Precision.FP32] / median[Precision.INT8]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2)
    parser.add_argument("--images-per-eye", type=int, default=5,
                        help="0: 3-6 drawn per eye (seeded)")
    parser.add_argument("--width", type=int, default=768, help="image width of the cohort, px")
    parser.add_argument("--size", type=int, default=RegistrarConfig().preprocess.size[0],
                        help="network input side (default: the engine's, %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/throughput.json")
    args = parser.parse_args()

    cores = available_cores()
    defaults = RegistrarConfig()
    config = replace(defaults, preprocess=replace(PreprocessConfig(), size=(args.size,
                                                                           args.size)))
    settings = [Configuration(precision, workers, cached)
                for precision in (Precision.FP32, Precision.INT8)
                for workers, cached in ((1, False), (1, True), (2, True), (2, False))]
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        cohort = write_method_cohort(scratch / "cohort", SOURCES, args.patients,
                                     args.images_per_eye or None, width=args.width, seed=3)
        pairs = pair_images(read_manifest(cohort.manifest)).pairs
        for precision in (Precision.FP32, Precision.INT8):  # untimed: file cache, first loads
            run_configuration(pairs[:1], config, Configuration(precision, 1, False), cores,
                              scratch)
        walls = {setting: [] for setting in settings}
        detections = {setting: [] for setting in settings}
        reference: dict[tuple[Precision, int], list[dict]] = {}
        checks = {setting: [] for setting in settings}
        for round_ in range(args.repeats):
            shift = round_ % len(settings)
            for setting in settings[shift:] + settings[:shift]:
                wall, lines = run_configuration(pairs, config, setting, cores, scratch)
                walls[setting].append(wall)
                detections[setting].append(sum(not cached for line in lines
                                               for cached in line["detections_cached"]))
                key = (setting.precision, setting.workers)
                if not setting.cached and key not in reference:
                    reference[key] = lines
                checks[setting].append(lines)
        identical = {setting: [differences(reference[(setting.precision, setting.workers)],
                                           lines) for lines in checks[setting]]
                     for setting in settings}
    batch_s = time.perf_counter() - started
    latency = single_pair_latency(args.latency_runs)
    load_after = os.getloadavg()

    baseline = len(pairs) / statistics.median(walls[BASELINE])
    report = {
        "method": __doc__,
        "machine": {"cores": cores, "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "load_average_before": load_before, "load_average_after": load_after},
        "onnxruntime": onnxruntime.__version__,
        "superpoint_sha256": {precision.value: sha256_file(default_superpoint(precision))
                              for precision in (Precision.FP32, Precision.INT8)},
        "cohort": {"patients": args.patients, "eyes": 2 * args.patients,
                   "images_per_eye": args.images_per_eye or "3-6",
                   "images": len(cohort.from_baseline), "pairs": len(pairs),
                   "image_width": args.width},
        "network_size": args.size, "repeats": args.repeats,
        "detection_cache_images": DETECTION_CACHE_IMAGES,
        "batch_runs_s": batch_s,
        "configurations": [
            {"name": setting.name, "precision": setting.precision.value,
             "workers": setting.workers, "cached": setting.cached,
             "threads_per_worker": threads_per_worker(setting.workers, cores),
             "wall_s": walls[setting], "detections": detections[setting],
             "pairs_per_s_median": len(pairs) / statistics.median(walls[setting]),
             "pairs_per_s_min": len(pairs) / max(walls[setting]),
             "pairs_per_s_max": len(pairs) / min(walls[setting]),
             "ratio_to_baseline": len(pairs) / statistics.median(walls[setting]) / baseline,
             "identical_to_uncached": all(not check["pairs_differing"]
                                          for check in identical[setting]),
             "differences": identical[setting]}
            for setting in settings],
        "baseline": BASELINE.name,
        "single_pair_latency": latency,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    text = table(report)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)


def table(report: dict) -> str:
    cohort, machine = report["cohort"], report["machine"]
    latency = report["single_pair_latency"]
    lines = [(f"{cohort['pairs']} pairs ({cohort['patients']} patients x 2 eyes x "
              f"{cohort['images_per_eye']} images, {cohort['image_width']} px wide), network "
              f"input {report['network_size']} px, {report['repeats']} repeats, "
              f"{machine['cores']} cores, load average {machine['load_average_before'][0]:.1f}"
              f" before / {machine['load_average_after'][0]:.1f} after"),
             "",
             f"| configuration | workers × threads | pairs/s (median) | min – max | "
             f"× {report['baseline']} | detections | identical to uncached |",
             "|---|---|---|---|---|---|---|"]
    for entry in report["configurations"]:
        lines.append(f"| {entry['name']} | {entry['workers']} × {entry['threads_per_worker']} | "
                     f"{entry['pairs_per_s_median']:.3f} | {entry['pairs_per_s_min']:.3f} – "
                     f"{entry['pairs_per_s_max']:.3f} | {entry['ratio_to_baseline']:.2f} | "
                     f"{statistics.median(entry['detections']):.0f} | "
                     f"{'yes' if entry['identical_to_uncached'] else 'NO'} |")
    lines += ["",
              f"Single pair ({latency['pair']}, `Registrar.register` with reading, default "
              f"options): float32 {latency['fp32_median_ms']:.0f} ms, INT8 "
              f"{latency['int8_median_ms']:.0f} ms (median); INT8 "
              f"{latency['int8_speed_up']:.2f}× float32."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
