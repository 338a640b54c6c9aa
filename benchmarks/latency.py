"""Latency benchmark: the ONNX engine against the PyTorch modules of export/, in one process.

Method
- Pair: a real pair of ``../shared/data/dev/pairs/`` (default varia_R067_R118), read from disk
  each time. Every stage is timed with ``time.perf_counter`` around the same public calls a user
  makes: read, preprocess, SuperPoint (both images as one batch of two), matcher, RANSAC (+ refit
  and plausibility), warp (``cv2.warpAffine`` of the moving image), and end to end.
- Reference: the same pipeline with the PyTorch modules of ``export/`` in place of the graphs
  (same weights, same preprocessed batch, same NumPy matching/RANSAC/warp code, ``torch.set_num_threads``
  equal to onnxruntime's intra-op threads, ``torch.inference_mode``). Engine and reference are
  timed alternately, repeat by repeat, so a change in machine load hits both.
- ``--warmup`` untimed runs, then ``--repeats`` timed ones; median, 10th and 90th percentiles.
- Sweeps: the SuperPoint graph vs module at several image sides (batch of two); the SuperGlue
  and LightGlue graphs vs modules at several keypoint counts (synthetic pairs of the contract).
- Levers, one at a time against the default session: graph optimisation level (disabled = no
  constant folding / fusions, basic, all), both images as one batch vs two runs, intra/inter-op
  threads, IO binding; for SuperGlue the Sinkhorn formulation (log vs scaling) and the number of
  iterations, with their effect on the matches against the 100-iteration log-space graph.
- Roofline: how near the machine's limit the SuperPoint convolutions run. The practical float32
  peak is the faster of onnxruntime's and PyTorch's n x n x n matrix product (n = 2048); each
  convolution's rate is 2 x its multiply-adds over its time, from onnxruntime's per-node profile
  (one 1024² image) and from the same layer run alone in PyTorch.
- RANSAC: 1024 correspondences, half outliers, 0.5 px noise; ours against cv2.estimateAffine2D
  (time and mean corner error), and its share of the end-to-end time.
- Memory: peak resident set of a fresh process after one registration, and its resident set
  after each of ``--memory-runs`` registrations in a row (growth = last minus the 10th).
- The JSON records the provider onnxruntime applied, each graph's sha256, versions and the
  machine. Absolute times belong to the machine; the ratios taken in one run are the result.

Run: ``python -m benchmarks.latency [--sections ...] [--threads 2] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import onnxruntime as ort

from benchmarks.harness import (alternate, cpu_flags, cpu_model, load_average, session,
                                summarise)
from export.settings import SinkhornDomain, SuperGlueSettings
from ophreg_rt import Registrar, RegistrarConfig
from ophreg_rt.config import MatcherName, Precision
from ophreg_rt.contract import LIGHTGLUE_INPUTS, SUPERGLUE_INPUTS
from ophreg_rt.imageio import read_image
from ophreg_rt.matching import matcher_feeds, matches_from_graph, mutual_nearest_neighbours
from ophreg_rt.model_files import default_matcher_graph, default_superpoint
from ophreg_rt.preprocess import network_input, network_to_original
from ophreg_rt.ransac import ransac
from ophreg_rt.sessions import sha256_file
from ophreg_rt.transforms import apply
from ophreg_rt.types import Detections, Features

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("OPHREG_DATA_DIR", REPO.parent / "shared" / "data")) / "dev"
WEIGHTS_DIR = Path(os.environ.get("OPHREG_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
WEIGHTS = WEIGHTS_DIR / "superpoint_v1.pth"
LIGHTGLUE_WEIGHTS = WEIGHTS_DIR / "superpoint_lightglue.pth"
CC0_RETINA = REPO / "tests" / "fixtures" / "skimage_retina.jpg"
SECTIONS = ("pipeline", "sizes", "keypoints", "levers", "roofline", "ransac", "memory")


# --------------------------------------------------------------------------------------------
# The PyTorch pipeline (reference)


def _torch():
    import torch

    return torch


def _features_of(keypoints, scores, descriptors, mask) -> list[Features]:
    out = []
    for b in range(len(mask)):
        count = int(mask[b].sum())
        out.append(Features(keypoints=keypoints[b, :count], scores=scores[b, :count],
                            descriptors=descriptors[b, :count]))
    return out


class TorchPipeline:
    """The engine's pipeline with export/'s PyTorch modules in place of the graphs."""

    def __init__(self, registrar: Registrar, matcher_module=None, matcher_specs=None):
        from export.superpoint import load_superpoint

        self.registrar = registrar
        self.config = registrar.config
        self.superpoint = load_superpoint(WEIGHTS).eval()
        self.matcher_module, self.matcher_specs = matcher_module, matcher_specs

    def register(self, fixed_path: Path, moving_path: Path) -> dict[str, float]:
        torch = _torch()
        timings: dict[str, float] = {}
        clock = time.perf_counter
        t = clock()
        fixed, moving = read_image(fixed_path), read_image(moving_path)
        timings["read"] = (clock() - t) * 1000
        t = clock()
        batch = np.stack([network_input(fixed, self.config.preprocess),
                          network_input(moving, self.config.preprocess)])
        timings["preprocess"] = (clock() - t) * 1000
        t = clock()
        with torch.inference_mode():
            outputs = [o.numpy() for o in self.superpoint(torch.from_numpy(batch))]
        features = _features_of(*outputs)
        timings["superpoint"] = (clock() - t) * 1000
        size = self.config.preprocess.size
        t = clock()
        if self.matcher_module is None:
            matches = mutual_nearest_neighbours(features[0], features[1], self.config.mnn)
        else:
            feeds = matcher_feeds(self.matcher_specs, features[0], features[1], size, size)
            with torch.inference_mode():
                result = self.matcher_module(*(torch.from_numpy(feeds[s.name])
                                               for s in self.matcher_specs))
            matches = matches_from_graph(result[0].numpy(), result[2].numpy())
        timings["matching"] = (clock() - t) * 1000
        detections = [Detections(features=f, keypoints=network_to_original(
            f.keypoints, (image.shape[1], image.shape[0]), size),
            image_size=(image.shape[1], image.shape[0]), network_size=size,
            front_end=self.registrar.front_end) for f, image in zip(features, (fixed, moving))]
        fit = self.registrar.fit(detections[0], detections[1], matches, timings=timings)
        t = clock()
        if fit.ok:
            cv2.warpAffine(moving, fit.matrix[:2], fit.fixed_size, flags=cv2.INTER_LINEAR)
        timings["warp"] = (clock() - t) * 1000
        return timings


def engine_run(registrar: Registrar, fixed_path: Path, moving_path: Path) -> dict[str, float]:
    result = registrar.register(fixed_path, moving_path)
    timings = dict(result.timings_ms)
    started = time.perf_counter()
    if result.ok:
        registrar.warp(moving_path, result)
    timings["warp"] = (time.perf_counter() - started) * 1000
    timings.pop("total", None)  # the caller's clock includes the warp
    return timings


def random_superglue_graph(folder: Path, settings: SuperGlueSettings, seed: int = 0):
    """(graph path, module) of SuperGlue with random weights; the trained ones are not here."""
    from export.common import sha256_state_dict
    from export.superglue import export, random_superglue, random_weights_id

    module = random_superglue(seed, settings)
    name = f"superglue_{settings.sinkhorn_domain.value}_{settings.sinkhorn_iterations}.onnx"
    if (folder / name).is_file():  # exporting costs tens of seconds; one graph per settings
        return folder / name, module
    path = export(module, folder / name, random_weights_id(seed),
                  sha256_state_dict(module.state_dict()), manifest=False)
    return path, module


def section_pipeline(args, work: Path) -> dict:
    torch = _torch()
    torch.set_num_threads(args.threads)
    from export.lightglue import load_lightglue

    pair = DATA_DIR / "pairs" / args.pair
    fixed, moving = next(pair.glob("fixed.*")), next(pair.glob("moving.*"))
    # --precision int8 swaps in the INT8 SuperPoint graph; the reference stays the fp32 module.
    base = replace(RegistrarConfig(), threads=args.threads, precision=Precision(args.precision))
    superglue_path, superglue_module = random_superglue_graph(work, SuperGlueSettings())
    matchers = {
        "mnn": (replace(base, matcher=MatcherName.MNN), None, None, None),
        "superglue (random weights)": (replace(base, matcher=MatcherName.SUPERGLUE),
                                       superglue_path, superglue_module.eval(), SUPERGLUE_INPUTS),
    }
    lightglue_graph = default_matcher_graph(MatcherName.LIGHTGLUE)
    if LIGHTGLUE_WEIGHTS.is_file() and Path(lightglue_graph).is_file():
        matchers["lightglue"] = (replace(base, matcher=MatcherName.LIGHTGLUE), lightglue_graph,
                                 load_lightglue(LIGHTGLUE_WEIGHTS).eval(), LIGHTGLUE_INPUTS)
    out = {"pair": args.pair}
    for name, (config, graph, module, specs) in matchers.items():
        registrar = Registrar(config, matcher_model=graph)
        reference = TorchPipeline(registrar, module, specs)
        timed = alternate({"onnxruntime": lambda: engine_run(registrar, fixed, moving),
                           "torch": lambda: reference.register(fixed, moving)},
                          args.warmup, args.repeats)
        timed["models"] = registrar.models
        timed["provider"] = registrar.provider
        timed["speedup_end_to_end"] = (timed["torch"]["total"]["median_ms"]
                                       / timed["onnxruntime"]["total"]["median_ms"])
        for stage in ("superpoint", "matching"):
            timed[f"speedup_{stage}"] = (timed["torch"][stage]["median_ms"]
                                         / timed["onnxruntime"][stage]["median_ms"])
        out[name] = timed
        print(f"  pipeline {name}: end to end {timed['speedup_end_to_end']:.2f}x", flush=True)
    return out


def section_sizes(args, work: Path) -> dict:
    torch = _torch()
    torch.set_num_threads(args.threads)
    from export.superpoint import load_superpoint

    module = load_superpoint(WEIGHTS).eval()
    graph = session(default_superpoint(), args.threads)
    image = read_image(CC0_RETINA)
    out = {}
    for side in args.sizes:
        config = replace(RegistrarConfig().preprocess, size=(side, side))
        batch = np.stack([network_input(image, config)] * 2)
        tensor = torch.from_numpy(batch)

        def run_torch():
            with torch.inference_mode():
                module(tensor)

        timed = alternate({"onnxruntime": lambda: graph.run(None, {"image": batch}),
                           "torch": run_torch}, args.warmup, max(2, args.repeats // 2))
        timed["speedup"] = timed["torch"]["total"]["median_ms"] / timed["onnxruntime"]["total"]["median_ms"]
        out[str(side)] = timed
        print(f"  superpoint {side}: {timed['speedup']:.2f}x", flush=True)
    return out


def section_keypoints(args, work: Path) -> dict:
    torch = _torch()
    torch.set_num_threads(args.threads)
    from export.lightglue import load_lightglue
    from export.parity import synthetic_pair

    superglue_path, superglue_module = random_superglue_graph(work, SuperGlueSettings())
    matchers = {"superglue": (session(superglue_path, args.threads), superglue_module.eval(),
                              SUPERGLUE_INPUTS)}
    lightglue_graph = Path(default_matcher_graph(MatcherName.LIGHTGLUE))
    if LIGHTGLUE_WEIGHTS.is_file() and lightglue_graph.is_file():
        matchers["lightglue"] = (session(lightglue_graph, args.threads),
                                 load_lightglue(LIGHTGLUE_WEIGHTS).eval(), LIGHTGLUE_INPUTS)
    out: dict[str, dict] = {}
    for count in args.keypoints:
        feeds = synthetic_pair(count, count, (1024, 1024), (1024, 1024), seed=count)
        for name, (graph, module, specs) in matchers.items():
            inputs = {s.name: feeds[s.name] for s in specs}
            tensors = [torch.from_numpy(inputs[s.name]) for s in specs]

            def run_torch(module=module, tensors=tensors):
                with torch.inference_mode():
                    module(*tensors)

            timed = alternate({"onnxruntime": lambda g=graph, i=inputs: g.run(None, i),
                               "torch": run_torch}, 1, max(2, args.repeats // 2))
            timed["speedup"] = (timed["torch"]["total"]["median_ms"]
                                / timed["onnxruntime"]["total"]["median_ms"])
            out.setdefault(name, {})[str(count)] = timed
            print(f"  {name} {count} keypoints: {timed['speedup']:.2f}x", flush=True)
    return out


def section_spinning(args) -> dict:
    """SuperPoint's session then LightGlue's on the real pair: pool threads spinning or not.

    The lever only shows when two sessions share the cores one after the other, as in a pair.
    """
    lightglue_graph = Path(default_matcher_graph(MatcherName.LIGHTGLUE))
    if not lightglue_graph.is_file():
        return {}
    pair = DATA_DIR / "pairs" / args.pair
    config = RegistrarConfig().preprocess
    batch = np.stack([network_input(read_image(next(pair.glob(f"{side}.*"))), config)
                      for side in ("fixed", "moving")])
    runs = {}
    for spinning in (True, False):
        detector = session(default_superpoint(), args.threads, spinning=spinning)
        matcher = session(lightglue_graph, args.threads, spinning=spinning)

        def run(detector=detector, matcher=matcher) -> dict[str, float]:
            started = time.perf_counter()
            features = _features_of(*detector.run(None, {"image": batch}))
            detected = time.perf_counter()
            matcher.run(None, matcher_feeds(LIGHTGLUE_INPUTS, features[0], features[1],
                                            config.size, config.size))
            return {"superpoint": (detected - started) * 1000,
                    "matching": (time.perf_counter() - detected) * 1000}

        label = "spinning (onnxruntime's default)" if spinning else "not spinning (ours)"
        runs[f"superpoint + lightglue, threads {label}"] = run
    timed = alternate(runs, 1, args.repeats)
    for name, value in timed.items():
        print(f"  lever {name}: {value['total']['median_ms']:.0f} ms", flush=True)
    return timed


def matmul_rates(threads: int, n: int = 2048) -> dict[str, float]:
    """GFLOP/s of an n x n x n float32 matrix product in onnxruntime and in PyTorch."""
    import onnx
    from onnx import TensorProto, helper

    torch = _torch()
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "matmul.onnx"
        onnx.save(proto, path)
        matmul = session(path, threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    timed = alternate({"onnxruntime": lambda: matmul.run(None, {"a": a, "b": b}),
                       "torch": lambda: torch.mm(ta, tb)}, 2, 7)
    return {name: 2 * n ** 3 / (value["total"]["median_ms"] / 1000) / 1e9
            for name, value in timed.items()}


def conv_profile(threads: int, image: np.ndarray, repeats: int) -> list[dict]:
    """Per-Conv node of the SuperPoint graph: shapes, multiply-adds and median time (ms)."""
    with tempfile.TemporaryDirectory() as folder:
        graph = session(default_superpoint(), threads,
                        profile_prefix=str(Path(folder) / "superpoint"))
        graph.run(None, {"image": image})  # warm-up, dropped below
        for _ in range(repeats):
            graph.run(None, {"image": image})
        events = json.loads(Path(graph.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    shapes: dict[str, dict] = {}
    for event in events:
        if (event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
                and event["args"].get("op_name") == "Conv"):
            times.setdefault(event["name"], []).append(event["dur"] / 1000)
            shapes[event["name"]] = event["args"]
    layers = []
    for name, samples in times.items():
        inputs = [next(iter(x.values())) for x in shapes[name]["input_type_shape"]]
        output = next(iter(shapes[name]["output_type_shape"][0].values()))
        weight = inputs[1]
        macs = int(np.prod(output)) * int(np.prod(weight[1:]))
        layers.append({"node": name.removesuffix("_kernel_time"), "input": inputs[0],
                       "weight": weight, "output": output, "macs": macs,
                       "median_ms": float(np.median(samples[1:]))})
    return layers


def section_roofline(args, work: Path) -> dict:
    torch = _torch()
    torch.set_num_threads(args.threads)
    import torch.nn.functional as F

    image = network_input(read_image(CC0_RETINA), RegistrarConfig().preprocess)[None]
    peak = matmul_rates(args.threads)
    layers = conv_profile(args.threads, image, max(3, args.repeats))
    for layer in layers:
        # The same convolution (+ ReLU where the graph fused one) alone in PyTorch.
        x = torch.rand(*layer["input"])
        w = torch.rand(*layer["weight"])
        padding = layer["weight"][-1] // 2

        def run(x=x, w=w, padding=padding):
            with torch.inference_mode():
                F.relu(F.conv2d(x, w, padding=padding))

        layer["torch_median_ms"] = alternate({"torch": run}, 1, max(3, args.repeats // 2)
                                             )["torch"]["total"]["median_ms"]
        for engine, key in (("onnxruntime", "median_ms"), ("torch", "torch_median_ms")):
            layer[f"{engine}_gflops"] = 2 * layer["macs"] / (layer[key] / 1000) / 1e9
        print(f"  conv {layer['node']} {layer['weight']}: onnxruntime "
              f"{layer['onnxruntime_gflops']:.0f} GFLOP/s, torch {layer['torch_gflops']:.0f}",
              flush=True)
    total_macs = sum(layer["macs"] for layer in layers)
    totals = {engine: 2 * total_macs / (sum(layer[key] for layer in layers) / 1000) / 1e9
              for engine, key in (("onnxruntime", "median_ms"), ("torch", "torch_median_ms"))}
    print(f"  matrix-product peak {peak}; convolutions: {totals}", flush=True)
    return {"image_side": int(image.shape[-1]), "matmul_gflops": peak, "convolutions": layers,
            "convolutions_gflops": totals, "convolution_gmacs": total_macs / 1e9}


def section_levers(args, work: Path) -> dict:
    from export.parity import synthetic_pair

    image = read_image(CC0_RETINA)
    batch = np.stack([network_input(image, RegistrarConfig().preprocess)] * 2)
    path = default_superpoint()
    levels = {"disabled (no constant folding, no fusion)": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic (constant folding, redundancy elimination)": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "all (default: + layout and Conv fusions)": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    runs: dict[str, Callable] = {}
    for name, level in levels.items():
        runs[f"superpoint, optimisation {name}"] = (
            lambda s=session(path, args.threads, level): s.run(None, {"image": batch}))
    default = session(path, args.threads)
    runs["superpoint, two images as two runs"] = lambda: [default.run(None, {"image": batch[i:i + 1]})
                                                          for i in range(2)]
    if args.threads > 1:
        runs["superpoint, 1 intra-op thread"] = (
            lambda s=session(path, 1): s.run(None, {"image": batch}))
        runs["superpoint, inter-op 2 (parallel mode)"] = (
            lambda s=session(path, args.threads, inter_threads=2): s.run(None, {"image": batch}))
    binding = default.io_binding()

    def bound():
        binding.bind_cpu_input("image", batch)
        for output in default.get_outputs():
            binding.bind_output(output.name)
        default.run_with_iobinding(binding)
        binding.copy_outputs_to_cpu()

    runs["superpoint, IO binding"] = bound
    runs["superpoint, memory pattern on (onnxruntime's default)"] = (
        lambda s=session(path, args.threads, memory_pattern=True): s.run(None, {"image": batch}))
    runs["superpoint, no memory arena"] = (
        lambda s=session(path, args.threads, arena=False): s.run(None, {"image": batch}))
    out = {"superpoint": alternate(runs, 1, max(2, args.repeats // 2)),
           "memory_settings": memory_settings(args.threads)}
    for name, value in out["superpoint"].items():
        print(f"  lever {name}: {value['total']['median_ms']:.0f} ms", flush=True)
    spinning = section_spinning(args)
    if spinning:
        out["pair_spinning"] = spinning

    # Sinkhorn: formulation and iterations, on SuperPoint features of a real pair.
    pair = DATA_DIR / "pairs" / args.pair
    registrar = Registrar(replace(RegistrarConfig(), threads=args.threads))
    detections = registrar.detect([read_image(next(pair.glob("fixed.*"))),
                                   read_image(next(pair.glob("moving.*")))])
    real = matcher_feeds(SUPERGLUE_INPUTS, detections[0].features, detections[1].features,
                         detections[0].network_size, detections[1].network_size)
    pair_1024 = synthetic_pair(1024, 1024, (1024, 1024), (1024, 1024), seed=1)
    synthetic = {spec.name: pair_1024[spec.name] for spec in SUPERGLUE_INPUTS}
    variants = {}
    for domain in SinkhornDomain:
        for iterations in args.sinkhorn_iterations:
            settings = replace(SuperGlueSettings(), sinkhorn_domain=domain,
                               sinkhorn_iterations=iterations)
            graph_path, _ = random_superglue_graph(work, settings)
            variants[f"{domain.value}, {iterations} iterations"] = session(graph_path, args.threads)
    reference = variants[f"{SinkhornDomain.LOG.value}, {max(args.sinkhorn_iterations)} iterations"]
    reference_real = reference.run(None, real)
    timed = alternate({name: (lambda s=s: s.run(None, synthetic)) for name, s in variants.items()},
                      1, max(2, args.repeats // 2))
    sinkhorn = {}
    for name, graph in variants.items():
        got = graph.run(None, real)
        kept = (reference_real[0][0] >= 0)
        same = (got[0][0] == reference_real[0][0])
        sinkhorn[name] = {
            "time_1024x1024": timed[name]["total"],
            "real_pair_matches": int((got[0][0] >= 0).sum()),
            "real_pair_matches_reference": int(kept.sum()),
            "real_pair_assignments_identical_share": float(same.mean()),
            "real_pair_max_abs_log_assignment_diff": float(
                np.abs(got[4] - reference_real[4])[reference_real[4] > -50].max())}
        print(f"  sinkhorn {name}: {timed[name]['total']['median_ms']:.0f} ms, "
              f"{sinkhorn[name]['real_pair_matches']} matches "
              f"({sinkhorn[name]['real_pair_assignments_identical_share']:.1%} identical)",
              flush=True)
    out["sinkhorn"] = {"pair": args.pair, "reference": "log space, most iterations",
                       "variants": sinkhorn}
    return out


_ARENA_CHILD = """
import json, sys
from pathlib import Path
import numpy as np
from benchmarks.harness import session
from ophreg_rt.model_files import default_superpoint
threads, arena, pattern = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1"
graph = session(default_superpoint(), threads, arena=arena, memory_pattern=pattern)
batch = np.random.default_rng(0).random((2, 1, 1024, 1024), dtype=np.float32)
def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
rss = []
for _ in range(3):
    graph.run(None, {"image": batch})
    rss.append(status("VmRSS"))
print(json.dumps({"rss_after_each_mib": rss, "peak_rss_mib": status("VmHWM")}))
"""


def memory_settings(threads: int) -> dict:
    """Resident memory of SuperPoint (batch of two 1024² images) per arena / pattern setting."""
    out = {}
    for arena in (True, False):
        for pattern in (True, False):
            done = subprocess.run([sys.executable, "-c", _ARENA_CHILD, str(threads),
                                   str(int(arena)), str(int(pattern))],
                                  capture_output=True, text=True, check=True, cwd=REPO)
            name = f"arena {'on' if arena else 'off'}, memory pattern {'on' if pattern else 'off'}"
            out[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  memory {name}: {out[name]}", flush=True)
    return out


def section_ransac(args, work: Path, pipeline: dict | None) -> dict:
    rng = np.random.default_rng(0)
    n = 1024
    config = RegistrarConfig().ransac
    ours_time, cv_time, ours_err, cv_err = [], [], [], []
    corners = np.array([[0, 0], [1023, 0], [0, 1023], [1023, 1023]], dtype=np.float64)
    for trial in range(args.ransac_trials):
        truth = np.eye(3)
        angle = rng.uniform(-0.3, 0.3)
        truth[:2, :2] = rng.uniform(0.9, 1.1) * np.array([[np.cos(angle), -np.sin(angle)],
                                                          [np.sin(angle), np.cos(angle)]])
        truth[:2, 2] = rng.uniform(-50, 50, 2)
        source = rng.uniform(0, 1023, (n, 2))
        target = apply(truth, source) + rng.normal(0, 0.5, (n, 2))
        outliers = rng.permutation(n)[: n // 2]
        target[outliers] = rng.uniform(0, 1023, (len(outliers), 2))
        started = time.perf_counter()
        fit = ransac(source, target, config, config.threshold, np.random.default_rng(trial))
        ours_time.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        matrix, _ = cv2.estimateAffine2D(source, target, method=cv2.RANSAC,
                                         ransacReprojThreshold=config.threshold,
                                         confidence=config.confidence)
        cv_time.append((time.perf_counter() - started) * 1000)
        reference = apply(truth, corners)
        ours_err.append(np.linalg.norm(apply(fit.matrix, corners) - reference, axis=1).mean())
        full = np.vstack([matrix, [0, 0, 1]])
        cv_err.append(np.linalg.norm(apply(full, corners) - reference, axis=1).mean())
    out = {"correspondences": n, "outlier_share": 0.5, "noise_px": 0.5,
           "trials": args.ransac_trials, "ours": summarise(ours_time),
           "cv2_estimateAffine2D": summarise(cv_time),
           "ours_mean_corner_error_px": float(np.mean(ours_err)),
           "cv2_mean_corner_error_px": float(np.mean(cv_err))}
    if pipeline and "mnn" in pipeline:
        total = pipeline["mnn"]["onnxruntime"]["total"]["median_ms"]
        out["share_of_end_to_end_mnn"] = out["ours"]["median_ms"] / total
    print(f"  ransac: {out['ours']['median_ms']:.1f} ms vs cv2 "
          f"{out['cv2_estimateAffine2D']['median_ms']:.1f} ms; corner error "
          f"{out['ours_mean_corner_error_px']:.3f} vs {out['cv2_mean_corner_error_px']:.3f} px",
          flush=True)
    return out


_MEMORY_CHILD = """
import json, sys
from pathlib import Path
from dataclasses import replace
from ophreg_rt import Registrar, RegistrarConfig
fixed, moving, runs, threads, side = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
config = RegistrarConfig()
config = replace(config, threads=threads, preprocess=replace(config.preprocess, size=(side, side)))
registrar = Registrar(config)
def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
after = []
for _ in range(runs):
    registrar.register(fixed, moving)
    after.append(rss_mib())
def peak_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
print(json.dumps({"rss_after_each_mib": after, "peak_rss_mib": peak_mib()}))
"""


def section_memory(args, work: Path) -> dict:
    pair = DATA_DIR / "pairs" / args.pair
    fixed, moving = str(next(pair.glob("fixed.*"))), str(next(pair.glob("moving.*")))
    out = {}
    for runs in (1, args.memory_runs):
        done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, fixed, moving, str(runs),
                               str(args.threads), str(args.memory_side)],
                              capture_output=True, text=True, check=True, cwd=REPO)
        out[str(runs)] = json.loads(done.stdout.strip().splitlines()[-1])
    series = out[str(args.memory_runs)]["rss_after_each_mib"]
    out["network_side"] = args.memory_side
    out["peak_one_registration_mib"] = out["1"]["peak_rss_mib"]
    out[f"peak_{args.memory_runs}_registrations_mib"] = out[str(args.memory_runs)]["peak_rss_mib"]
    out["growth_after_10th_mib"] = series[-1] - series[min(9, len(series) - 1)]
    print(f"  memory: peak {out['peak_one_registration_mib']:.0f} MiB after one, "
          f"growth {out['growth_after_10th_mib']:.1f} MiB from the 10th to the "
          f"{args.memory_runs}th", flush=True)
    return out


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "cpu": cpu_model(),
            "cpu_flags": " ".join(cpu_flags()), "cpu_count": os.cpu_count(), "load_average_at_start": load_average(),
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "torch": torch.__version__, "numpy": np.__version__, "opencv": cv2.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pair", default="varia_R067_R118")
    parser.add_argument("--precision", choices=[p.value for p in Precision],
                        default=RegistrarConfig().precision.value,
                        help="SuperPoint graph of the engine in the pipeline section")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 768, 1024, 1536])
    parser.add_argument("--keypoints", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--sinkhorn-iterations", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--ransac-trials", type=int, default=50)
    parser.add_argument("--memory-runs", type=int, default=100)
    parser.add_argument("--memory-side", type=int, default=512,
                        help="network side for the memory runs (100 registrations at 1024 "
                             "take minutes on 2 cores; the graph's memory scales with it)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency.json"))
    args = parser.parse_args()

    report = {"method": __doc__, "machine": machine(), "threads": args.threads,
              "precision": args.precision,
              "warmup": args.warmup, "repeats": args.repeats,
              "superpoint_sha256": sha256_file(default_superpoint()), "sections": {}}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for name in args.sections:
            started = time.perf_counter()
            print(f"{name} ...", flush=True)
            if name == "ransac":
                result = section_ransac(args, work, report["sections"].get("pipeline"))
            else:
                result = globals()[f"section_{name}"](args, work)
            result["wall_s"] = time.perf_counter() - started
            report["sections"][name] = result
    report["machine"]["load_average_at_end"] = load_average()
    report["machine"]["peak_rss_of_benchmark_mib"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    markdown = tables(report)
    args.out.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)


def _cell(summary: dict) -> str:
    return f"{summary['median_ms']:.0f} [{summary['p10_ms']:.0f}–{summary['p90_ms']:.0f}]"


def tables(report: dict) -> str:
    sections = report["sections"]
    machine_line = (f"{report['machine']['cpu']} ({report['machine']['cpu_count']} cores, "
                    f"{report['machine']['cpu_flags']}), onnxruntime "
                    f"{report['machine']['onnxruntime']}, torch {report['machine']['torch']}, "
                    f"{report['threads']} threads; load average "
                    f"{report['machine']['load_average_at_start'][0]:.1f} at start")
    lines = [f"Machine: {machine_line}. Times in ms: median [p10–p90].", ""]
    if "pipeline" in sections:
        stages = ("read", "preprocess", "superpoint", "matching", "ransac", "warp", "total")
        lines += [f"End to end, pair {sections['pipeline']['pair']}, engine's SuperPoint graph "
                  f"{report.get('precision', 'fp32')}, PyTorch module fp32:", "",
                  "| matcher | engine | " + " | ".join(stages) + " | speed-up |",
                  "|---|---|" + "---|" * (len(stages) + 1)]
        for name, value in sections["pipeline"].items():
            if not isinstance(value, dict) or "onnxruntime" not in value:
                continue
            for engine in ("onnxruntime", "torch"):
                cells = [(_cell(value[engine][s]) if s in value[engine] else "–") for s in stages]
                speed = f"{value['speedup_end_to_end']:.2f}×" if engine == "torch" else ""
                lines.append(f"| {name} | {engine} | " + " | ".join(cells) + f" | {speed} |")
        lines.append("")
    if "sizes" in sections:
        lines += ["SuperPoint graph vs module, batch of two images:", "",
                  "| side | onnxruntime | torch | speed-up |", "|---|---|---|---|"]
        for side, value in sections["sizes"].items():
            if isinstance(value, dict) and "onnxruntime" in value:
                lines.append(f"| {side} | {_cell(value['onnxruntime']['total'])} | "
                             f"{_cell(value['torch']['total'])} | {value['speedup']:.2f}× |")
        lines.append("")
    if "keypoints" in sections:
        lines += ["Matcher graphs vs modules, N + N synthetic keypoints:", "",
                  "| matcher | N | onnxruntime | torch | speed-up |", "|---|---|---|---|---|"]
        for matcher, counts in sections["keypoints"].items():
            if not isinstance(counts, dict):
                continue
            for count, value in counts.items():
                lines.append(f"| {matcher} | {count} | {_cell(value['onnxruntime']['total'])} | "
                             f"{_cell(value['torch']['total'])} | {value['speedup']:.2f}× |")
        lines.append("")
    if "levers" in sections:
        lines += ["Levers (SuperPoint, batch of two 1024² images unless said):", "",
                  "| variant | time |", "|---|---|"]
        for name, value in sections["levers"]["superpoint"].items():
            lines.append(f"| {name} | {_cell(value['total'])} |")
        for name, value in sections["levers"].get("pair_spinning", {}).items():
            split = ", ".join(f"{stage} {value[stage]['median_ms']:.0f}"
                              for stage in ("superpoint", "matching"))
            lines.append(f"| {name}, real pair | {_cell(value['total'])} ({split}) |")
        lines += ["", "SuperPoint resident memory (MiB) after each of 3 runs, and peak:", "",
                  "| session setting | RSS after runs | peak |", "|---|---|---|"]
        for name, value in sections["levers"].get("memory_settings", {}).items():
            rss = ", ".join(f"{x:.0f}" for x in value["rss_after_each_mib"])
            lines.append(f"| {name} | {rss} | {value['peak_rss_mib']:.0f} |")
        lines += ["", "Sinkhorn (SuperGlue, random weights; time at 1024 + 1024 keypoints; matches "
                  f"on the real pair {sections['levers']['sinkhorn']['pair']} against log space at "
                  "the most iterations):", "",
                  "| formulation | time | matches | same assignment | max log diff |",
                  "|---|---|---|---|---|"]
        for name, value in sections["levers"]["sinkhorn"]["variants"].items():
            lines.append(f"| {name} | {_cell(value['time_1024x1024'])} | "
                         f"{value['real_pair_matches']} / {value['real_pair_matches_reference']} | "
                         f"{value['real_pair_assignments_identical_share']:.1%} | "
                         f"{value['real_pair_max_abs_log_assignment_diff']:.2g} |")
        lines.append("")
    if "roofline" in sections:
        r = sections["roofline"]
        peak = r["matmul_gflops"]
        lines += [(f"Roofline (one {r['image_side']}² image): a 2048³ float32 matrix product runs "
                   f"at {peak['onnxruntime']:.0f} GFLOP/s in onnxruntime and {peak['torch']:.0f} "
                   f"in PyTorch. SuperPoint's convolutions ({r['convolution_gmacs']:.1f} G "
                   f"multiply-adds) run at {r['convolutions_gflops']['onnxruntime']:.0f} GFLOP/s "
                   f"in the graph and {r['convolutions_gflops']['torch']:.0f} in PyTorch:"), "",
                  "| node | weight | onnxruntime ms | GFLOP/s | torch ms | GFLOP/s | torch / onnxruntime |",
                  "|---|---|---|---|---|---|---|"]
        for layer in r["convolutions"]:
            lines.append(
                f"| {layer['node']} | {'×'.join(map(str, layer['weight']))} | "
                f"{layer['median_ms']:.1f} | {layer['onnxruntime_gflops']:.0f} | "
                f"{layer['torch_median_ms']:.1f} | {layer['torch_gflops']:.0f} | "
                f"{layer['torch_median_ms'] / layer['median_ms']:.2f}× |")
        lines.append("")
    if "ransac" in sections:
        r = sections["ransac"]
        share = r.get("share_of_end_to_end_mnn")
        lines += [f"RANSAC, {r['correspondences']} correspondences, half outliers, "
                  f"{r['noise_px']} px noise, {r['trials']} trials: ours {_cell(r['ours'])} ms, "
                  f"mean corner error {r['ours_mean_corner_error_px']:.3f} px; "
                  f"cv2.estimateAffine2D {_cell(r['cv2_estimateAffine2D'])} ms, "
                  f"{r['cv2_mean_corner_error_px']:.3f} px"
                  + (f"; {share:.2%} of the end-to-end time (MNN)." if share else "."), ""]
    if "memory" in sections:
        m = sections["memory"]
        runs = [k for k in m if k.startswith("peak_") and k.endswith("_registrations_mib")][0]
        lines += [f"Memory (network side {m['network_side']}): peak RSS "
                  f"{m['peak_one_registration_mib']:.0f} MiB after one registration, "
                  f"{m[runs]:.0f} MiB over {runs.split('_')[1]}; RSS growth from the 10th to the "
                  f"last: {m['growth_after_10th_mib']:.1f} MiB.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
