"""``ophreg evaluate`` detects an image shared by several pairs once (a bounded cache keyed by
path, size and modification time) and scores exactly what ``Registrar.register`` pair by pair
would."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from conftest import CC0_RETINA
from ophreg_rt.cli import EXIT_OK, main
from ophreg_rt.config import DETECTION_CACHE_IMAGES, PreprocessConfig, RegistrarConfig
from ophreg_rt.evaluation import runner
from ophreg_rt.imageio import read_image, write_image
from ophreg_rt.registrar import Registrar

SIDE = 320
NETWORK = 256
AFFINE_HEADER = "src,tgt,m00,m01,m02,m10,m11,m12"


def _motion(angle_deg: float, shift: tuple[float, float]) -> np.ndarray:
    """Fixed -> moving pixels: a rotation about the centre and a shift."""
    centre = (SIDE - 1) / 2.0
    angle = np.deg2rad(angle_deg)
    linear = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = np.array([centre, centre]) - linear @ [centre, centre] + shift
    return matrix


MOTIONS = {"a": _motion(6.0, (8.0, -5.0)), "b": _motion(-4.0, (-6.0, 7.0))}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """base.png and two views of it, a.png and b.png: three pairs over three images."""
    root = tmp_path_factory.mktemp("shared_images")
    base = cv2.resize(read_image(CC0_RETINA), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    write_image(root / "base.png", base)
    for name, motion in MOTIONS.items():
        write_image(root / f"{name}.png",
                    cv2.warpAffine(base, motion[:2], (SIDE, SIDE), flags=cv2.INTER_LINEAR))
    return root


def _pairs(root) -> list[runner.Pair]:
    """(fixed, moving): (base, a), (base, b), (a, b); truths map moving -> fixed."""
    a, b = MOTIONS["a"], MOTIONS["b"]
    ends = [("base", "a", np.linalg.inv(a)), ("base", "b", np.linalg.inv(b)),
            ("a", "b", a @ np.linalg.inv(b))]
    return [runner.Pair(name=f"{moving}_onto_{fixed}", group="all",
                        fixed=root / f"{fixed}.png", moving=root / f"{moving}.png",
                        truth=runner.AffineTruth(truth), details={})
            for fixed, moving, truth in ends]


def _counting_detect(monkeypatch) -> list[int]:
    counted: list[int] = []
    original = Registrar.detect

    def counting(self, images, timings=None):
        counted.append(len(images))
        return original(self, images, timings)

    monkeypatch.setattr(Registrar, "detect", counting)
    return counted


@pytest.fixture(scope="module")
def registrar():
    # One thread: the same arithmetic in every run, so results compare exactly.
    return Registrar(replace(RegistrarConfig(), threads=1,
                             preprocess=replace(PreprocessConfig(), size=(NETWORK, NETWORK))))


@pytest.fixture(scope="module")
def uncached(registrar, images):
    return runner.register_pairs(registrar, _pairs(images), detection_cache=0)


def _assert_same(first: list[runner.PairOutcome], second: list[runner.PairOutcome]) -> None:
    assert [o.pair.name for o in first] == [o.pair.name for o in second]
    for a, b in zip(first, second):
        ra, rb = a.result, b.result
        assert (ra.status, ra.reason, ra.transform, ra.num_inliers) == \
            (rb.status, rb.reason, rb.transform, rb.num_inliers), a.pair.name
        for field in ("matrix", "coefficients", "keypoints_fixed", "keypoints_moving",
                      "matches", "match_scores", "inliers"):
            x, y = getattr(ra, field), getattr(rb, field)
            assert (x is None and y is None) or np.array_equal(x, y), (a.pair.name, field)
        assert a.score == b.score, a.pair.name


@pytest.mark.parametrize("capacity, detections", [
    (DETECTION_CACHE_IMAGES, 3),  # each image once
    # One slot: (base, a) detects both and keeps a; (base, b) both again, keeps b; (a, b) a.
    (1, 5),
])
def test_shared_images_are_detected_once_with_the_uncached_results(
        registrar, images, uncached, monkeypatch, capacity, detections):
    counted = _counting_detect(monkeypatch)
    cached = runner.register_pairs(registrar, _pairs(images), detection_cache=capacity)
    assert sum(counted) == detections
    _assert_same(uncached, cached)
    assert all(o.result.ok and o.score.mean_error < 2.0 for o in cached)


def test_the_uncached_path_detects_both_images_of_every_pair(registrar, images, monkeypatch):
    counted = _counting_detect(monkeypatch)
    runner.register_pairs(registrar, _pairs(images)[:2], detection_cache=0)
    assert counted == [2, 2]


def test_a_rewritten_image_is_detected_again(registrar, images, tmp_path, monkeypatch):
    import os
    import shutil

    for name in ("base", "a"):
        shutil.copy(images / f"{name}.png", tmp_path / f"{name}.png")
    pair = _pairs(tmp_path)[0]

    def touch_fixed(outcome):
        stat = pair.fixed.stat()
        os.utime(pair.fixed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    counted = _counting_detect(monkeypatch)
    runner.register_pairs(registrar, [pair, pair], on_outcome=touch_fixed)
    assert counted == [2, 1]  # the moving image still cached, the fixed one read again


def test_evaluate_points_reuses_detections(images, tmp_path, monkeypatch):
    csv_path = images / "pairs.csv"
    rows = [AFFINE_HEADER]
    for pair in _pairs(images):
        truth = pair.truth.matrix
        rows.append(",".join([pair.moving.name, pair.fixed.name]
                             + [f"{v:.10f}" for v in truth[:2].ravel()]))
    csv_path.write_text("\n".join(rows) + "\n")
    counted = _counting_detect(monkeypatch)
    out = tmp_path / "report.json"
    assert main(["evaluate", "points", str(csv_path), "--size", str(NETWORK), "--threads", "1",
                 "--out", str(out)]) == EXIT_OK
    assert sum(counted) == 3
    report = json.loads(out.read_text())["pairs"]
    assert [entry["verdict"] for entry in report] == ["acceptable"] * 3
