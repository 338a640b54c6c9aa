"""GPU check (issue 4): onnxruntime's CUDA provider end to end, fp32 and mixed fp16, on one machine.

Method: the pair of ``benchmarks/latency.py`` (the CC0 retina and a seeded known warp of it,
1024x1024 network input) is registered through the public ``Registrar`` on the CUDA provider and,
for comparison on the same machine, on the CPU provider with every core; ``--warmup`` untimed
runs, then ``--repeats`` timed ones, median and 10th/90th percentiles per stage. SuperGlue is
timed with random weights of its architecture (exported on the spot from ``export/``, so the
graph matches this machine's torch) on the pair and on 1024 + 1024 synthetic keypoints. The
PyTorch modules of ``export/`` on the same GPU (``torch.cuda.synchronize`` around each run) are
the in-process reference. LightGlue (the default matcher) is timed on the pair and on 1024 + 1024
synthetic keypoints. An onnxruntime profile of SuperPoint on CUDA gives the time per operator
type and the nodes onnxruntime placed on the CPU; IO binding (input and outputs kept on the GPU)
is timed against a plain run.

fp16: a copy of each graph in which only the compute-heavy operators (Conv, Relu, MatMul and the
attention Softmax) run in float16, with Cast nodes at their borders (``to_mixed_fp16``);
everything else -- the detector's NMS and top-k, descriptor sampling and
normalisation, Sinkhorn's Loop and its log-sum-exp, index arithmetic -- stays in float32. Its
accuracy is stated against the fp32 graph (keypoints kept, descriptor change, matches) and
against the known truth (mean field-of-view error, px at 1024).

Run (on a machine with onnxruntime-gpu): ``python -m benchmarks.gpu_check --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from benchmarks.harness import summarise, time_registrar
from benchmarks.known_truth import make_cases, mean_fov_error
from benchmarks.latency import CC0_RETINA, WEIGHTS
from ophreg_rt import Registrar, RegistrarConfig
from ophreg_rt.config import Device, MatcherName
from ophreg_rt.model_files import default_matcher_graph, default_superpoint
from ophreg_rt.preprocess import network_input

#: Operator types allowed to run in float16; every other node keeps float32.
FP16_OPS = {"Conv", "Relu", "MatMul", "Softmax"}


def to_mixed_fp16(source: Path, target: Path) -> Path:
    """Run the top-level FP16_OPS nodes in float16, with Cast nodes where float32 meets them.

    Written here rather than taken from onnxruntime.transformers.float16: that converter, told to
    keep every other operator in float32, still gave NaN descriptors for SuperPoint (measured on
    the CPU provider), and a converter of 40 lines whose every cast can be read is easier to
    trust. Nodes inside Loop bodies (Sinkhorn) are never converted.
    """
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    converted = [n for n in graph.node if n.op_type in FP16_OPS]
    half_outputs = {name for n in converted for name in n.output}
    half_initializers: set[str] = set()
    casts_in: dict[str, str] = {}
    new_nodes = []
    for node in graph.node:
        if node.op_type in FP16_OPS:
            for i, name in enumerate(node.input):
                if not name or name in half_outputs:
                    continue
                if name in initializers and initializers[name].data_type == TensorProto.FLOAT:
                    if name not in half_initializers:
                        array = numpy_helper.to_array(initializers[name]).astype(np.float16)
                        initializers[name].CopyFrom(numpy_helper.from_array(array, name))
                        half_initializers.add(name)
                    continue
                if name not in casts_in:
                    casts_in[name] = f"{name}__fp16"
                    new_nodes.append(helper.make_node("Cast", [name], [casts_in[name]],
                                                      to=TensorProto.FLOAT16))
                node.input[i] = casts_in[name]
        new_nodes.append(node)
    # Every float32 consumer of a float16 tensor reads it through one Cast back.
    casts_out = {name: f"{name}__fp32" for name in half_outputs}
    for node in new_nodes:
        if node.op_type in FP16_OPS or node.op_type == "Cast":
            continue
        for i, name in enumerate(node.input):
            if name in casts_out:
                node.input[i] = casts_out[name]
    for output in graph.output:
        if output.name in casts_out:
            raise ValueError(f"{source}: graph output {output.name} comes from a float16 node")
    final = []
    for node in new_nodes:
        final.append(node)
        for name in node.output:
            if name in casts_out:
                final.append(helper.make_node("Cast", [name], [casts_out[name]],
                                              to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(final)
    del graph.value_info[:]  # stale float32 shapes of now-float16 tensors
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return target


def time_matcher_synthetic(model_path: Path, device: Device, repeats: int,
                           matcher: MatcherName = MatcherName.SUPERGLUE) -> dict:
    from export.parity import synthetic_pair
    from ophreg_rt.contract import LIGHTGLUE_INPUTS, SUPERGLUE_INPUTS
    from ophreg_rt.matching import LightGlueRunner, SuperGlueRunner

    if matcher is MatcherName.LIGHTGLUE:
        runner, specs = LightGlueRunner(model_path, device=device), LIGHTGLUE_INPUTS
    else:
        runner, specs = SuperGlueRunner(model_path, device=device), SUPERGLUE_INPUTS
    feeds = synthetic_pair(1024, 1024, (1024, 1024), (1024, 1024), seed=0)
    feeds = {spec.name: feeds[spec.name] for spec in specs}
    samples = []
    for i in range(repeats + 2):
        started = time.perf_counter()
        runner.model.session.run(None, feeds)
        if i >= 2:
            samples.append((time.perf_counter() - started) * 1000.0)
    return summarise(samples)


def torch_references(batch: np.ndarray, repeats: int) -> dict:
    import torch

    from export.parity import synthetic_pair
    from export.superglue import random_superglue
    from export.superpoint import load_superpoint
    from ophreg_rt.contract import SUPERGLUE_INPUTS

    def timed(fn) -> dict:
        samples = []
        with torch.inference_mode():
            for i in range(repeats + 2):
                torch.cuda.synchronize()
                started = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                if i >= 2:
                    samples.append((time.perf_counter() - started) * 1000.0)
        return summarise(samples)

    from export.lightglue import load_lightglue
    from ophreg_rt.contract import LIGHTGLUE_INPUTS

    superpoint = load_superpoint(WEIGHTS).cuda()
    images = torch.from_numpy(batch).cuda()
    superglue = random_superglue(0).cuda()
    feeds = synthetic_pair(1024, 1024, (1024, 1024), (1024, 1024), seed=0)
    inputs = [torch.from_numpy(feeds[spec.name]).cuda() for spec in SUPERGLUE_INPUTS]
    out = {"superpoint_2_images": timed(lambda: superpoint(images)),
           "superglue_1024x1024": timed(lambda: superglue(*inputs)),
           "device_name": torch.cuda.get_device_name()}
    # LightGlue's checkpoint (47 MB) may not travel to the GPU machine with the chunked wheel.
    lightglue_weights = WEIGHTS.parent / "superpoint_lightglue.pth"
    if lightglue_weights.is_file():
        lightglue = load_lightglue(lightglue_weights).cuda().eval()
        light_inputs = [torch.from_numpy(feeds[spec.name]).cuda() for spec in LIGHTGLUE_INPUTS]
        out["lightglue_1024x1024"] = timed(lambda: lightglue(*light_inputs))
    return out


def superpoint_cuda_profile(batch: np.ndarray, repeats: int) -> dict:
    """Where SuperPoint's time goes on CUDA (op types, nodes placed on the CPU), and IO binding."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = "/tmp/ophreg_gpu/superpoint_cuda"
    session = ort.InferenceSession(str(default_superpoint()), options,
                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    for _ in range(repeats):
        session.run(None, {"image": batch})
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    on_cpu: dict[str, int] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"].get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + event["dur"] / 1000.0 / repeats
        if event["args"].get("provider") == "CPUExecutionProvider":
            on_cpu[op] = on_cpu.get(op, 0) + 1
    plain = ort.InferenceSession(str(default_superpoint()),
                                 providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    binding = plain.io_binding()
    on_device = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)

    def bound() -> None:
        binding.bind_ortvalue_input("image", on_device)
        for output in plain.get_outputs():
            binding.bind_output(output.name, "cuda")
        plain.run_with_iobinding(binding)
        binding.synchronize_outputs()

    def timed(fn) -> dict:
        samples = []
        for i in range(repeats + 2):
            started = time.perf_counter()
            fn()
            if i >= 2:
                samples.append((time.perf_counter() - started) * 1000.0)
        return summarise(samples)

    return {"ms_per_run_by_op_type": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
            "node_runs_on_cpu_by_op_type": on_cpu,
            "plain_run": timed(lambda: plain.run(None, {"image": batch})),
            "io_binding_input_and_outputs_on_gpu": timed(bound)}


def accuracy_against(registrar: Registrar, reference: Registrar, case) -> dict:
    result = registrar.register(case.fixed, case.moving)
    baseline = reference.register(case.fixed, case.moving)
    return {"status": result.status, "num_keypoints": [len(result.keypoints_fixed),
                                                       len(result.keypoints_moving)],
            "num_keypoints_fp32": [len(baseline.keypoints_fixed), len(baseline.keypoints_moving)],
            "num_matches": len(result.matches), "num_matches_fp32": len(baseline.matches),
            "error_px": mean_fov_error(result, case),
            "error_px_fp32": mean_fov_error(baseline, case)}


def section(report: dict, name: str, fn) -> None:
    """Run one part; a failure is recorded, not fatal, so one call still brings back the rest."""
    started = time.perf_counter()
    try:
        report[name] = fn()
    except Exception:  # noqa: BLE001 - the report must say what broke and go on
        report[name] = {"error": traceback.format_exc(limit=3)}
    print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/ophreg_gpu"))
    args = parser.parse_args()
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # finds CUDA and cuDNN in the nvidia-* wheels torch brought
        ort.preload_dlls()
    args.work.mkdir(parents=True, exist_ok=True)
    case = make_cases([CC0_RETINA], per_image=1, seed=7)[0]
    default = RegistrarConfig()
    batch = np.stack([network_input(case.fixed, default.preprocess),
                      network_input(case.moving, default.preprocess)])
    report: dict = {"method": __doc__, "machine": platform.platform(), "cpu_count": os.cpu_count(),
                    "onnxruntime": ort.__version__,
                    "available_providers": ort.get_available_providers()}
    print(json.dumps({k: report[k] for k in ("onnxruntime", "available_providers")}), flush=True)
    cuda = replace(default, device=Device.CUDA)
    superglue_fp32 = args.work / "superglue_random_fp32.onnx"

    def export_superglue() -> dict:
        from export.common import sha256_state_dict
        from export.superglue import export, random_superglue, random_weights_id

        model = random_superglue(0)
        export(model, superglue_fp32, random_weights_id(0),
               sha256_state_dict(model.state_dict()), manifest=False)
        return {"file": str(superglue_fp32)}

    def end_to_end(config: RegistrarConfig, **models) -> dict:
        registrar = Registrar(config, **models)
        return {"provider": registrar.provider, "models": registrar.models,
                "stages": time_registrar(registrar, case.fixed, case.moving, args.warmup,
                                         args.repeats)}

    cuda_mnn = replace(cuda, matcher=MatcherName.MNN)
    cuda_lightglue = replace(cuda, matcher=MatcherName.LIGHTGLUE)
    section(report, "cuda_fp32_superpoint_lightglue", lambda: end_to_end(cuda_lightglue))
    section(report, "cuda_fp32_superpoint_mnn", lambda: end_to_end(cuda_mnn))
    section(report, "cpu_all_cores_superpoint_lightglue", lambda: end_to_end(
        replace(default, matcher=MatcherName.LIGHTGLUE, threads=os.cpu_count())))
    section(report, "cuda_fp32_lightglue_1024x1024", lambda: time_matcher_synthetic(
        default_matcher_graph(MatcherName.LIGHTGLUE), Device.CUDA, args.repeats,
        MatcherName.LIGHTGLUE))
    section(report, "cuda_superpoint_profile", lambda: superpoint_cuda_profile(batch, 10))
    section(report, "export_superglue_random", export_superglue)
    section(report, "cuda_fp32_superpoint_superglue",
            lambda: end_to_end(replace(cuda, matcher=MatcherName.SUPERGLUE),
                               matcher_model=superglue_fp32))
    section(report, "cuda_fp32_superglue_1024x1024",
            lambda: time_matcher_synthetic(superglue_fp32, Device.CUDA, args.repeats))
    section(report, "torch_cuda", lambda: torch_references(batch, args.repeats))

    superpoint_fp16 = args.work / "superpoint_mixed_fp16.onnx"
    superglue_fp16 = args.work / "superglue_random_mixed_fp16.onnx"
    lightglue_fp16 = args.work / "lightglue_mixed_fp16.onnx"
    section(report, "convert_fp16", lambda: {
        "superpoint": str(to_mixed_fp16(default_superpoint(), superpoint_fp16)),
        "superglue": str(to_mixed_fp16(superglue_fp32, superglue_fp16)),
        "lightglue": str(to_mixed_fp16(default_matcher_graph(MatcherName.LIGHTGLUE),
                                       lightglue_fp16))})
    section(report, "cuda_fp16_superpoint_mnn",
            lambda: end_to_end(cuda_mnn, superpoint_model=superpoint_fp16))
    section(report, "cuda_fp16_superpoint_lightglue",
            lambda: end_to_end(cuda_lightglue, superpoint_model=superpoint_fp16,
                               matcher_model=lightglue_fp16))
    section(report, "fp16_accuracy_lightglue", lambda: accuracy_against(
        Registrar(cuda_lightglue, superpoint_model=superpoint_fp16, matcher_model=lightglue_fp16),
        Registrar(cuda_lightglue), case))
    section(report, "cuda_fp16_superpoint_superglue",
            lambda: end_to_end(replace(cuda, matcher=MatcherName.SUPERGLUE),
                               superpoint_model=superpoint_fp16, matcher_model=superglue_fp16))
    section(report, "cuda_fp16_superglue_1024x1024",
            lambda: time_matcher_synthetic(superglue_fp16, Device.CUDA, args.repeats))
    section(report, "fp16_accuracy_mnn", lambda: accuracy_against(
        Registrar(cuda_mnn, superpoint_model=superpoint_fp16), Registrar(cuda_mnn), case))
    section(report, "fp16_accuracy_superglue", lambda: accuracy_against(
        Registrar(replace(cuda, matcher=MatcherName.SUPERGLUE), superpoint_model=superpoint_fp16,
                  matcher_model=superglue_fp16),
        Registrar(replace(cuda, matcher=MatcherName.SUPERGLUE), matcher_model=superglue_fp32),
        case))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=1, default=str)[:6000])


if __name__ == "__main__":
    main()
