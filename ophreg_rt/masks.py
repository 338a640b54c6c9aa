"""Where keypoints may drive a transform: the fundus, not its surround, frame or burnt-in overlays.

Fundus cameras and angiography systems leave a black surround around the eye's field of view
(FOV) and burn text, logos, scale bars and frame lines into the image. All of these sit at the
same pixels in both images of a pair, so their keypoints agree with each other under the
identity: enough of them outvote the eye's true motion and RANSAC returns a confident, wrong,
near-identity transform. The mask removes them before matching, for every front end.

Everything is computed on the original image (colour and true saturation levels, which the
network's CLAHE'd single channel has lost), at a working resolution capped at
``MaskConfig.working_side``; lengths are stated in px at REFERENCE_SIZE of the longer side.
"""

from __future__ import annotations

import cv2
import numpy as np

from .config import REFERENCE_SIZE, MaskConfig
from .imageio import stretch_to_uint8
from .types import Features

_FULL = 255.0


def keypoint_mask(image: np.ndarray, config: MaskConfig = MaskConfig()) -> np.ndarray:
    """``(H, W)`` bool at the image's own resolution: True where a keypoint may be used.

    ``image``: ``(H, W)`` or ``(H, W, 3|4)`` uint8 or uint16, as ``imageio.read_image`` returns
    it. True inside the fundus field of view shrunk by ``fov_margin``, off the image frame
    (``border_margin``), and away from burnt-in overlays and frame lines (``overlay_margin``).
    An image without a clear field-of-view boundary (cropped, all retina) keeps its whole
    field, less the frame and overlays. ``config.enabled`` is not consulted: the caller
    decides whether to mask at all.
    """
    height, width = image.shape[:2]
    native = _to_uint8(image)
    scale = min(1.0, config.working_side / max(height, width))
    work_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # One channel is enough at the working size (colour is judged at native resolution), and
    # a third of the cost of averaging a large image down: green for colour, where vessels
    # and the default network input live.
    work = native if native.ndim == 2 else np.ascontiguousarray(native[:, :, 1])
    if scale < 1.0:
        work = cv2.resize(work, work_size, interpolation=cv2.INTER_AREA)
    px = max(work_size) / REFERENCE_SIZE  # working pixels per px at REFERENCE_SIZE
    keep = field_of_view(native, work_size, config, margin_px=config.fov_margin * px)
    keep &= ~overlays(native, work, config)
    border = int(round(config.border_margin * px))
    if border > 0:
        keep[:border] = keep[-border:] = False
        keep[:, :border] = keep[:, -border:] = False
    if scale == 1.0:
        return keep
    return cv2.resize(keep.view(np.uint8), (width, height),
                      interpolation=cv2.INTER_NEAREST).view(bool)


def field_of_view(image: np.ndarray, size: tuple[int, int], config: MaskConfig = MaskConfig(),
                  margin_px: float = 0.0) -> np.ndarray:
    """``(height, width)`` bool at ``size`` (width, height): the fundus field of view, shrunk
    by ``margin_px`` pixels of that size; all True when the image shows no clear boundary.

    ``image``: ``(H, W)`` or ``(H, W, 3)`` uint8. The surround is near black in every channel,
    or near white in every channel (an inverted angiogram-like image). Fundus fields are
    discs, ellipses or discs cut by the frame: the field is bounded by the convex hull of what
    the surround leaves (so dark lesions, the fovea and vessels inside stay in), less the dark
    ground that reaches the surround (the wedges beside a camera's notch).
    """
    width, height = size
    everything = np.ones((height, width), bool)
    scale = min(1.0, config.fov_side / max(image.shape[:2]))
    coarse_size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    # Nearest samples, not averages: the surround is uniform and the hull forgives single
    # pixels, and averaging a large image down costs tens of ms.
    coarse = cv2.resize(image, coarse_size, interpolation=cv2.INTER_NEAREST_EXACT)
    if coarse.ndim == 2:
        darkest = brightest = coarse
    else:
        channels = cv2.split(coarse)
        darkest = cv2.max(cv2.max(channels[0], channels[1]), channels[2])
        brightest = cv2.min(cv2.min(channels[0], channels[1]), channels[2])
    # A black surround, or a white one (an inverted, angiogram-like image): of the plausible
    # fields, the one that leaves more of the image outside.
    fields = [field for field in (_field(darkest, config), _field(255 - brightest, config))
              if cv2.countNonZero(field) >= config.min_fov_share * field.size]
    if not fields:
        return everything
    fov = min(fields, key=cv2.countNonZero)
    if cv2.countNonZero(fov) > (1.0 - config.min_surround_share) * fov.size:
        return everything
    # The distance to the surround, interpolated up, places the shrunk edge to a fraction of
    # a working pixel without a distance transform at the working resolution.
    distance = cv2.distanceTransform(fov, cv2.DIST_L2, cv2.DIST_MASK_5)
    distance = cv2.resize(distance, (width, height), interpolation=cv2.INTER_LINEAR)
    coarse_per_working = coarse.shape[1] / width
    return cv2.compare(distance, max(margin_px * coarse_per_working, 0.5),
                       cv2.CMP_GT).view(bool)


def _field(source: np.ndarray, config: MaskConfig) -> np.ndarray:
    """``source``'s shape, uint8 1 inside the field of view that a dark surround leaves.

    ``source``: 2-D uint8 in which the surround is darkest. Its level is the darkest 1 % of
    the image. The field is bounded by the convex hull of the regions above that level (thin
    strokes and lines removed, so a frame drawn round the image is no region) at least
    ``fov_piece`` the size of the largest: dark vessels reaching the edge may cut the field
    into pieces, while text and logos in the surround are small. All 1 when there is no dark
    surround level.
    """
    counts = np.bincount(source.ravel(), minlength=256)
    cumulative = np.cumsum(counts) / source.size
    level = int(np.searchsorted(cumulative, 0.01))
    if level > config.surround_level * _FULL:
        return np.ones(source.shape, np.uint8)
    median = int(np.searchsorted(cumulative, 0.5))
    limit = level + max(config.surround_tolerance * _FULL,
                        config.surround_share * (median - level))
    lit = cv2.compare(source, limit, cv2.CMP_GT)
    lit = cv2.morphologyEx(lit, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(lit, connectivity=8)
    if count < 2:
        return np.ones(source.shape, np.uint8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    pieces = np.zeros(count, np.uint8)
    pieces[1:] = areas >= config.fov_piece * areas.max()
    contours, _ = cv2.findContours(pieces[labels], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = np.zeros(source.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate(contours)), 1)
    # Inside the hull, dark ground that reaches the surround (the wedges beside a camera's
    # notch, a field cut by the frame) is surround too; closing first keeps the dark vessels
    # that run to the edge, and dark holes (fovea, lesions) are kept.
    closed = cv2.morphologyEx(lit, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    framed = np.ones((source.shape[0] + 2, source.shape[1] + 2), np.uint8)
    framed[1:-1, 1:-1] = (closed == 0) | (hull == 0)
    cv2.floodFill(framed, None, (0, 0), 2)
    return (framed[1:-1, 1:-1] != 2).view(np.uint8)


def overlays(native: np.ndarray, work: np.ndarray, config: MaskConfig = MaskConfig()) -> np.ndarray:
    """``(h, w)`` bool at the working image's size: burnt-in strokes, boxes and frame lines,
    grown by ``overlay_margin``.

    ``native``: the uint8 image at its own resolution, ``work``: its green (or only) channel
    at the working size ``(h, w)``. Pens' colours are found at native resolution (averaging
    would blend a thin stroke into its background), edges, shapes and lines at the working one.
    """
    height, width = work.shape[:2]
    px = max(width, height) / REFERENCE_SIZE
    colour = _is_colour(native)
    found = _straight_lines(work, config, px)
    pure = _pure_colour(native, colour, config)
    if pure.shape != (height, width) and cv2.countNonZero(pure):
        # Any pure native pixel marks its working pixel (a tint over white): grown by half a
        # working pixel, then sampled (an area average of a large mask costs much more).
        reach = int(np.ceil(native.shape[1] / width / 2.0))
        pure = cv2.dilate(pure, np.ones((2 * reach + 1, 2 * reach + 1), np.uint8))
        pure = cv2.resize(pure, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    elif pure.shape != (height, width):
        pure = np.zeros((height, width), np.uint8)
    if found.any():
        # Without the lines (and their anti-aliased rims), text and logos that a grid or
        # frame line touches keep their own shapes.
        pure[cv2.dilate(found.view(np.uint8), np.ones((5, 5), np.uint8)).view(bool)] = 0
    if cv2.countNonZero(pure):
        found |= _strokes_and_boxes(pure, work, config, px)
    margin = int(round(config.overlay_margin * px))
    if margin > 0 and found.any():
        found = cv2.dilate(found.view(np.uint8),
                           np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)).view(bool)
    return found


def _pure_colour(image: np.ndarray, colour: bool, config: MaskConfig) -> np.ndarray:
    """``(H, W)`` uint8: 2 where a pixel is drawn in a pen's tint, 1 in white, else 0.

    Pens: every channel within ``1 - overlay_level`` of black or of white, and green or blue
    near white (white, yellow, green, cyan, blue, magenta; not red, which a fundus can be).
    A grey image has only white: near-white pixels.
    """
    high = int(np.ceil(config.overlay_level * _FULL))
    if not colour:
        single = image if image.ndim == 2 else image[:, :, 1]
        return cv2.inRange(single, high, 255) // 255
    # No channel may be mixed: each one's distance from mid-grey, tested in one pass.
    far = cv2.absdiff(image, (127, 127, 127, 0))
    pure = cv2.inRange(far, (high - 127,) * 3, (255,) * 3)
    green_or_blue = cv2.max(cv2.extractChannel(image, 1), cv2.extractChannel(image, 2))
    pure = cv2.min(pure, cv2.inRange(green_or_blue, high, 255)) // 255
    tinted = cv2.subtract(pure, cv2.inRange(image, (high,) * 3, (255,) * 3) // 255)
    return pure + tinted


def _is_colour(image: np.ndarray) -> bool:
    """Whether the image has colour: angiograms are often grey stored in three channels."""
    if image.ndim == 2:
        return False
    sample = image[::7, ::7].astype(np.int16)
    return bool(np.abs(sample[:, :, 0] - sample[:, :, 1]).max() > 2
                or np.abs(sample[:, :, 1] - sample[:, :, 2]).max() > 2)


def _strokes_and_boxes(pure: np.ndarray, work: np.ndarray, config: MaskConfig,
                       px: float) -> np.ndarray:
    """``pure``'s shape, bool: the pens' strokes shaped like glyphs or filled boxes that have
    a sharp edge somewhere.

    ``pure``: ``_pure_colour``'s codes (2 tint, 1 white) at the working size, ``work`` the
    working image. White is weak evidence (an angiogram's vessels and an overexposed disc
    saturate in glyph-sized pieces): a white glyph counts only in a row of glyphs, as text is
    written; a tinted one (yellow, green, ...) counts alone, no fundus has those colours.
    """
    height, width = pure.shape
    # Two-level hierarchy: parentless contours are the outer boundaries of every region,
    # also of one inside another's hole (text inside a white surround's field of view).
    contours, hierarchy = cv2.findContours((pure > 0).view(np.uint8), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_SIMPLE)
    contours = [c for c, h in zip(contours, hierarchy[0]) if h[3] < 0]
    boxes = np.array([cv2.boundingRect(c) for c in contours], np.int64).reshape(-1, 4)
    sides = boxes[:, 2:].max(axis=1)
    glyph = sides <= config.overlay_glyph * px
    box = np.zeros(len(contours), bool)
    for i in np.flatnonzero((sides >= config.overlay_box_min * px)
                            & (sides <= config.overlay_box * max(width, height))):
        # Pixels inside the outer boundary, holes filled: the polygon through the boundary
        # pixels' centres plus the half pixel outside it (Pick's theorem).
        area = cv2.contourArea(contours[i]) + cv2.arcLength(contours[i], True) / 2 + 1
        box[i] = area >= config.overlay_box_fill * boxes[i, 2] * boxes[i, 3]
    tinted = np.zeros(len(contours), bool)
    for i in np.flatnonzero(glyph):
        left, top, box_width, box_height = boxes[i]
        codes = pure[top:top + box_height, left:left + box_width]
        tinted[i] = np.count_nonzero(codes == 2) >= 0.5 * np.count_nonzero(codes)
    glyph &= tinted | _in_text_rows(boxes, glyph, config, px)
    found = np.zeros((height, width), np.uint8)
    candidates = np.flatnonzero(glyph | box)
    if not len(candidates):
        return found.view(bool)
    stroke = max(1, int(round(config.overlay_stroke * px)))
    spread = cv2.morphologyEx(work, cv2.MORPH_GRADIENT,
                              np.ones((2 * stroke + 1, 2 * stroke + 1), np.uint8))
    sharp = cv2.compare(spread, config.overlay_contrast * _FULL, cv2.CMP_GE)
    sharp[pure == 0] = 0
    chosen = [contours[i] for i in candidates
              if cv2.countNonZero(sharp[boxes[i, 1]:boxes[i, 1] + boxes[i, 3],
                                        boxes[i, 0]:boxes[i, 0] + boxes[i, 2]])]
    cv2.drawContours(found, chosen, -1, 1, thickness=cv2.FILLED)
    return found.view(bool)


def _in_text_rows(boxes: np.ndarray, candidate: np.ndarray, config: MaskConfig,
                  px: float) -> np.ndarray:
    """``(n,)`` bool: the candidates that sit in a row of at least ``text_row_glyphs`` letters
    (similar heights, centres on one line, gaps narrower than a letter is high).

    ``boxes``: ``(n, 4)`` bounding boxes (left, top, width, height) in working pixels.
    """
    left, top, widths, heights = (boxes[:, k].astype(np.float64) for k in range(4))
    # Thin horizontal pieces (a vessel running along a row) are no letters.
    letter = (candidate & (heights >= config.text_height * px)
              & (widths <= config.text_aspect * heights))
    index = np.flatnonzero(letter)
    in_row = np.zeros(len(boxes), bool)
    if len(index) < config.text_row_glyphs:
        return in_row
    left, widths, heights = left[index], widths[index], heights[index]
    centre = top[index] + heights / 2.0
    taller = np.maximum(heights[:, None], heights[None, :])
    gap = (np.maximum(left[:, None], left[None, :])
           - np.minimum((left + widths)[:, None], (left + widths)[None, :]))
    linked = ((np.abs(centre[:, None] - centre[None, :]) <= 0.35 * taller)
              & (taller <= 2.0 * np.minimum(heights[:, None], heights[None, :]))
              & (gap <= taller))
    # Rows are the connected parts of the link graph: spread the smallest index until stable.
    row = np.arange(len(index))
    while True:
        spread = np.minimum(np.where(linked, row[None, :], len(index)).min(axis=1), row)
        spread = spread[spread]
        if np.array_equal(spread, row):
            break
        row = spread
    sizes = np.bincount(row, minlength=len(index))
    in_row[index[sizes[row] >= config.text_row_glyphs]] = True
    return in_row


def _straight_lines(work: np.ndarray, config: MaskConfig, px: float) -> np.ndarray:
    """``work``'s size, bool: thin bright or dark ridges that run along a row or a column
    for ``line_length`` of the longer side (frame lines, grids, rulers of any colour)."""
    side = max(3, 2 * int(round(config.line_width * px / 2)) + 1)
    kernel = np.ones((side, side), np.uint8)
    ridges = cv2.max(cv2.morphologyEx(work, cv2.MORPH_TOPHAT, kernel),
                     cv2.morphologyEx(work, cv2.MORPH_BLACKHAT, kernel))
    thin = cv2.compare(ridges, config.line_contrast * _FULL, cv2.CMP_GE)
    # Runs are looked for at half resolution (a 2x2 maximum keeps every 1-px line): the
    # openings with long kernels are the costliest step, and a line's place to within a
    # pixel is enough once overlay_margin grows it.
    half = cv2.dilate(thin, np.ones((2, 2), np.uint8))[::2, ::2]
    length = max(3, int(round(config.line_length * max(work.shape) / 2)))
    runs = cv2.max(cv2.morphologyEx(half, cv2.MORPH_OPEN, np.ones((1, length), np.uint8)),
                   cv2.morphologyEx(half, cv2.MORPH_OPEN, np.ones((length, 1), np.uint8)))
    # Dense texture (noise, a tessellated fundus) can string ridges into runs anywhere; drawn
    # lines are sparse, so a share beyond line_max_share is taken for texture.
    found = cv2.countNonZero(runs)
    if not found or found > config.line_max_share * runs.size:
        return np.zeros(work.shape, bool)
    return cv2.resize(runs, (work.shape[1], work.shape[0]),
                      interpolation=cv2.INTER_NEAREST) > 0


def inside(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: whether each ``(N, 2)`` (x, y) pixel of the mask's image lies where the
    ``(H, W)`` mask is True; points off the image are outside."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    height, width = mask.shape
    columns = np.round(points[:, 0]).astype(np.int64)
    rows = np.round(points[:, 1]).astype(np.int64)
    on_image = (columns >= 0) & (columns < width) & (rows >= 0) & (rows < height)
    keep = np.zeros(len(points), bool)
    keep[on_image] = mask[rows[on_image], columns[on_image]]
    return keep


def select(features: Features, keep: np.ndarray) -> Features:
    """The features where ``keep`` (``(N,)`` bool) is True, order (strongest first) kept."""
    return Features(keypoints=features.keypoints[keep], scores=features.scores[keep],
                    descriptors=features.descriptors[keep])


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` uint8: 16-bit stretched as for the network, alpha dropped."""
    if image.dtype == np.uint16:
        image = stretch_to_uint8(image)
    if image.ndim == 3:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)
