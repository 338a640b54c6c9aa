"""``ophreg evaluate fire`` on a small data set in FIRE's exact layout, built from the CC0 retina
with known transforms and control points, and its refusals of malformed folders."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from conftest import CC0_RETINA, one_line_error
from ophreg_rt.cli import EXIT_OK, EXIT_USAGE, main
from ophreg_rt.errors import DatasetError, ImageReadError
from ophreg_rt.evaluation import fire
from ophreg_rt.imageio import read_image, write_image

SIDE = 512  # native size of image 1; also the network input (--size), so the test is fast
#: A correct registration of these pairs is within this mean error (px, native): the accuracy
#: benchmark finds about 0.2 px at 1024 on known warps of real photographs.
CORRECT_PX = 2.0
#: The deliberately wrong annotation moves every point of image 1 by this much.
WRONG_SHIFT_PX = 60.0


def _affine(degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """Image 1 -> image 2: rotation and scale about image 1's centre, then a shift."""
    centre = (SIDE - 1) / 2.0
    angle = np.deg2rad(degrees)
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = np.array([centre, centre]) - linear @ [centre, centre] + shift
    return matrix


def _control_points(rng: np.random.Generator) -> np.ndarray:
    """Ten points of image 1 inside the eye's disc (the CC0 image fills a centred circle)."""
    radius = rng.uniform(0, 0.3 * SIDE, 10)
    angle = rng.uniform(0, 2 * np.pi, 10)
    return SIDE / 2.0 + np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)


def _write_pair(root, name, image_1, image_2, points_1, points_2):
    write_image(root / "Images" / f"{name}_1.jpg", image_1)
    write_image(root / "Images" / f"{name}_2.jpg", image_2)
    lines = [" ".join(f"{v:.4f}" for v in (*p1, *p2)) for p1, p2 in zip(points_1, points_2)]
    (root / "Ground Truth" / f"control_points_{name}_1_2.txt").write_text("\n".join(lines) + "\n")


def _build_fire(root) -> dict:
    """S01, P01, A01 registrable; S02 has a wrong annotation; A02's image 2 is featureless;
    P37 (excluded by the protocol) has truth but no images."""
    (root / "Images").mkdir(parents=True)
    (root / "Ground Truth").mkdir()
    retina = cv2.resize(read_image(CC0_RETINA), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(3)
    # (rotation, scale, shift, side of image 2): image 2 = image 1 warped by the map
    motions = {"S01": (6.0, 1.0, (12.0, -8.0), SIDE),
               # a camera of another resolution: image 2 is 600 px, errors stay in image 1's px
               "P01": (-12.0, 1.12, (40.0, 30.0), 600),
               "A01": (4.0, 0.95, (-14.0, 18.0), SIDE)}
    for name, (degrees, scale, shift, side) in motions.items():
        forward = _affine(degrees, scale, shift)  # image 1 -> image 2
        image_2 = cv2.warpAffine(retina, forward[:2], (side, side), flags=cv2.INTER_LINEAR)
        if name.startswith("A"):  # a change of appearance, as between visits
            image_2 = np.round(255 * 0.9 * (image_2 / 255.0) ** 1.3).astype(np.uint8)
        points_1 = _control_points(rng)
        points_2 = points_1 @ forward[:2, :2].T + forward[:2, 2]
        _write_pair(root, name, retina, image_2, points_1, points_2)
    s01 = np.loadtxt(root / "Ground Truth" / "control_points_S01_1_2.txt")
    _write_pair(root, "S02", retina, read_image(root / "Images" / "S01_2.jpg"),
                s01[:, :2] + [WRONG_SHIFT_PX, 0.0], s01[:, 2:])
    _write_pair(root, "A02", retina, np.full((SIDE, SIDE, 3), 90, np.uint8), s01[:, :2], s01[:, 2:])
    (root / "Ground Truth" / "control_points_P37_1_2.txt").write_text("1 2 3 4\n")
    return motions


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("FIRE")
    _build_fire(root)
    report = tmp_path_factory.mktemp("out") / "fire.json"
    return root, report


@pytest.fixture(scope="module")
def run(evaluated):
    root, report = evaluated
    code = main(["evaluate", "fire", str(root), "--size", str(SIDE), "--out", str(report)])
    return code, json.loads(report.read_text())


def _hits(error):
    """Thresholds 1..25 px that a mean error is strictly below (none for a failed pair)."""
    return [error is not None and error < t for t in range(1, 26)]


def test_the_fire_layout_is_read_registered_and_scored(run):
    code, document = run
    assert code == EXIT_OK
    pairs = {p["name"]: p for p in document["pairs"]}
    assert list(pairs) == ["A01", "A02", "P01", "S01", "S02"]
    assert document["protocol"]["excluded"] == ["P37"]
    for name in ("S01", "P01", "A01"):
        assert pairs[name]["verdict"] == "acceptable", pairs[name]
        assert pairs[name]["mean_error_px"] < CORRECT_PX, pairs[name]
        assert pairs[name]["group"] == name[0]


def test_a_wrong_annotation_scores_inaccurate(run):
    _, document = run
    wrong = next(p for p in document["pairs"] if p["name"] == "S02")
    assert wrong["status"] == "ok" and wrong["verdict"] == "inaccurate"
    assert wrong["max_error_px"] > 50
    assert wrong["mean_error_px"] == pytest.approx(WRONG_SHIFT_PX, abs=CORRECT_PX)


def test_a_failed_registration_counts_as_never_below_any_threshold(run):
    _, document = run
    pairs = {p["name"]: p for p in document["pairs"]}
    failed = pairs["A02"]
    assert failed["status"] == "failed" and failed["verdict"] == "failed" and failed["reason"]
    assert failed["mean_error_px"] is None and failed["matrix"] is None
    summary = document["summary"]
    assert summary["counts"] == {"failed": 1, "inaccurate": 1, "acceptable": 3}
    expected = {category: np.mean([_hits(pairs[n]["mean_error_px"]) for n in names])
                for category, names in {"S": ["S01", "S02"], "P": ["P01"],
                                        "A": ["A01", "A02"]}.items()}
    assert summary["auc"] == pytest.approx(expected, abs=1e-12)
    assert summary["auc"]["A"] <= 0.5 and summary["auc"]["S"] <= 0.5
    assert summary["mAUC"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)


def test_the_error_is_measured_in_image_1s_native_pixels(run, evaluated):
    """Recompute P01's error (image 2 at another resolution) from the reported matrix."""
    root, _ = evaluated
    _, document = run
    pair = next(p for p in document["pairs"] if p["name"] == "P01")
    truth = np.loadtxt(root / "Ground Truth" / "control_points_P01_1_2.txt")
    matrix = np.asarray(pair["matrix"])
    mapped = truth[:, 2:] @ matrix[:2, :2].T + matrix[:2, 2]
    assert pair["mean_error_px"] == pytest.approx(
        np.linalg.norm(mapped - truth[:, :2], axis=1).mean(), rel=1e-9)


def test_the_table_names_every_pair_and_the_summary(evaluated, run, capsys, tmp_path):
    root, _ = evaluated
    shutil.copytree(root, tmp_path / "one")
    for name in ("A01", "A02", "P01", "S02"):  # keep the printed run short: S01 only
        (tmp_path / "one" / "Ground Truth" / f"control_points_{name}_1_2.txt").unlink()
    assert main(["evaluate", "fire", str(tmp_path / "one"), "--size", str(SIDE)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "S01" in printed and "acceptable" in printed
    assert "mAUC 1.000" in printed  # S01 alone, well within 1 px


def test_registration_options_reach_the_registrar(evaluated, tmp_path):
    root, _ = evaluated
    shutil.copytree(root, tmp_path / "one")
    for name in ("A01", "A02", "P01", "S02"):
        (tmp_path / "one" / "Ground Truth" / f"control_points_{name}_1_2.txt").unlink()
    report = tmp_path / "sift.json"
    assert main(["evaluate", "fire", str(tmp_path / "one"), "--features", "sift",
                 "--transform", "similarity", "--preprocess", "grey", "--size", "384",
                 "--threshold", "3", "--seed", "7", "--out", str(report)]) == EXIT_OK
    document = json.loads(report.read_text())
    config = document["config"]
    assert (config["features"], config["ransac"]["model"], config["preprocess"]["mode"],
            config["preprocess"]["size"], config["ransac"]["threshold"], config["seed"]) == (
        "sift", "similarity", "grey", [384, 384], 3.0, 7)
    assert "sift" in document["models"] and "superpoint" not in document["models"]


def test_an_existing_report_is_kept_without_force(evaluated, run, capsys):
    root, report = evaluated
    before = report.read_bytes()
    assert main(["evaluate", "fire", str(root), "--out", str(report)]) == EXIT_USAGE
    assert "already exists" in capsys.readouterr().err
    assert report.read_bytes() == before


def _minimal_fire(root):
    (root / "Images").mkdir(parents=True)
    (root / "Ground Truth").mkdir()
    image = cv2.resize(read_image(CC0_RETINA), (64, 64), interpolation=cv2.INTER_AREA)
    write_image(root / "Images" / "S01_1.jpg", image)
    write_image(root / "Images" / "S01_2.jpg", image)
    truth = root / "Ground Truth" / "control_points_S01_1_2.txt"
    truth.write_text("10 10 11 11\n20 20 21 21\n")
    return truth


def test_a_folder_without_images_exits_2_naming_it(tmp_path, capsys):
    _minimal_fire(tmp_path)
    shutil.rmtree(tmp_path / "Images")
    assert main(["evaluate", "fire", str(tmp_path)]) == EXIT_USAGE
    one_line_error(capsys, str(tmp_path / "Images"), "no such folder")


def test_a_bad_control_point_line_exits_2_naming_file_and_line(tmp_path, capsys):
    truth = _minimal_fire(tmp_path)
    truth.write_text("10 10 11 11\n20 20 21 21\n30 30 abc 31\n")
    assert main(["evaluate", "fire", str(tmp_path)]) == EXIT_USAGE
    one_line_error(capsys, "control_points_S01_1_2.txt:3", "x1 y1 x2 y2")


def test_a_pair_without_its_image_exits_2_naming_the_image(tmp_path, capsys):
    _minimal_fire(tmp_path)
    (tmp_path / "Images" / "S01_2.jpg").unlink()
    assert main(["evaluate", "fire", str(tmp_path)]) == EXIT_USAGE
    one_line_error(capsys, "S01_2.jpg", "no such file", "S01")


def test_a_pair_outside_fires_categories_exits_2(tmp_path, capsys):
    truth = _minimal_fire(tmp_path)
    truth.rename(tmp_path / "Ground Truth" / "control_points_X01_1_2.txt")
    assert main(["evaluate", "fire", str(tmp_path)]) == EXIT_USAGE
    one_line_error(capsys, "control_points_X01_1_2.txt", "S, P, A")


def test_a_refusal_says_whether_the_layout_or_an_image_is_at_fault(tmp_path):
    _minimal_fire(tmp_path)
    (tmp_path / "Images" / "S01_2.jpg").unlink()
    with pytest.raises(ImageReadError):
        fire.discover(tmp_path)
    shutil.rmtree(tmp_path / "Images")
    with pytest.raises(DatasetError):
        fire.discover(tmp_path)
