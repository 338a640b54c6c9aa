"""Image input: every supported format, depth and channel layout; clear errors for the rest."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ophreg_rt.errors import ImageReadError, OutputExistsError
from ophreg_rt.imageio import check_writable, read_image, to_display_rgb, write_image


def _colour_image(dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(0)
    high = np.iinfo(dtype).max
    image = rng.integers(0, high, size=(48, 64, 3), dtype=np.int64).astype(dtype)
    image[:8, :8] = (high, 0, 0)  # pure red corner reveals a channel-order mix-up
    return image


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp", ".ppm"])
def test_colour_files_round_trip_losslessly_in_rgb_order(tmp_path, suffix):
    image = _colour_image()
    path = tmp_path / f"eye{suffix}"
    write_image(path, image)
    loaded = read_image(path)
    np.testing.assert_array_equal(loaded, image)
    assert tuple(loaded[0, 0]) == (255, 0, 0)


def test_jpeg_colour_is_read_in_rgb_order(tmp_path):
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 250  # red
    path = tmp_path / "eye.jpg"
    write_image(path, image)
    loaded = read_image(path)
    assert loaded.shape == (64, 64, 3) and loaded[..., 0].mean() > 240 and loaded[..., 2].mean() < 10


@pytest.mark.parametrize("suffix", [".png", ".tif", ".pgm"])
def test_sixteen_bit_grey_keeps_its_depth(tmp_path, suffix):
    image = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 17)
    path = tmp_path / f"angiogram{suffix}"
    write_image(path, image)
    loaded = read_image(path)
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, image)


def test_rgba_keeps_alpha_and_display_drops_it(tmp_path):
    image = np.dstack([_colour_image(), np.full((48, 64), 200, np.uint8)])
    path = tmp_path / "eye.png"
    write_image(path, image)
    loaded = read_image(path)
    np.testing.assert_array_equal(loaded, image)
    assert to_display_rgb(loaded).shape == (48, 64, 3)


def test_float_arrays_in_unit_range_are_accepted():
    image = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    loaded = read_image(image)
    assert loaded.dtype == np.uint16 and loaded.max() == 65535


@pytest.mark.parametrize("array, problem", [
    (np.zeros((10, 64), np.uint8), "too small"),
    (np.zeros((48, 64, 2), np.uint8), "shape"),
    (np.zeros((48, 64), np.int32), "pixel type"),
    (np.full((48, 64), 2.0, np.float32), "[0, 1]"),
    (np.full((48, 64), np.nan, np.float32), "[0, 1]"),
])
def test_bad_arrays_are_refused_with_the_problem_named(array, problem):
    with pytest.raises(ImageReadError, match=problem) as caught:
        read_image(array, name="fixed")
    assert str(caught.value).startswith("fixed:")


def test_missing_empty_and_non_image_files_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="no such file") as caught:
        read_image(tmp_path / "absent.png")
    assert "absent.png" in str(caught.value)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(empty)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageReadError, match="not an image OpenCV can decode"):
        read_image(text)
    with pytest.raises(ImageReadError, match="not a file"):
        read_image(tmp_path)


def test_existing_outputs_are_refused_unless_forced(tmp_path):
    taken = tmp_path / "warped.png"
    taken.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="warped.png"):
        check_writable([tmp_path / "free.png", taken], force=False)
    check_writable([taken], force=True)
    assert taken.read_bytes() == b"precious"  # checking never touches the file


def test_writing_leaves_no_temporary_files(tmp_path):
    write_image(tmp_path / "out.png", np.zeros((40, 40), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    assert cv2.imread(str(tmp_path / "out.png")) is not None
