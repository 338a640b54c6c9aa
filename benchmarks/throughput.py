"""Throughput benchmark: pairs per second of ``ophreg batch``'s local engine, 1 vs N workers.

Method: a synthetic cohort (benchmarks/synthetic_cohort.py: each source image is one eye; the
healthy eye has 3 colour visits, each diseased eye ``--visits`` colour and angiogram-like visits,
all warped by known seeded affines) written at ``--width`` px and paired by ``ophreg pairs``'s
rules. Each configuration registers every pair from scratch into a fresh folder through
``run_batch`` (the code ``ophreg batch`` runs), timed end to end: process start-up, model
loading, registration and the results file, as a user waits for them. A configuration is
(workers, onnxruntime threads per worker); by default each worker gets cores // workers threads,
the engine's own rule, so every configuration uses all cores. Configurations run in turn,
``--repeats`` rounds, so slow phases of a shared machine spread over all of them; we report the
median pairs/s, its min and max, and the ratio of each median to the 1-worker median. The JSON
records the load average before and after (other jobs on the machine), cores, onnxruntime
version and the SuperPoint graph's sha256.

Run: ``python -m benchmarks.throughput [--workers 1 2] [--repeats 3] [--size 512]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import onnxruntime

from benchmarks.synthetic_cohort import write_cohort
from ophreg_rt.cohort.batch import (
    WorkerSpec,
    available_cores,
    run_batch,
    threads_per_worker,
)
from ophreg_rt.cohort.manifest import read_manifest
from ophreg_rt.cohort.pairing import pair_images
from ophreg_rt.config import PreprocessConfig, RegistrarConfig
from ophreg_rt.model_files import default_superpoint

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("OPHREG_DATA_DIR", REPO.parent / "shared" / "data" / "dev"))
SOURCES = [REPO / "tests" / "fixtures" / "skimage_retina.jpg",
           *sorted((DATA / "single" / "drive_training").glob("*.tif"))[:2]]


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def time_batch(pairs, spec: WorkerSpec, workers: int, scratch: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=scratch))
    started = time.perf_counter()
    outcome = run_batch(pairs, out, spec, workers, progress_stream=_Discard())
    wall = time.perf_counter() - started
    assert len(outcome.records) == len(pairs) and outcome.new == len(pairs)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="network input side")
    parser.add_argument("--width", type=int, default=512, help="image width of the cohort")
    parser.add_argument("--visits", type=int, default=5, help="visits per diseased eye")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/throughput.json")
    args = parser.parse_args()

    cores = available_cores()
    config = replace(RegistrarConfig(),
                     preprocess=replace(PreprocessConfig(), size=(args.size, args.size)))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        cohort = write_cohort(scratch / "cohort", SOURCES, width=args.width, seed=3,
                              visits_per_patient=args.visits)
        pairs = pair_images(read_manifest(cohort.manifest)).pairs
        walls: dict[int, list[float]] = {workers: [] for workers in args.workers}
        for _ in range(args.repeats):
            for workers in args.workers:
                spec = WorkerSpec(replace(config, threads=threads_per_worker(workers, cores)))
                walls[workers].append(time_batch(pairs, spec, workers, scratch))
    load_after = os.getloadavg()

    baseline = statistics.median(walls[args.workers[0]])
    report = {
        "method": __doc__,
        "machine": {"cores": cores, "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "load_average_before": load_before, "load_average_after": load_after},
        "onnxruntime": onnxruntime.__version__,
        "superpoint_sha256": _sha256(default_superpoint()),
        "pairs": len(pairs), "network_size": args.size, "image_width": args.width,
        "configurations": [
            {"workers": workers, "threads_per_worker": threads_per_worker(workers, cores),
             "wall_s": walls[workers],
             "pairs_per_s_median": len(pairs) / statistics.median(walls[workers]),
             "pairs_per_s_min": len(pairs) / max(walls[workers]),
             "pairs_per_s_max": len(pairs) / min(walls[workers]),
             "speed_up_vs_first": baseline / statistics.median(walls[workers])}
            for workers in args.workers],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def table(report: dict) -> str:
    lines = [(f"{report['pairs']} pairs, network input {report['network_size']} px, "
             f"{report['machine']['cores']} cores, load average "
             f"{report['machine']['load_average_before'][0]:.1f} before / "
             f"{report['machine']['load_average_after'][0]:.1f} after"),
             "",
             "| workers × threads | pairs/s (median) | min – max | speed-up vs first |",
             "|---|---|---|---|"]
    for entry in report["configurations"]:
        lines.append(f"| {entry['workers']} × {entry['threads_per_worker']} | "
                     f"{entry['pairs_per_s_median']:.2f} | {entry['pairs_per_s_min']:.2f} – "
                     f"{entry['pairs_per_s_max']:.2f} | {entry['speed_up_vs_first']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
