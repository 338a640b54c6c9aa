"""examples/web: the registration page on onnxruntime-web, served by examples/web/serve.py and
driven in Debian's headless Chromium by playwright-core (tests/examples/drive_page.mjs).

The mock graph (tests/examples/mock_graph.py) proves the page's plumbing in seconds: the browser's
decoding against OpenCV's (byte-sum checksums computed in the graph), the cross-origin isolation
that threaded WebAssembly needs, progress, no load from elsewhere, the refusal of a wrong graph.
The real graph's test (export, slow) compares the page's transform with the Python CLI's.
"""

from __future__ import annotations

import json
from email.message import Message
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CC0_RETINA
# Fixtures are imported for pytest to find them here.
from examples_support import (DEV_PAIR, SAME_TRANSFORM_PX, chromium, cli_register,  # noqa: F401
                              drive_page, keep_artifact, node, page_server, python_reference,
                              sha256, transform_gap_px, web_example, without_run_fields)
from mock_graph import MockAnswer, write_mock_graph

from ophreg_rt import contract
from ophreg_rt.imageio import read_image

PAGE_STAGES_BEFORE_RESULT = ["model-download", "model-preparation", "ready", "decoding",
                             "registration", "done"]


@pytest.fixture(scope="module")
def mock_graph(tmp_path_factory) -> Path:
    return write_mock_graph(tmp_path_factory.mktemp("graphs") / "mock_registration.onnx")


def _get(url: str) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive) and body of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, b""


def test_the_server_isolates_the_page_and_serves_only_its_files(web_example, mock_graph):
    with page_server(mock_graph) as url:
        status, headers, body = _get(url)
        assert status == 200 and b'src="app.mjs"' in body
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        status, headers, body = _get(url + "ort/ort.wasm.min.mjs")
        assert status == 200 and headers["Content-Type"] == "text/javascript"
        status, headers, body = _get(url + "ort/ort-wasm-simd-threaded.wasm")
        assert status == 200 and headers["Content-Type"] == "application/wasm"
        assert body[:4] == b"\0asm"
        status, headers, body = _get(url + "model.onnx")
        assert status == 200 and body == mock_graph.read_bytes()
        assert 'filename="mock_registration.onnx"' in headers["Content-Disposition"]
        status, _, body = _get(url + "common/contract.json")
        assert status == 200 and json.loads(body)["model"] == contract.ModelKind.REGISTRATION
        # Nothing else of the checkout or the machine, by any spelling of the path.
        for path in ("pyproject.toml", "examples/web/serve.py", "ort/../package.json",
                     "ort/%2e%2e/package.json", "ort/", "common/", "node_modules/",
                     "ort/..%2fpackage.json"):
            assert _get(url + path)[0] == 404, path


def test_the_page_decodes_like_the_cli_and_reports_the_graph_answer(web_example, chromium,
                                                                    mock_graph, tmp_path):
    moving = tmp_path / "moving.png"
    cv2.imwrite(str(moving), cv2.imread(str(CC0_RETINA))[40:1200, 100:1300])
    with page_server(mock_graph) as url:
        report = drive_page(web_example, chromium, url, CC0_RETINA, moving, tmp_path,
                            screenshot=tmp_path / "web_mock.png", timeout_s=300)
    assert report["problems"] == []  # no console error, exception, failed or off-origin load
    assert report["state"] == "done", report["error"]
    assert report["stages"] == PAGE_STAGES_BEFORE_RESULT
    assert report["has_progress_bar"]
    runtime = report["runtime"]
    assert runtime["cross_origin_isolated"] is True  # serve.py's headers: threads possible
    assert runtime["backend"] == "wasm" and runtime["threads"] >= 1
    result = report["result"]
    # The page hands the graph RGBA from the browser's decoder; on these files it equals
    # OpenCV's RGB with an opaque alpha: the mock's num_keypoints are byte sums of its inputs,
    # and the whole JSON is ophreg_rt.one_graph's for those arrays.
    rgba = [np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
            for image in (read_image(CC0_RETINA), read_image(moving))]
    reference = python_reference(mock_graph, *rgba).to_json()
    assert without_run_fields(result) == without_run_fields(reference)
    assert result["num_keypoints"] == [int(image.sum(dtype=np.int64)) for image in rgba]
    assert result["status"] == "ok" and result["matrix"] == np.eye(3).tolist()
    assert result["models"]["registration"] == {"file": mock_graph.name,
                                                "sha256": sha256(mock_graph)}
    assert result["provider"] == "wasm"
    assert (tmp_path / "web_mock.png").stat().st_size > 10_000
    keep_artifact(tmp_path / "web_mock.png")


@pytest.mark.parametrize("case, message", [
    ("old_graph", "old.onnx: expected contract version 1, found 0; re-export"),
    ("threads", "?threads=0: must be from 1 to"),
])
def test_the_page_says_what_is_wrong_instead_of_registering(web_example, chromium, mock_graph,
                                                            tmp_path, case, message):
    graph, query = mock_graph, ""
    if case == "old_graph":
        graph = write_mock_graph(tmp_path / "old.onnx",
                                 MockAnswer(metadata={"ophreg.contract_version": "0"}))
    else:
        query = "?threads=0"
    with page_server(graph) as url:
        report = drive_page(web_example, chromium, url + query, CC0_RETINA, CC0_RETINA,
                            tmp_path, timeout_s=300)
    assert report["state"] == "error"
    assert report["error"].startswith(message)
    assert report["progress_text"] == report["error"]  # the user sees it, not only scripts
    assert report["result"] is None


@pytest.mark.export
@pytest.mark.slow
def test_the_page_registers_a_dev_pair_like_the_python_cli(web_example, chromium,
                                                          registration_graph, data_dir,
                                                          tmp_path):
    pair = data_dir / "pairs" / DEV_PAIR
    fixed, moving = pair / "fixed.jpg", pair / "moving.jpg"
    screenshot = tmp_path / f"web_{DEV_PAIR}.png"
    with page_server(registration_graph) as url:
        report = drive_page(web_example, chromium, url, fixed, moving, tmp_path,
                            screenshot=screenshot)
    keep_artifact(screenshot)
    assert report["problems"] == []
    assert report["state"] == "done", report["error"]
    result = report["result"]
    # Same graph; the browser's pixels (RGBA) are OpenCV's RGB plus an opaque alpha, which the
    # graph ignores: one_graph's answer, up to onnxruntime-web's float rounding (WebAssembly
    # SIMD kernels, not the native ones).
    rgba = [np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
            for image in (read_image(fixed), read_image(moving))]
    reference = python_reference(registration_graph, *rgba).to_json()
    for key in ("status", "transform", "fixed_size", "moving_size", "num_keypoints"):
        assert result[key] == reference[key], key
    assert transform_gap_px(result, reference) <= 0.05  # measured 0.0003 px
    cli_record = cli_register(fixed, moving, tmp_path)
    assert set(result) == set(cli_record)
    assert result["status"] == cli_record["status"] == "ok"
    gap = transform_gap_px(result, cli_record)
    assert gap <= SAME_TRANSFORM_PX, f"the page is {gap:.3f} px at 1024 from ophreg register"
