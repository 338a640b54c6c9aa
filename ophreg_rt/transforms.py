"""What a fitted transform means: plausibility for two photographs of one eye, and the warp."""

from __future__ import annotations

import cv2
import numpy as np

from .config import REFERENCE_SIZE, PlausibilityConfig, TransformModel


def reference_scale(size: tuple[int, int]) -> float:
    """Factor that brings an image of (width, height) to REFERENCE_SIZE on its longer side."""
    return REFERENCE_SIZE / float(max(size))


def to_reference_frame(matrix: np.ndarray, fixed_size: tuple[int, int],
                       moving_size: tuple[int, int]) -> np.ndarray:
    """The same 3x3 transform between both images scaled to REFERENCE_SIZE (longer side).

    Cameras of different resolution make an honest registration scale pixels by their
    resolution ratio; in this frame that ratio is gone and what is left is the eye's motion.
    """
    scale_fixed = np.diag([reference_scale(fixed_size)] * 2 + [1.0])
    unscale_moving = np.diag([1.0 / reference_scale(moving_size)] * 2 + [1.0])
    return scale_fixed @ matrix @ unscale_moving


def implausibility(matrix: np.ndarray, model: TransformModel, fixed_size: tuple[int, int],
                   moving_size: tuple[int, int], config: PlausibilityConfig) -> str | None:
    """Why ``matrix`` (moving -> fixed, original pixels) cannot relate two photos of one eye.

    Returns None when it can. Checked on the linear part in the reference frame: both singular
    values within [min_scale, max_scale], their ratio (shear, squash) at most max_anisotropy,
    no reflection, and, for a homography, a bounded perspective term.
    """
    if not np.all(np.isfinite(matrix)):
        return "the transform is not finite"
    normalised = to_reference_frame(matrix, fixed_size, moving_size)
    if abs(normalised[2, 2]) < 1e-12:
        return "the transform is singular"
    normalised = normalised / normalised[2, 2]
    linear = normalised[:2, :2]
    if np.linalg.det(linear) <= 0:
        return "the transform mirrors the image"
    largest, smallest = np.linalg.svd(linear, compute_uv=False)
    if smallest < config.min_scale or largest > config.max_scale:
        return (f"implausible scale: singular values {largest:.3f}, {smallest:.3f} outside "
                f"[{config.min_scale}, {config.max_scale}]")
    if largest / smallest > config.max_anisotropy:
        return (f"implausible shear or squash: anisotropy {largest / smallest:.3f} > "
                f"{config.max_anisotropy}")
    if model is TransformModel.HOMOGRAPHY:
        perspective = float(np.abs(normalised[2, :2]).max() * REFERENCE_SIZE)
        if perspective > config.max_perspective:
            return f"implausible perspective: {perspective:.3f} > {config.max_perspective}"
    return None


def warp_image(moving: np.ndarray, matrix: np.ndarray, model: TransformModel,
               fixed_size: tuple[int, int]) -> np.ndarray:
    """The moving image resampled into the fixed image's frame (same dtype and channels)."""
    flags = cv2.INTER_LINEAR
    if TransformModel(model) is TransformModel.HOMOGRAPHY:
        return cv2.warpPerspective(moving, matrix, fixed_size, flags=flags,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.warpAffine(moving, matrix[:2], fixed_size, flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(N, 2)`` points by a 3x3 transform (affine or projective)."""
    points = np.asarray(points, dtype=np.float64)
    mapped = points @ matrix[:2, :2].T + matrix[:2, 2]
    denominator = points @ matrix[2, :2] + matrix[2, 2]
    return mapped / denominator[:, None]
