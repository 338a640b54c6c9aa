"""Pictures a clinician checks a registration with: blend, checkerboard, inlier matches."""

from __future__ import annotations

import cv2
import numpy as np

from .imageio import to_display_rgb

#: Tiles along the longer side of the checkerboard: vessels crossing a tile edge show any gap.
CHECKER_TILES = 8


def blend(fixed: np.ndarray, warped: np.ndarray) -> np.ndarray:
    """50/50 mix of the fixed image and the warped moving image, 8-bit RGB."""
    return cv2.addWeighted(to_display_rgb(fixed), 0.5, to_display_rgb(warped), 0.5, 0.0)


def checkerboard(fixed: np.ndarray, warped: np.ndarray, tiles: int = CHECKER_TILES) -> np.ndarray:
    """Alternating tiles of the fixed and warped images, 8-bit RGB."""
    fixed_rgb, warped_rgb = to_display_rgb(fixed), to_display_rgb(warped)
    height, width = fixed_rgb.shape[:2]
    tile = max(1, int(np.ceil(max(height, width) / tiles)))
    rows = (np.arange(height) // tile)[:, None]
    cols = (np.arange(width) // tile)[None, :]
    use_warped = ((rows + cols) % 2).astype(bool)
    return np.where(use_warped[:, :, None], warped_rgb, fixed_rgb)


def draw_matches(fixed: np.ndarray, moving: np.ndarray, keypoints_fixed: np.ndarray,
                 keypoints_moving: np.ndarray, matches: np.ndarray, inliers: np.ndarray,
                 height: int = 768) -> np.ndarray:
    """Fixed (left) and moving (right) side by side at one height; inliers green, others red."""
    fixed_rgb, moving_rgb = to_display_rgb(fixed), to_display_rgb(moving)
    scale_fixed = height / fixed_rgb.shape[0]
    scale_moving = height / moving_rgb.shape[0]
    left = cv2.resize(fixed_rgb, (max(1, round(fixed_rgb.shape[1] * scale_fixed)), height),
                      interpolation=cv2.INTER_AREA)
    right = cv2.resize(moving_rgb, (max(1, round(moving_rgb.shape[1] * scale_moving)), height),
                       interpolation=cv2.INTER_AREA)
    canvas = np.concatenate([left, right], axis=1)
    offset = left.shape[1]
    thickness = max(1, height // 512)
    order = np.argsort(inliers, kind="stable")  # outliers first, so inliers are drawn on top
    for m in order:
        i_fixed, i_moving = matches[m]
        x0, y0 = keypoints_fixed[i_fixed] * scale_fixed
        x1, y1 = keypoints_moving[i_moving] * scale_moving
        colour = (0, 200, 0) if inliers[m] else (200, 40, 40)
        start, end = (int(round(x0)), int(round(y0))), (int(round(x1 + offset)), int(round(y1)))
        cv2.line(canvas, start, end, colour, thickness, cv2.LINE_AA)
        cv2.circle(canvas, start, 2 * thickness, colour, -1, cv2.LINE_AA)
        cv2.circle(canvas, end, 2 * thickness, colour, -1, cv2.LINE_AA)
    return canvas
