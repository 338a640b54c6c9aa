"""Every exporter's way from a PyTorch module to an ONNX graph at the contract's opset: the
dynamo export, the checked opset-18 -> 17 rewrite it needs, and the removal of trace notes."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import onnx
import torch
from torch import nn

from ophreg_rt.contract import OPSET

from .common import name_dimensions

#: The opset the dynamo exporter writes natively (its torchlib has no lower implementations).
_EXPORTER_OPSET = 18

#: Reductions whose ``axes`` moved from an attribute to an optional input in opset 18 (and
#: which gained ``noop_with_empty_axes``); ReduceSum made that move in 13 and is unaffected.
_AXES_INPUT_SINCE_18 = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSumSquare"})


def export_with_dynamo(model: nn.Module, examples: tuple[torch.Tensor, ...], inputs, outputs,
                       dynamic_shapes: dict) -> onnx.ModelProto:
    """Every exporter's path to an ONNX graph at the contract's opset, names and dimensions.

    The dynamo exporter handles independent dynamic dims and turns torch.while_loop into one
    ONNX Loop. It writes opset 18; its own down-conversion to 17 fails on these graphs
    (onnxscript hands initializers to the onnx C converter as graph inputs, so the converter
    cannot read the constant ``axes`` of the reductions, and it does not descend into Loop
    bodies), hence the small, checked conversion of ``downgrade_opset_18_to_17``.
    ``inputs``/``outputs``: the contract's TensorSpecs, in the order of ``model.forward``.
    """
    with torch.no_grad(), warnings.catch_warnings():
        # The exporter warns that it keeps one of two identical names for each dimension.
        warnings.filterwarnings("ignore", message="# The axis name")
        program = torch.onnx.export(
            model.eval(), examples, dynamo=True, opset_version=max(OPSET, _EXPORTER_OPSET),
            input_names=[spec.name for spec in inputs],
            output_names=[spec.name for spec in outputs],
            dynamic_shapes=dynamic_shapes, external_data=False, optimize=True, verbose=False)
    proto = program.model_proto
    if OPSET < _EXPORTER_OPSET:
        downgrade_opset_18_to_17(proto)
    name_dimensions(proto, tuple(inputs) + tuple(outputs))
    return proto


def export_matcher(model: nn.Module, examples: tuple[torch.Tensor, ...], inputs,
                   outputs) -> onnx.ModelProto:
    """A matcher as a graph whose every axis the contract names (``batch``, ``num_keypoints0``,
    ``num_keypoints1``) is dynamic. ``model.forward`` must take the contract's inputs, in order:
    the graph's inputs are named after them, so a mismatch would silently swap two tensors."""
    dims: dict[str, torch.export.Dim] = {}
    dynamic = {spec.name: {axis: dims.setdefault(name, torch.export.Dim(name, min=1))
                           for axis, name in enumerate(spec.shape) if isinstance(name, str)}
               for spec in inputs}
    parameters = list(inspect.signature(model.forward).parameters)
    if parameters != [spec.name for spec in inputs]:
        raise RuntimeError(f"{type(model).__name__}.forward takes {parameters}, the contract's "
                           f"inputs are {[spec.name for spec in inputs]}")
    return export_with_dynamo(model, examples, inputs, outputs, dynamic)


def _default_opset(model: onnx.ModelProto) -> onnx.OperatorSetIdProto:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry
    raise ValueError("model imports no default-domain opset")


def downgrade_opset_18_to_17(model: onnx.ModelProto) -> None:
    """Rewrite an opset-18 graph as opset 17, in place, or raise if it needs more than this.

    The only rewrite: the reductions of ``_AXES_INPUT_SINCE_18`` get their constant ``axes``
    input back as an attribute, and ``noop_with_empty_axes`` (which 17 lacks) is dropped when
    it is 0 (its default, the only value 17 can express). Every other node must be an operator
    whose definition is the same in opsets 17 and 18; anything else raises ValueError.
    Subgraphs (Loop, If bodies) are rewritten too.
    """
    opset = _default_opset(model)
    if opset.version != 18:
        raise ValueError(f"expected an opset-18 graph, found opset {opset.version}")

    def constant_of(node: onnx.NodeProto) -> np.ndarray | None:
        for attr in node.attribute:
            if attr.name == "value":
                return onnx.numpy_helper.to_array(attr.t)
            if attr.name == "value_ints":
                return np.array(attr.ints, dtype=np.int64)
        return None

    def visit(graph: onnx.GraphProto, outer: dict[str, np.ndarray]) -> None:
        constants = dict(outer)
        constants.update({t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer})
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = constant_of(node)
                if value is not None:
                    constants[node.output[0]] = value
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g, constants)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        visit(sub, constants)
            if node.domain not in ("", "ai.onnx"):
                raise ValueError(f"node {node.name!r}: operator {node.domain}::{node.op_type} "
                                 f"is outside the default ONNX domain")
            if node.op_type in _AXES_INPUT_SINCE_18:
                for attr in list(node.attribute):
                    if attr.name == "noop_with_empty_axes":
                        if attr.i != 0:
                            raise ValueError(f"node {node.name!r}: noop_with_empty_axes=1 has no "
                                             f"opset-17 equivalent")
                        node.attribute.remove(attr)
                if len(node.input) > 1 and node.input[1]:
                    axes = constants.get(node.input[1])
                    if axes is None:
                        raise ValueError(f"node {node.name!r}: axes {node.input[1]!r} is not a "
                                         f"constant")
                    del node.input[1:]
                    node.attribute.append(
                        onnx.helper.make_attribute("axes", [int(a) for a in axes.reshape(-1)]))
                continue
            old = onnx.defs.get_schema(node.op_type, 17, "").since_version
            new = onnx.defs.get_schema(node.op_type, 18, "").since_version
            if old != new:
                raise ValueError(f"node {node.name!r}: {node.op_type} changed in opset {new}; "
                                 f"no opset-17 rewrite is implemented for it")

    visit(model.graph, {})
    opset.version = 17
    # Drop initializers that only fed the axes inputs moved to attributes.
    used: set[str] = set()

    def collect(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            used.update(node.input)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    collect(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        collect(sub)
        used.update(output.name for output in graph.output)

    collect(model.graph)
    unused = [t for t in model.graph.initializer if t.name not in used]
    for tensor in unused:
        model.graph.initializer.remove(tensor)


def strip_trace_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node trace notes (Python stack traces with source line numbers,
    FX node dumps): they make the file change whenever a comment moves a line, and they are no
    part of the computation. Model-level ``ophreg.*`` metadata is untouched."""
    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(proto.graph)
