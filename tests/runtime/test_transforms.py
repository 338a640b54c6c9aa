"""Plausibility of a transform between two photographs of one eye, and the warp."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ophreg_rt.config import PlausibilityConfig, TransformModel
from ophreg_rt.transforms import apply, implausibility, to_reference_frame, warp_image

CONFIG = PlausibilityConfig()
SIZE = (1024, 1024)


def _affine(angle_deg=0.0, scale=1.0, shear=0.0, tx=0.0, ty=0.0):
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * scale
    matrix = np.eye(3)
    matrix[:2, :2] = rotation @ np.array([[1.0, shear], [0.0, 1.0]])
    matrix[:2, 2] = (tx, ty)
    return matrix


def test_ordinary_eye_motion_is_plausible():
    assert implausibility(_affine(15, 1.1, 0.05, 40, -30), TransformModel.AFFINE, SIZE, SIZE,
                          CONFIG) is None


@pytest.mark.parametrize("matrix, reason", [
    (_affine(scale=0.3), "implausible scale"),
    (_affine(scale=3.0), "implausible scale"),
    (_affine(shear=0.9), "shear or squash"),
    (np.diag([-1.0, 1.0, 1.0]), "mirrors"),
    (np.full((3, 3), np.nan), "not finite"),
])
def test_implausible_transforms_are_named(matrix, reason):
    assert reason in implausibility(matrix, TransformModel.AFFINE, SIZE, SIZE, CONFIG)


def test_resolution_ratio_between_cameras_is_not_counted_as_scale():
    # Moving image at half the fixed image's resolution: pixels scale by 2, the eye does not.
    matrix = _affine(scale=2.0 * 1.05)
    assert implausibility(matrix, TransformModel.AFFINE, (2048, 2048), (1024, 1024), CONFIG) is None
    np.testing.assert_allclose(to_reference_frame(matrix, (2048, 2048), (1024, 1024))[:2, :2],
                               np.eye(2) * 1.05)


def test_strong_perspective_is_refused_for_homographies():
    matrix = np.eye(3)
    matrix[2, 0] = 2.0 / 1024
    assert "perspective" in implausibility(matrix, TransformModel.HOMOGRAPHY, SIZE, SIZE, CONFIG)


def test_warp_puts_moving_pixels_where_the_transform_sends_them():
    moving = np.zeros((100, 120), np.uint16)
    moving[40, 30] = 60000
    matrix = _affine(tx=12, ty=-5)
    warped = warp_image(moving, matrix, TransformModel.AFFINE, (150, 110))
    assert warped.shape == (110, 150) and warped.dtype == np.uint16
    assert np.unravel_index(warped.argmax(), warped.shape) == (35, 42)
    np.testing.assert_allclose(apply(matrix, [[30, 40]]), [[42, 35]])
    projective = warp_image(moving, matrix, TransformModel.HOMOGRAPHY, (150, 110))
    np.testing.assert_array_equal(projective, cv2.warpPerspective(moving, matrix, (150, 110)))
