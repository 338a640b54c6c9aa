"""Control points for the real pairs, found independently of the registration pipeline.

The real pairs in ``../shared/data/dev/pairs`` have no ground truth. To score registrations and
transform models on them we need corresponding points that owe nothing to the pipeline under
test: nothing from ``ophreg_rt`` is imported here (no SuperPoint, SIFT, LightGlue, RANSAC, no
preprocessing), only OpenCV and NumPy on vessel maps; and no point is accepted or rejected by
its agreement with a global transform model, so that the points favour no model. Method
(lengths in px at 1024 scale, i.e. a native length x 1024 / the image's longer side; the
matching itself runs at native resolution):

1. Vessel map of each image: the green channel (the grey level of a grey image), beyond the
   field of view (and its dark rim, FOV_RIM) replaced by the local mean of the FOV, then a
   black-hat (closing minus image) with a disk of VESSEL_DISK, which keeps what is darker than
   its surroundings and narrower than the disk; for the angiogram, whose vessels are bright, a
   top-hat (``POLARITY``). Blurred by VESSEL_BLUR_SIGMA against JPEG noise.
2. Field of view: pixels above FOV_LEVEL (brightest channel, median-blurred), largest connected
   component, holes filled.
3. Coarse alignment, only to bring each patch near its match: vessel maps at COARSE_SIZE with
   the response below the FOV's VESSEL_PERCENTILE-th percentile removed, blurred; an
   exhaustive grid of similarities about the FOV centres (scales COARSE_SCALE_RANGE in
   COARSE_SCALE_STEPS log steps, rotations up to +-COARSE_MAX_ROTATION every
   COARSE_ROTATION_STEP degrees), each shifted by phase correlation and scored by the
   correlation coefficient over the fixed FOV; the COARSE_ECC_STARTS best refined to an affine
   by OpenCV's ECC (``findTransformECC``), the best of those refined again at REFINE_SIZE.
4. Guidance, because an affine cannot follow the curved retina (at the kept points the coarse
   affine is off by a median 1-5 px and up to 9 px, depending on the pair), so that each fine
   search stays centred on its match: GUIDE_PATCH patches on a GUIDE_STEP grid,
   matched at GUIDE_SIZE within +-GUIDE_SEARCH in the coarse-warped moving map (NCC at least
   GUIDE_NCC_FLOOR, runner-up at most GUIDE_UNIQUE_RATIO of it). Each fine search below is
   centred on the median displacement of the guide patches within GUIDE_RADIUS. Guidance only
   places the search window; it never accepts or rejects a point.
5. Local normalised cross-correlation: on a GRID_STEP grid of candidate centres in the FIXED
   image, the PATCH x PATCH fixed vessel patch is searched (``cv2.matchTemplate``,
   TM_CCOEFF_NORMED) in the coarse-warped moving vessel map within +-SEARCH of the guided
   centre. A candidate is kept when
   - its fixed patch lies in the fixed FOV and the matched moving patch in the moving FOV,
     both shrunk by FOV_MARGIN (no patch touches a FOV border, frame edge or notch);
   - its patch is vessel-rich: at least MIN_VESSEL_SHARE of it above the FOV's
     VESSEL_PERCENTILE-th percentile of the vessel response;
   - the peak is at least PEAK_RADIUS inside the window, and its NCC is at least NCC_FLOOR;
   - the peak is unique: the best other local maximum beyond LOBE_RADIUS is at most
     UNIQUE_RATIO of the peak;
   - the peak is sharp in every direction: a quadratic fitted to the NCC over +-PEAK_RADIUS
     falls by at least MIN_DROP at PEAK_RADIUS in its flattest direction. This rejects a patch
     that holds one straight vessel, which pins the position across the vessel but not along
     it; such points had about twice the local residual of the others (README).
   The quadratic's vertex is the sub-pixel position.
6. Local outlier checks only: forward-backward (the moving patch at the found position is
   searched back in the fixed map; the two displacements must cancel within FB_TOLERANCE),
   then agreement with the median displacement of the NEIGHBOURS nearest kept points within
   NEIGHBOUR_TOLERANCE.
7. The fixed point is the candidate centre (an integer native pixel); the moving point is the
   found position mapped through the inverse coarse affine into MOVING native pixels. Pixel
   centres are at integer coordinates (OpenCV's convention, the same as ``ophreg_rt``'s), and
   images are decoded as ``ophreg_rt`` decodes them (no EXIF rotation).

Output: ``benchmarks/real_pairs/control_points.csv`` in the control-point schema of
``ophreg evaluate points`` (``src,tgt,x_src,y_src,x_tgt,y_tgt``; src = moving, tgt = fixed,
paths relative to the CSV's folder) plus ``pair``, ``ncc`` (peak NCC), ``drop`` (the peak's
fall in its flattest direction) and ``fb_px`` (forward-backward disagreement, px at 1024), which
the reader ignores. Deterministic: no random numbers; the same images give the same file.

Run: ``.venv/bin/python -m benchmarks.control_points [--data DIR] [--out CSV]
[--montage-dir /tmp/DIR]``. ``--montage-dir`` writes, per pair, zoomed crops of fixed and moving
patches with the points marked and an overview of the kept and rejected candidates, to be
looked at; it refuses a folder inside the repository (the images are research-only, and so
are pictures made from them).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("OPHREG_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "dev"))
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "real_pairs" / "control_points.csv"

#: The pairs and their vessels' polarity (fixed, moving): "dark" vessels darker than the
#: background (colour photographs, red-free grey), "bright" vessels brighter (angiograms).
POLARITY = {
    "varia_R067_R118": ("dark", "dark"),
    "toolbox_example": ("dark", "dark"),
    "toolbox_fundus": ("dark", "dark"),
    "cf_fa_demo": ("dark", "bright"),
}

REFERENCE = 1024  # px at 1024 scale: native px * REFERENCE / longer side
VESSEL_DISK = 15.0  # diameter of the black-hat's disk; wider than the widest vessel near the disc
VESSEL_BLUR_SIGMA = 1.0
FOV_LEVEL = 20  # 8-bit grey level separating the fundus from the black surround
FOV_MARGIN = 12.0
FOV_RIM = 4.0  # the FOV's dark edge, replaced by the fill before the black-hat
COARSE_SIZE = 256
REFINE_SIZE = 512
COARSE_SCALE_RANGE = (0.6, 1.6)  # moving px per fixed px, both at COARSE_SIZE
COARSE_SCALE_STEPS = 30  # log-spaced: 3.4 % apart
COARSE_MAX_ROTATION = 20.0  # degrees
COARSE_ROTATION_STEP = 2.5
COARSE_ECC_STARTS = 3  # the best starts of the grid that ECC refines
COARSE_BLUR_SIGMA = 2.0  # px at COARSE_SIZE; scaled with the size
COARSE_FOV_MARGIN = 28.0  # px at 1024: keeps the FOV's edge out of the coarse maps
PATCH = 64.0  # side of a fine patch
SEARCH = 24.0  # a fine search reaches this far from the guided centre
GRID_STEP = 32.0
VESSEL_PERCENTILE = 85.0
MIN_VESSEL_SHARE = 0.10
NCC_FLOOR = 0.5
GUIDE_SIZE = 512  # the guidance runs at this longer side
GUIDE_PATCH = 160.0
GUIDE_SEARCH = 48.0
GUIDE_STEP = 64.0
GUIDE_NCC_FLOOR = 0.3
GUIDE_UNIQUE_RATIO = 0.9
GUIDE_RADIUS = 128.0  # a fine search is centred on the median guide displacement this near
LOBE_RADIUS = 6.0  # about a vessel's width: nearer maxima belong to the peak itself
UNIQUE_RATIO = 0.8
PEAK_RADIUS = 2.0  # the peak's quadratic is fitted over +- this
MIN_DROP = 0.02  # NCC at PEAK_RADIUS; flatter peaks had ~1.5-2x the local residual (README)
FB_TOLERANCE = 0.5
NEIGHBOURS = 6
NEIGHBOUR_TOLERANCE = 2.0  # the residual field after the coarse affine varies far slower
REJECTIONS = ("vessel_poor", "no_peak", "ncc_floor", "not_unique", "flat_peak", "outside_fov",
              "forward_backward", "neighbours")


@dataclass
class Prepared:
    """One image: its vessel map (float32, native), FOV mask (uint8 0/1) and 1024 scale."""

    vessels: np.ndarray
    fov: np.ndarray
    scale: float  # native px -> px at 1024

    def native(self, length: float) -> float:
        return length / self.scale


@dataclass
class PairPoints:
    name: str
    fixed: np.ndarray  # (N, 2) native fixed px
    moving: np.ndarray  # (N, 2) native moving px
    ncc: np.ndarray
    fb_px: np.ndarray  # forward-backward disagreement, px at 1024
    drop: np.ndarray  # the NCC's fall at PEAK_RADIUS in the peak's flattest direction
    coarse: np.ndarray  # 3x3 coarse affine, moving -> fixed, native px
    coarse_ecc: float
    candidates: int
    rejected: list  # (x, y, reason) of the candidates that were not kept

    def rejection_counts(self) -> dict:
        return {reason: sum(1 for *_, why in self.rejected if why == reason)
                for reason in REJECTIONS}


def read(path: Path) -> np.ndarray:
    # IMREAD_UNCHANGED as ophreg_rt reads: no EXIF rotation, so both agree on pixel coordinates.
    image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SystemExit(f"{path}: cannot be decoded")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(int(image.max()), 1))
    return image


def green(image: np.ndarray) -> np.ndarray:
    # OpenCV's BGR order: index 1 is green either way.
    return image if image.ndim == 2 else image[..., 1]


def disk(diameter: float) -> np.ndarray:
    size = max(3, int(round(diameter)) | 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def shrink(mask: np.ndarray, diameter: float) -> np.ndarray:
    """Erosion that treats beyond the image as outside (OpenCV's default treats it as inside)."""
    return cv2.erode(mask, disk(diameter), borderType=cv2.BORDER_CONSTANT, borderValue=0)


def field_of_view(image: np.ndarray) -> np.ndarray:
    grey = image if image.ndim == 2 else image.max(axis=2)
    inside = (cv2.medianBlur(grey, 5) > FOV_LEVEL).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(inside, connectivity=8)
    if count < 2:
        return inside
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = (labels == largest).astype(np.uint8)
    # Fill holes (dark lesions, the fovea): flood the background from outside.
    padded = cv2.copyMakeBorder(1 - mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=1)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8), (0, 0), 2)
    return (flood[1:-1, 1:-1] != 2).astype(np.uint8)


def prepare(path: Path, polarity: str) -> Prepared:
    image = read(path)
    scale = REFERENCE / max(image.shape[:2])
    fov = field_of_view(image)
    channel = green(image).astype(np.float32)
    # Beyond the FOV (and its dark rim), the local mean of the FOV inside (normalised
    # convolution): the black-hat would otherwise see the dark surround as a huge vessel along
    # the border; FOV_MARGIN keeps patches clear of whatever remains.
    core = shrink(fov, 2 * FOV_RIM / scale)
    sigma = 2 * VESSEL_DISK / scale
    weight = cv2.GaussianBlur(core.astype(np.float32), (0, 0), sigma)
    spread = cv2.GaussianBlur(channel * core, (0, 0), sigma)
    fill = spread / np.maximum(weight, 1e-3)
    fill[weight < 1e-3] = float(channel[core > 0].mean())
    channel = np.where(core > 0, channel, fill)
    operation = cv2.MORPH_BLACKHAT if polarity == "dark" else cv2.MORPH_TOPHAT
    vessels = cv2.morphologyEx(channel, operation, disk(VESSEL_DISK / scale))
    vessels = cv2.GaussianBlur(vessels, (0, 0), VESSEL_BLUR_SIGMA / scale)
    vessels[fov == 0] = 0.0
    return Prepared(vessels=vessels, fov=fov, scale=scale)


def _resize_matrix(factor: float) -> np.ndarray:
    """Native -> resized pixel centres for cv2.resize by ``factor`` (half-pixel convention)."""
    offset = 0.5 * factor - 0.5
    return np.array([[factor, 0.0, offset], [0.0, factor, offset], [0.0, 0.0, 1.0]])


def _small(prepared: Prepared, size: int, sigma: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The vessel map at ``size`` px, background suppressed, blurred, and its shrunk FOV."""
    height, width = prepared.vessels.shape
    factor = size / max(height, width)
    shape = (max(1, round(width * factor)), max(1, round(height * factor)))
    vessels = cv2.resize(prepared.vessels, shape, interpolation=cv2.INTER_AREA)
    fov = shrink(cv2.resize(prepared.fov, shape, interpolation=cv2.INTER_NEAREST),
                 2 * COARSE_FOV_MARGIN * size / REFERENCE)
    inside = vessels[fov > 0]
    # Only what stands above the fundus' texture: with the texture left in, ECC converged to
    # wrong scales on the DR-screening pair (its two photographs differ in focus and exposure).
    vessels = np.maximum(vessels - np.percentile(inside, VESSEL_PERCENTILE), 0.0) * fov
    vessels = cv2.GaussianBlur(vessels, (0, 0), sigma)
    vessels /= max(float(np.percentile(vessels[fov > 0], 99)), 1e-6)
    return vessels.astype(np.float32), fov, factor


def _ecc(fixed: np.ndarray, moving: np.ndarray, warp: np.ndarray) -> tuple[float, np.ndarray]:
    """ECC affine mapping fixed pixels to moving pixels; (-1, warp) when it does not converge.

    No mask: the maps are already zero outside their FOVs, and with the FOV as a mask ECC
    stopped at once on the colour/angiogram pair (OpenCV's "images may be uncorrelated").
    """
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
    try:
        value, found = cv2.findTransformECC(fixed, moving, warp[:2].astype(np.float32),
                                            cv2.MOTION_AFFINE, criteria, None, 1)
    except cv2.error:
        return -1.0, warp
    return float(value), np.vstack([found.astype(np.float64), [0.0, 0.0, 1.0]])


def _centre(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _similarity_starts(fixed: np.ndarray, fixed_fov: np.ndarray, moving: np.ndarray,
                       moving_fov: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """Every (scale, rotation) of the grid about the FOV centres, shifted by phase correlation,
    with the correlation coefficient over the fixed FOV; best first."""
    f_centre, m_centre = _centre(fixed_fov), _centre(moving_fov)
    window = cv2.createHanningWindow(fixed.shape[::-1], cv2.CV_32F)
    inside = fixed_fov > 0
    starts = []
    for scale in np.exp(np.linspace(np.log(COARSE_SCALE_RANGE[0]), np.log(COARSE_SCALE_RANGE[1]),
                                    COARSE_SCALE_STEPS)):
        for rotation in np.arange(-COARSE_MAX_ROTATION, COARSE_MAX_ROTATION + 1e-9,
                                  COARSE_ROTATION_STEP):
            angle = np.deg2rad(rotation)
            linear = scale * np.array([[np.cos(angle), -np.sin(angle)],
                                       [np.sin(angle), np.cos(angle)]])
            start = np.eye(3)
            start[:2, :2] = linear
            start[:2, 2] = m_centre - linear @ f_centre
            # The moving map pulled into the fixed frame by this start; phase correlation gives
            # the shift left, since the FOV centres need not correspond.
            pulled = cv2.warpAffine(moving, start[:2], fixed.shape[::-1],
                                    flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            # Copies: OpenCV 5.0's phaseCorrelate multiplies its inputs by the window in place,
            # which over the grid's 500 calls wiped the fixed map out.
            (shift_x, shift_y), _ = cv2.phaseCorrelate(fixed.copy(), pulled, window)
            start[:2, 2] += linear @ np.array([shift_x, shift_y])
            pulled = cv2.warpAffine(moving, start[:2], fixed.shape[::-1],
                                    flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            values = pulled[inside]
            score = float(np.corrcoef(fixed[inside], values)[0, 1]) if values.std() > 0 else -1.0
            starts.append((score, start))
    starts.sort(key=lambda entry: -entry[0])
    return starts


def coarse_alignment(fixed: Prepared, moving: Prepared) -> tuple[np.ndarray, float]:
    """The coarse affine moving -> fixed (native px) and its ECC coefficient at REFINE_SIZE."""
    f_small, f_fov, f_factor = _small(fixed, COARSE_SIZE, COARSE_BLUR_SIGMA)
    m_small, m_fov, m_factor = _small(moving, COARSE_SIZE, COARSE_BLUR_SIGMA)
    best_value, best = -1.0, None
    for _, start in _similarity_starts(f_small, f_fov, m_small, m_fov)[:COARSE_ECC_STARTS]:
        value, found = _ecc(f_small, m_small, start)
        if value > best_value:
            best_value, best = value, found
    if best is None:
        raise SystemExit("coarse alignment: ECC converged from no start")
    # Carry the warp to REFINE_SIZE (blur scaled alike) and refine it there.
    sigma = COARSE_BLUR_SIGMA * REFINE_SIZE / COARSE_SIZE
    f_big, _, f_big_factor = _small(fixed, REFINE_SIZE, sigma)
    m_big, _, m_big_factor = _small(moving, REFINE_SIZE, sigma)
    native = np.linalg.inv(_resize_matrix(m_factor)) @ best @ _resize_matrix(f_factor)
    start = _resize_matrix(m_big_factor) @ native @ np.linalg.inv(_resize_matrix(f_big_factor))
    value, refined = _ecc(f_big, m_big, start)
    if value < 0:
        value, refined = best_value, start
    fixed_to_moving = (np.linalg.inv(_resize_matrix(m_big_factor)) @ refined
                       @ _resize_matrix(f_big_factor))
    return np.linalg.inv(fixed_to_moving), value


def _patch(image: np.ndarray, centre: tuple[int, int], half: int) -> np.ndarray:
    x, y = centre
    return image[y - half:y + half + 1, x - half:x + half + 1]


@dataclass
class Match:
    ncc: float  # the peak's normalised cross-correlation
    second: float  # the best other local maximum beyond the lobe
    offset: np.ndarray  # sub-pixel position of the peak relative to the search centre, (dx, dy)
    drop: float  # how far the NCC falls at PEAK_RADIUS from the peak in its flattest direction


def _match(template: np.ndarray, image: np.ndarray, centre: tuple[int, int], half: int,
           reach: int, lobe: float, fit: int, radius: float = 1.0) -> Match | None:
    """Best position of ``template`` in ``image`` within +-reach of ``centre``.

    The peak is described by a quadratic fitted to the response over +-``fit`` px around it:
    its vertex is the sub-pixel position, and its flattest curvature gives ``drop``, the NCC's
    fall at ``radius`` px in that direction: how well the position is pinned down. None when
    the window leaves the image, is flat, the peak lies within ``fit`` of the window's edge (the
    true one may lie beyond), or the fitted surface is no maximum.
    """
    x, y = centre
    top, left = y - half - reach, x - half - reach
    bottom, right = y + half + reach + 1, x + half + reach + 1
    if top < 0 or left < 0 or bottom > image.shape[0] or right > image.shape[1]:
        return None
    window = image[top:bottom, left:right]
    if float(template.std()) < 1e-6 or float(window.std()) < 1e-6:
        return None
    response = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
    row, column = np.unravel_index(int(np.argmax(response)), response.shape)
    if not (fit <= row < response.shape[0] - fit and fit <= column < response.shape[1] - fit):
        return None
    peak = float(response[row, column])
    # The runner-up is the best other local maximum beyond the lobe, not merely the best value
    # there: a wide vessel's peak has high shoulders that are no rival position, while a
    # repeated pattern has other maxima nearly as high.
    rows, columns = np.indices(response.shape)
    maxima = response >= cv2.dilate(response, np.ones((3, 3), np.uint8))
    outside = maxima & ((rows - row) ** 2 + (columns - column) ** 2 > lobe ** 2)
    second = float(response[outside].max()) if outside.any() else -1.0
    dy, dx = np.mgrid[-fit:fit + 1, -fit:fit + 1]
    dx, dy = dx.ravel().astype(np.float64), dy.ravel().astype(np.float64)
    values = response[row - fit:row + fit + 1, column - fit:column + fit + 1].ravel()
    design = np.stack([np.ones_like(dx), dx, dy, dx * dx, dx * dy, dy * dy], axis=1)
    _, gx, gy, xx, xy, yy = np.linalg.lstsq(design, values, rcond=None)[0]
    hessian = np.array([[2 * xx, xy], [xy, 2 * yy]])
    curvatures = np.linalg.eigvalsh(-hessian)  # ascending; both positive at a true maximum
    if curvatures[0] <= 0:
        return None
    vertex = -np.linalg.solve(hessian, [gx, gy])
    if np.abs(vertex).max() > 1.0:
        return None
    offset = np.array([column - reach + vertex[0], row - reach + vertex[1]])
    return Match(ncc=peak, second=second, offset=offset,
                 drop=0.5 * curvatures[0] * radius ** 2)


def _grid(width: int, height: int, step: float) -> list[tuple[int, int]]:
    xs = np.arange(step / 2, width, step).round().astype(int)
    ys = np.arange(step / 2, height, step).round().astype(int)
    return [(int(x), int(y)) for y in ys for x in xs]


def guidance(fixed: Prepared, warped: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Where to centre each fine search: displacements of large patches at GUIDE_SIZE px.

    The coarse affine cannot follow the curved retina; away from the centre it is several px
    off, which moves the fine peak towards the edge of its window. Large patches with a wide
    search, matched at low resolution, measure that local offset without any model. Returns
    centres and displacements (native fixed px) of the patches with a unique peak.
    """
    factor = GUIDE_SIZE / max(fixed.vessels.shape)
    shape = (round(fixed.vessels.shape[1] * factor), round(fixed.vessels.shape[0] * factor))
    small_fixed = cv2.resize(fixed.vessels, shape, interpolation=cv2.INTER_AREA)
    small_warped = cv2.resize(warped, shape, interpolation=cv2.INTER_AREA)
    small_usable = cv2.resize(usable, shape, interpolation=cv2.INTER_NEAREST)
    to_small = GUIDE_SIZE / REFERENCE
    half = int(round(GUIDE_PATCH * to_small / 2))
    reach = int(round(GUIDE_SEARCH * to_small))
    lobe = LOBE_RADIUS * 2 * to_small
    centres, displacements = [], []
    for x, y in _grid(shape[0], shape[1], GUIDE_STEP * to_small):
        if not small_usable[y, x]:
            continue
        found = _match(_patch(small_fixed, (x, y), half), small_warped, (x, y), half, reach, lobe,
                       fit=1)
        if (found is None or found.ncc < GUIDE_NCC_FLOOR
                or found.second > GUIDE_UNIQUE_RATIO * found.ncc):
            continue
        # Small pixel centres back to native ones (cv2.resize's half-pixel convention).
        centres.append([(x + 0.5) / factor - 0.5, (y + 0.5) / factor - 0.5])
        displacements.append(found.offset / factor)
    return (np.array(centres, dtype=np.float64).reshape(-1, 2),
            np.array(displacements, dtype=np.float64).reshape(-1, 2))


def find_points(name: str, fixed: Prepared, moving: Prepared) -> PairPoints:
    coarse, coarse_ecc = coarse_alignment(fixed, moving)
    height, width = fixed.vessels.shape
    warped = cv2.warpAffine(moving.vessels, coarse[:2], (width, height), flags=cv2.INTER_LINEAR)
    warped_fov = cv2.warpAffine(moving.fov, coarse[:2], (width, height), flags=cv2.INTER_NEAREST)
    half = int(round(fixed.native(PATCH) / 2))
    reach = int(round(fixed.native(SEARCH)))
    lobe = fixed.native(LOBE_RADIUS)
    radius = fixed.native(PEAK_RADIUS)
    fit = max(1, int(round(radius)))
    # Both patches of a point must lie in their image's FOV shrunk by FOV_MARGIN.
    inner = 2 * (half + fixed.native(FOV_MARGIN))
    fixed_inside = shrink(fixed.fov, inner)
    moving_inside = shrink(warped_fov, inner)
    guide_centres, guide_shifts = guidance(
        fixed, warped, shrink(fixed.fov, 2 * fixed.native(GUIDE_PATCH / 2 + FOV_MARGIN)))
    guide_radius = fixed.native(GUIDE_RADIUS)
    level = float(np.percentile(fixed.vessels[fixed.fov > 0], VESSEL_PERCENTILE))
    verdicts = []  # (x, y, reason) of every rejected candidate
    kept = []
    candidates = 0
    for x, y in _grid(width, height, fixed.native(GRID_STEP)):
        near = np.linalg.norm(guide_centres - [x, y], axis=1) <= guide_radius
        guess = (np.median(guide_shifts[near], axis=0).round().astype(int) if near.any()
                 else np.zeros(2, dtype=int))
        centre = (x + int(guess[0]), y + int(guess[1]))
        if not (fixed_inside[y, x] and 0 <= centre[0] < width and 0 <= centre[1] < height
                and moving_inside[centre[1], centre[0]]):
            continue
        candidates += 1
        template = _patch(fixed.vessels, (x, y), half)
        if (template > level).mean() < MIN_VESSEL_SHARE:
            verdicts.append((x, y, "vessel_poor"))
            continue
        forward = _match(template, warped, centre, half, reach, lobe, fit, radius)
        if forward is None:
            verdicts.append((x, y, "no_peak"))
            continue
        if forward.ncc < NCC_FLOOR:
            verdicts.append((x, y, "ncc_floor"))
            continue
        if forward.second > UNIQUE_RATIO * forward.ncc:
            verdicts.append((x, y, "not_unique"))
            continue
        if forward.drop < MIN_DROP:
            verdicts.append((x, y, "flat_peak"))
            continue
        displacement = guess + forward.offset
        found = (int(round(x + displacement[0])), int(round(y + displacement[1])))
        if not moving_inside[found[1], found[0]]:
            verdicts.append((x, y, "outside_fov"))
            continue
        # Back from the moving patch at the found place to the fixed map, searched around where
        # the same guess says it should be: the two offsets must cancel.
        backward = _match(_patch(warped, found, half), fixed.vessels,
                          (found[0] - int(guess[0]), found[1] - int(guess[1])), half, reach, lobe,
                          fit, radius)
        if backward is None:
            verdicts.append((x, y, "forward_backward"))
            continue
        back_displacement = backward.offset - guess
        disagreement = float(np.hypot(*(displacement + back_displacement))) * fixed.scale
        if disagreement > FB_TOLERANCE:
            verdicts.append((x, y, "forward_backward"))
            continue
        kept.append((x, y, displacement, forward.ncc, disagreement, forward.drop))
    centres = np.array([[x, y] for x, y, *_ in kept], dtype=np.float64).reshape(-1, 2)
    displacements = np.array([d for _, _, d, *_ in kept], dtype=np.float64).reshape(-1, 2)
    keep = np.ones(len(kept), dtype=bool)
    if len(kept) > NEIGHBOURS:
        distances = np.linalg.norm(centres[:, None] - centres[None], axis=2)
        np.fill_diagonal(distances, np.inf)
        for index in range(len(kept)):
            nearest = np.argsort(distances[index])[:NEIGHBOURS]
            median = np.median(displacements[nearest], axis=0)
            if np.hypot(*(displacements[index] - median)) * fixed.scale > NEIGHBOUR_TOLERANCE:
                keep[index] = False
    verdicts += [(x, y, "neighbours") for (x, y, *_), flag in zip(kept, keep) if not flag]
    kept = [entry for entry, flag in zip(kept, keep) if flag]
    centres, displacements = centres[keep], displacements[keep]
    inverse = np.linalg.inv(coarse)
    moving_points = (centres + displacements) @ inverse[:2, :2].T + inverse[:2, 2]
    return PairPoints(name=name, fixed=centres, moving=moving_points,
                      ncc=np.array([entry[3] for entry in kept]),
                      fb_px=np.array([entry[4] for entry in kept]),
                      drop=np.array([entry[5] for entry in kept]), coarse=coarse,
                      coarse_ecc=coarse_ecc, candidates=candidates, rejected=verdicts)


def pair_images(data: Path, name: str) -> tuple[Path, Path]:
    folder = data / "pairs" / name
    fixed = sorted(folder.glob("fixed.*"))
    moving = sorted(folder.glob("moving.*"))
    if len(fixed) != 1 or len(moving) != 1:
        raise SystemExit(f"{folder}: expected one fixed.* and one moving.*")
    return fixed[0], moving[0]


def write_csv(out: Path, rows: list[tuple[Path, Path, PairPoints]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.parent.resolve()
    temporary = out.with_suffix(".tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["src", "tgt", "x_src", "y_src", "x_tgt", "y_tgt", "pair", "ncc", "drop",
                         "fb_px"])
        for fixed_path, moving_path, points in rows:
            src = Path(os.path.relpath(moving_path.resolve(), folder)).as_posix()
            tgt = Path(os.path.relpath(fixed_path.resolve(), folder)).as_posix()
            for index in range(len(points.fixed)):
                (xs, ys), (xt, yt) = points.moving[index], points.fixed[index]
                writer.writerow([src, tgt, f"{xs:.3f}", f"{ys:.3f}", f"{xt:.0f}", f"{yt:.0f}",
                                 points.name, f"{points.ncc[index]:.3f}",
                                 f"{points.drop[index]:.3f}", f"{points.fb_px[index]:.3f}"])
    temporary.replace(out)


def _display(image: np.ndarray) -> np.ndarray:
    """CLAHE on the green channel (grey level), as BGR, for looking at vessels."""
    enhanced = cv2.createCLAHE(2.0, (8, 8)).apply(green(image))
    return cv2.cvtColor(enhanced, cv2.COLOR_GRAY2BGR)


def montage(path: Path, fixed_path: Path, moving_path: Path, points: PairPoints,
            count: int = 12, crop: float = 128.0, tile: int = 256) -> None:
    """Crops around spread-out points: the fixed image (left of each tile pair) and the moving
    image (right), the moving crop turned and scaled by the coarse affine's linear part only, so
    that both show the same orientation and scale; the translation is each side's own point.

    The crop's own point is red and centred, the other points in view yellow, the PATCH square
    grey: the same vessel feature must lie under the red mark on both sides, and each yellow
    mark must sit on the same feature on both sides (a check of the points around it too).
    """
    fixed, moving = _display(read(fixed_path)), _display(read(moving_path))
    f_scale = REFERENCE / max(fixed.shape[:2])
    zoom = tile * f_scale / crop
    order = np.argsort(points.fixed[:, 1] * 1e5 + points.fixed[:, 0])
    chosen = order[np.linspace(0, len(order) - 1, min(count, len(order))).round().astype(int)]
    linear = np.linalg.inv(points.coarse)[:2, :2]  # fixed -> moving, near enough everywhere
    to_fixed_frame = np.linalg.inv(linear)
    tiles = []
    for index in chosen:
        views = []
        for image, own, every, local in ((fixed, points.fixed[index], points.fixed, np.eye(2)),
                                         (moving, points.moving[index], points.moving,
                                          to_fixed_frame)):
            shift = np.zeros((2, 3))
            shift[:, :2] = zoom * local
            shift[:, 2] = tile / 2 - shift[:, :2] @ own
            view = cv2.warpAffine(image, shift, (tile, tile), flags=cv2.INTER_CUBIC)
            half = PATCH / 2 * tile / crop
            cv2.rectangle(view, (int(tile / 2 - half), int(tile / 2 - half)),
                          (int(tile / 2 + half), int(tile / 2 + half)), (128, 128, 128), 1)
            for other_index, other in enumerate(every):
                at = shift[:, :2] @ other + shift[:, 2]
                if 0 <= at[0] < tile and 0 <= at[1] < tile:
                    colour = (0, 0, 255) if other_index == index else (0, 255, 255)
                    cv2.drawMarker(view, (int(round(at[0])), int(round(at[1]))), colour,
                                   cv2.MARKER_CROSS, 10, 1)
            views.append(view)
        tiles.append(np.hstack([views[0], np.full((tile, 4, 3), 255, np.uint8), views[1]]))
    while len(tiles) % 3:
        tiles.append(np.zeros_like(tiles[0]))
    gap = np.full((tile, 12, 3), 128, np.uint8)
    rows = [np.hstack([tiles[i], gap, tiles[i + 1], gap, tiles[i + 2]])
            for i in range(0, len(tiles), 3)]
    separator = np.full((8, rows[0].shape[1], 3), 128, np.uint8)
    cv2.imwrite(str(path), np.vstack([part for row in rows for part in (row, separator)]))


#: Colours (BGR) of the rejected candidates on the overview, by reason.
REJECTION_COLOURS = {"vessel_poor": (90, 90, 90), "no_peak": (255, 0, 255),
                     "ncc_floor": (0, 0, 255), "not_unique": (255, 128, 0),
                     "flat_peak": (128, 0, 128),
                     "outside_fov": (0, 128, 255), "forward_backward": (0, 255, 255),
                     "neighbours": (255, 255, 255)}


def overview(path: Path, fixed_path: Path, points: PairPoints) -> None:
    """The fixed image (CLAHE green) with the kept points (green), each with its displacement
    from the coarse affine (x10, cyan), and the rejected candidates coloured by reason."""
    fixed = _display(read(fixed_path))
    scale = 768 / max(fixed.shape[:2])
    view = cv2.resize(fixed, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    for x, y, reason in points.rejected:
        cv2.circle(view, (int(round(x * scale)), int(round(y * scale))), 2,
                   REJECTION_COLOURS[reason], -1)
    mapped = points.moving @ points.coarse[:2, :2].T + points.coarse[:2, 2]
    residual = (mapped - points.fixed) * REFERENCE / max(fixed.shape[:2])
    for at, shift in zip(points.fixed, residual):
        start = (int(round(at[0] * scale)), int(round(at[1] * scale)))
        end = (int(round(at[0] * scale + 10 * shift[0])),
               int(round(at[1] * scale + 10 * shift[1])))
        cv2.circle(view, start, 3, (0, 255, 0), -1)
        cv2.line(view, start, end, (255, 255, 0), 1)
    cv2.imwrite(str(path), view)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="the folder holding pairs/ (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    parser.add_argument("--pairs", nargs="+", choices=sorted(POLARITY), default=list(POLARITY))
    parser.add_argument("--montage-dir", type=Path,
                        help="write zoomed crops with the points there (outside the repository)")
    args = parser.parse_args(argv)
    if args.montage_dir is not None:
        if args.montage_dir.resolve().is_relative_to(REPO_ROOT):
            raise SystemExit("--montage-dir: pictures of research-only images stay outside the "
                             "repository")
        args.montage_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.pairs:
        fixed_path, moving_path = pair_images(args.data, name)
        fixed_polarity, moving_polarity = POLARITY[name]
        points = find_points(name, prepare(fixed_path, fixed_polarity),
                             prepare(moving_path, moving_polarity))
        rows.append((fixed_path, moving_path, points))
        print(f"{name}: {len(points.fixed)} points of {points.candidates} candidates "
              f"(coarse ECC {points.coarse_ecc:.3f}; rejected {points.rejection_counts()})",
              flush=True)
        if args.montage_dir is not None:
            montage(args.montage_dir / f"{name}_crops.png", fixed_path, moving_path, points)
            overview(args.montage_dir / f"{name}_overview.png", fixed_path, points)
    write_csv(args.out, rows)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
