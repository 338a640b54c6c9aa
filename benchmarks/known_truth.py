"""Known-truth registration cases made from real single images, and how their error is measured.

Method: each real image is the FIXED image; the MOVING image is the same image warped by a seeded
random affine (SMALL_MOTION: rotation up to 20 degrees, isotropic scale 0.85-1.2, shift up to 15 %
of the size, about the centre; LARGE_MOTION: 45 degrees, 0.7-1.4, 25 %) with a photometric change (gain 0.8-1.2, gamma 0.7-1.4). The true registration
(moving -> fixed) is the inverse of that affine. The error of an estimate is the mean distance,
in fixed-image pixels rescaled to a 1024-px longer side, between where the truth and the
estimate send the moving image's field-of-view pixels (sampled on an 8-px grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ophreg_rt.config import REFERENCE_SIZE
from ophreg_rt.imageio import read_image
from ophreg_rt.transforms import apply

GAIN_RANGE = (0.8, 1.2)
GAMMA_RANGE = (0.7, 1.4)
#: A registration within this mean error (px at 1024) counts as a success (issue 3).
SUCCESS_PX = 2.0
_GRID_STEP = 8


@dataclass(frozen=True)
class Motion:
    """Ranges of the random affines: rotation (deg, +-), isotropic scale, shift (share of size)."""

    max_rotation_deg: float
    scale_range: tuple[float, float]
    max_shift: float


#: The ranges of the issue's proof (two visits of one eye, one camera).
SMALL_MOTION = Motion(20.0, (0.85, 1.2), 0.15)
#: Harder: a different device or a strongly off-centre field.
LARGE_MOTION = Motion(45.0, (0.7, 1.4), 0.25)


@dataclass(frozen=True)
class Case:
    name: str
    fixed: np.ndarray
    moving: np.ndarray
    truth: np.ndarray  # 3x3, moving -> fixed


def field_of_view(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the eye's disc: fundus cameras leave the outside black."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image[:, :, :3], cv2.COLOR_RGB2GRAY)
    if grey.dtype != np.uint8:
        grey = cv2.normalize(grey, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    mask = (grey > 20).astype(np.uint8)
    mask = cv2.erode(mask, np.ones((15, 15), np.uint8))
    return mask.astype(bool)


def random_affine(rng: np.random.Generator, size: tuple[int, int],
                  motion: Motion = SMALL_MOTION) -> np.ndarray:
    """A 3x3 affine of the kind the method meets between two visits, about the image centre."""
    width, height = size
    angle = np.deg2rad(rng.uniform(-motion.max_rotation_deg, motion.max_rotation_deg))
    scale = rng.uniform(*motion.scale_range)
    shift = rng.uniform(-motion.max_shift, motion.max_shift, size=2) * np.array([width, height])
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = centre - linear @ centre + shift
    return matrix


def photometric_change(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    high = float(np.iinfo(image.dtype).max)
    gain, gamma = rng.uniform(*GAIN_RANGE), rng.uniform(*GAMMA_RANGE)
    changed = np.clip(gain * (image.astype(np.float64) / high) ** gamma, 0, 1) * high
    return np.round(changed).astype(image.dtype)


def make_cases(paths: list[Path], per_image: int, seed: int,
               motion: Motion = SMALL_MOTION) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for path in paths:
        fixed = read_image(path)
        size = (fixed.shape[1], fixed.shape[0])
        for k in range(per_image):
            forward = random_affine(rng, size, motion)  # fixed -> moving
            moving = cv2.warpAffine(fixed, forward[:2], size, flags=cv2.INTER_LINEAR)
            moving = photometric_change(moving, rng)
            cases.append(Case(f"{path.stem}#{k}", fixed, moving, np.linalg.inv(forward)))
    return cases


def mean_fov_error(estimate: np.ndarray | None, case: Case) -> float:
    """Mean transfer error over the moving image's field of view, px at REFERENCE_SIZE."""
    if estimate is None:
        return float("inf")
    mask = field_of_view(case.moving)
    ys, xs = np.nonzero(mask[::_GRID_STEP, ::_GRID_STEP])
    points = np.stack([xs, ys], axis=1).astype(np.float64) * _GRID_STEP
    distance = np.linalg.norm(apply(estimate, points) - apply(case.truth, points), axis=1)
    return float(distance.mean() * REFERENCE_SIZE / max(case.fixed.shape[:2]))


def round_trip_error(forward: np.ndarray, backward: np.ndarray, image: np.ndarray) -> float:
    """Mean distance a FOV pixel of ``image`` travels through forward then backward, px at 1024."""
    mask = field_of_view(image)
    ys, xs = np.nonzero(mask[::_GRID_STEP, ::_GRID_STEP])
    points = np.stack([xs, ys], axis=1).astype(np.float64) * _GRID_STEP
    back = apply(backward @ forward, points)
    return float(np.linalg.norm(back - points, axis=1).mean() * REFERENCE_SIZE / max(image.shape[:2]))
