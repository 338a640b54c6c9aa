"""The embedding-latency benchmark: the pixels every way gets, and a real run of its native ways
on one dev pair with a stand-in graph (the Node and browser ways run in tests/examples)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import one_graph_latency as ogl
from ophreg_rt.one_graph import as_graph_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from mock_graph import write_mock_graph  # noqa: E402


@pytest.mark.parametrize("channels", [1, 3])
def test_netpbm_files_hold_the_graphs_pixels(tmp_path, channels):
    rng = np.random.default_rng(channels)
    image = rng.integers(0, 256, (17, 23, channels), dtype=np.uint8)
    path = ogl.write_netpbm(image, tmp_path / "image")
    assert path.suffix == (".pgm" if channels == 1 else ".ppm")
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if channels == 3:
        back = cv2.cvtColor(back, cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(as_graph_image(back, "back"), image)


def test_native_ways_on_a_dev_pair_write_the_report(tmp_path, data_dir):
    graph = write_mock_graph(tmp_path / "registration.onnx")
    out = tmp_path / "latency.json"
    assert ogl.main(["--graph", str(graph), "--ways", "python,graph", "--pairs",
                     "varia_R067_R118", "--warmup", "0", "--repeats", "2", "--out",
                     str(out)]) == 0
    document = json.loads(out.read_text())
    (row,) = document["pairs"]
    assert row["pair"] == "varia_R067_R118" and row["fixed_size"] == [768, 584]
    assert row["python"]["status"] == "ok" and row["python"]["run"]["n"] == 2
    assert row["graph"]["status_code"] == 0 and row["graph"]["run"]["n"] == 2
    ratio = row["graph"]["run"]["median_ms"] / row["python"]["run"]["median_ms"]
    assert document["summary"]["graph"]["ratio_to_python"] == pytest.approx(ratio)
    assert document["summary"]["python"]["ratio_to_python"] == pytest.approx(1.0)
    # The stand-in has no convolution and no GridSample: all its kernel time is "other".
    breakdown = document["graph_breakdown"]
    assert breakdown["conv_ms"] == breakdown["grid_sample_ms"] == 0
    assert breakdown["other_ms"] == pytest.approx(breakdown["kernel_ms"]) and breakdown["kernel_ms"] > 0
    markdown = out.with_suffix(".md").read_text()
    assert "| varia_R067_R118 | 768x584 / 768x584 |" in markdown
    assert document["graph"]["sha256"][:16] in markdown


def test_unknown_ways_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        ogl.main(["--graph", str(tmp_path / "g.onnx"), "--ways", "python,gpu"])
    assert stop.value.code == 2
    assert "--ways: unknown ['gpu']" in capsys.readouterr().err
