"""Network input and the mapping of network pixels back to original pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ophreg_rt.config import PreprocessConfig, PreprocessMode
from ophreg_rt.preprocess import network_input, network_to_original, to_grey_uint8


def test_network_input_has_the_configured_size_and_range():
    image = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    config = PreprocessConfig(size=(256, 128))
    tensor = network_input(image, config)
    assert tensor.shape == (1, 128, 256) and tensor.dtype == np.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0


def test_network_size_must_be_a_multiple_of_the_cell():
    with pytest.raises(ValueError, match="multiple of 8"):
        network_input(np.zeros((64, 64), np.uint8), PreprocessConfig(size=(100, 64)))


def test_clahe_mode_reads_the_green_channel_and_grey_mode_the_luminance():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:, 1] = 200  # structure in green only
    assert to_grey_uint8(image, PreprocessMode.CLAHE)[:, 40].min() == 200
    luminance = to_grey_uint8(image, PreprocessMode.GREY)[0, 40]
    assert luminance == cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[0, 40] and 0 < luminance < 200
    red_only = np.zeros((64, 64, 3), np.uint8)
    red_only[..., 0] = 255
    assert to_grey_uint8(red_only, PreprocessMode.CLAHE).max() == 0


def test_sixteen_bit_images_are_stretched_not_darkened():
    twelve_bit = np.random.default_rng(1).integers(0, 4096, (64, 64)).astype(np.uint16)
    grey = to_grey_uint8(twelve_bit, PreprocessMode.GREY)
    assert grey.dtype == np.uint8 and grey.max() >= 250


def test_network_to_original_follows_the_half_pixel_convention_of_resizing():
    # A bright spot's centroid, resized like the network input, must map back to where it was.
    original = np.zeros((300, 500), np.float32)
    cx, cy = 123.0, 77.0
    yy, xx = np.mgrid[:300, :500]
    original += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 6.0 ** 2))
    network_size = (256, 192)
    resized = cv2.resize(original, network_size, interpolation=cv2.INTER_LINEAR)
    ny, nx = np.mgrid[:network_size[1], :network_size[0]]
    centroid = np.array([[(resized * nx).sum(), (resized * ny).sum()]]) / resized.sum()
    mapped = network_to_original(centroid, (500, 300), network_size)
    np.testing.assert_allclose(mapped[0], [cx, cy], atol=0.1)


def test_network_to_original_is_identity_at_the_same_size():
    points = np.array([[0.0, 0.0], [10.5, 3.25], [255.0, 127.0]])
    np.testing.assert_allclose(network_to_original(points, (256, 128), (256, 128)), points)
