"""``ophreg evaluate points`` on CSVs of both schemas built from the CC0 retina with known
transforms, and its refusals of malformed CSVs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import CC0_RETINA, one_line_error
from ophreg_rt.cli import EXIT_OK, EXIT_USAGE, main
from ophreg_rt.errors import DatasetError, ImageReadError
from ophreg_rt.evaluation import control_points
from ophreg_rt.imageio import read_image, write_image

SIDE = 512
CORRECT_PX = 2.0  # as in test_evaluation_fire: a correct registration is well within it
WRONG_SHIFT_PX = 40.0
AFFINE_HEADER = "src,tgt,m00,m01,m02,m10,m11,m12"
POINTS_HEADER = "src,tgt,x_src,y_src,x_tgt,y_tgt,note"  # an extra column is ignored


def _forward() -> np.ndarray:
    """Fixed -> moving: 8 degrees about the centre, scale 1.05, shift (15, -10)."""
    centre = (SIDE - 1) / 2.0
    angle = np.deg2rad(8.0)
    linear = 1.05 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = np.array([centre, centre]) - linear @ [centre, centre] + [15.0, -10.0]
    return matrix


@pytest.fixture(scope="module")
def data_set(tmp_path_factory):
    """images/fixed.png, images/moving.png (fixed warped by _forward), images/flat.png."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "images").mkdir()
    fixed = cv2.resize(read_image(CC0_RETINA), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    write_image(root / "images" / "fixed.png", fixed)
    write_image(root / "images" / "moving.png",
                cv2.warpAffine(fixed, _forward()[:2], (SIDE, SIDE), flags=cv2.INTER_LINEAR))
    write_image(root / "images" / "flat.png", np.full((SIDE, SIDE, 3), 90, np.uint8))
    return root


def _affine_row(src, tgt, matrix):
    return ",".join([src, tgt] + [f"{v:.10f}" for v in matrix[:2].ravel()])


def _evaluate(csv_path, out, *extra):
    return main(["evaluate", "points", str(csv_path), "--size", str(SIDE), "--out", str(out),
                 *extra])


def test_an_affine_truth_is_scored_on_a_grid_over_the_moving_image(data_set, tmp_path):
    truth = np.linalg.inv(_forward())  # src (moving) -> tgt (fixed)
    wrong = truth.copy()
    wrong[0, 2] += WRONG_SHIFT_PX
    csv_path = data_set / "affine.csv"
    csv_path.write_text("\n".join([AFFINE_HEADER,
                                   _affine_row("images/moving.png", "images/fixed.png", truth),
                                   _affine_row("images/moving.png", "images/fixed.png", wrong)])
                        + "\n")
    # Run from elsewhere: the image paths are relative to the CSV, not to the working folder.
    assert _evaluate(csv_path, tmp_path / "report.json") == EXIT_OK
    document = json.loads((tmp_path / "report.json").read_text())
    assert document["protocol"]["schema"] == "affine"
    right, off = document["pairs"]
    assert right["fixed"].endswith("fixed.png") and right["moving"].endswith("moving.png")
    assert right["verdict"] == "acceptable" and right["mean_error_px"] < CORRECT_PX
    assert off["verdict"] == "inaccurate"  # median 40 px > 20
    assert off["mean_error_px"] == pytest.approx(WRONG_SHIFT_PX, abs=CORRECT_PX)
    read_truth = np.asarray(right["truth_affine"])  # as parsed from the CSV's 10 decimals
    assert read_truth == pytest.approx(truth[:2], abs=1e-9)
    # The stated grid: 11 x 11 points from (0, 0) to (511, 511), corners included.
    axis = np.linspace(0, SIDE - 1, 11)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    estimate = np.asarray(right["matrix"])
    distance = np.linalg.norm((grid @ estimate[:2, :2].T + estimate[:2, 2])
                              - (grid @ read_truth[:, :2].T + read_truth[:, 2]), axis=1)
    assert right["mean_error_px"] == pytest.approx(distance.mean(), rel=1e-9)
    assert right["max_error_px"] == pytest.approx(distance.max(), rel=1e-9)
    summary = document["summary"]
    assert summary["counts"] == {"failed": 0, "inaccurate": 1, "acceptable": 1}
    expected_auc = np.mean([[e < t for e in (right["mean_error_px"], off["mean_error_px"])]
                            for t in range(1, 26)])
    assert summary["auc"]["all"] == pytest.approx(expected_auc, abs=1e-12)


def test_control_point_rows_group_into_pairs_by_src_and_tgt(data_set, tmp_path, capsys):
    rng = np.random.default_rng(5)
    points_fixed = SIDE / 2 + rng.uniform(-120, 120, size=(8, 2))
    points_moving = points_fixed @ _forward()[:2, :2].T + _forward()[:2, 2]
    rows = []
    for k, (m, f) in enumerate(zip(points_moving, points_fixed)):
        rows.append(f"images/moving.png,images/fixed.png,{m[0]:.4f},{m[1]:.4f},{f[0]:.4f},"
                    f"{f[1]:.4f},point {k}")
        # Rows of a second pair interleaved: a featureless image that cannot be registered.
        rows.append(f"images/flat.png,images/fixed.png,{m[0]:.4f},{m[1]:.4f},{f[0]:.4f},"
                    f"{f[1]:.4f},")
    csv_path = data_set / "points.csv"
    csv_path.write_text("\n".join([POINTS_HEADER] + rows) + "\n")
    assert _evaluate(csv_path, tmp_path / "report.json", "--auc-limit", "10") == EXIT_OK
    document = json.loads((tmp_path / "report.json").read_text())
    assert document["protocol"]["schema"] == "points"
    registered, failed = document["pairs"]
    assert registered["lines"] == list(range(2, 18, 2))
    assert failed["lines"] == list(range(3, 18, 2))
    assert registered["verdict"] == "acceptable" and registered["mean_error_px"] < CORRECT_PX
    estimate = np.asarray(registered["matrix"])
    mapped = points_moving @ estimate[:2, :2].T + estimate[:2, 2]
    assert registered["mean_error_px"] == pytest.approx(
        np.linalg.norm(mapped - points_fixed, axis=1).mean(), abs=1e-3)  # CSV holds 4 decimals
    assert failed["verdict"] == "failed" and failed["mean_error_px"] is None
    summary = document["summary"]
    assert summary["auc_thresholds_px"] == [1, 10]
    assert summary["auc"]["all"] == pytest.approx(
        np.mean([registered["mean_error_px"] < t for t in range(1, 11)]) / 2, abs=1e-12)
    printed = capsys.readouterr().out
    assert "images/flat.png -> images/fixed.png" in printed and "failed" in printed


@pytest.mark.parametrize("lines, fragments", [
    ([AFFINE_HEADER, "images/moving.png,images/fixed.png,1,0,0,0,1,0",
      "images/moving.png,images/fixed.png,1,abc,0,0,1,0"], ["bad.csv:3", "m01", "'abc'"]),
    ([AFFINE_HEADER, "images/absent.png,images/fixed.png,1,0,0,0,1,0"],
     ["bad.csv:2", "absent.png", "no such file"]),
    ([AFFINE_HEADER, "images/moving.png,images/fixed.png,1,0,0,0,1"], ["bad.csv:2", "m12"]),
    ([AFFINE_HEADER, "images/moving.png,images/fixed.png,0,0,0,0,0,0"], ["bad.csv:2", "singular"]),
    (["fixed,moving,a,b", "x,y,1,2"], ["bad.csv", "neither schema", AFFINE_HEADER]),
    ([POINTS_HEADER, "images/moving.png,,1,2,3,4,"], ["bad.csv:2", "tgt", "empty"]),
    ([AFFINE_HEADER], ["bad.csv", "no rows"]),
])
def test_a_malformed_csv_exits_2_naming_file_and_line(data_set, tmp_path, capsys, lines, fragments):
    csv_path = data_set / "bad.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    assert _evaluate(csv_path, tmp_path / "report.json") == EXIT_USAGE
    one_line_error(capsys, *fragments)
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("lines, error", [
    ([AFFINE_HEADER, "images/moving.png,images/fixed.png,1,abc,0,0,1,0"], DatasetError),
    (["fixed,moving,a,b", "x,y,1,2"], DatasetError),
    ([AFFINE_HEADER, "images/absent.png,images/fixed.png,1,0,0,0,1,0"], ImageReadError),
], ids=["bad-number", "bad-header", "missing-image"])
def test_a_refusal_says_whether_the_data_set_or_an_image_is_at_fault(data_set, lines, error):
    csv_path = data_set / "typed.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(error) as caught:
        control_points.read_pairs(csv_path)
    assert type(caught.value) is error


def test_a_missing_csv_and_a_bad_auc_limit_exit_2(data_set, tmp_path, capsys):
    assert _evaluate(tmp_path / "absent.csv", tmp_path / "r.json") == EXIT_USAGE
    one_line_error(capsys, "absent.csv", "no such file")
    assert _evaluate(tmp_path / "absent.csv", tmp_path / "r.json", "--auc-limit", "0") == EXIT_USAGE
    one_line_error(capsys, "--auc-limit 0")
