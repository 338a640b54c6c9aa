"""Sessions refuse graphs that break the contract and providers that were not applied."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from ophreg_rt.config import Device
from ophreg_rt.contract import (CONTRACT_VERSION, SUPERPOINT_INPUTS, SUPERPOINT_OUTPUTS,
                                MetaKey, ModelKind, encode_metadata)
from ophreg_rt.errors import ContractMismatchError, ModelError, ProviderUnavailableError
from ophreg_rt.sessions import load_model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

K = 16
_TYPES = {"float32": TensorProto.FLOAT, "bool": TensorProto.BOOL, "int64": TensorProto.INT64}


def _fake_superpoint(path, metadata=None, drop_output=None, mask_type="bool"):
    """A graph with SuperPoint's declared I/O whose outputs are constants: enough to load."""
    inputs = [helper.make_tensor_value_info(s.name, _TYPES[s.dtype],
                                            [K if d == "max_keypoints" else d for d in s.shape])
              for s in SUPERPOINT_INPUTS]
    outputs, nodes = [], []
    for spec in SUPERPOINT_OUTPUTS:
        if spec.name == drop_output:
            continue
        dtype = mask_type if spec.name == "mask" else spec.dtype
        shape = [1 if d == "batch" else K if d == "max_keypoints" else d for d in spec.shape]
        outputs.append(helper.make_tensor_value_info(spec.name, _TYPES[dtype], shape))
        value = np.zeros(shape, dtype=np.dtype(dtype))
        nodes.append(helper.make_node("Constant", [], [spec.name],
                                      value=onnx.numpy_helper.from_array(value)))
    graph = helper.make_graph(nodes, "fake", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is None:
        metadata = {MetaKey.CONTRACT_VERSION: CONTRACT_VERSION, MetaKey.MODEL: ModelKind.SUPERPOINT,
                    MetaKey.WEIGHTS_FILE: "w.pth", MetaKey.WEIGHTS_SHA256: "0" * 64,
                    MetaKey.OPSET: 17, MetaKey.NMS_RADIUS: 4, MetaKey.KEYPOINT_THRESHOLD: 0.005,
                    MetaKey.REMOVE_BORDERS: 4, MetaKey.MAX_KEYPOINTS: K}
    for key, value in encode_metadata(metadata).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def _load(path, **kwargs):
    return load_model(path, ModelKind.SUPERPOINT, SUPERPOINT_INPUTS, SUPERPOINT_OUTPUTS, **kwargs)


def test_a_conforming_graph_loads_with_its_settings_and_provider(tmp_path):
    loaded = _load(_fake_superpoint(tmp_path / "sp.onnx"))
    assert loaded.provider == "CPUExecutionProvider"
    assert loaded.metadata[MetaKey.MAX_KEYPOINTS] == K
    assert loaded.metadata[MetaKey.KEYPOINT_THRESHOLD] == pytest.approx(0.005)
    assert len(loaded.sha256) == 64


def test_missing_and_unreadable_model_files_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        _load(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf")
    with pytest.raises(ModelError, match="junk.onnx: onnxruntime cannot load it"):
        _load(junk)


@pytest.mark.parametrize("change, message", [
    ({MetaKey.MODEL: "superglue"}, "expected a superpoint graph, found model='superglue'"),
    ({MetaKey.CONTRACT_VERSION: "0"}, "expected contract version"),
    ({MetaKey.MAX_KEYPOINTS: "many"}, "is not an integer"),
])
def test_metadata_that_breaks_the_contract_is_named(tmp_path, change, message):
    metadata = {MetaKey.CONTRACT_VERSION: CONTRACT_VERSION, MetaKey.MODEL: ModelKind.SUPERPOINT,
                MetaKey.WEIGHTS_FILE: "w.pth", MetaKey.WEIGHTS_SHA256: "0" * 64,
                MetaKey.OPSET: 17, MetaKey.NMS_RADIUS: 4, MetaKey.KEYPOINT_THRESHOLD: 0.005,
                MetaKey.REMOVE_BORDERS: 4, MetaKey.MAX_KEYPOINTS: K, **change}
    with pytest.raises(ContractMismatchError, match=message):
        _load(_fake_superpoint(tmp_path / "sp.onnx", metadata=metadata))


def test_a_graph_without_ophreg_metadata_is_refused(tmp_path):
    with pytest.raises(ContractMismatchError, match="no 'ophreg.\\*' metadata"):
        _load(_fake_superpoint(tmp_path / "sp.onnx", metadata={}))


def test_missing_outputs_and_wrong_dtypes_are_refused(tmp_path):
    with pytest.raises(ContractMismatchError, match="output 'descriptors' missing"):
        _load(_fake_superpoint(tmp_path / "a.onnx", drop_output="descriptors"))
    with pytest.raises(ContractMismatchError, match="output 'mask' is tensor\\(float\\)"):
        _load(_fake_superpoint(tmp_path / "b.onnx", mask_type="float32"))


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has CUDA; the refusal is for CPU-only builds")
def test_cuda_without_the_cuda_provider_is_an_error_unless_fallback_is_allowed(tmp_path):
    path = _fake_superpoint(tmp_path / "sp.onnx")
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider is not available"):
        _load(path, device=Device.CUDA)
    loaded = _load(path, device=Device.CUDA, allow_cpu_fallback=True)
    assert loaded.provider == "CPUExecutionProvider"
