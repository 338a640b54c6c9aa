"""A stand-in for the one-graph registration, built with onnx.helper in well under a second.

It has the contract's input and output names, dtypes and ranks (ophreg_rt.contract,
REGISTRATION_INPUTS/OUTPUTS) and metadata, and answers with constants chosen by the test,
except for two outputs that depend on the pixels the caller decoded:

* ``warped`` is the moving image under the identity, cropped and zero-padded to the fixed
  image's height and width, which is what a real identity registration gives; a decoder or a
  layout error (rows/columns swapped, channels reordered) shows up in it;
* ``num_keypoints`` is the sum of every byte of each image, a checksum of the decoding.

So the JavaScript examples are tested end to end (decode, tensors, session, codes into words,
JSON, PNG) without torch or the weights; the real graph is tested separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ophreg_rt import contract

_ONNX_TYPES = {"uint8": TensorProto.UINT8, "int64": TensorProto.INT64,
               "float32": TensorProto.FLOAT, "bool": TensorProto.BOOL}
IO = contract.RegistrationIO


@dataclass(frozen=True)
class MockAnswer:
    """What the mock graph returns; defaults: an ok affine identity with 12 inliers."""

    status: int = 0
    reason: int = 0
    transform: int = 0
    matrix: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    coefficients: tuple = ((0.0, 0.0, 0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    loo_rms: tuple = (0.5, 0.6)  # px at the reference size; the quadratic's is worse
    quadratic_refusal: int = 6
    num_inliers: int = 12
    num_matches: int = 15
    max_keypoints: int = 32
    metadata: dict = field(default_factory=dict)


FAILED = MockAnswer(status=1, reason=4, matrix=((0.0,) * 3,) * 3,
                    coefficients=((0.0,) * 6,) * 2, loo_rms=(math.nan, math.nan),
                    quadratic_refusal=7, num_inliers=3, num_matches=5)
QUADRATIC = MockAnswer(transform=1, quadratic_refusal=0,
                       coefficients=((1e-5, 0.0, 0.0, 1.0, 0.0, 2.0),
                                     (0.0, 0.0, 0.0, 0.0, 1.0, -3.0)),
                       matrix=((1.0, 0.0, 2.0), (0.0, 1.0, -3.0), (0.0, 0.0, 1.0)))


def default_metadata() -> dict[str, str]:
    """Every key the contract requires of a registration graph, with values of its type."""
    samples = {int: 1, float: 0.5, str: "mock"}
    settings = {key: samples[kind] for key, kind in
                contract.REQUIRED_METADATA[contract.ModelKind.REGISTRATION].items()}
    settings.update({
        contract.MetaKey.CONTRACT_VERSION: contract.CONTRACT_VERSION,
        contract.MetaKey.MODEL: contract.ModelKind.REGISTRATION,
        contract.MetaKey.OPSET: contract.OPSET,
        contract.MetaKey.MATCHER: contract.ModelKind.LIGHTGLUE,
        contract.MetaKey.TRANSFORM_MODEL: "auto",
    })
    return contract.encode_metadata(settings)


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def build_mock_graph(answer: MockAnswer = MockAnswer()) -> onnx.ModelProto:
    k = answer.max_keypoints
    fixed, moving = IO.IMAGES
    matched = np.full((k, 2), -1.0, np.float32)
    matched[:answer.num_matches] = np.arange(answer.num_matches * 2).reshape(-1, 2) + 10.0
    mask = np.arange(k) < answer.num_matches
    scores = np.where(mask, np.linspace(0.9, 0.2, k), 0.0).astype(np.float32)
    constants = {
        IO.STATUS: np.array(answer.status, np.int64),
        IO.REASON: np.array(answer.reason, np.int64),
        IO.TRANSFORM: np.array(answer.transform, np.int64),
        IO.MATRIX: np.array(answer.matrix, np.float32),
        IO.COEFFICIENTS: np.array(answer.coefficients, np.float32),
        IO.LOO_RMS: np.array(answer.loo_rms, np.float32),
        IO.QUADRATIC_REFUSAL: np.array(answer.quadratic_refusal, np.int64),
        IO.NUM_INLIERS: np.array(answer.num_inliers, np.int64),
        IO.MATCHED_KEYPOINTS[0]: matched,
        IO.MATCHED_KEYPOINTS[1]: matched + 1.0,
        IO.MATCH_SCORES: scores,
        IO.MATCH_MASK: mask,
        IO.INLIERS: np.arange(k) < answer.num_inliers,
    }
    nodes = [_constant(name, value) for name, value in constants.items()]
    nodes += [
        _constant("zero", np.array(0, np.int64)),
        _constant("rows_columns", np.array([0, 1], np.int64)),
        _constant("starts", np.array([0, 0], np.int64)),
        _constant("no_pad_before", np.array([0, 0, 0], np.int64)),
        _constant("no_pad_channels", np.array([0], np.int64)),
        # Identity warp: moving[:H0, :W0], padded with zeros up to H0 x W0.
        helper.make_node("Shape", [fixed], ["fixed_shape"], end=2),
        helper.make_node("Shape", [moving], ["moving_shape"], end=2),
        helper.make_node("Slice", [moving, "starts", "fixed_shape", "rows_columns"], ["cropped"]),
        helper.make_node("Sub", ["fixed_shape", "moving_shape"], ["shortfall"]),
        helper.make_node("Max", ["shortfall", "zero"], ["pad_after"]),
        helper.make_node("Concat", ["no_pad_before", "pad_after", "no_pad_channels"], ["pads"],
                         axis=0),
        helper.make_node("Pad", ["cropped", "pads"], [IO.WARPED]),
        # Decoding checksums: the sum of every byte of each image.
        helper.make_node("Cast", [fixed], ["fixed_wide"], to=TensorProto.INT64),
        helper.make_node("Cast", [moving], ["moving_wide"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["fixed_wide"], ["fixed_sum"], keepdims=1),
        helper.make_node("ReduceSum", ["moving_wide"], ["moving_sum"], keepdims=1),
        helper.make_node("Reshape", ["fixed_sum", "one_element"], ["fixed_sum_1"]),
        helper.make_node("Reshape", ["moving_sum", "one_element"], ["moving_sum_1"]),
        helper.make_node("Concat", ["fixed_sum_1", "moving_sum_1"], [IO.NUM_KEYPOINTS], axis=0),
        _constant("one_element", np.array([1], np.int64)),
    ]
    inputs = [helper.make_tensor_value_info(spec.name, _ONNX_TYPES[spec.dtype], list(spec.shape))
              for spec in contract.REGISTRATION_INPUTS]
    outputs = [helper.make_tensor_value_info(
        spec.name, _ONNX_TYPES[spec.dtype],
        [k if d == contract.MAX_KEYPOINTS else d for d in spec.shape])
        for spec in contract.REGISTRATION_OUTPUTS]
    graph = helper.make_graph(_topological(nodes), "mock_registration", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", contract.OPSET)],
                              producer_name="tests/examples/mock_graph.py")
    model.ir_version = 8  # what onnxruntime 1.14+ (node and web builds alike) reads
    metadata = {**default_metadata(),
                **contract.encode_metadata({contract.MetaKey.MAX_KEYPOINTS: k}),
                **answer.metadata}
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def _topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes in an order where every input is made before it is read."""
    made = {spec.name for spec in contract.REGISTRATION_INPUTS}
    ordered, waiting = [], list(nodes)
    while waiting:
        ready = [n for n in waiting if all(i in made for i in n.input if i)]
        if not ready:
            raise ValueError("mock graph has a cycle or a missing input")
        for node in ready:
            ordered.append(node)
            made.update(node.output)
            waiting.remove(node)
    return ordered


def write_mock_graph(path: Path, answer: MockAnswer = MockAnswer()) -> Path:
    onnx.save(build_mock_graph(answer), str(path))
    return path
