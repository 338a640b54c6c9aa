"""Static INT8 (QDQ) quantisation of the SuperPoint graph, calibrated on real fundus images.

What is quantised: the backbone and the first layer of the detector head (``Conv``, the
``Relu`` after each of them, which onnxruntime folds into the quantisation range, and the three
backbone ``MaxPool``). What stays float32: the detector head's last 1x1 convolution, whose
outputs are the logits, everything after it (softmax, depth-to-space, max-pool NMS, threshold,
TopK), and the descriptor head, which the graph runs only at the keypoints as two matrix
products (``SuperPoint.descriptors_at``; about 1.5 % of the graph's arithmetic at 1024
keypoints). Why the logits stay float: quantising them to 8 bits nearly doubled the keypoints
above the 0.005 threshold on fundus images (weak responses rounded up). The contract, the fixed keypoint slots and the ``ophreg.*`` metadata of the
float graph are kept; ``ophreg.precision`` and ``ophreg.calibration`` say what this graph is.

Calibration images are preprocessed exactly as the runtime does it
(``ophreg_rt.preprocess.network_input``), at the size the graph will run at.

``python -m export quantize --calibration IMG... [--held-out IMG...]`` writes the graph, records
it in the manifest beside it, and prints how far its keypoints and descriptors are from the
float graph's on the held-out images (exit 1 when past the stated floors).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx

from ophreg_rt.config import PreprocessConfig
from ophreg_rt.contract import (SUPERPOINT_OUTPUTS, MetaKey, ModelKind, SuperPointIO,
                                decode_metadata)
from ophreg_rt.imageio import read_image
from ophreg_rt.preprocess import network_input

from .common import attach_metadata, check_and_save, sha256_file, update_manifest
from .parity import onnx_session
from .settings import CalibrationMethodName, QuantizationSettings, QuantizedActivations

COMMAND = "quantize"
HELP = ("quantise the SuperPoint graph to INT8 (static, QDQ) with real fundus images as "
        "calibration, and measure it against the float graph")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = Path("models") / "superpoint.onnx"
DEFAULT_OUT = Path("models") / "superpoint_int8.onnx"

#: The value of ``ophreg.precision`` in a graph this module wrote.
PRECISION_INT8_QDQ = "int8-qdq"

#: A float keypoint counts as kept when the INT8 graph has a keypoint within this many pixels
#: of the network input (NMS works on whole pixels, so 1 px is one neighbouring pixel).
KEYPOINT_RADIUS_PX = 1.0
#: Floors of ``run``'s check on held-out images. Measured at 1024x1024 on held-out DRIVE
#: images: about 0.88 of the float keypoints kept and a median descriptor cosine of about
#: 0.996 (benchmarks/int8.py); the floors leave room for other images, not for a broken graph
#: (a wrong scale or zero point gives overlaps near 0 and cosines far below 0.9).
MIN_KEYPOINT_OVERLAP = 0.75
MIN_DESCRIPTOR_COSINE = 0.98


class FundusCalibrationReader:
    """Feeds onnxruntime's calibrator one preprocessed image at a time (batch 1).

    Implements onnxruntime's ``CalibrationDataReader`` protocol (``get_next``, ``rewind``);
    images are read lazily so a long calibration list does not sit in memory.
    """

    def __init__(self, paths: Sequence[str | Path], preprocess: PreprocessConfig):
        if not paths:
            raise ValueError("calibration needs at least one image")
        self.paths = [Path(p) for p in paths]
        self.preprocess = preprocess
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.paths):
            return None
        path = self.paths[self._next]
        self._next += 1
        return {SuperPointIO.IMAGE: network_input(read_image(path), self.preprocess)[None]}

    def rewind(self) -> None:
        self._next = 0

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def nodes_to_quantize(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes to quantise: see the module docstring for which and why.

    Found by structure, not by name, so a re-export that renames nodes keeps the same choice:
    a Conv is quantised when a Relu reads its output (the last conv of each head feeds softmax
    or the normaliser instead); a MaxPool is quantised when a Relu produced its input (the NMS
    max-pools read score maps, never a Relu).
    """
    producer = {output: node for node in model.graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reads_relu(node: onnx.NodeProto) -> bool:
        source = producer.get(node.input[0])
        return source is not None and source.op_type == "Relu"

    def feeds_relu(node: onnx.NodeProto) -> bool:
        return any(c.op_type == "Relu" for c in consumers.get(node.output[0], []))

    chosen = []
    for node in model.graph.node:
        if node.op_type == "Conv" and feeds_relu(node):
            chosen.append(node.name)
        elif node.op_type == "Relu" and producer.get(node.input[0]) is not None \
                and producer[node.input[0]].op_type == "Conv":
            chosen.append(node.name)
        elif node.op_type == "MaxPool" and reads_relu(node):
            chosen.append(node.name)
    by_name = {node.name: node for node in model.graph.node}
    if not any(by_name[name].op_type == "Conv" for name in chosen):
        raise ValueError("no Conv followed by Relu found: is this a SuperPoint graph?")
    return chosen


def describe_calibration(paths: Sequence[Path], preprocess: PreprocessConfig,
                         settings: QuantizationSettings) -> str:
    """The ``ophreg.calibration`` value: what calibrated the graph, readable in one line."""
    width, height = preprocess.size
    return (f"{len(paths)} images ({', '.join(p.name for p in paths)}); "
            f"preprocess {preprocess.mode.value} {width}x{height}; "
            f"method {settings.calibration.value}; activations {settings.activations.value}; "
            f"weights int8 {'per-channel' if settings.per_channel else 'per-tensor'}"
            f"{'; reduce_range' if settings.reduce_range else ''}"
            f"{'; ort pre-processing' if settings.ort_preprocess else ''}")


def quantize_superpoint(source: str | Path, out: str | Path,
                        calibration_paths: Sequence[str | Path],
                        settings: QuantizationSettings = QuantizationSettings(),
                        preprocess: PreprocessConfig = PreprocessConfig()
                        ) -> tuple[Path, dict[str, object]]:
    """Quantise the float SuperPoint graph ``source`` to ``out``; returns it and its metadata.

    The metadata is the source graph's ``ophreg.*`` entries plus precision and calibration.
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    source, out = Path(source), Path(out)
    calibration_paths = [Path(p) for p in calibration_paths]
    float_model = onnx.load(source)
    metadata: dict[str, object] = {
        prop.key[len("ophreg."):]: prop.value for prop in float_model.metadata_props
        if prop.key.startswith("ophreg.")}
    if metadata.get(MetaKey.MODEL) != ModelKind.SUPERPOINT:
        raise ValueError(f"{source}: not a SuperPoint graph (ophreg.model="
                         f"{metadata.get(MetaKey.MODEL)!r})")
    # Typed as the exporter wrote them, so the manifest records numbers as numbers.
    metadata.update(decode_metadata(
        {prop.key: prop.value for prop in float_model.metadata_props}, ModelKind.SUPERPOINT,
        source=str(source)))
    metadata[MetaKey.PRECISION] = PRECISION_INT8_QDQ
    metadata[MetaKey.CALIBRATION] = describe_calibration(calibration_paths, preprocess, settings)
    metadata[MetaKey.SOURCE_GRAPH_SHA256] = sha256_file(source)

    methods = {CalibrationMethodName.MINMAX: CalibrationMethod.MinMax,
               CalibrationMethodName.PERCENTILE: CalibrationMethod.Percentile,
               CalibrationMethodName.ENTROPY: CalibrationMethod.Entropy}
    activations = {QuantizedActivations.UINT8: QuantType.QUInt8,
                   QuantizedActivations.INT8: QuantType.QInt8}
    with tempfile.TemporaryDirectory(prefix="ophreg-quantize-") as scratch:
        to_quantize = source
        if settings.ort_preprocess:
            to_quantize = Path(scratch) / "preprocessed.onnx"
            quant_pre_process(str(source), str(to_quantize))
        nodes = nodes_to_quantize(onnx.load(to_quantize))
        quantized_path = Path(scratch) / "quantized.onnx"
        quantize_static(
            str(to_quantize), str(quantized_path),
            FundusCalibrationReader(calibration_paths, preprocess),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "Relu", "MaxPool"],
            nodes_to_quantize=nodes,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=activations[settings.activations],
            weight_type=QuantType.QInt8,
            calibrate_method=methods[settings.calibration],
            extra_options={"CalibPercentile": settings.percentile},
        )
        quantized = onnx.load(quantized_path)
    del quantized.metadata_props[:]
    attach_metadata(quantized, metadata)
    return check_and_save(quantized, out), metadata


# ----------------------------------------------------------------------------------------------
# Agreement with the float graph


@dataclass(frozen=True)
class Agreement:
    """INT8 vs float32 SuperPoint on one image.

    keypoint_overlap: share of the float keypoints with an INT8 keypoint within
        KEYPOINT_RADIUS_PX (network pixels).
    descriptor_cosine_median, descriptor_cosine_p5: cosine between the descriptors of those
        paired keypoints (median and 5th percentile); nan when no keypoint is paired.
    """

    num_float: int
    num_int8: int
    keypoint_overlap: float
    descriptor_cosine_median: float
    descriptor_cosine_p5: float

    def line(self) -> str:
        return (f"keypoints float={self.num_float} int8={self.num_int8} "
                f"overlap={self.keypoint_overlap:.3f} descriptor cosine median="
                f"{self.descriptor_cosine_median:.4f} p5={self.descriptor_cosine_p5:.4f}")


def agreement(float_output: Sequence[np.ndarray], int8_output: Sequence[np.ndarray],
              index: int = 0) -> Agreement:
    """Compare image ``index`` of two SuperPoint outputs (keypoints, scores, descriptors, mask)."""
    names = [spec.name for spec in SUPERPOINT_OUTPUTS]
    k, d, m = (names.index(SuperPointIO.KEYPOINTS), names.index(SuperPointIO.DESCRIPTORS),
               names.index(SuperPointIO.MASK))
    valid = []
    for output in (float_output, int8_output):
        mask = output[m][index]
        valid.append((output[k][index][mask].astype(np.float64),
                      output[d][index][mask].astype(np.float64)))
    (kf, df), (ki, di) = valid
    if len(kf) == 0 or len(ki) == 0:
        return Agreement(len(kf), len(ki), float(len(kf) == len(ki)), float("nan"), float("nan"))
    nearest, distance = _nearest(kf, ki)
    paired = distance <= KEYPOINT_RADIUS_PX
    if not paired.any():
        return Agreement(len(kf), len(ki), 0.0, float("nan"), float("nan"))
    cosine = np.sum(df[paired] * di[nearest[paired]], axis=1)
    return Agreement(len(kf), len(ki), float(paired.mean()), float(np.median(cosine)),
                     float(np.percentile(cosine, 5)))


def _nearest(points: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and distance to the nearest candidate of each point (chunked brute force)."""
    indices, distances = [], []
    for start in range(0, len(points), 512):
        block = np.linalg.norm(points[start:start + 512, None] - candidates[None], axis=2)
        indices.append(block.argmin(axis=1))
        distances.append(block.min(axis=1))
    return np.concatenate(indices), np.concatenate(distances)


def compare_graphs(float_path: str | Path, int8_path: str | Path, paths: Iterable[str | Path],
                   preprocess: PreprocessConfig = PreprocessConfig(),
                   threads: int | None = None) -> list[tuple[Path, Agreement]]:
    """Run both graphs on each image (one at a time) and compare them."""
    float_session = onnx_session(float_path, threads)
    int8_session = onnx_session(int8_path, threads)
    names = [spec.name for spec in SUPERPOINT_OUTPUTS]
    results = []
    for path in paths:
        image = network_input(read_image(path), preprocess)[None]
        float_output = float_session.run(names, {SuperPointIO.IMAGE: image})
        int8_output = int8_session.run(names, {SuperPointIO.IMAGE: image})
        results.append((Path(path), agreement(float_output, int8_output)))
    return results


# ----------------------------------------------------------------------------------------------
# CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = QuantizationSettings()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help=f"float SuperPoint graph (default {DEFAULT_SOURCE})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"graph to write (default {DEFAULT_OUT}); manifest.json beside it "
                        "is updated")
    parser.add_argument("--calibration", type=Path, nargs="+", required=True, metavar="IMAGE",
                        help="real fundus images to calibrate on (keep held-out ones apart)")
    parser.add_argument("--held-out", type=Path, nargs="*", default=[], metavar="IMAGE",
                        help="images not used for calibration, to compare INT8 with float on")
    parser.add_argument("--activations", default=defaults.activations.value,
                        choices=[a.value for a in QuantizedActivations],
                        help=f"activation type (default {defaults.activations.value})")
    parser.add_argument("--calibration-method", default=defaults.calibration.value,
                        choices=[m.value for m in CalibrationMethodName],
                        help=f"how ranges are chosen (default {defaults.calibration.value})")
    parser.add_argument("--per-tensor", action="store_true",
                        help="one weight scale per tensor instead of per output channel")
    parser.add_argument("--reduce-range", action="store_true",
                        help="7-bit weights (for CPUs without VNNI, where u8*s8 pairs saturate)")
    parser.add_argument("--ort-preprocess", action="store_true",
                        help="run onnxruntime's quantisation pre-processing "
                        "(symbolic shape inference, optimisation) first")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    for path in [args.source, *args.calibration, *args.held_out]:
        if not Path(path).is_file():
            print(f"error: file not found: {path}", file=sys.stderr)
            return 2
    overlap = {p.resolve() for p in args.calibration} & {p.resolve() for p in args.held_out}
    if overlap:
        print(f"error: held-out images are also calibration images: "
              f"{', '.join(sorted(p.name for p in overlap))}", file=sys.stderr)
        return 2
    settings = replace(QuantizationSettings(),
                       activations=QuantizedActivations(args.activations),
                       calibration=CalibrationMethodName(args.calibration_method),
                       per_channel=not args.per_tensor, reduce_range=args.reduce_range,
                       ort_preprocess=args.ort_preprocess)
    started = time.perf_counter()
    out, metadata = quantize_superpoint(args.source, args.out, args.calibration, settings)
    manifest = update_manifest(out, ModelKind.SUPERPOINT, str(metadata[MetaKey.WEIGHTS_FILE]),
                               str(metadata[MetaKey.WEIGHTS_SHA256]), metadata)
    print(f"wrote {out} ({out.stat().st_size:,} bytes, sha256 {sha256_file(out)}) "
          f"in {time.perf_counter() - started:.1f} s")
    print(f"updated {manifest}")
    print("metadata: " + ", ".join(f"{k}={v}" for k, v in metadata.items()))
    if not args.held_out:
        return 0
    print(f"int8 vs float on held-out images (floors: keypoint overlap {MIN_KEYPOINT_OVERLAP}, "
          f"median descriptor cosine {MIN_DESCRIPTOR_COSINE})")
    ok = True
    for path, figures in compare_graphs(args.source, out, args.held_out):
        passed = (figures.keypoint_overlap >= MIN_KEYPOINT_OVERLAP
                  and figures.descriptor_cosine_median >= MIN_DESCRIPTOR_COSINE)
        ok &= passed
        print(f"  {path.name}: {figures.line()} -> {'ok' if passed else 'FAILED'}")
    return 0 if ok else 1
