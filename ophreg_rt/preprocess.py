"""From any supported image to the network's input, and from network pixels back to original ones."""

from __future__ import annotations

import cv2
import numpy as np

from .config import PreprocessConfig, PreprocessMode
from .contract import CELL
from .imageio import stretch_to_uint8


def to_grey_uint8(image: np.ndarray, mode: PreprocessMode) -> np.ndarray:
    """The single 8-bit channel the detector sees, before resizing.

    ``grey`` converts colour by luminance. ``clahe`` takes the green channel of colour images:
    in fundus photographs the red channel is saturated and the blue one is noise, the vessels
    live in green.
    """
    if image.dtype == np.uint16:
        image = stretch_to_uint8(image)
    if image.ndim == 2:
        return image
    rgb = image[:, :, :3]
    if mode is PreprocessMode.CLAHE:
        return np.ascontiguousarray(rgb[:, :, 1])
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def network_grey(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """``(height, width)`` uint8 at ``config.size``: what every front end (SuperPoint, SIFT) sees.

    CLAHE is applied after resizing, so that its tiles cover the same share of the eye whatever
    the camera's resolution.
    """
    width, height = config.size
    if width % CELL or height % CELL:
        raise ValueError(f"network size {width}x{height} must be a multiple of {CELL}")
    grey = to_grey_uint8(image, config.mode)
    shrinking = width * height < grey.shape[0] * grey.shape[1]
    resized = cv2.resize(grey, (width, height),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if config.mode is PreprocessMode.CLAHE:
        clahe = cv2.createCLAHE(clipLimit=config.clahe_clip_limit,
                                tileGridSize=config.clahe_tile_grid)
        resized = clahe.apply(resized)
    return resized


def network_input(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """``(1, height, width)`` float32 in [0, 1] at ``config.size``, ready for SuperPoint."""
    return (network_grey(image, config).astype(np.float32) / 255.0)[None]


def network_to_original(points: np.ndarray, original_size: tuple[int, int],
                        network_size: tuple[int, int]) -> np.ndarray:
    """Map ``(N, 2)`` (x, y) pixels of the resized image to pixels of the original image.

    Sizes are (width, height). Pixel centres sit at integer coordinates in both images and a
    resize stretches pixel *edges* onto each other (OpenCV's half-pixel convention), so
    ``x_orig = (x_net + 0.5) * W_orig / W_net - 0.5``, per axis.
    """
    scale = np.array(original_size, dtype=np.float64) / np.array(network_size, dtype=np.float64)
    return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5
