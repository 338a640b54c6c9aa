"""Reading images and writing outputs without losing or overwriting anything by accident.

Images are held as numpy arrays in RGB(A) channel order (the convention of numpy-land: PIL,
scikit-image, imageio); files decoded by OpenCV (BGR) are converted on read and back on write.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Mapping, Union

import cv2
import numpy as np

from .config import MAX_PIXELS
from .dicom import decode_dicom, is_dicom
from .errors import (ImageDecodeWarning, ImageReadError, ImageTooLargeError, OutputExistsError,
                     OutputWriteError)
from .image_headers import HeaderError, read_header

ImageSource = Union[str, os.PathLike, np.ndarray]

#: Smallest side accepted: below it SuperPoint's 8-px cells and 4-px border leave nothing.
MIN_SIDE = 32
_SUPPORTED_DTYPES = (np.uint8, np.uint16)
#: Bytes a file may hold per pixel of its budget (uncompressed 32-bit float RGBA is 16), plus
#: room for metadata: a larger file is no image the budget admits, and is not read into memory.
_FILE_BYTES_PER_PIXEL = 16
_FILE_METADATA_BYTES = 64 << 20
#: When True (the command line sets it), what a codec writes on stderr while decoding (libjpeg's
#: "Corrupt JPEG data", libtiff's warnings) is caught and raised as an ImageDecodeWarning naming
#: the file. Off by default: redirecting a process's stderr is not a library's business, and
#: it is not thread-safe (another thread's output during a decode would be caught too).
capture_codec_messages = False


def describe(source: ImageSource, name: str | None = None) -> str:
    """How an image is named in messages: its path, or the caller's name for an array."""
    if name:
        return name
    if isinstance(source, np.ndarray):
        return f"array{tuple(source.shape)}"
    return str(source)


def read_image(source: ImageSource, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Return the image as an ``(H, W)`` or ``(H, W, 3|4)`` uint8/uint16 array, RGB(A) order.

    Accepts a path (JPEG, PNG, TIFF, PGM/PPM, BMP; 8- or 16-bit; grey, RGB, RGBA) or an array
    (uint8, uint16, or float in [0, 1], which is quantised to uint16). Anything else raises
    :class:`ImageReadError` naming the source and the problem; an image of more than
    ``max_pixels`` pixels raises :class:`ImageTooLargeError`, for a file from its header,
    before anything is decoded.
    """
    label = describe(source, name)
    if isinstance(source, np.ndarray):
        image = _validate_array(source, label, max_pixels)
    else:
        image = _decode_file(Path(source), label, max_pixels)
    return image


def _check_budget(label: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {width}x{height} px ({width * height / 1e6:.1f} megapixels) is over the "
            f"limit of {max_pixels / 1e6:g} megapixels (raise it with --max-pixels)")


def _decode_file(path: Path, label: str, max_pixels: int) -> np.ndarray:
    if not path.exists():
        raise ImageReadError(f"{label}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{label}: not a file")
    try:
        size = path.stat().st_size
        if size > max_pixels * _FILE_BYTES_PER_PIXEL + _FILE_METADATA_BYTES:
            raise ImageTooLargeError(
                f"{label}: {size / 1e6:.0f} MB is more than any image within the limit of "
                f"{max_pixels / 1e6:g} megapixels holds (raise it with --max-pixels)")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise ImageReadError(f"{label}: the file is empty")
    if is_dicom(path, data[:132]):  # checked, budgeted and decoded by ophreg_rt/dicom.py
        return decode_dicom(data, label, max_pixels)
    try:
        header = read_header(data)
    except HeaderError as exc:
        if exc.size is not None:  # an oversized image is named as that, not as a broken one
            _check_budget(label, *exc.size, max_pixels)
        raise ImageReadError(f"{label}: {exc}") from None
    _check_budget(label, header.width, header.height, max_pixels)
    decoded = _imdecode(data, label)
    if decoded is None:
        raise ImageReadError(
            f"{label}: not an image OpenCV can decode (JPEG, PNG, TIFF, PGM, BMP are supported)")
    if decoded.ndim == 3 and decoded.shape[2] == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    elif decoded.ndim == 3 and decoded.shape[2] == 4:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA)
    return _validate_array(decoded, label, max_pixels)


def _imdecode(data: bytes, label: str) -> np.ndarray | None:
    pixels = np.frombuffer(data, np.uint8)
    if not capture_codec_messages:
        return cv2.imdecode(pixels, cv2.IMREAD_UNCHANGED)
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            decoded = cv2.imdecode(pixels, cv2.IMREAD_UNCHANGED)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        messages = sink.read().decode(errors="replace").split("\n")
    complaints = [line.strip() for line in messages if line.strip()]
    if complaints and decoded is not None:
        more = f" (and {len(complaints) - 1} more)" if len(complaints) > 1 else ""
        warnings.warn(f"{label}: the decoder reported: {complaints[0]}{more}; the image may be "
                      "corrupted", ImageDecodeWarning, stacklevel=2)
    return decoded


def _validate_array(image: np.ndarray, label: str, max_pixels: int) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageReadError(
            f"{label}: shape {image.shape} is not (H, W), (H, W, 3) or (H, W, 4)")
    if min(image.shape[:2]) < MIN_SIDE:
        raise ImageReadError(
            f"{label}: {image.shape[1]}x{image.shape[0]} px is too small (at least {MIN_SIDE} px a side)")
    _check_budget(label, image.shape[1], image.shape[0], max_pixels)
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ImageReadError(f"{label}: a float image must hold finite values in [0, 1]")
        # float32 at least: float16 tops out at 65504, so 1.0 * 65535 would overflow to inf.
        wide = image.astype(np.promote_types(image.dtype, np.float32))
        image = np.round(wide * 65535.0).astype(np.uint16)
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
    """Refuse, before any work is done, outputs that could not be written: an existing file
    unless ``force``, a folder in a file's place, a parent that is a file or not writable."""
    for path in paths:
        if path.is_dir():
            raise OutputWriteError(f"{path}: is a folder, not a file")
        if path.exists() and not force:
            raise OutputExistsError(f"{path}: already exists (use --force to overwrite)")
        # The folder is created at write time; what exists of it must allow that.
        ancestor = path.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise OutputWriteError(f"{path}: {ancestor} is not a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise OutputWriteError(f"{path}: {ancestor} is not writable")


def encode_image(path: Path, image: np.ndarray) -> bytes:
    """An RGB(A) or grey image encoded in the format ``path``'s suffix names (PNG without one)."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise OutputWriteError(f"{path}: OpenCV could not encode the image")
    return encoded.tobytes()


def write_image(path: Path, image: np.ndarray) -> None:
    """Write an RGB(A) or grey image atomically: a crash never leaves a half-written file."""
    write_bytes_atomic(path, encode_image(path, image))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all; the file gets the user's umask."""
    write_files_atomic({path: data})


def write_files_atomic(contents: Mapping[Path, bytes]) -> None:
    """Write every file or none: each goes to a temporary file beside it first (where a full
    disk or a permission fails), and only when all are written are they renamed into place
    (which fails only for a target that turned into a folder meanwhile: check_writable refuses
    one up front). Errors name the user's path, never a temporary one (OutputWriteError)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in contents.items():
            staged.append((path, _write_temporary(path, data)))
        for path, temporary in staged:
            try:
                os.replace(temporary, path)
            except OSError as exc:
                raise OutputWriteError(f"{path}: cannot be written ({exc.strerror or exc})") \
                    from None
    finally:
        for _, temporary in staged:
            temporary.unlink(missing_ok=True)


def _write_temporary(path: Path, data: bytes) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"{path}: its folder cannot be created ({exc.strerror or exc})") \
            from None
    # os.open with 0o666, not tempfile.mkstemp (always 0600): the kernel applies the umask, so
    # outputs get the same mode as any other file the user creates.
    while True:
        temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputWriteError(f"{path}: cannot be written ({exc.strerror or exc})") \
                from None
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OutputWriteError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    return temporary
