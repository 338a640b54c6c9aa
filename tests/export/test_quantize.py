"""The INT8 SuperPoint graph keeps the runtime's contract and stays close to the float graph.

The graph is quantised here from the shipped float graph with two real DRIVE images (21, 22)
at 256x256, small so the test stays short; agreement is measured on a held-out image, the CC0
retina, at the same size. Measured there: 307 INT8 vs 303 float keypoints, 0.93 of the float
keypoints found within 1 px, median descriptor cosine 0.997 (at 1024x1024 with ten
calibration images, benchmarks/int8.py: about 0.9 and 0.995). The floors (0.75, 0.98, count
ratio within 10 %) leave room for onnxruntime versions and CPUs, not for a broken graph: with
the detector logits quantised as well, the count ratio was 1.21 at 256 and 1.77 at 1024; a
wrong scale or zero point gives overlaps near 0.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from benchmarks.known_truth import make_cases, mean_fov_error
from export.quantize import (PRECISION_INT8_QDQ, agreement, nodes_to_quantize,
                             quantize_superpoint)
from export.quantize import run as run_quantize
from export.settings import QuantizationSettings
from ophreg_rt import Registrar, RegistrarConfig
from ophreg_rt.cli import main as cli_main
from ophreg_rt.config import PreprocessConfig
from ophreg_rt.contract import SUPERPOINT_OUTPUTS, MetaKey, SuperPointIO
from ophreg_rt.features import SuperPointRunner
from ophreg_rt.imageio import read_image, write_image
from ophreg_rt.preprocess import network_input
from ophreg_rt.sessions import sha256_file

from conftest import CC0_RETINA, MODELS_DIR

pytestmark = pytest.mark.export

SIZE = (256, 256)
FLOAT_GRAPH = MODELS_DIR / "superpoint.onnx"
#: Share of the float keypoints the INT8 graph must find within 1 px on the held-out image.
OVERLAP_FLOOR = 0.75
#: Median cosine between the descriptors of those keypoints.
COSINE_FLOOR = 0.98


@pytest.fixture(scope="module")
def calibration_images(data_dir):
    paths = [data_dir / "single" / "drive_training" / f"{n}_training.tif" for n in (21, 22)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"calibration images missing: {missing}")
    return paths


@pytest.fixture(scope="module")
def int8_graph(tmp_path_factory, calibration_images):
    out = tmp_path_factory.mktemp("int8") / "superpoint_int8.onnx"
    path, metadata = quantize_superpoint(FLOAT_GRAPH, out, calibration_images,
                                         QuantizationSettings(), PreprocessConfig(size=SIZE))
    return path, metadata


def test_only_backbone_and_first_head_layers_are_chosen_for_quantisation():
    model = onnx.load(FLOAT_GRAPH)
    chosen = set(nodes_to_quantize(model))
    by_type: dict[str, list] = {}
    for node in model.graph.node:
        by_type.setdefault(node.op_type, []).append(node)
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    convs = by_type["Conv"]
    float_convs = [n for n in convs if n.name not in chosen]
    # SuperPoint: 8 backbone convs + the detector head's two; its last 1x1 conv stays float.
    # The descriptor head runs at the keypoints only, as matrix products, all float.
    assert len(convs) == 10 and len(float_convs) == 1
    assert sorted(readers[float_convs[0].output[0]]) == ["Softmax"]
    assert not any(n.name in chosen for t in ("MatMul", "Gemm") for n in by_type.get(t, []))
    pools = by_type["MaxPool"]
    assert sum(p.name in chosen for p in pools) == 3  # backbone pools; the NMS pools stay float
    assert not any(n.name in chosen for t in ("TopK", "GridSample", "Softmax", "Where")
                   for n in by_type.get(t, []))


def test_int8_graph_keeps_the_contract_and_says_what_it_is(int8_graph, calibration_images):
    path, _ = int8_graph
    runner = SuperPointRunner(path, threads=2)  # verifies contract version, I/O and metadata
    float_runner = SuperPointRunner(FLOAT_GRAPH, threads=2)
    recorded = runner.model.metadata
    for key, value in float_runner.model.metadata.items():
        assert recorded[key] == value, key
    custom = runner.model.session.get_modelmeta().custom_metadata_map
    assert custom["ophreg." + MetaKey.PRECISION] == PRECISION_INT8_QDQ
    calibration = custom["ophreg." + MetaKey.CALIBRATION]
    assert all(p.name in calibration for p in calibration_images) and "256x256" in calibration
    assert custom["ophreg." + MetaKey.SOURCE_GRAPH_SHA256] == sha256_file(FLOAT_GRAPH)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_keypoints_and_descriptors_agree_with_float_on_a_held_out_image(int8_graph):
    path, _ = int8_graph
    import onnxruntime as ort

    image = network_input(read_image(CC0_RETINA), PreprocessConfig(size=SIZE))[None]
    names = [spec.name for spec in SUPERPOINT_OUTPUTS]
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
               .run(names, {SuperPointIO.IMAGE: image}) for p in (FLOAT_GRAPH, path)]
    figures = agreement(*outputs)
    assert figures.num_float > 50, figures
    # Measured 307 vs 303; with the detector logits quantised too it was 368 vs 303 (1.21).
    assert 0.9 <= figures.num_int8 / figures.num_float <= 1.1, figures
    assert figures.keypoint_overlap >= OVERLAP_FLOOR, figures
    assert figures.descriptor_cosine_median >= COSINE_FLOOR, figures


def test_registrar_and_cli_register_a_known_warp_with_the_int8_graph(int8_graph, tmp_path):
    path, _ = int8_graph
    case = make_cases([CC0_RETINA], per_image=1, seed=3)[0]
    registrar = Registrar(RegistrarConfig(preprocess=PreprocessConfig(size=SIZE), threads=2),
                          superpoint_model=path)
    result = registrar.register(case.fixed, case.moving)
    assert result.ok, result.reason
    assert mean_fov_error(result, case) < 5.0
    assert result.models["superpoint"]["file"] == path.name

    fixed, moving = tmp_path / "fixed.png", tmp_path / "moving.png"
    write_image(fixed, case.fixed)
    write_image(moving, case.moving)
    report = tmp_path / "result.json"
    code = cli_main(["register", str(fixed), str(moving), "--superpoint", str(path),
                     "--size", str(SIZE[0]), "--threads", "2", "--json", str(report)])
    assert code == 0
    written = json.loads(report.read_text())
    assert written["models"]["superpoint"]["sha256"] == sha256_file(path)
    assert np.allclose(written["affine"], result.affine, atol=1e-6)


def test_quantize_command_refuses_a_held_out_image_that_is_also_calibration(capsys):
    args = argparse.Namespace(source=FLOAT_GRAPH, out=None, calibration=[CC0_RETINA],
                              held_out=[CC0_RETINA])
    assert run_quantize(args) == 2
    assert "also calibration" in capsys.readouterr().err
