"""Time per pair of the three ways to embed registration, against the Python runtime, in one
session on the same pixels.

Ways, each with its session kept (as an embedding keeps it; a command pays the load once more,
reported apart):

* ``python``: ``Registrar.register`` then ``Registrar.warp`` -- the two graphs (SuperPoint,
  LightGlue) through onnxruntime, OpenCV's preprocessing, NumPy's RANSAC, ``cv2.warpAffine`` /
  ``cv2.remap``: what ``ophreg register`` runs.
* ``graph``: the one registration graph in onnxruntime's Python binding
  (``ophreg_rt.one_graph.OneGraphRegistrar.run``).
* ``node``: the same graph in onnxruntime-node (``benchmarks/one_graph_node.mjs``).
* ``browser``: the page of ``examples/web`` in headless Chromium (onnxruntime-web, WebAssembly,
  cross-origin isolated, as many threads as the native ways: ``?threads=N``), driven by
  ``tests/examples/drive_page.mjs``; the page's own time of the graph run and the whole
  click-to-result time (decoding the file, drawing the checkerboard) both reported.

Pixels: OpenCV's decoding of each real pair (``real_pairs/control_points.csv``'s four pairs),
written as binary PGM/PPM for Node and the page, so every way registers the same bytes.
``--warmup`` untimed runs, then ``--repeats`` timed ones per way and pair; the ways run one
after the other (they are separate processes), so run this on a quiet machine: the report
records the load average before and after. The graph's time is also broken down by operator
type and by stage (``STAGES``) from onnxruntime's profiler: one profiled run of
``--breakdown-pair`` after the timed ones, on the engine's session options.

Run: ``python -m benchmarks.one_graph_latency [--graph models/registration.onnx]`` (Node with
``npm ci --prefix examples/node`` and ``--prefix examples/web``, and Chromium, for the last two
ways; ``--ways python,graph`` without them).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnxruntime

from benchmarks.embeddings import drive_page, node_graph_times, page_server
from benchmarks.harness import (cpu_flags, cpu_model, load_average, session, summarise,
                                write_report)
from benchmarks.real_pairs_precision import CONTROL_POINTS, load_points
from ophreg_rt import Registrar
from ophreg_rt.config import RegistrarConfig
from ophreg_rt.imageio import read_image
from ophreg_rt.one_graph import OneGraphRegistrar, as_graph_image, default_graph
from ophreg_rt.sessions import sha256_file

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WAYS = ("python", "graph", "node", "browser")


def write_netpbm(image: np.ndarray, path: Path) -> Path:
    """The graph's (H, W, C) uint8 image as binary PGM (grey) or PPM (RGB; alpha dropped,
    which none of the dev images has)."""
    if image.shape[2] == 1:
        written = cv2.imwrite(str(path.with_suffix(".pgm")), image[:, :, 0])
        path = path.with_suffix(".pgm")
    else:
        written = cv2.imwrite(str(path.with_suffix(".ppm")),
                              cv2.cvtColor(image[:, :, :3], cv2.COLOR_RGB2BGR))
        path = path.with_suffix(".ppm")
    if not written:
        raise RuntimeError(f"{path}: not written")
    return path


def time_python(fixed: np.ndarray, moving: np.ndarray, threads: int | None, warmup: int,
                repeats: int) -> dict:
    started = time.perf_counter()
    registrar = Registrar(replace(RegistrarConfig(), threads=threads))
    load_ms = (time.perf_counter() - started) * 1000.0
    samples, stages, status = [], {}, None
    for i in range(warmup + repeats):
        started = time.perf_counter()
        result = registrar.register(fixed, moving)
        if result.ok:
            with_warp = time.perf_counter()
            registrar.warp(moving, result)
            result.timings_ms["warp"] = (time.perf_counter() - with_warp) * 1000.0
        elapsed = (time.perf_counter() - started) * 1000.0
        status = result.status
        if i >= warmup:
            samples.append(elapsed)
            for stage, value in result.timings_ms.items():
                stages.setdefault(stage, []).append(value)
    return {"load_ms": load_ms, "run": summarise(samples), "status": status,
            "stages_median_ms": {stage: float(np.median(v)) for stage, v in stages.items()}}


def time_graph(graph: Path, fixed: np.ndarray, moving: np.ndarray, threads: int | None,
               warmup: int, repeats: int) -> dict:
    started = time.perf_counter()
    registrar = OneGraphRegistrar(graph, threads=threads)
    load_ms = (time.perf_counter() - started) * 1000.0
    images = [as_graph_image(fixed, "fixed"), as_graph_image(moving, "moving")]
    samples, status = [], None
    for i in range(warmup + repeats):
        started = time.perf_counter()
        outputs = registrar.run(*images)
        elapsed = (time.perf_counter() - started) * 1000.0
        status = int(outputs["status"])
        if i >= warmup:
            samples.append(elapsed)
    return {"load_ms": load_ms, "run": summarise(samples), "status_code": status}


#: Where the graph's time goes, in the order its nodes run (one inter-op thread: one node at a
#: time). Stages are told apart by landmarks, as a profile has no module names: the first
#: convolution starts SuperPoint, whose detector softmax ends it; the next softmax is
#: LightGlue's first attention, the last softmax its last; the GridSample is the warp.
STAGES = ("preprocessing", "superpoint", "keypoints", "lightglue", "estimation", "warp")
STAGE_NOTES = {
    "preprocessing": "resize to 1024, green-channel CLAHE",
    "superpoint": "SuperPoint, both images",
    "keypoints": "NMS, top-k, field-of-view and frame masks, LightGlue's input encoding",
    "lightglue": "LightGlue's layers on the 1024 + 1024 slots",
    "estimation": "match read-out, RANSAC table, refits, quadratic, refusals",
    "warp": "GridSample and the uint8 image",
}


def graph_breakdown(graph: Path, fixed: np.ndarray, moving: np.ndarray, threads: int,
                    work: Path) -> dict:
    """Kernel time of one run (after one untimed) by operator type and by stage (STAGES),
    from onnxruntime's profiler."""
    profiled = session(graph, threads, profile_prefix=str(work / "profile"))
    feeds = dict(zip([i.name for i in profiled.get_inputs()],
                     [as_graph_image(fixed, "fixed"), as_graph_image(moving, "moving")]))
    profiled.run(None, feeds)
    profiled.run(None, feeds)
    events = json.loads(Path(profiled.end_profiling()).read_text())
    runs = [e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    nodes = sorted((e for e in events if e.get("cat") == "Node"
                    and e["name"].endswith("_kernel_time") and e["ts"] >= runs[-1]),
                   key=lambda e: e["ts"])
    ops = [e["args"].get("op_name", "?") for e in nodes]
    by_op: collections.Counter = collections.Counter()
    for op, event in zip(ops, nodes):
        by_op[op] += event["dur"] / 1000.0
    total = sum(by_op.values())
    breakdown = {"kernel_ms": total, "conv_ms": by_op["Conv"],
                 "grid_sample_ms": by_op["GridSample"],
                 "other_ms": total - by_op["Conv"] - by_op["GridSample"],
                 "top_ops_ms": dict(by_op.most_common(12))}
    softmaxes = [i for i, op in enumerate(ops) if op == "Softmax"]
    if "Conv" in ops and len(softmaxes) >= 3 and "GridSample" in ops:
        bounds = [0, ops.index("Conv"), softmaxes[0] + 1, softmaxes[1], softmaxes[-1] + 1,
                  ops.index("GridSample"), len(ops)]
        breakdown["stages_ms"] = {stage: sum(e["dur"] for e in nodes[a:b]) / 1000.0
                                  for stage, a, b in zip(STAGES, bounds, bounds[1:])}
    return breakdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", type=Path, default=None,
                        help="the registration graph (default: models/registration.onnx)")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"of {', '.join(WAYS)}")
    parser.add_argument("--pairs", default=None, help="comma-separated pair names (default: all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime intra-op threads of the native ways (default: "
                             "onnxruntime's choice, as the engine)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--node", default=shutil.which("node"))
    parser.add_argument("--chromium", default=shutil.which("chromium"))
    parser.add_argument("--breakdown-pair", default="toolbox_example",
                        help="the pair the graph's profile is taken on (default: %(default)s, "
                             "else the first)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "one_graph_latency.json")
    args = parser.parse_args(argv)
    graph = args.graph or default_graph()
    ways = [w for w in args.ways.split(",") if w]
    unknown = set(ways) - set(WAYS)
    if unknown:
        parser.error(f"--ways: unknown {sorted(unknown)}")
    if {"node", "browser"} & set(ways) and not args.node:
        parser.error("node is needed for the node and browser ways (or --ways python,graph)")
    if "browser" in ways and not args.chromium:
        parser.error("chromium is needed for the browser way (--chromium PATH)")
    pairs = load_points(CONTROL_POINTS)
    if args.pairs:
        pairs = {name: pairs[name] for name in args.pairs.split(",")}

    document = {"method": {"warmup": args.warmup, "repeats": args.repeats,
                           "threads": args.threads, "ways": ways},
                "graph": {"file": graph.name, "bytes": graph.stat().st_size,
                          "sha256": sha256_file(graph)},
                "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                            "flags": cpu_flags(), "python": platform.python_version(),
                            "load_before": load_average()},
                "onnxruntime": onnxruntime.__version__, "pairs": []}
    with tempfile.TemporaryDirectory() as folder, \
            (page_server(graph) if "browser" in ways else contextlib.nullcontext()) as url:
        work = Path(folder)
        for name, entry in pairs.items():
            fixed, moving = read_image(entry["fixed"]), read_image(entry["moving"])
            row = {"pair": name, "fixed_size": [fixed.shape[1], fixed.shape[0]],
                   "moving_size": [moving.shape[1], moving.shape[0]]}
            files = [write_netpbm(as_graph_image(image, role), work / f"{name}_{role}")
                     for image, role in ((fixed, "fixed"), (moving, "moving"))]
            if "python" in ways:
                row["python"] = time_python(fixed, moving, args.threads, args.warmup,
                                            args.repeats)
            if "graph" in ways:
                row["graph"] = time_graph(graph, fixed, moving, args.threads, args.warmup,
                                          args.repeats)
            if "node" in ways:
                times = node_graph_times(args.node, graph, *files, args.threads, args.warmup,
                                         args.repeats)
                row["node"] = {"load_ms": times["load_ms"], "run": summarise(times["graph_ms"]),
                               "status": times["status"],
                               "onnxruntime_node": times["onnxruntime_node"]}
            if "browser" in ways:
                # As many WebAssembly threads as the native ways get (onnxruntime-web's own
                # default is half the cores: 1 here).
                page = f"{url}?threads={args.threads or os.cpu_count()}"
                report = drive_page(args.node, args.chromium, page, *files, work / name,
                                    repeat=args.warmup + args.repeats)
                if report.get("state") != "done":
                    raise RuntimeError(f"{name}: the page ended {report.get('state')}: "
                                       f"{report.get('error')} {report.get('problems')}")
                timed = report["timings_ms"][args.warmup:]
                row["browser"] = {"load_ms": report["runtime"]["model_load_ms"],
                                  "run": summarise([t["graph"] for t in timed]),
                                  "click_to_result": summarise(report["durations_ms"][args.warmup:]),
                                  "status": report["result"]["status"],
                                  "threads": report["runtime"]["threads"],
                                  "onnxruntime_web": report["runtime"]["onnxruntime_web"]}
            document["pairs"].append(row)
            print(f"{name}: " + ", ".join(f"{way} {row[way]['run']['median_ms'] / 1000:.2f} s"
                                          for way in ways), flush=True)
        if "graph" in ways:
            name = args.breakdown_pair if args.breakdown_pair in pairs else next(iter(pairs))
            entry = pairs[name]
            document["graph_breakdown"] = {"pair": name, **graph_breakdown(
                graph, read_image(entry["fixed"]), read_image(entry["moving"]),
                args.threads or (os.cpu_count() or 1), work)}
    document["machine"]["load_after"] = load_average()
    document["summary"] = summary(document["pairs"], ways)
    write_report(args.out, document, markdown(document))
    print(markdown(document))
    return 0


def summary(rows: list[dict], ways: list[str]) -> dict:
    """Per way: the median over pairs of its median time, and of its ratio to python's."""
    result = {}
    for way in ways:
        medians = [row[way]["run"]["median_ms"] for row in rows]
        entry = {"median_ms": statistics.median(medians)}
        if "python" in ways:
            entry["ratio_to_python"] = statistics.median(
                row[way]["run"]["median_ms"] / row["python"]["run"]["median_ms"] for row in rows)
        result[way] = entry
    return result


def markdown(document: dict) -> str:
    ways = document["method"]["ways"]
    machine = document["machine"]
    lines = ["# Time per pair: Python runtime, one graph (native, Node, browser)", "",
             f"{machine['cpu']}, {machine['cores']} cores ({', '.join(machine['flags'])}); "
             f"load average before {machine['load_before'][0]:.2f}, after "
             f"{machine['load_after'][0]:.2f}. onnxruntime {document['onnxruntime']}; graph "
             f"{document['graph']['file']} ({document['graph']['bytes'] / 1e6:.1f} MB, sha256 "
             f"`{document['graph']['sha256'][:16]}...`). Median "
             f"of {document['method']['repeats']} runs after {document['method']['warmup']} "
             "warm-up, session kept; seconds.", "",
             "| pair | size fixed / moving | " + " | ".join(ways) + " |",
             "|---|---|" + "---|" * len(ways)]
    for row in document["pairs"]:
        sizes = f"{'x'.join(map(str, row['fixed_size']))} / {'x'.join(map(str, row['moving_size']))}"
        cells = [f"{row[way]['run']['median_ms'] / 1000:.2f}" for way in ways]
        lines.append(f"| {row['pair']} | {sizes} | " + " | ".join(cells) + " |")
    total = document["summary"]
    lines.append("| median ratio to python | | " + " | ".join(
        f"{total[way].get('ratio_to_python', float('nan')):.2f}x" for way in ways) + " |")
    lines += ["", "Loading (s, once per session): " + ", ".join(
        f"{way} {statistics.median(row[way]['load_ms'] for row in document['pairs']) / 1000:.2f}"
        for way in ways) + "."]
    if "browser" in ways:
        row = document["pairs"][0]["browser"]
        lines.append(f"Browser: onnxruntime-web {row['onnxruntime_web']}, {row['threads']} "
                     "thread(s); click to result (decoding, drawing included): " + ", ".join(
                         f"{r['pair']} {r['browser']['click_to_result']['median_ms'] / 1000:.2f} s"
                         for r in document["pairs"]) + ".")
    if "graph_breakdown" in document:
        b = document["graph_breakdown"]
        lines.append(f"Graph, one profiled run of {b['pair']}: kernels "
                     f"{b['kernel_ms'] / 1000:.2f} s, of which convolutions "
                     f"{b['conv_ms'] / 1000:.2f} s and GridSample {b['grid_sample_ms'] / 1000:.2f} s.")
        if "stages_ms" in b:
            lines += ["", "| stage of the graph | s | what |", "|---|---|---|"]
            lines += [f"| {stage} | {ms / 1000:.2f} | {STAGE_NOTES[stage]} |"
                      for stage, ms in b["stages_ms"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
