"""examples/node/register.mjs: the one-graph registration from Node (onnxruntime-node, sharp).

Most tests run it on a mock graph (tests/examples/mock_graph.py: the contract's names, constant
answers, an identity warp and byte-sum checksums of the decoded images), so decoding, tensor
layout, codes into words, the JSON fields, warped.png, exit codes and refusals are tested in
seconds without torch. The real graph's tests (export, slow) compare the command with the
Python side on a dev pair.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CC0_RETINA
# Fixtures (node, node_example) are imported for pytest to find them here.
from examples_support import (DEV_PAIR, SAME_TRANSFORM_PX, assert_one_line_error,  # noqa: F401
                              cli_register,
                              node, node_example, python_reference, run_register,
                              sha256, transform_gap_px, without_run_fields)
from mock_graph import FAILED, QUADRATIC, MockAnswer, write_mock_graph

from benchmarks.embeddings import node_graph_times
from ophreg_rt import contract, one_graph
from ophreg_rt.config import TransformModel
from ophreg_rt.imageio import read_image
from ophreg_rt.quadratic import QUADRATIC_TERMS
from ophreg_rt.registrar import RegistrationResult


CONTRACT_JSON = Path(__file__).resolve().parents[2] / "examples" / "common" / "contract.json"


def test_the_javascript_contract_is_generated_from_contract_py():
    import importlib.util

    spec = importlib.util.spec_from_file_location("contract_json", CONTRACT_JSON.parent /
                                                  "contract_json.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert CONTRACT_JSON.read_text() == generator.rendered(), (
        "examples/common/contract.json is stale: run python examples/common/contract_json.py")
    document = json.loads(CONTRACT_JSON.read_text())
    assert document["reasons"] == list(contract.REGISTRATION_REASONS)
    assert document["quadratic_refusals"] == list(contract.QUADRATIC_REFUSALS)
    assert [o["name"] for o in document["outputs"]] == [o.name for o in
                                                        contract.REGISTRATION_OUTPUTS]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("graphs")
    wrong_model = MockAnswer(metadata={"ophreg.model": contract.ModelKind.SUPERPOINT})
    wrong_version = MockAnswer(metadata={"ophreg.contract_version": "0"})
    return {name: write_mock_graph(folder / f"{name}.onnx", answer) for name, answer in
            {"ok": MockAnswer(), "failed": FAILED, "quadratic": QUADRATIC,
             "wrong_model": wrong_model, "wrong_version": wrong_version}.items()}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """The CC0 image as fixed, and moving images of other sizes, channels and formats."""
    folder = tmp_path_factory.mktemp("images")
    rgb = read_image(CC0_RETINA)
    crop = rgb[40:1200, 100:1300]  # smaller than fixed: the identity warp pads it
    bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
    files = {"fixed": CC0_RETINA, "moving_png": folder / "moving.png",
             "moving_grey_pgm": folder / "moving.pgm", "moving_grey_jpg": folder / "grey.jpg",
             "moving_commented_ppm": folder / "commented.ppm", "truncated_pgm": folder / "cut.pgm",
             "moving_rgba_png": folder / "rgba.png",
             "moving_tall_tiff": folder / "tall.tiff", "bmp": folder / "moving.bmp",
             "moving_png16": folder / "deep.png", "truncated_jpg": folder / "cut.jpg",
             "text": folder / "notes.jpg"}
    cv2.imwrite(str(files["moving_png"]), bgr)
    cv2.imwrite(str(files["moving_grey_pgm"]), crop[:, :, 1])
    cv2.imwrite(str(files["moving_grey_jpg"]), crop[:, :, 0])
    height, width = crop.shape[:2]
    files["moving_commented_ppm"].write_bytes(  # comments and spacing Netpbm allows
        f"P6 # written by a test\n{width}\t{height}\n# maxval next\n255\n".encode()
        + crop.tobytes())
    files["truncated_pgm"].write_bytes(f"P5\n{width} {height}\n255\n".encode()
                                       + crop[:, :, 1].tobytes()[:-10])
    alpha = np.full(crop.shape[:2], 200, np.uint8)
    cv2.imwrite(str(files["moving_rgba_png"]), np.dstack([bgr, alpha]))
    cv2.imwrite(str(files["moving_tall_tiff"]), cv2.resize(bgr, (700, 1600)))  # taller: cropped
    cv2.imwrite(str(files["bmp"]), bgr)
    # 16 bits with a range to stretch: 12-bit values, offset.
    cv2.imwrite(str(files["moving_png16"]), crop.astype(np.uint16) * 13 + 500)
    files["truncated_jpg"].write_bytes(CC0_RETINA.read_bytes()[:20000])
    files["text"].write_text("not an image\n")
    return files


def _identity_warp(moving: np.ndarray, fixed_shape: tuple[int, ...]) -> np.ndarray:
    """What the mock graph's warp gives: moving cropped and zero-padded to the fixed size."""
    height, width = fixed_shape[:2]
    expected = np.zeros((height, width) + moving.shape[2:], np.uint8)
    rows, columns = min(height, moving.shape[0]), min(width, moving.shape[1])
    expected[:rows, :columns] = moving[:rows, :columns]
    return expected


def _cli_fields() -> set[str]:
    empty = np.zeros((0, 2))
    result = RegistrationResult(status="ok", reason=None, transform=TransformModel.AFFINE,
                                matrix=np.eye(3), fixed_size=(1, 1), moving_size=(1, 1),
                                keypoints_fixed=empty, keypoints_moving=empty,
                                matches=np.zeros((0, 2), int), match_scores=np.zeros(0),
                                inliers=np.zeros(0, bool))
    return set(result.to_json())


@pytest.mark.parametrize("moving_key", ["moving_png", "moving_grey_pgm", "moving_commented_ppm",
                                        "moving_grey_jpg", "moving_rgba_png", "moving_tall_tiff",
                                        "moving_png16"])
def test_it_decodes_like_the_cli_and_writes_one_graphs_json(node_example, graphs, images,
                                                            moving_key, tmp_path):
    fixed_path, moving_path = images["fixed"], images[moving_key]
    completed = run_register(node_example, fixed_path, moving_path, "--model", graphs["ok"],
                             "--out", tmp_path / "out")
    assert completed.returncode == 0, completed.stderr
    record = json.loads(completed.stdout)
    # The graph saw exactly the Python side's pixels (OpenCV's decoding, 16 bits stretched as
    # one_graph.as_graph_image does): the mock's num_keypoints are byte sums of its inputs, and
    # its identity warp gives back the moving image, layout and channels kept.
    reference = python_reference(graphs["ok"], fixed_path, moving_path).to_json()
    assert without_run_fields(record) == without_run_fields(reference)
    moving = one_graph.as_graph_image(read_image(moving_path), "moving")
    warped = cv2.imread(str(tmp_path / "out" / "warped.png"), cv2.IMREAD_UNCHANGED)
    if warped.ndim == 3:
        warped = cv2.cvtColor(warped, cv2.COLOR_BGRA2RGBA if warped.shape[2] == 4
                              else cv2.COLOR_BGR2RGB)
    fixed_shape = (record["fixed_size"][1], record["fixed_size"][0])
    expected = _identity_warp(moving, fixed_shape)
    np.testing.assert_array_equal(warped, expected[:, :, 0] if moving.shape[2] == 1 else expected)
    # What the mock answers, in the runtime's words and fields.
    assert set(record) == _cli_fields()
    assert record["num_keypoints"][1] == int(moving.sum(dtype=np.int64))
    assert record["status"] == "ok" and record["reason"] is None
    assert record["matrix"] == np.eye(3).tolist() and record["affine"] == np.eye(3)[:2].tolist()
    scale = max(record["fixed_size"]) / 1024  # loo_rms: px at 1024 in the graph, fixed px here
    assert record["model_selection"] == {
        "requested": "auto",
        "loo_rms_px": {"affine": round(0.5 * scale, 4), "quadratic": round(0.6 * scale, 4)},
        "chosen": "affine",
        "why_not_quadratic": "the quadratic predicts held-out inliers 1.20 times as far as the "
                             "affine, not below 0.95"}
    assert (record["num_matches"], record["num_inliers"]) == (15, 12)
    assert record["models"] == {"registration": {"file": "ok.onnx",
                                                 "sha256": sha256(graphs["ok"])}}
    assert record["provider"] == "CPUExecutionProvider"
    assert set(record["timings_ms"]) == {"read", "load", "graph", "total"}
    assert completed.stderr.startswith("ok: 12/15 inliers")


def test_a_quadratic_is_reported_with_its_terms_and_coefficients(node_example, graphs, images,
                                                                 tmp_path):
    completed = run_register(node_example, images["fixed"], images["moving_png"], "--model",
                             graphs["quadratic"], "--json", tmp_path / "result.json")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""
    record = json.loads((tmp_path / "result.json").read_text())
    reference = python_reference(graphs["quadratic"], images["fixed"],
                                 images["moving_png"]).to_json()
    assert without_run_fields(record) == without_run_fields(reference)
    assert record["transform"] == "quadratic"
    assert record["matrix"] is None and record["affine"] is None
    assert record["quadratic"]["terms"] == list(QUADRATIC_TERMS)
    np.testing.assert_allclose(record["quadratic"]["coefficients"], QUADRATIC.coefficients,
                               rtol=1e-6)  # float32 in the graph
    assert record["model_selection"]["chosen"] == "quadratic"
    assert "why_not_quadratic" not in record["model_selection"]


def test_a_refusal_exits_3_and_removes_an_earlier_warp(node_example, graphs, images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "warped.png").write_bytes(b"an earlier run's warp")
    completed = run_register(node_example, images["fixed"], images["moving_png"], "--model",
                             graphs["failed"], "--out", out, "--force")
    assert completed.returncode == 3, completed.stderr
    record = json.loads(completed.stdout)
    reference = python_reference(graphs["failed"], images["fixed"], images["moving_png"]).to_json()
    assert without_run_fields(record) == without_run_fields(reference)
    assert record["status"] == "failed"
    assert record["reason"] == contract.REGISTRATION_REASONS[FAILED.reason]
    assert record["affine"] is None and record["matrix"] is None and record["quadratic"] is None
    assert record["model_selection"] is None  # no affine was accepted: nothing was grown
    assert not (out / "warped.png").exists()
    assert completed.stderr.strip().endswith(f"({contract.REGISTRATION_REASONS[FAILED.reason]})")


@pytest.mark.parametrize("case, fragments", [
    ("missing", ("no-such.jpg", "no such file")),
    ("text", ("notes.jpg", "not an image")),
    ("bmp", ("moving.bmp", "BMP is not read")),
    ("truncated_jpg", ("cut.jpg", "cannot be decoded")),
    ("truncated_pgm", ("cut.pgm", "truncated")),
    ("existing_output", ("warped.png", "already exists", "--force")),
    ("not_onnx", ("package.json", "not an ONNX model")),
    ("wrong_model", ("wrong_model.onnx", "expected a registration graph", "superpoint")),
    ("wrong_version", ("wrong_version.onnx", "contract version 1", "found 0")),
    ("threads", ("--threads 0",)),
    ("unknown_option", ("--bogus",)),
])
def test_bad_input_is_one_line_naming_the_file_and_exit_2(node_example, graphs, images,
                                                          tmp_path, case, fragments):
    fixed, moving, model = images["fixed"], images["moving_png"], graphs["ok"]
    extra: list[object] = []
    if case == "missing":
        moving = tmp_path / "no-such.jpg"
    elif case in ("text", "bmp", "truncated_jpg", "truncated_pgm"):
        moving = images[case]
    elif case == "existing_output":
        (tmp_path / "warped.png").write_bytes(b"keep me")
        extra = ["--out", tmp_path]
    elif case == "not_onnx":
        model = Path(__file__).resolve().parents[2] / "examples" / "node" / "package.json"
    elif case in ("wrong_model", "wrong_version"):
        model = graphs[case]
    elif case == "threads":
        extra = ["--threads", "0"]
    elif case == "unknown_option":
        extra = ["--bogus"]
    completed = run_register(node_example, fixed, moving, "--model", model, *extra)
    assert_one_line_error(completed, *fragments)
    if case == "existing_output":
        assert (tmp_path / "warped.png").read_bytes() == b"keep me"


@pytest.mark.parametrize("width, height, channels, fragment", [
    (0, 5, 1, "the image has no pixels (0x5)"), (7, 0, 3, "the image has no pixels (7x0)"),
    (2, 2, 2, "2 channels; the graph takes 1 (grey), 3 (RGB) or 4 (RGBA)"),
    (2, 2, 3, "expected 2x2x3 bytes of pixels"),
])
def test_the_shared_module_refuses_what_the_graph_cannot_take(node_example, width, height,
                                                              channels, fragment):
    """registration.mjs's imageTensor, which every embedding calls before the graph (an empty
    moving image would stop the graph's warp with an onnxruntime error, not a refusal)."""
    module = (Path(__file__).resolve().parents[2] / "examples" / "common" / "registration.mjs")
    script = (f"const m = await import({json.dumps(module.as_uri())});"
              "const ort = { Tensor: class {} };"
              f"try {{ m.imageTensor(ort, {{ pixels: new Uint8Array({width * height}), "
              f"width: {width}, height: {height}, channels: {channels} }}, 'moving.png'); "
              "console.log('accepted'); } catch (e) { console.log(`${e.name}: ${e.message}`); }")
    completed = subprocess.run([node_example, "--input-type=module", "-e", script],
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"UsageError: moving.png: {fragment}"


def test_the_timing_script_runs_one_session_repeatedly(node_example, graphs, images):
    """benchmarks/one_graph_node.mjs (the Node way of benchmarks/one_graph_latency.py)."""
    report = node_graph_times(node_example, graphs["failed"], images["moving_commented_ppm"],
                              images["moving_grey_pgm"], threads=1, warmup=1, repeat=3)
    assert report["status"] == "failed"  # the stand-in's answer, decoded by the contract
    assert len(report["graph_ms"]) == 3 and all(ms > 0 for ms in report["graph_ms"])
    assert report["load_ms"] > 0 and report["onnxruntime_node"]


# --- the real graph -------------------------------------------------------------------------

def _parameters(record: dict) -> np.ndarray:
    if record["transform"] == TransformModel.QUADRATIC.value:
        return np.asarray(record["quadratic"]["coefficients"])
    return np.asarray(record["matrix"])


@pytest.mark.export
@pytest.mark.slow
def test_on_a_dev_pair_it_equals_the_python_side(node_example, registration_graph, data_dir,
                                                 tmp_path):
    pair = data_dir / "pairs" / DEV_PAIR
    fixed_path, moving_path = pair / "fixed.jpg", pair / "moving.jpg"
    completed = run_register(node_example, fixed_path, moving_path, "--model",
                             registration_graph, "--out", tmp_path / "node")
    assert completed.returncode == 0, completed.stderr
    record = json.loads(completed.stdout)
    # Same graph, same pixels (sharp and OpenCV decode these JPEGs to the same bytes, as the
    # mock's checksums prove): ophreg_rt.one_graph's answer. Measured identical, parameters
    # and warp, between onnxruntime-node 1.30 and the Python wheel 1.32; the tolerance only
    # allows two builds to round floats differently.
    python = python_reference(registration_graph, fixed_path, moving_path)
    reference = python.to_json()
    for key in ("status", "reason", "transform", "fixed_size", "moving_size", "num_keypoints",
                "num_matches", "num_inliers", "features", "matcher"):
        assert record[key] == reference[key], key
    np.testing.assert_allclose(_parameters(record), _parameters(reference), rtol=1e-5,
                               atol=1e-4)
    assert transform_gap_px(record, reference) <= 0.01
    warped = cv2.imread(str(tmp_path / "node" / "warped.png"), cv2.IMREAD_COLOR_RGB)
    assert warped.shape == python.warped.shape
    assert np.abs(warped.astype(int) - python.warped).max() <= 1
    # ... and the Python CLI's registration of the pair within the 0.5 px at 1024.
    cli_record = cli_register(fixed_path, moving_path, tmp_path)
    assert set(record) == set(cli_record)
    assert record["status"] == cli_record["status"] == "ok"
    gap = transform_gap_px(record, cli_record)
    assert gap <= SAME_TRANSFORM_PX, f"{gap:.3f} px at 1024 from ophreg register"
