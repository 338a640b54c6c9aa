"""Pictures a clinician checks a registration with: blend, checkerboard, inlier matches."""

from __future__ import annotations

import cv2
import numpy as np

from .imageio import to_display_rgb

#: Tiles along the longer side of the checkerboard: vessels crossing a tile edge show any gap.
CHECKER_TILES = 8
#: Each image of the matches picture fits in a box this high and MATCHES_MAX_ASPECT times as
#: wide, so the picture stays a few MB whatever the images' shapes (scaled to a fixed height
#: only, a 40000x32 image became a 960000 px wide, 2 GB picture).
MATCHES_HEIGHT = 768
MATCHES_MAX_ASPECT = 2.0


def blend(fixed: np.ndarray, warped: np.ndarray) -> np.ndarray:
    """50/50 mix of the fixed image and the warped moving image, 8-bit RGB."""
    return cv2.addWeighted(to_display_rgb(fixed), 0.5, to_display_rgb(warped), 0.5, 0.0)


def checkerboard(fixed: np.ndarray, warped: np.ndarray, tiles: int = CHECKER_TILES) -> np.ndarray:
    """Alternating tiles of the fixed and warped images, 8-bit RGB."""
    fixed_rgb, warped_rgb = to_display_rgb(fixed), to_display_rgb(warped)
    height, width = fixed_rgb.shape[:2]
    tile = max(1, int(np.ceil(max(height, width) / tiles)))
    # Parities as bool vectors: their broadcast is one byte a pixel, not an int64 index sum.
    rows = ((np.arange(height) // tile) % 2).astype(bool)[:, None]
    cols = ((np.arange(width) // tile) % 2).astype(bool)[None, :]
    use_warped = rows ^ cols
    return np.where(use_warped[:, :, None], warped_rgb, fixed_rgb)


def draw_matches(fixed: np.ndarray, moving: np.ndarray, keypoints_fixed: np.ndarray,
                 keypoints_moving: np.ndarray, matches: np.ndarray, inliers: np.ndarray,
                 height: int = MATCHES_HEIGHT) -> np.ndarray:
    """Fixed (left) and moving (right) side by side, each scaled to fit a box ``height`` high
    and MATCHES_MAX_ASPECT times as wide; inliers green, others red."""
    box = (round(height * MATCHES_MAX_ASPECT), height)
    left, scale_fixed = _fit(fixed, box)
    right, scale_moving = _fit(moving, box)
    canvas = np.zeros((max(left.shape[0], right.shape[0]), left.shape[1] + right.shape[1], 3),
                      np.uint8)
    canvas[:left.shape[0], :left.shape[1]] = left
    canvas[:right.shape[0], left.shape[1]:] = right
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


def _fit(image: np.ndarray, box: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The image as 8-bit RGB scaled to fit ``box`` (width, height), and the scale."""
    height, width = image.shape[:2]
    scale = min(box[0] / width, box[1] / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Shrunk before the display conversion, so that no full-size RGB copy is made.
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else
                       cv2.INTER_LINEAR)
    return to_display_rgb(small), scale
