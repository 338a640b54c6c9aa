"""What the benchmark scripts share, so that each states its method once and they cannot drift:
the summary of timed samples, timing a callable or a registrar, onnxruntime sessions as the
engine makes them with one lever changed, and what a report records of the machine.

Scripts import these; a number they publish keeps its meaning (median and 10th/90th
percentiles, milliseconds, the same session options) whichever script measured it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

#: CPU features that decide which onnxruntime kernels run (AVX-512 and VNNI for INT8, AMX).
CPU_FLAGS = ("amx_int8", "avx2", "avx512_vnni", "avx512f", "avx_vnni", "fma")


def summarise(samples: list[float]) -> dict:
    """Median, 10th and 90th percentiles of samples in milliseconds, and their count."""
    values = np.asarray(samples)
    return {"median_ms": float(np.median(values)), "p10_ms": float(np.percentile(values, 10)),
            "p90_ms": float(np.percentile(values, 90)), "n": len(values)}


def timed(function, *args):
    """``function(*args)`` and the milliseconds it took."""
    started = time.perf_counter()
    value = function(*args)
    return value, (time.perf_counter() - started) * 1000.0


def time_registrar(registrar, fixed, moving, warmup: int, repeats: int) -> dict:
    """Per-stage summaries of ``registrar.register`` after ``warmup`` untimed runs."""
    for _ in range(warmup):
        registrar.register(fixed, moving)
    stages: dict[str, list[float]] = {}
    for _ in range(repeats):
        result = registrar.register(fixed, moving)
        for stage, value in result.timings_ms.items():
            stages.setdefault(stage, []).append(value)
    return {stage: summarise(values) for stage, values in stages.items()}


def alternate(runs: dict[str, Callable[[], dict[str, float] | None]], warmup: int,
              repeats: int) -> dict[str, dict]:
    """Time several callables round-robin; one may return its own stage timings as a dict."""
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in runs}
    for i in range(warmup + repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            stages = run()
            elapsed = (time.perf_counter() - started) * 1000.0
            if i < warmup:
                continue
            stages = stages if isinstance(stages, dict) else {}
            for stage, value in {**stages, "total": elapsed}.items():
                samples[name].setdefault(stage, []).append(value)
    return {name: {stage: summarise(v) for stage, v in stages.items()}
            for name, stages in samples.items()}


def session(path: Path, threads: int, level=None, inter_threads: int = 1, arena: bool = True,
            memory_pattern: bool = False, spinning: bool | None = False,
            profile_prefix: str | None = None):
    """A CPU session as ophreg_rt.sessions makes it, with one setting changed at a time.

    ``level`` None: every graph optimisation; ``spinning`` None: onnxruntime's own default.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if spinning else "0")
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                                        if level is None else level)
    options.enable_cpu_mem_arena = arena
    options.enable_mem_pattern = memory_pattern
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_threads
    if inter_threads > 1:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cpu_flags() -> list[str]:
    """The :data:`CPU_FLAGS` this machine has (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(text.split())
    return sorted(f for f in CPU_FLAGS if f in flags)


def cpu_model() -> str:
    """The processor's name as the kernel reports it, else what Python knows."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        return next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def load_average() -> list[float]:
    """1-, 5- and 15-minute load: a benchmark on a busy machine says so in its report."""
    return list(os.getloadavg())


def write_report(out: Path, document: dict, text: str) -> None:
    """The JSON results at ``out`` and their readable table beside it (``.md``), folders made."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    out.with_suffix(".md").write_text(text)
