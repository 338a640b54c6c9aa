"""Keypoint masks: the retina is kept, its surround, the frame and burnt-in overlays are not,
and no front end registers a pair by the overlays the two images share."""

from __future__ import annotations

import time
from dataclasses import replace

import cv2
import numpy as np
import pytest

from benchmarks.known_truth import Case, field_of_view, mean_fov_error
from conftest import CC0_RETINA
from ophreg_rt import Registrar, RegistrarConfig
from ophreg_rt.config import REFERENCE_SIZE, FeatureName, MaskConfig, MatcherName
from ophreg_rt.imageio import read_image
from ophreg_rt.masks import inside, keypoint_mask, select
from ophreg_rt.types import Features

#: The benchmark's success bar (benchmarks/known_truth.py), px at REFERENCE_SIZE.
WITHIN_PX = 5.0
#: Where the optic disc of the CC0 photograph is (its pixels): centre and radius.
CC0_DISC = ((245, 647), 90)

FRONT_ENDS = {
    "superpoint+lightglue": RegistrarConfig(),
    "superpoint+mnn": replace(RegistrarConfig(), matcher=MatcherName.MNN),
    "sift": replace(RegistrarConfig(), features=FeatureName.SIFT),
}
WHITE, YELLOW, BLACK = (255, 255, 255), (255, 255, 0), (0, 0, 0)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(out, scale, text, at, size, colour, thickness):
    cv2.putText(out, text, _at(at, scale), FONT, size * scale, colour,
                max(1, round(thickness * scale)), cv2.LINE_AA)


def _at(point, scale):
    return tuple(int(round(v * scale)) for v in point)


# What fundus cameras and angiography systems burn in, at the same pixels in every image:
# positions in px of a 1024-px image, scaled to the image. The last ones sit on the retina.
OVERLAYS = {
    "frame": lambda out, s, c: cv2.rectangle(out, _at((6, 6), s), (out.shape[1] - 1 - round(6 * s),
                                             out.shape[0] - 1 - round(6 * s)), c, round(2 * s)),
    "info bar line": lambda out, s, c: cv2.line(out, (round(6 * s), out.shape[0] - round(60 * s)),
                                                (out.shape[1] - round(6 * s),
                                                 out.shape[0] - round(60 * s)), c, round(2 * s)),
    "date": lambda out, s, c: _text(out, s, "OD 2019-03-18 10:42:17", (20, 40), 0.8, c, 2),
    "patient": lambda out, s, c: _text(out, s, "PATIENT 004217 DOE^JANE", (20, 1000), 0.8,
                                       YELLOW if out.ndim == 3 else c, 2),
    "logo": lambda out, s, c: (cv2.rectangle(out, _at((824, 20), s), _at((994, 80), s), c, -1),
                               _text(out, s, "RETCAM", (834, 62), 0.9,
                                     BLACK if out.ndim == 3 else 0, 2)),
    "timer": lambda out, s, c: _text(out, s, "FA 00:32.5", (180, 330), 1.0, c, 2),
    "field": lambda out, s, c: _text(out, s, "30deg ART [HS]", (560, 760), 0.9,
                                     YELLOW if out.ndim == 3 else c, 2),
    "scale bar": lambda out, s, c: (cv2.rectangle(out, _at((640, 820), s), _at((840, 826), s),
                                                  c, -1),
                                    _text(out, s, "200 um", (700, 812), 0.6, c, 1)),
}


def burn_in(image: np.ndarray, names=OVERLAYS) -> np.ndarray:
    """``image`` with the named overlays drawn in (white, yellow where the text says so)."""
    out = image.copy()
    scale = max(out.shape[:2]) / REFERENCE_SIZE
    for name in names:
        OVERLAYS[name](out, scale, WHITE if out.ndim == 3 else 255)
    return out


def overlay_pixels(shape: tuple[int, ...], name: str) -> np.ndarray:
    """``(H, W)`` bool: the pixels that overlay ``name`` draws on an image of ``shape``."""
    canvas = np.zeros(shape[:2], np.uint8)
    OVERLAYS[name](canvas, max(shape[:2]) / REFERENCE_SIZE, 255)
    return canvas > 0


def angiogram_like(rgb: np.ndarray) -> np.ndarray:
    """Grey angiogram-like view of a colour photograph: the green channel inverted (vessels
    bright), CLAHE, and a black surround as angiography systems leave it (known_truth.py's
    angio category inverts the surround to white; that case is tested apart)."""
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    grey = clahe.apply(255 - rgb[:, :, 1])
    grey[~field_of_view(rgb)] = 0
    return grey


def known_warp(size: tuple[int, int]) -> np.ndarray:
    """3x3 fixed -> moving: 8 degrees about the centre and a (40, -30) px shift at 1024."""
    width, height = size
    angle = np.deg2rad(8.0)
    linear = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    warp = np.eye(3)
    warp[:2, :2] = linear
    warp[:2, 2] = centre - linear @ centre + np.array([40.0, -30.0]) * max(size) / REFERENCE_SIZE
    return warp


@pytest.fixture(scope="module")
def cc0() -> np.ndarray:
    return read_image(CC0_RETINA)


@pytest.fixture(scope="module")
def overlay_pair(cc0) -> tuple[np.ndarray, np.ndarray, Case]:
    """Colour FIXED, angiogram-like MOVING warped by a known affine, then the same overlays
    burnt into both at the same pixels (unwarped), as one device would; the case for
    measuring errors holds the clean fixed image, whose field of view is the retina's."""
    size = (cc0.shape[1], cc0.shape[0])
    warp = known_warp(size)
    moving = angiogram_like(cv2.warpAffine(cc0, warp[:2], size, flags=cv2.INTER_LINEAR))
    fixed, moving = burn_in(cc0), burn_in(moving)
    return fixed, moving, Case("cc0 with overlays", cc0, moving, np.linalg.inv(warp))


def _disc(shape, centre, radius) -> np.ndarray:
    ys, xs = np.mgrid[:shape[0], :shape[1]]
    return (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 < radius ** 2


def _assert_retina_kept_and_surround_dropped(image: np.ndarray, retina_of: np.ndarray):
    mask = keypoint_mask(image)
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    # Well inside the field: all kept; the black outside (and a rim for the margin): none.
    fov = field_of_view(retina_of).view(np.uint8)
    deep = cv2.erode(fov, np.ones((61, 61), np.uint8)) > 0
    outside = cv2.dilate(fov, np.ones((5, 5), np.uint8)) == 0
    assert mask[deep].mean() > 0.995
    assert mask[outside].mean() < 0.001
    return mask


def test_the_retina_is_kept_and_its_black_surround_dropped(cc0):
    mask = _assert_retina_kept_and_surround_dropped(cc0, cc0)
    # The field's edge itself (a strong edge that never moves with the eye) is dropped too.
    fov = field_of_view(cc0)
    edge = fov & (cv2.erode(fov.view(np.uint8), np.ones((9, 9), np.uint8)) == 0)
    assert mask[edge].mean() < 0.01


def test_a_dark_fundus_keeps_its_retina(cc0):
    _assert_retina_kept_and_surround_dropped((cc0 * 0.25).astype(np.uint8), cc0)


def test_an_inverted_image_with_a_white_surround_keeps_its_retina(cc0):
    # known_truth.py's angio category: the green channel inverted, surround and all.
    _assert_retina_kept_and_surround_dropped(255 - cc0[:, :, 1], cc0)


def test_an_all_retina_image_keeps_everything_but_its_frame(cc0):
    crop = np.ascontiguousarray(cc0[300:1100, 300:1100])
    mask = keypoint_mask(crop)
    frame = round(MaskConfig().border_margin * max(crop.shape[:2]) / REFERENCE_SIZE)
    assert mask[frame:-frame, frame:-frame].all()
    assert not mask[:frame].any() and not mask[:, -frame:].any()


def test_real_all_retina_images_keep_nearly_everything(data_dir):
    for path in sorted((data_dir / "pairs" / "varia_R067_R118").glob("*.pgm")):
        assert keypoint_mask(read_image(path)).mean() > 0.9, path.name


@pytest.mark.parametrize("gain", [1.0, 2.2], ids=["as taken", "overexposed"])
def test_the_optic_disc_is_kept(cc0, gain):
    # Overexposed, the disc and its surroundings saturate white: bright, flat, sharp-edged
    # where vessels cross, yet neither text nor a box.
    image = np.clip(cc0 * gain, 0, 255).astype(np.uint8)
    assert keypoint_mask(image)[_disc(image.shape, *CC0_DISC)].all()


@pytest.mark.parametrize("kind", ["colour", "angiogram-like"])
def test_burnt_in_text_lines_and_logos_are_masked(cc0, kind):
    image = cc0 if kind == "colour" else angiogram_like(cc0)
    names = list(OVERLAYS)
    if kind != "colour":
        # On a grey image white text is told from saturated vessels by its rows of
        # letters; where a letter touches a bright vessel they become one shape and may be
        # missed (the timer runs into the vessels at the disc).
        names.remove("timer")
    mask = keypoint_mask(burn_in(image, names))
    for name in names:
        assert mask[overlay_pixels(image.shape, name)].mean() < 0.01, name
    # The retina away from the overlays is still kept.
    assert mask[_disc(image.shape, (700, 700), 150)].all()


def test_sixteen_bit_and_rgba_images_get_the_same_mask(cc0):
    image = burn_in(cc0)
    mask = keypoint_mask(image)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    assert np.array_equal(keypoint_mask(rgba), mask)
    # 16-bit images are stretched between percentiles, as for the network: levels move a
    # little, the mask hardly.
    assert (keypoint_mask(image.astype(np.uint16) * 257) == mask).mean() > 0.99


def test_the_mask_takes_milliseconds(cc0):
    image = cv2.resize(burn_in(cc0), (1024, 1024), interpolation=cv2.INTER_AREA)
    keypoint_mask(image)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        keypoint_mask(image)
        times.append(time.perf_counter() - started)
    # About 10 ms on two busy cores; the bound only catches a slow path gone wrong.
    assert np.median(times) < 0.1


def test_inside_rounds_to_pixels_and_refuses_points_off_the_image():
    mask = np.zeros((4, 6), bool)
    mask[1, 2] = True
    points = np.array([[2.4, 0.6], [1.6, 1.4], [2.0, 1.0], [-0.6, 1.0], [6.0, 1.0], [2.0, 4.2]])
    assert inside(mask, points).tolist() == [True, True, True, False, False, False]
    features = Features(keypoints=np.arange(6, dtype=np.float32).reshape(3, 2),
                        scores=np.array([0.9, 0.5, 0.1], np.float32),
                        descriptors=np.eye(3, 4, dtype=np.float32))
    kept = select(features, np.array([True, False, True]))
    assert kept.scores.tolist() == pytest.approx([0.9, 0.1])
    assert kept.keypoints.tolist() == [[0, 1], [4, 5]] and kept.descriptors.shape == (2, 4)


def test_masks_are_on_by_default_and_detect_drops_what_they_cover(cc0):
    assert RegistrarConfig().mask.enabled
    image = burn_in(cc0)
    mask = keypoint_mask(image)
    sift = FRONT_ENDS["sift"]
    masked, = Registrar(sift).detect([image])
    unmasked, = Registrar(replace(sift, mask=MaskConfig(enabled=False))).detect([image])
    assert inside(mask, masked.keypoints).all()
    assert len(masked.features) == len(masked.keypoints) < len(unmasked)
    assert not inside(mask, unmasked.keypoints).all()


@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_no_front_end_registers_shared_overlays_as_the_identity(overlay_pair, front_end):
    fixed, moving, case = overlay_pair
    result = Registrar(FRONT_ENDS[front_end]).register(fixed, moving)
    # Registered close to the true warp, or refused: never the identity the overlays vote for.
    assert not result.ok or mean_fov_error(result, case) < WITHIN_PX, result.reason
    for keypoints, image in ((result.keypoints_fixed, fixed), (result.keypoints_moving, moving)):
        assert inside(keypoint_mask(image), keypoints).all()


def test_without_masks_shared_overlays_pull_a_front_end_to_the_identity(overlay_pair):
    # The proof that the test above tests the masks: unmasked, the overlays win.
    fixed, moving, case = overlay_pair
    identity = Case(case.name, case.fixed, case.moving, np.eye(3))
    pulled = []
    for front_end in ("sift", "superpoint+mnn"):
        config = replace(FRONT_ENDS[front_end], mask=MaskConfig(enabled=False))
        result = Registrar(config).register(fixed, moving)
        pulled.append(result.ok and mean_fov_error(result, case) > 4 * WITHIN_PX
                      and mean_fov_error(result, identity) < 2.0)
    assert any(pulled)
