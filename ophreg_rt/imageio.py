"""Reading images and writing outputs without losing or overwriting anything by accident.

Images are held as numpy arrays in RGB(A) channel order (the convention of numpy-land: PIL,
scikit-image, imageio); files decoded by OpenCV (BGR) are converted on read and back on write.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from .errors import ImageReadError, OutputExistsError

ImageSource = Union[str, os.PathLike, np.ndarray]

#: Smallest side accepted: below it SuperPoint's 8-px cells and 4-px border leave nothing.
MIN_SIDE = 32
_SUPPORTED_DTYPES = (np.uint8, np.uint16)


def describe(source: ImageSource, name: str | None = None) -> str:
    """How an image is named in messages: its path, or the caller's name for an array."""
    if name:
        return name
    if isinstance(source, np.ndarray):
        return f"array{tuple(source.shape)}"
    return str(source)


def read_image(source: ImageSource, name: str | None = None) -> np.ndarray:
    """Return the image as an ``(H, W)`` or ``(H, W, 3|4)`` uint8/uint16 array, RGB(A) order.

    Accepts a path (JPEG, PNG, TIFF, PGM/PPM, BMP; 8- or 16-bit; grey, RGB, RGBA) or an array
    (uint8, uint16, or float in [0, 1], which is quantised to uint16). Anything else raises
    :class:`ImageReadError` naming the source and the problem.
    """
    label = describe(source, name)
    if isinstance(source, np.ndarray):
        image = _validate_array(source, label)
    else:
        image = _decode_file(Path(source), label)
    return image


def _decode_file(path: Path, label: str) -> np.ndarray:
    if not path.exists():
        raise ImageReadError(f"{label}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{label}: not a file")
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if raw.size == 0:
        raise ImageReadError(f"{label}: the file is empty")
    decoded = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageReadError(
            f"{label}: not an image OpenCV can decode (JPEG, PNG, TIFF, PGM, BMP are supported)")
    if decoded.ndim == 3 and decoded.shape[2] == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    elif decoded.ndim == 3 and decoded.shape[2] == 4:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA)
    return _validate_array(decoded, label)


def _validate_array(image: np.ndarray, label: str) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageReadError(
            f"{label}: shape {image.shape} is not (H, W), (H, W, 3) or (H, W, 4)")
    if min(image.shape[:2]) < MIN_SIDE:
        raise ImageReadError(
            f"{label}: {image.shape[1]}x{image.shape[0]} px is too small (at least {MIN_SIDE} px a side)")
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ImageReadError(f"{label}: a float image must hold finite values in [0, 1]")
        image = np.round(image * 65535.0).astype(np.uint16)
    elif image.dtype.type not in _SUPPORTED_DTYPES:
        raise ImageReadError(f"{label}: pixel type {image.dtype} is not supported (8- or 16-bit)")
    return np.ascontiguousarray(image)


def to_display_rgb(image: np.ndarray) -> np.ndarray:
    """An 8-bit RGB view for pictures a person looks at (overlays, match drawings).

    16-bit images are stretched between their 0.1 and 99.9 percentiles, since many devices
    fill only 10-12 of the 16 bits; alpha is dropped.
    """
    if image.dtype == np.uint16:
        image = stretch_to_uint8(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(image[:, :, :3])


def stretch_to_uint8(image: np.ndarray) -> np.ndarray:
    """Map a 16-bit image to 8 bits by its 0.1-99.9 percentile range."""
    low, high = np.percentile(image, (0.1, 99.9))
    if high <= low:
        high = low + 1.0
    scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def check_writable(paths: list[Path], force: bool) -> None:
    """Refuse, before any work is done, to overwrite files unless ``force``."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise OutputExistsError(f"{existing[0]}: already exists (use --force to overwrite)")


def write_image(path: Path, image: np.ndarray) -> None:
    """Write an RGB(A) or grey image atomically: a crash never leaves a half-written file."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the image")
    write_bytes_atomic(path, encoded.tobytes())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
