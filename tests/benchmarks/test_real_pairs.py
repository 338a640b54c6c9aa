"""The real-pair control points (benchmarks/control_points.py) and the leave-one-out floors of
benchmarks/real_pairs_precision.py."""

from __future__ import annotations

import ast
import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import control_points
from benchmarks.real_pairs_precision import (CONTROL_POINTS, LOCAL_NEIGHBOURS, load_points,
                                             loo_errors, reference_errors)
from conftest import CC0_RETINA, _missing
from ophreg_rt.config import TransformModel
from ophreg_rt.evaluation.control_points import POINT_COLUMNS, read_pairs
from ophreg_rt.quadratic import map_quadratic
from ophreg_rt.transforms import apply

PAIRS = ("varia_R067_R118", "toolbox_example", "toolbox_fundus", "cf_fa_demo")
MIN_POINTS = 20
#: Where the CSV's relative image paths lead (the repository and ../shared side by side).
PAIRS_DIR = (CONTROL_POINTS.parent / "../../../shared/data/dev/pairs").resolve()


def _rows() -> list[dict]:
    with CONTROL_POINTS.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_committed_csv_lists_the_four_pairs_moving_as_src_fixed_as_tgt():
    rows = _rows()
    assert list(rows[0])[:len(POINT_COLUMNS)] == list(POINT_COLUMNS)
    for pair in PAIRS:
        mine = [row for row in rows if row["pair"] == pair]
        assert len(mine) >= MIN_POINTS, pair
        assert {row["src"] for row in mine} == {mine[0]["src"]}
        assert {row["tgt"] for row in mine} == {mine[0]["tgt"]}
        # Relative to the CSV's folder, so that the repository and ../shared can move together.
        assert mine[0]["src"].startswith(f"../../../shared/data/dev/pairs/{pair}/moving.")
        assert mine[0]["tgt"].startswith(f"../../../shared/data/dev/pairs/{pair}/fixed.")
        values = [float(row[c]) for row in mine for c in ("x_src", "y_src", "x_tgt", "y_tgt")]
        assert all(math.isfinite(v) and v >= 0 for v in values)
    assert {row["pair"] for row in rows} == set(PAIRS)


def test_the_csv_reads_as_four_pairs_of_existing_images():
    if not PAIRS_DIR.is_dir():
        _missing(f"the real pairs are not at {PAIRS_DIR}")
    pairs, schema = read_pairs(CONTROL_POINTS)
    assert schema == "points"
    assert len(pairs) == len(PAIRS)
    for pair in pairs:
        assert pair.fixed.is_file() and pair.moving.is_file()
        assert pair.fixed.name.startswith("fixed.") and pair.moving.name.startswith("moving.")
        assert len(pair.truth.moving) == len(pair.truth.fixed) >= MIN_POINTS


def test_load_points_names_the_pairs_and_scales_to_the_fixed_images_longer_side():
    if not PAIRS_DIR.is_dir():
        _missing(f"the real pairs are not at {PAIRS_DIR}")
    points = load_points(CONTROL_POINTS)
    assert list(points) == list(PAIRS)
    varia = points["varia_R067_R118"]
    assert varia["fixed_size"] == [768, 584]
    assert varia["scale"] == pytest.approx(1024 / 768)


def test_the_point_maker_shares_no_code_with_the_registration_pipeline():
    tree = ast.parse(Path(control_points.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not [name for name in imported if name.startswith(("ophreg_rt", "benchmarks"))]


def _cloud(seed: int, count: int = 40, size: float = 1000.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, size, (count, 2))


def test_every_fitted_models_floor_is_zero_on_points_it_maps_exactly():
    src = _cloud(0)
    affine = np.array([[1.02, 0.05, 13.0], [-0.04, 0.97, -8.0], [0.0, 0.0, 1.0]])
    for model in (TransformModel.AFFINE, TransformModel.HOMOGRAPHY, TransformModel.QUADRATIC):
        assert loo_errors(src, apply(affine, src), model).max() < 1e-6, model
    # A similarity cannot follow the shear: its floor is not zero.
    assert loo_errors(src, apply(affine, src), TransformModel.SIMILARITY).mean() > 0.5
    homography = affine.copy()
    homography[2, :2] = [2e-5, -1e-5]
    assert loo_errors(src, apply(homography, src), TransformModel.HOMOGRAPHY).max() < 1e-6


def test_on_a_quadratic_warp_only_the_quadratics_floor_is_zero():
    src = _cloud(1)
    # Columns x^2, xy, y^2, x, y, 1 (ophreg_rt.quadratic.QUADRATIC_TERMS); a few px of bending
    # over a 1000-px field, as between two photographs of a curved retina.
    coefficients = np.array([[4e-6, -2e-6, 3e-6, 1.01, 0.02, 5.0],
                             [-3e-6, 5e-6, 2e-6, -0.03, 0.99, -4.0]])
    dst = map_quadratic(coefficients, src)
    assert loo_errors(src, dst, TransformModel.QUADRATIC).max() < 1e-6
    assert loo_errors(src, dst, TransformModel.AFFINE).mean() > 0.5
    assert loo_errors(src, dst, TransformModel.HOMOGRAPHY).mean() > 0.1


def test_the_held_out_point_is_not_in_its_own_fit():
    src = _cloud(2)
    dst = src + [3.0, -2.0]
    dst[7] += [4.0, 0.0]  # one displaced point: a fit that saw it would absorb part of it
    errors = loo_errors(src, dst, TransformModel.AFFINE)
    assert errors[7] > 4.0
    assert int(np.argmax(errors)) == 7


def test_the_references_follow_smooth_maps_that_the_runtime_models_cannot():
    src = _cloud(4, count=60)
    coefficients = np.array([[4e-6, -2e-6, 3e-6, 1.01, 0.02, 5.0],
                             [-3e-6, 5e-6, 2e-6, -0.03, 0.99, -4.0]])
    references = reference_errors(src, map_quadratic(coefficients, src))
    assert references["cubic"].max() < 1e-6  # a cubic contains every quadratic
    local = references[f"local_affine_{LOCAL_NEIGHBOURS}"]
    assert local.mean() < 0.5 * loo_errors(src, map_quadratic(coefficients, src),
                                           TransformModel.AFFINE).mean()
    affine = np.array([[1.02, 0.05, 13.0], [-0.04, 0.97, -8.0], [0.0, 0.0, 1.0]])
    assert reference_errors(src, apply(affine, src))[f"local_affine_{LOCAL_NEIGHBOURS}"].max() \
        < 1e-6


def test_a_model_chosen_per_pair_has_no_floor_of_its_own():
    src = _cloud(3)
    assert loo_errors(src, src + 1.0, TransformModel.AUTO) is None


def test_the_point_maker_recovers_a_known_curved_warp(tmp_path):
    # The CC0 retina, halved for speed, warped by a known quadratic map (a curved retina plus a
    # turn and a shift); every control point must sit where the map sends it.
    image = cv2.imread(str(CC0_RETINA), cv2.IMREAD_COLOR)
    image = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    height, width = image.shape[:2]
    centre = np.array([width / 2, height / 2])
    angle = np.deg2rad(4.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def moving_to_fixed(points: np.ndarray) -> np.ndarray:
        relative = (points - centre) / width
        bend = 6.0 * np.stack([relative[:, 0] ** 2 - relative[:, 1] ** 2,
                               2 * relative[:, 0] * relative[:, 1]], axis=1)
        return (relative @ rotation.T) * width * 1.03 + centre + [9.0, -6.0] + bend

    grid = np.stack(np.meshgrid(np.arange(width), np.arange(height)), axis=2).reshape(-1, 2)
    source = moving_to_fixed(grid.astype(np.float64)).reshape(height, width, 2).astype(np.float32)
    moving = cv2.remap(image, source[..., 0], source[..., 1], cv2.INTER_CUBIC)
    # remap: moving(p) = fixed(moving_to_fixed(p)), so a moving point p corresponds to the
    # fixed point moving_to_fixed(p).
    fixed_path, moving_path = tmp_path / "fixed.png", tmp_path / "moving.png"
    cv2.imwrite(str(fixed_path), image)
    cv2.imwrite(str(moving_path), moving)
    points = control_points.find_points(
        "synthetic", control_points.prepare(fixed_path, "dark"),
        control_points.prepare(moving_path, "dark"))
    assert len(points.fixed) >= MIN_POINTS
    errors = np.linalg.norm(moving_to_fixed(points.moving) - points.fixed, axis=1)
    at_1024 = errors * 1024 / max(height, width)
    # Measured: median 0.06, max 0.25 px at 1024 (benchmarks/real_pairs/README.md).
    assert np.median(at_1024) < 0.15
    assert at_1024.max() < 0.6
