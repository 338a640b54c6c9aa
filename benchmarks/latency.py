"""Latency benchmark: per-stage time of one registration, against PyTorch in the same process.

Method: one pair (the CC0 retina as FIXED and a known warp of it as MOVING), registered through
the public ``Registrar`` after ``--warmup`` untimed runs, ``--repeats`` timed runs; we report the
median and the 10th/90th percentiles of each stage for each onnxruntime thread count. The
reference is the PyTorch SuperPoint module of ``export/`` (same weights, same input batch, same
thread count through ``torch.set_num_threads``), timed the same way in the same process, so the
ratio onnxruntime/PyTorch is comparable across machines while absolute times are not. The JSON
records the provider onnxruntime actually applied, the model sha256 and the machine.

Run: ``python -m benchmarks.latency [--threads 1 2] [--repeats 10] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.known_truth import make_cases
from ophreg_rt import Registrar, RegistrarConfig
from ophreg_rt.config import Device
from ophreg_rt.preprocess import network_input

REPO = Path(__file__).resolve().parents[1]
CC0_RETINA = REPO / "tests" / "fixtures" / "skimage_retina.jpg"
WEIGHTS = Path(os.environ.get("OPHREG_WEIGHTS_DIR", REPO.parent / "shared" / "weights")) / "superpoint_v1.pth"


def summarise(samples: list[float]) -> dict:
    values = np.asarray(samples)
    return {"median_ms": float(np.median(values)), "p10_ms": float(np.percentile(values, 10)),
            "p90_ms": float(np.percentile(values, 90)), "n": len(values)}


def time_registrar(registrar: Registrar, fixed, moving, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        registrar.register(fixed, moving)
    stages: dict[str, list[float]] = {}
    for _ in range(repeats):
        result = registrar.register(fixed, moving)
        for stage, value in result.timings_ms.items():
            stages.setdefault(stage, []).append(value)
    return {stage: summarise(values) for stage, values in stages.items()}


def time_torch_superpoint(batch: np.ndarray, threads: int, warmup: int, repeats: int) -> dict | None:
    """The PyTorch reference of the SuperPoint stage, or None where torch/weights are absent."""
    try:
        import torch

        from export.superpoint import load_superpoint
    except ImportError:
        return None
    if not WEIGHTS.is_file():
        return None
    torch.set_num_threads(threads)
    model = load_superpoint(WEIGHTS)
    tensor = torch.from_numpy(batch)
    samples = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            started = time.perf_counter()
            model(tensor)
            if i >= warmup:
                samples.append((time.perf_counter() - started) * 1000.0)
    return summarise(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", choices=[d.value for d in Device], default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency.json"))
    args = parser.parse_args()

    case = make_cases([CC0_RETINA], per_image=1, seed=7)[0]
    default = RegistrarConfig()
    batch = np.stack([network_input(case.fixed, default.preprocess),
                      network_input(case.moving, default.preprocess)])
    report = {"method": __doc__, "machine": platform.platform(), "processor": platform.processor(),
              "cpu_count": os.cpu_count(), "pair": f"{CC0_RETINA.name} + known warp",
              "network_size": list(default.preprocess.size), "runs": []}
    for threads in args.threads:
        registrar = Registrar(replace(default, threads=threads, device=Device(args.device)))
        run = {"threads": threads, "provider": registrar.provider, "models": registrar.models,
               "onnxruntime": time_registrar(registrar, case.fixed, case.moving,
                                             args.warmup, args.repeats),
               "torch_superpoint": time_torch_superpoint(batch, threads, args.warmup, args.repeats)}
        if run["torch_superpoint"]:
            run["superpoint_ratio_ort_over_torch"] = (
                run["onnxruntime"]["superpoint"]["median_ms"] / run["torch_superpoint"]["median_ms"])
        report["runs"].append(run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))


def table(report: dict) -> str:
    lines = ["| threads | provider | superpoint (2 images) | matching | ransac | total | "
             "torch superpoint | ort/torch |", "|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        ort_times = run["onnxruntime"]
        cell = lambda s: f"{s['median_ms']:.0f} ms [{s['p10_ms']:.0f}-{s['p90_ms']:.0f}]"  # noqa: E731
        torch_cell = cell(run["torch_superpoint"]) if run["torch_superpoint"] else "n/a"
        ratio = run.get("superpoint_ratio_ort_over_torch")
        lines.append(f"| {run['threads']} | {run['provider']} | {cell(ort_times['superpoint'])} | "
                     f"{cell(ort_times['matching'])} | {cell(ort_times['ransac'])} | "
                     f"{cell(ort_times['total'])} | {torch_cell} | "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
