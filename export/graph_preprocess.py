"""The runtime's preprocessing and keypoint masks as torch operations that export to standard ONNX.

The one-graph registration (export/registration.py) takes uint8 images of any size and must
give SuperPoint exactly what ``ophreg_rt.preprocess.network_grey`` gives it, and drop the
keypoints ``ophreg_rt.masks.keypoint_mask`` drops, without OpenCV. This module writes OpenCV's
arithmetic out:

* ``cv2.resize``: INTER_AREA (OpenCV's tap table and its float32 sums in its order, and the
  integer-scale fast path with its own rounding), INTER_LINEAR (OpenCV's 11-bit fixed-point
  coefficients and its truncating vertical pass) and INTER_AREA's bilinear-like variant when
  one axis grows; bit for bit equal to OpenCV 5.0 on every dev image and random sizes. Which of
  them OpenCV would run is decided in-graph from the dynamic image size, so one graph serves
  every input size (both candidate results are computed and one is selected: torch 2.13's
  exporter cannot bring torch.cond's subgraphs down to opset 17).
* ``cv2.createCLAHE(clipLimit, tileGridSize).apply``: tile histograms (as products of one-hot
  matrices: no scatter, so the graph stays within opset 17), clipping with OpenCV's integer
  redistribution and residual stepping, cumulative LUTs rounded as OpenCV rounds them, and the
  bilinear blend between tile LUTs in OpenCV's float32 order.
* The keypoint mask: the fundus field of view (surround level from the coarse histogram, the
  lit area's convex hull from support lines in ``HULL_DIRECTIONS`` directions, the dark ground
  that reaches the surround by a flood fill to convergence, the margin by a chamfer distance
  transform), the image frame, and straight frame lines (top-hat/black-hat ridges, openings
  with long line kernels, dilated by the overlay margin). Left out: burnt-in text, logos and
  boxes in pens' colours (``masks._strokes_and_boxes``: contours, bounding boxes and text rows
  have no static-shape ONNX form); fundus images without such overlays get the runtime's mask.

Everything runs on static canvases (the network size, ``MaskConfig.working_side``,
``MaskConfig.fov_side``) with the input-dependent part in index arithmetic and validity masks,
so the exported graph has no data-dependent shapes (only loops whose trip counts depend on the
data: area taps, the flood fill). Grey levels are carried as float32 (exact integers) except
where OpenCV's fixed point needs int32/int64. Images come :func:`padded` (a zero row and column
first), so that every clamped index exists, also in an image with no rows or columns.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ophreg_rt.config import REFERENCE_SIZE, MaskConfig, PreprocessConfig, PreprocessMode

#: Stand-in for +infinity in float maps (erosion borders, "far" distances): above any grey
#: level and any distance on a canvas, small enough that sums of a few stay exact in float32.
BIG = 1.0e4
#: Directions of the support lines whose half-planes approximate the convex hull of the lit
#: field (``masks._field``'s ``cv2.convexHull`` + ``fillConvexPoly``). Measured on the dev
#: images and 24 known-truth moving images at the 256-px FOV scale: at most 1 pixel of 65,536
#: differs from OpenCV's fill with 256 directions (up to 10 with 64).
HULL_DIRECTIONS = 256
#: OpenCV's fixed-point resize coefficients: INTER_RESIZE_COEF_BITS = 11.
_COEF_SCALE = 2048
#: Chamfer 5x5 distance of cv2.DIST_L2 / DIST_MASK_5: step lengths 1, 1.4 and 2.1969 held in
#: 16-bit fixed point as OpenCV holds them (exact in float32 for distances below 256).
_CHAMFER_STEPS = tuple(round(v * 65536) / 65536 for v in (1.0, 1.4, 2.1969))


# ------------------------------------------------------------------------------------------
# Integer helpers (sizes are int64 scalars derived from the input's shape)


def shape_scalar(n) -> torch.Tensor:
    """A shape value (int or symbolic) as an int64 scalar tensor that stays symbolic in the graph."""
    return torch.ones((), dtype=torch.int64) * n


def floor_div(num: torch.Tensor, den: torch.Tensor | int) -> torch.Tensor:
    """``num // den`` for non-negative integers (truncation, one ONNX Div)."""
    return torch.div(num, den, rounding_mode="trunc")


def round_ratio(num: torch.Tensor, den: torch.Tensor | int) -> torch.Tensor:
    """Python's ``round(num / den)`` (nearest, ties to even) for integers num >= 0, den > 0,
    exactly: the sizes the runtime computes with float64 ``round`` (checked equal for every
    size the runtime can meet, tests/export/test_registration_export.py)."""
    quotient = floor_div(num, den)
    twice_rest = 2 * (num - quotient * den)
    up = (twice_rest > den) | ((twice_rest == den) & (quotient % 2 == 1))
    return quotient + up.to(quotient.dtype)


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32)



# ------------------------------------------------------------------------------------------
# cv2.resize of one uint8 channel


def _area_taps(src: torch.Tensor, dst: torch.Tensor, canvas: int):
    """OpenCV's ``computeResizeAreaTab`` for one axis: destination d averages source
    [d*s/t, (d+1)*s/t) (s = src, t = dst). Its taps, in source order: a partial pixel on the
    left, the whole pixels, a partial pixel on the right; a partial pixel covered by at most
    1e-3 of a pixel is left out, as OpenCV leaves it out. Weights are OpenCV's float32 values
    (overlap / scale, formed from exact integers and rounded once).

    Returns per canvas index: the first tap's source index, the end of the whole pixels, the
    left/right flags and the three weights, and the largest tap count (an int64 scalar).
    Canvas positions beyond dst are garbage by design; callers clamp every index.
    """
    d = torch.arange(canvas, dtype=torch.int64)
    low, high = d * src, (d + 1) * src  # in 1/t source pixels
    first = floor_div(low + dst - 1, dst)
    last = floor_div(high, dst)
    left = first * dst - low
    right = high - last * dst
    has_left = left * 1000 > dst
    has_right = right * 1000 > dst
    start = first - has_left.to(torch.int64)
    taps = last + has_right.to(torch.int64) - start
    source = _f32(torch.clamp(src, min=1))
    weights = (_f32(left) / source, _f32(dst) / source, _f32(right) / source)
    valid = d < dst
    most = torch.where(valid, taps, torch.zeros_like(taps)).max()
    return start, last, has_left, has_right, weights, most


def _tap_weight(k: torch.Tensor, start, last, has_left, has_right, weights) -> torch.Tensor:
    """The weight of tap ``k`` (0-d int64) of every destination (0 past its last tap)."""
    left, whole, right = weights
    index = start + k
    zero = torch.zeros_like(whole)
    return torch.where((k == 0) & has_left, left,
                       torch.where(index < last, whole,
                                   torch.where((index == last) & has_right, right, zero)))


def _area_pass(values: torch.Tensor, src, dst, canvas: int, dim: int) -> torch.Tensor:
    """OpenCV's area averaging along ``dim`` of float32 ``values`` (:func:`padded`: pixel i is
    at i + 1), tap after tap in float32 as OpenCV sums them (buf += S * alpha), so that the
    rounding of near-ties lands where OpenCV's lands. One ONNX Loop over the taps."""
    start, last, has_left, has_right, weights, most = _area_taps(src, dst, canvas)
    shape = [1, 1]
    shape[dim] = -1
    top = torch.clamp(src, min=1) - 1

    def step(k, total):
        index = ((start + k).clamp(min=0).minimum(top) + 1).minimum(src)
        weight = _tap_weight(k, start, last, has_left, has_right, weights).reshape(shape)
        return k + 1, total + values.index_select(dim, index) * weight

    def more(k, total):
        return k < most

    size = list(values.shape)
    size[dim] = canvas
    state = (torch.zeros((), dtype=torch.int64), values.new_zeros(size))
    if torch.compiler.is_exporting():
        _, total = torch.while_loop(more, step, state)
    else:
        while bool(more(*state)):
            state = step(*state)
        total = state[1]
    return total


def _linear_axis(src: torch.Tensor, dst: torch.Tensor, canvas: int, area_mode: torch.Tensor,
                 clamp_border: bool):
    """OpenCV's two-tap source indices and 11-bit coefficients along one axis.

    INTER_LINEAR: fx = (d + 0.5) * s / t - 0.5. INTER_AREA with an axis that grows:
    sx = floor(d * s / t), fx = (d + 1) - (sx + 1) * t / s, 0 when <= 0, else its fraction.
    Only the horizontal axis clamps fx at the borders; the vertical one repeats the edge row
    with the unclamped weights, which OpenCV's truncating vertical pass does not sum back to
    the row (so the top and bottom rows of an enlargement are slightly darker, as in OpenCV).
    Fractions are formed from exact integers and rounded to float32 once, as OpenCV rounds its
    double expression to float.
    """
    d = torch.arange(canvas, dtype=torch.int64)
    # Linear: fx = ((2d + 1) s - t) / 2t.
    numerator = (2 * d + 1) * src - dst
    linear_sx = torch.where(numerator >= 0, floor_div(numerator.clamp(min=0), 2 * dst),
                            -floor_div(-numerator + 2 * dst - 1, 2 * dst))
    linear_fx = _f32(numerator - linear_sx * 2 * dst) / _f32(2 * dst)
    # Area mode.
    area_sx = floor_div(d * src, dst)
    rest = (d + 1) * src - (area_sx + 1) * dst  # fx * s
    area_fx = _f32(rest) / _f32(torch.clamp(src, min=1))
    area_fx = torch.where(area_fx <= 0, torch.zeros_like(area_fx), area_fx - torch.floor(area_fx))
    sx = torch.where(area_mode, area_sx, linear_sx)
    fx = torch.where(area_mode, area_fx, linear_fx)
    if clamp_border:
        low = sx < 0
        high = sx >= src - 1
        fx = torch.where(low | high, torch.zeros_like(fx), fx)
        sx = torch.where(low, torch.zeros_like(sx), torch.where(high, src - 1, sx))
    top = torch.clamp(src, min=1) - 1
    index0 = sx.clamp(min=0).minimum(top)
    index1 = (sx + 1).clamp(min=0).minimum(top)
    c1 = torch.round(fx * _COEF_SCALE).to(torch.int32)
    c0 = torch.round((1.0 - fx) * _COEF_SCALE).to(torch.int32)
    return index0, index1, c0, c1


def _resize_area(grey: torch.Tensor, src_w: torch.Tensor, src_h: torch.Tensor,
                 dst_w: torch.Tensor, dst_h: torch.Tensor, canvas: tuple[int, int]) -> torch.Tensor:
    """INTER_AREA when both axes shrink (or keep) their size, in OpenCV's order: each source
    row averaged horizontally (float32 taps), then the rows averaged vertically; rounded to
    nearest, ties to even. Integer scales take OpenCV's resizeAreaFast rounding instead: the
    block sum s (exactly recovered from the average), 2x2 blocks as (s + 2) >> 2, others as
    s * (1.f / area) in float32."""
    canvas_w, canvas_h = canvas
    rows = _area_pass(_f32(grey), src_w, dst_w, canvas_w, dim=1)  # [H + 1, cw]
    average = _area_pass(rows, src_h, dst_h, canvas_h, dim=0)  # [ch, cw]
    area_value = torch.round(average).clamp(0.0, 255.0)
    scale_w, scale_h = floor_div(src_w, dst_w), floor_div(src_h, dst_h)
    fast = ((src_w - scale_w * dst_w) == 0) & ((src_h - scale_h * dst_h) == 0)
    cells = _f32(torch.clamp(scale_w * scale_h, min=1))
    block = torch.round(average * cells)
    halves = torch.floor((block + 2.0) / 4.0)
    scaled = torch.round(block * (1.0 / cells))
    fast_value = torch.where((scale_w == 2) & (scale_h == 2), halves, scaled)
    return torch.where(fast, fast_value, area_value)


def _resize_linear(grey: torch.Tensor, src_w: torch.Tensor, src_h: torch.Tensor,
                   dst_w: torch.Tensor, dst_h: torch.Tensor, canvas: tuple[int, int],
                   area_mode: torch.Tensor) -> torch.Tensor:
    """INTER_LINEAR (or INTER_AREA with an axis that grows) in OpenCV's fixed point: the two
    source rows of each destination row, their horizontal taps in int32, then the truncating
    vertical pass (((c0 * (r0 >> 4)) >> 16) + ((c1 * (r1 >> 4)) >> 16) + 2) >> 2."""
    canvas_w, canvas_h = canvas
    x0, x1, cx0, cx1 = _linear_axis(src_w, dst_w, canvas_w, area_mode, clamp_border=True)
    y0, y1, cy0, cy1 = _linear_axis(src_h, dst_h, canvas_h, area_mode, clamp_border=False)

    def horizontal(rows: torch.Tensor) -> torch.Tensor:
        # (index + 1: the padding's row and column come first; an empty axis reads the pad)
        rows = grey.index_select(0, (rows + 1).minimum(src_h)).to(torch.int32)
        return (rows.index_select(1, (x0 + 1).minimum(src_w)) * cx0
                + rows.index_select(1, (x1 + 1).minimum(src_w)) * cx1)

    upper = floor_div(horizontal(y0), 16)
    lower = floor_div(horizontal(y1), 16)
    return _f32(floor_div(floor_div(cy0[:, None] * upper, 65536)
                          + floor_div(cy1[:, None] * lower, 65536) + 2, 4))


def padded(image: torch.Tensor) -> torch.Tensor:
    """``image`` (``[H, W, ...]``) with a zero row on top and a zero column on the left: pixel
    (r, c) is then at (r + 1, c + 1), every clamped index exists (also in an image without rows
    or columns, which the graph refuses instead of failing in a Gather), and a cumulative sum
    along either axis is the exclusive prefix sum the area averages need. A copy of uint8
    data: a few ms for a large image."""
    image = torch.cat([image.new_zeros((image.shape[0], 1) + tuple(image.shape[2:])), image],
                      dim=1)
    return torch.cat([image.new_zeros((1,) + tuple(image.shape[1:])), image], dim=0)


def resize_grey(grey: torch.Tensor, dst_w, dst_h, canvas: tuple[int, int],
                area: torch.Tensor) -> torch.Tensor:
    """``cv2.resize(grey, (dst_w, dst_h), interpolation=INTER_AREA if area else INTER_LINEAR)``.

    grey: ``[H + 1, W + 1]`` uint8, :func:`padded` (the sizes below exclude the padding).
    dst_w, dst_h: at most the canvas (width, height). Returns ``[canvas_h, canvas_w]`` float32
    grey levels, valid in the top-left ``dst_h x dst_w`` (zeros for an empty image). Both of
    OpenCV's paths are computed from row gathers of the image and the one OpenCV would run is
    selected: area averaging when INTER_AREA shrinks both axes, fixed-point two-tap
    interpolation otherwise. (An ONNX If would run one path only; torch 2.13's exporter fails
    to convert torch.cond's subgraphs to the contract's opset.)
    """
    src_h = shape_scalar(grey.shape[0]) - 1
    src_w = shape_scalar(grey.shape[1]) - 1
    dst_w, dst_h = shape_scalar(dst_w), shape_scalar(dst_h)
    area = shape_scalar(area) > 0
    empty = (src_h == 0) | (src_w == 0)
    area_path = area & (src_w >= dst_w) & (src_h >= dst_h)
    by_area = _resize_area(grey, src_w, src_h, dst_w, dst_h, canvas)
    by_taps = _resize_linear(grey, src_w, src_h, dst_w, dst_h, canvas, area)
    resized = torch.where(area_path, by_area, by_taps)
    return torch.where(empty, torch.zeros_like(resized), resized)


# ------------------------------------------------------------------------------------------
# CLAHE


def _histograms(values: torch.Tensor) -> torch.Tensor:
    """Counts of the grey levels 0..255 in each row of ``values`` ``[T, N]`` (float integers).

    A level v = 16 h + l is counted as the product of two one-hot matrices (rows of a 16 x 16
    identity gathered by h and by l): one batched MatMul, no scatter (ScatterElements'
    reduction changed in opset 18 and the graph is held to 17). Exact: sums of 0/1 in float32.
    """
    high = torch.floor(values / 16.0)
    low = values - 16.0 * high
    identity = torch.eye(16, dtype=torch.float32)
    one_high = identity.index_select(0, high.reshape(-1).to(torch.int64))
    one_low = identity.index_select(0, low.reshape(-1).to(torch.int64))
    rows = values.shape[0]
    one_high = one_high.reshape(rows, -1, 16)
    one_low = one_low.reshape(rows, -1, 16)
    return (one_high.transpose(1, 2) @ one_low).reshape(rows, 256)


class Clahe(nn.Module):
    """``cv2.createCLAHE(clip_limit, tile_grid).apply`` on a ``[H, W]`` image of static size.

    H and W must be multiples of the tile grid (OpenCV pads otherwise; the network sizes the
    runtime accepts are multiples of 8). Input and output: float32 grey levels.
    """

    def __init__(self, size: tuple[int, int], clip_limit: float, tile_grid: tuple[int, int]):
        super().__init__()
        width, height = size
        tiles_x, tiles_y = tile_grid
        if width % tiles_x or height % tiles_y:
            raise ValueError(f"network size {width}x{height} is not a multiple of the CLAHE "
                             f"tile grid {tiles_x}x{tiles_y}")
        self.tiles = (tiles_y, tiles_x)
        self.tile = (height // tiles_y, width // tiles_x)
        total = self.tile[0] * self.tile[1]
        # OpenCV: clipLimit = max(int(clipLimit * tileSizeTotal / histSize), 1) when > 0.
        self.limit = max(int(clip_limit * total / 256), 1) if clip_limit > 0 else 0
        self.lut_scale = float(np.float32(255.0) / np.float32(total))
        ty1, ty2, ya = self._blend_axis(height, self.tile[0], tiles_y)
        tx1, tx2, xa = self._blend_axis(width, self.tile[1], tiles_x)
        for name, value in (("ty1", ty1), ("ty2", ty2), ("tx1", tx1), ("tx2", tx2)):
            self.register_buffer(name, torch.from_numpy(value), persistent=False)
        for name, value in (("ya", ya), ("xa", xa)):
            self.register_buffer(name, torch.from_numpy(value), persistent=False)
            self.register_buffer(name + "1", torch.from_numpy(np.float32(1.0) - value),
                                 persistent=False)

    @staticmethod
    def _blend_axis(length: int, tile: int, tiles: int):
        """OpenCV's per-row (per-column) tile pair and weight: tyf = y * (1.f / th) - 0.5f."""
        position = np.arange(length, dtype=np.float32) * (np.float32(1.0) / np.float32(tile))
        position = position - np.float32(0.5)
        first = np.floor(position).astype(np.int64)
        weight = (position - first.astype(np.float32)).astype(np.float32)
        second = np.minimum(first + 1, tiles - 1)
        return np.maximum(first, 0), second, weight

    def luts(self, image: torch.Tensor) -> torch.Tensor:
        """``[tiles_y * tiles_x * 256]`` float32: each tile's clipped-histogram LUT."""
        (tiles_y, tiles_x), (tile_h, tile_w) = self.tiles, self.tile
        rows = []
        # One band of tiles at a time keeps the one-hot matrices at 1/tiles_y of the image.
        for band in image.reshape(tiles_y, tile_h, tiles_x, tile_w).unbind(0):
            rows.append(_histograms(band.permute(1, 0, 2).reshape(tiles_x, tile_h * tile_w)))
        hist = torch.cat(rows, dim=0).to(torch.int64)  # [tiles, 256]
        if self.limit > 0:
            excess = torch.clamp(hist - self.limit, min=0).sum(dim=1, keepdim=True)
            hist = torch.clamp(hist, max=self.limit)
            batch = floor_div(excess, 256)
            residual = excess - batch * 256
            hist = hist + batch
            # OpenCV: residualStep = max(histSize / residual, 1); bins 0, step, 2 step, ...
            # get one more, while residual lasts.
            step = torch.clamp(floor_div(torch.full_like(residual, 256),
                                         torch.clamp(residual, min=1)), min=1)
            bins = torch.arange(256, dtype=torch.int64)[None, :]
            bonus = ((bins % step) == 0) & (floor_div(bins, step) < residual)
            hist = hist + bonus.to(torch.int64)
        cumulative = torch.cumsum(hist, dim=1)
        lut = torch.round(_f32(cumulative) * self.lut_scale).clamp(0.0, 255.0)
        return lut.reshape(-1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        lut = self.luts(image)
        tiles_x = self.tiles[1]
        level = image.to(torch.int64)
        row1 = (self.ty1 * tiles_x)[:, None]
        row2 = (self.ty2 * tiles_x)[:, None]

        def look(row, column):
            index = ((row + column[None, :]) * 256 + level).reshape(-1)
            return lut.index_select(0, index).reshape(image.shape)

        xa, xa1 = self.xa[None, :], self.xa1[None, :]
        blended = ((look(row1, self.tx1) * xa1 + look(row1, self.tx2) * xa) * self.ya1[:, None]
                   + (look(row2, self.tx1) * xa1 + look(row2, self.tx2) * xa) * self.ya[:, None])
        return torch.round(blended).clamp(0.0, 255.0)


# ------------------------------------------------------------------------------------------
# The network input


def grey_channel(image: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` uint8: the channel the runtime's CLAHE mode uses (grey as is, the green of
    colour; alpha ignored), from ``[H, W, C]`` uint8 with C in 1..4.

    A one-channel image is grey; with three or four channels the green one (index 1) is taken;
    two channels (grey + alpha) are read as grey.
    """
    channels = shape_scalar(image.shape[2])
    index = (channels >= 3).to(torch.int64).reshape(1)
    return image.index_select(2, index)[:, :, 0]


class NetworkInput(nn.Module):
    """``preprocess.network_input`` in-graph: ``[H + 1, W + 1]`` uint8 grey (:func:`padded`) ->
    ``[1, 1, h, w]``
    float32 in [0, 1] at ``config.size``: INTER_AREA when the image has more pixels than the
    network input, else INTER_LINEAR, then CLAHE (``mode`` clahe only)."""

    def __init__(self, config: PreprocessConfig = PreprocessConfig()):
        super().__init__()
        if PreprocessMode(config.mode) is not PreprocessMode.CLAHE:
            raise ValueError("the registration graph implements the clahe preprocessing only "
                             f"(the runtime's default), not {config.mode!r}")
        self.size = tuple(config.size)
        self.clahe = Clahe(self.size, config.clahe_clip_limit, tuple(config.clahe_tile_grid))

    def grey(self, grey: torch.Tensor) -> torch.Tensor:
        """``[h, w]`` float32 grey levels: ``network_grey``'s uint8 values."""
        width, height = self.size
        pixels = (shape_scalar(grey.shape[0]) - 1) * (shape_scalar(grey.shape[1]) - 1)
        shrinking = width * height < pixels
        resized = resize_grey(grey, width, height, self.size, shrinking)
        return self.clahe(resized)

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        return (self.grey(grey) / 255.0)[None, None]


# ------------------------------------------------------------------------------------------
# Morphology on canvases with a valid top-left region


def _valid(height: int, width: int, valid_h: torch.Tensor, valid_w: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(height, dtype=torch.int64)[:, None] < valid_h
    columns = torch.arange(width, dtype=torch.int64)[None, :] < valid_w
    return rows & columns


def _max_filter(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maximum over a centred (odd) window; outside the canvas counts as -inf."""
    return F.max_pool2d(x[None, None], kernel_size=size, stride=1,
                        padding=(size[0] // 2, size[1] // 2))[0, 0]


def dilate(x: torch.Tensor, side: int, valid: torch.Tensor) -> torch.Tensor:
    """cv2.dilate with a ``side`` x ``side`` square, border -inf (OpenCV's default), on the valid region."""
    x = torch.where(valid, x, -BIG)
    x = torch.where(valid, _max_filter(x, (1, side)), -BIG)
    return _max_filter(x, (side, 1))


def erode(x: torch.Tensor, side: int, valid: torch.Tensor) -> torch.Tensor:
    """cv2.erode with a square, border +inf (OpenCV's default), on the valid region."""
    x = torch.where(valid, x, BIG)
    x = torch.where(valid, -_max_filter(-x, (1, side)), BIG)
    return -_max_filter(-x, (side, 1))


def _window_counts(x: torch.Tensor, length: torch.Tensor, anchor: torch.Tensor,
                   valid_length: torch.Tensor, outside: float, dim: int) -> torch.Tensor:
    """Sum of the 0/1 map ``x`` over the window [i - anchor, i - anchor + length - 1] along
    ``dim``, positions outside [0, valid_length) counting as ``outside``: an opening with a
    kernel whose length is only known at run time, by prefix sums."""
    size = x.shape[dim]
    i = torch.arange(size, dtype=torch.int64)
    start = i - anchor
    end = start + length  # exclusive
    inside_start = start.clamp(min=0).minimum(valid_length)
    inside_end = torch.maximum(end.clamp(min=0).minimum(valid_length), inside_start)
    x = x if dim == 1 else x.transpose(0, 1)
    prefix = torch.cat([torch.zeros_like(x[:, :1]), torch.cumsum(x, dim=1)], dim=1)
    counts = prefix.index_select(1, inside_end) - prefix.index_select(1, inside_start)
    if outside:
        beyond = (torch.clamp(-start, min=0) + torch.clamp(end - valid_length, min=0)).to(x.dtype)
        counts = counts + outside * torch.minimum(beyond, _f32(length))[None, :]
    return counts if dim == 1 else counts.transpose(0, 1)


def open_line(x: torch.Tensor, length: torch.Tensor, valid_h: torch.Tensor,
              valid_w: torch.Tensor, dim: int) -> torch.Tensor:
    """cv2.morphologyEx(x, MORPH_OPEN, ones(1, length) or ones(length, 1)) of a 0/1 map: erosion
    (border 1) then dilation (border 0), both over OpenCV's window [i - a, i - a + length - 1],
    a = length // 2 (an even length shifts the result by one pixel, as in OpenCV)."""
    anchor = floor_div(length, 2)
    valid_length = valid_w if dim == 1 else valid_h
    eroded = (_window_counts(x, length, anchor, valid_length, 1.0, dim) >= _f32(length))
    eroded = _f32(eroded)
    return _f32(_window_counts(eroded, length, anchor, valid_length, 0.0, dim) > 0)


# ------------------------------------------------------------------------------------------
# The keypoint mask


class KeypointMask(nn.Module):
    """``masks.keypoint_mask`` looked up at keypoints, in-graph, less the pens' overlays.

    ``forward(image, grey, points)``: image ``[H + 1, W + 1, C]`` uint8 and grey its channel,
    both :func:`padded` (:func:`grey_channel`), points ``[K, 2]`` (x, y) original pixels. Returns
    ``[K]`` bool: the keypoint may drive the transform (inside the field of view less its
    margin, off the frame, off straight frame lines).
    """

    def __init__(self, config: MaskConfig = MaskConfig()):
        super().__init__()
        self.config = config
        self.working_side = int(config.working_side)
        self.fov_side = int(config.fov_side)
        # Every distance the margin test reads, plus a diagonal step of interpolation, is
        # exact after this many relaxation rounds (each round adds at least one unit step).
        reach = config.fov_margin * self.fov_side / REFERENCE_SIZE
        self.chamfer_rounds = int(math.ceil(reach + 2 * _CHAMFER_STEPS[1])) + 1
        angles = np.arange(HULL_DIRECTIONS) * (2.0 * np.pi / HULL_DIRECTIONS)
        cos, sin = np.cos(angles), np.sin(angles)
        # A pixel is filled when its centre lies within half a pixel (along the line's minor
        # axis) of the hull: fillConvexPoly draws the edges too.
        slack = 0.5 * np.maximum(np.abs(cos), np.abs(sin)) + 1e-4
        self.register_buffer("cos", torch.tensor(cos, dtype=torch.float32), persistent=False)
        self.register_buffer("sin", torch.tensor(sin, dtype=torch.float32), persistent=False)
        self.register_buffer("slack", torch.tensor(slack, dtype=torch.float32), persistent=False)
        # line_length / 2 as an exact ratio of integers (0.15 / 2 = 3 / 40), so that the run
        # length rounds as the runtime's float64 round (checked equal for every side).
        ratio = Fraction(str(config.line_length)) / 2
        self.run_length = (ratio.numerator, ratio.denominator)
        # The ridge kernel (``masks._straight_lines``) is 3 or 5 px on a working side of at
        # most working_side; both are computed and the runtime's chosen (a kernel size must be
        # static in ONNX).
        widest = max(3, 2 * round(config.line_width * self.working_side / REFERENCE_SIZE / 2) + 1)
        if widest > 5:
            raise ValueError(f"line_width {config.line_width} gives ridge kernels over 5 px at "
                             f"{self.working_side}: only 3 and 5 are built into the graph")

    # -- sizes

    def _sizes(self, image: torch.Tensor):
        height, width = shape_scalar(image.shape[0]) - 1, shape_scalar(image.shape[1]) - 1
        longer = torch.maximum(height, width)
        shrink = longer > self.working_side
        safe = torch.clamp(longer, min=1)
        work_w = torch.where(shrink, round_ratio(width * self.working_side, safe), width)
        work_h = torch.where(shrink, round_ratio(height * self.working_side, safe), height)
        coarse = longer > self.fov_side
        coarse_w = torch.where(coarse, round_ratio(width * self.fov_side, safe), width)
        coarse_h = torch.where(coarse, round_ratio(height * self.fov_side, safe), height)
        one = torch.ones((), dtype=torch.int64)
        return (height, width, shrink, torch.maximum(work_w, one), torch.maximum(work_h, one),
                torch.maximum(coarse_w, one), torch.maximum(coarse_h, one))

    # -- field of view

    def _coarse(self, image: torch.Tensor, height, width, coarse_w, coarse_h):
        """INTER_NEAREST_EXACT to the coarse size (source index floor((2d + 1) s / 2t)), on a
        ``fov_side`` canvas; the darkest and brightest channel of each sample."""
        side = self.fov_side
        d = torch.arange(side, dtype=torch.int64)
        rows = floor_div((2 * d + 1) * height, 2 * coarse_h).minimum(torch.clamp(height - 1, min=0))
        cols = floor_div((2 * d + 1) * width, 2 * coarse_w).minimum(torch.clamp(width - 1, min=0))
        sample = image.index_select(0, (rows + 1).minimum(height))
        sample = sample.index_select(1, (cols + 1).minimum(width))
        channels = shape_scalar(image.shape[2])
        pick = torch.where(channels >= 3, torch.arange(3, dtype=torch.int64),
                           torch.zeros(3, dtype=torch.int64))
        sample = _f32(sample.index_select(2, pick))
        return sample.amax(dim=2), sample.amin(dim=2)

    def _field(self, source: torch.Tensor, valid: torch.Tensor, count: torch.Tensor):
        """``masks._field`` on the canvas: float 0/1 field, and its pixel count."""
        config = self.config
        hist = _histograms(torch.where(valid, source, 0.0).reshape(1, -1))[0]
        # Canvas pixels outside the image were counted as level 0: take them back out.
        invalid = shape_scalar(valid.numel()) - count
        hist = hist - torch.cat([_f32(invalid).reshape(1), torch.zeros(255)])
        cumulative = torch.cumsum(hist, dim=0)
        levels = torch.arange(256, dtype=torch.float32)
        n = _f32(count)
        level = torch.where(cumulative * 100.0 >= n, levels, 256.0).min()
        median = torch.where(cumulative * 2.0 >= n, levels, 256.0).min()
        surround = level <= config.surround_level * 255.0
        limit = level + torch.clamp(config.surround_share * (median - level),
                                    min=config.surround_tolerance * 255.0)
        lit = _f32((source > limit) & valid)
        lit = dilate(erode(lit, 3, valid), 3, valid) * _f32(valid)
        any_lit = lit.max() > 0
        hull = self._hull(lit)
        closed = erode(dilate(lit, 3, valid), 3, valid)
        passable = ((closed < 0.5) | ~hull) & valid
        reached = self._flood(passable, ~hull & valid, valid)
        field = valid & ~reached
        # (a Where on bool values has no onnxruntime CPU kernel: logic instead)
        found = surround & any_lit
        field = (found & field) | (~found & valid)
        return _f32(field), _f32(field).sum()

    def _hull(self, lit: torch.Tensor) -> torch.Tensor:
        """The filled convex hull of the lit pixels, as the intersection of the half-planes
        of their support lines in HULL_DIRECTIONS directions (row by row: no
        pixels x directions matrix)."""
        side = lit.shape[0]
        positions = torch.arange(side, dtype=torch.float32)
        on = lit > 0.5
        row_lit = on.any(dim=1)
        row_min = torch.where(on, positions[None, :], BIG).amin(dim=1)
        row_max = torch.where(on, positions[None, :], -BIG).amax(dim=1)
        ys = positions[:, None]
        reach = (torch.maximum(row_min[:, None] * self.cos, row_max[:, None] * self.cos)
                 + ys * self.sin)  # [rows, directions]
        support = torch.where(row_lit[:, None], reach, -BIG).amax(dim=0) + self.slack
        # x * cos <= support - y * sin, per row and direction.
        bound = support[None, :] - ys * self.sin  # [rows, directions]
        right = torch.where(self.cos > 1e-6, bound / self.cos.clamp(min=1e-6), BIG).amin(dim=1)
        left = torch.where(self.cos < -1e-6, bound / self.cos.clamp(max=-1e-6), -BIG).amax(dim=1)
        flat = torch.where(self.cos.abs() <= 1e-6, bound, BIG).amin(dim=1)
        xs = positions[None, :]
        return (xs >= left[:, None]) & (xs <= right[:, None]) & (flat[:, None] >= 0)

    @staticmethod
    def _flood(passable: torch.Tensor, seed: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """cv2.floodFill from the frame through ``passable`` (4-connected), to convergence.

        Seeds: the passable pixels on the valid region's edge and ``seed`` (outside the hull,
        each of which reaches the frame by a staircase outside the hull). One ONNX Loop when
        exported.
        """
        height, width = passable.shape
        rows = torch.arange(height, dtype=torch.int64)[:, None]
        cols = torch.arange(width, dtype=torch.int64)[None, :]
        last_row = (valid.any(dim=1).to(torch.int64) * torch.arange(height)).max()
        last_col = (valid.any(dim=0).to(torch.int64) * torch.arange(width)).max()
        edge = (rows == 0) | (cols == 0) | (rows == last_row) | (cols == last_col)
        start = _f32(passable & (edge | seed))
        allowed = _f32(passable)
        cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])[None, None]

        def grow(reached):
            spread = F.conv2d(reached[None, None], cross, padding=1)[0, 0]
            return torch.minimum((spread > 0).to(torch.float32), allowed)

        def keep_going(changed, reached):
            return changed.clone()  # a loop condition may not alias its input (torch.export)

        def step(changed, reached):
            grown = grow(reached)
            return (grown != reached).any(), grown

        state = (torch.ones((), dtype=torch.bool), start)
        if torch.compiler.is_exporting():
            _, reached = torch.while_loop(keep_going, step, state)
        else:
            while bool(state[0]):
                state = step(*state)
            reached = state[1]
        return reached > 0.5

    def _distance(self, field: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """cv2.distanceTransform(field, DIST_L2, DIST_MASK_5) where it matters: exact up to
        the margin plus an interpolation step, BIG beyond; outside the image is far (OpenCV
        initialises its border so), the field's zeros are the sources."""
        height, width = field.shape
        distance = torch.where((field < 0.5) & valid, 0.0, BIG)
        a, b, c = _CHAMFER_STEPS
        steps = [(0, 1, a), (1, 0, a), (1, 1, b), (1, -1, b), (1, 2, c), (2, 1, c), (1, -2, c),
                 (2, -1, c)]
        steps += [(-dy, -dx, w) for dy, dx, w in steps]
        for _ in range(self.chamfer_rounds):
            framed = torch.cat([torch.full((height, 2), BIG), distance, torch.full((height, 2), BIG)],
                               dim=1)
            framed = torch.cat([torch.full((2, width + 4), BIG), framed,
                                torch.full((2, width + 4), BIG)], dim=0)
            best = distance
            for dy, dx, w in steps:
                best = torch.minimum(best, framed[2 + dy:2 + dy + height, 2 + dx:2 + dx + width] + w)
            distance = torch.minimum(best, torch.full_like(best, BIG))
        return distance

    # -- straight frame lines

    def _lines(self, work: torch.Tensor, work_w, work_h):
        """``masks._straight_lines`` on the working canvas: 0/1 map of the line runs at the
        working size, or all zeros when none (or texture: more than line_max_share)."""
        config = self.config
        side = self.working_side
        valid = _valid(side, side, work_h, work_w)
        longer = torch.maximum(work_w, work_h)
        ridges = []
        for kernel in (3, 5):
            opened = dilate(erode(work, kernel, valid), kernel, valid)
            closed = erode(dilate(work, kernel, valid), kernel, valid)
            ridges.append(torch.maximum(work - opened, closed - work))
        # side = max(3, 2 * round(line_width * px / 2) + 1), px = longer / REFERENCE_SIZE.
        half_width = torch.round(_f32(longer) * (config.line_width / 2.0 / REFERENCE_SIZE))
        five = (2 * half_width + 1) >= 5
        ridge = torch.where(five, ridges[1], ridges[0])
        thin = _f32((ridge >= config.line_contrast * 255.0) & valid)
        # 2x2 dilation (window [i - 1, i]) then every second pixel.
        shifted = torch.cat([torch.zeros_like(thin[:1]), thin[:-1]], dim=0)
        thin = torch.maximum(thin, shifted)
        shifted = torch.cat([torch.zeros_like(thin[:, :1]), thin[:, :-1]], dim=1)
        half = torch.maximum(thin, shifted)[::2, ::2]
        half_w, half_h = floor_div(work_w + 1, 2), floor_div(work_h + 1, 2)
        # length = max(3, round(line_length * longer / 2)) = round(3 * longer / 40) for 0.15.
        numerator, denominator = self.run_length
        length = torch.clamp(round_ratio(longer * numerator, denominator), min=3)
        runs = torch.maximum(open_line(half, length, half_h, half_w, dim=1),
                             open_line(half, length, half_h, half_w, dim=0))
        runs = runs * _f32(_valid(side // 2, side // 2, half_h, half_w))
        found = runs.sum()
        real = (found > 0) & (found <= config.line_max_share * _f32(half_w * half_h))
        # INTER_NEAREST back to the working size: source index floor(x * half_w / work_w).
        d = torch.arange(side, dtype=torch.int64)
        rows = floor_div(d * half_h, work_h).minimum(half_h - 1).clamp(min=0)
        cols = floor_div(d * half_w, work_w).minimum(half_w - 1).clamp(min=0)
        full = runs.index_select(0, rows).index_select(1, cols)
        return full * _f32(real)

    # -- forward

    def forward(self, image: torch.Tensor, grey: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        config = self.config
        height, width, shrink, work_w, work_h, coarse_w, coarse_h = self._sizes(image)
        longer_work = torch.maximum(work_w, work_h)
        px = _f32(longer_work) / REFERENCE_SIZE

        # Field of view at the coarse size, its margin judged on the distance map.
        fov_valid = _valid(self.fov_side, self.fov_side, coarse_h, coarse_w)
        count = coarse_w * coarse_h
        darkest, brightest = self._coarse(image, height, width, coarse_w, coarse_h)
        field_dark, size_dark = self._field(darkest, fov_valid, count)
        field_bright, size_bright = self._field(255.0 - brightest, fov_valid, count)
        total = _f32(count)
        plausible_dark = size_dark >= config.min_fov_share * total
        plausible_bright = size_bright >= config.min_fov_share * total
        take_bright = plausible_bright & (~plausible_dark | (size_bright < size_dark))
        field = torch.where(take_bright, field_bright, field_dark)
        size = torch.where(take_bright, size_bright, size_dark)
        use_fov = ((plausible_dark | plausible_bright)
                   & (size <= (1.0 - config.min_surround_share) * total))
        distance = self._distance(field, fov_valid)
        threshold = torch.clamp(config.fov_margin * px * _f32(coarse_w) / _f32(work_w), min=0.5)

        # Straight lines at the working size.
        work = resize_grey(grey, work_w, work_h, (self.working_side, self.working_side), shrink)
        lines = self._lines(work, work_w, work_h)
        integral = torch.cumsum(torch.cumsum(lines, dim=0), dim=1)
        integral = torch.cat([torch.zeros_like(integral[:1]), integral], dim=0)
        integral = torch.cat([torch.zeros_like(integral[:, :1]), integral], dim=1)
        margin = torch.round(px * config.overlay_margin).to(torch.int64)
        border = torch.round(px * config.border_margin).to(torch.int64)

        # The keypoints' pixels: rounded (ties to even, as numpy), then the working pixel
        # that INTER_NEAREST would stretch over them.
        column = torch.round(points[:, 0]).to(torch.int64)
        row = torch.round(points[:, 1]).to(torch.int64)
        on_image = (column >= 0) & (column < width) & (row >= 0) & (row < height)
        column = column.clamp(min=0)
        row = row.clamp(min=0)
        wx = torch.where(shrink, floor_div(column * work_w, torch.clamp(width, min=1)), column)
        wy = torch.where(shrink, floor_div(row * work_h, torch.clamp(height, min=1)), row)
        wx = wx.minimum(work_w - 1)
        wy = wy.minimum(work_h - 1)
        keep = on_image
        keep = keep & (wx >= border) & (wx < work_w - border) & (wy >= border) & (wy < work_h - border)

        # Lines grown by the overlay margin: any line pixel in the (2m+1) square.
        top = (wy - margin).clamp(min=0)
        bottom = (wy + margin + 1).minimum(work_h)
        left = (wx - margin).clamp(min=0)
        right = (wx + margin + 1).minimum(work_w)
        stride = self.working_side + 1
        flat = integral.reshape(-1)
        box = (flat[bottom * stride + right] - flat[top * stride + right]
               - flat[bottom * stride + left] + flat[top * stride + left])
        keep = keep & (box < 0.5)

        # Field of view: the distance map stretched to the working size by INTER_LINEAR
        # (float coefficients; x clamped at the borders, y rows repeated), sampled here.
        sx, fx = self._linear_sample(wx, coarse_w, work_w, clamp=True)
        sy, fy = self._linear_sample(wy, coarse_h, work_h, clamp=False)
        side = self.fov_side
        x0 = sx.clamp(min=0).minimum(coarse_w - 1)
        x1 = (sx + 1).clamp(min=0).minimum(coarse_w - 1)
        y0 = sy.clamp(min=0).minimum(coarse_h - 1)
        y1 = (sy + 1).clamp(min=0).minimum(coarse_h - 1)
        flat = distance.reshape(-1)
        upper = flat[y0 * side + x0] * (1.0 - fx) + flat[y0 * side + x1] * fx
        lower = flat[y1 * side + x0] * (1.0 - fx) + flat[y1 * side + x1] * fx
        value = upper * (1.0 - fy) + lower * fy
        keep = keep & (~use_fov | (value > threshold))
        return keep

    @staticmethod
    def _linear_sample(d: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, clamp: bool):
        """Source index and float weight of INTER_LINEAR at destination ``d`` (src -> dst)."""
        numerator = (2 * d + 1) * src - dst
        sx = torch.where(numerator >= 0, floor_div(numerator.clamp(min=0), 2 * dst),
                         -floor_div(-numerator + 2 * dst - 1, 2 * dst))
        fx = _f32(numerator - sx * 2 * dst) / _f32(2 * dst)
        if clamp:
            outside = (sx < 0) | (sx >= src - 1)
            fx = torch.where(outside, torch.zeros_like(fx), fx)
            sx = torch.where(sx < 0, torch.zeros_like(sx), torch.where(sx >= src - 1, src - 1, sx))
        return sx, fx
