"""The warp of the one-graph registration (issue 14): the moving image resampled into the
fixed image's frame by the transform :class:`export.graph_estimation.Estimation` fitted, as a
torch module that exports to ONNX (``ophreg_rt.transforms.warp_image`` in the runtime).

For every fixed pixel the module finds the moving pixel the transform sends there (an affine:
its inverse in closed form, per pixel; a quadratic: the runtime's ``quadratic.remap_tables``,
its inverse solved every 8 px as ``quadratic.inverse_map`` does, a quadratic fitted the other
way on a 33 x 33 grid over the moving image, then Newton steps on the forward map, and
interpolated linearly in between) and samples the moving image there with ONNX's GridSample
(bilinear, zeros outside, pixel centres at integers: ``align_corners``), which is what
``cv2.warpAffine`` / ``cv2.remap`` do with ``INTER_LINEAR`` and a constant 0 border. OpenCV
samples at positions rounded to 1/32 px with fixed-point weights, the graph at the exact
position: measured at most 1 grey level apart on the dev pairs, 99.8-99.99 % of values equal.
All zeros when the registration failed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ophreg_rt.contract import RegistrationIO, TensorSpec
# the runtime's inverse-map settings, one home each
from ophreg_rt.quadratic import _NEWTON_STEPS, _REMAP_GRID_STEP

from .graph_estimation import (QUADRATIC_CODE, STATUS_OK, LeastSquares, hartley_frame,
                               quadratic_design, quadratic_to_pixels)

#: Points per side of the grid over the moving image on which the inverse quadratic is fitted
#: (``quadratic.inverse_map``'s).
INVERSE_GRID = 33
#: |Jacobian determinant| below which a Newton step is taken as if it were this (the
#: runtime's guard, in px² per px²).
_MIN_NEWTON_DET = 1e-12


class WarpIO:
    """Names of a standalone warp graph's inputs (the output is the registration's WARPED)."""

    MOVING = RegistrationIO.IMAGES[1]
    FIXED = RegistrationIO.IMAGES[0]
    STATUS = RegistrationIO.STATUS
    TRANSFORM = RegistrationIO.TRANSFORM
    MATRIX = RegistrationIO.MATRIX
    COEFFICIENTS = RegistrationIO.COEFFICIENTS


WARP_INPUTS = (
    TensorSpec(WarpIO.MOVING, "uint8", ("height1", "width1", "channels1"),
               "the moving image, rows x columns x channels"),
    TensorSpec(WarpIO.FIXED, "uint8", ("height0", "width0", "channels0"),
               "the fixed image; only its height and width are read (the output's frame)"),
    TensorSpec(WarpIO.STATUS, "int64", (), "the registration's status code"),
    TensorSpec(WarpIO.TRANSFORM, "int64", (), "the registration's transform code"),
    TensorSpec(WarpIO.MATRIX, "float32", (3, 3), "the affine, moving -> fixed pixels"),
    TensorSpec(WarpIO.COEFFICIENTS, "float32", (2, 6),
               "the quadratic's coefficients on x², xy, y², x, y, 1 of the moving pixel"),
)
WARP_OUTPUTS = (
    TensorSpec(RegistrationIO.WARPED, "uint8", ("height0", "width0", "channels1"),
               "the moving image in the fixed frame (bilinear, zeros outside); all zeros when "
               "failed"),
)


def evaluate_quadratic(terms: list[list[torch.Tensor]], x: torch.Tensor, y: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x', y') of a pixel quadratic at pixels (x, y) of any broadcastable shape, term by
    term (no ``[..., 6]`` array of monomials for a whole image). ``terms``: the coefficients
    as ``terms[row][k]`` 0-d tensors (:func:`coefficient_terms`)."""
    xx, xy, yy = x * x, x * y, y * y
    return tuple(c[0] * xx + c[1] * xy + c[2] * yy + c[3] * x + c[4] * y + c[5] for c in terms)


def coefficient_terms(coefficients: torch.Tensor) -> list[list[torch.Tensor]]:
    """``[2, 6]`` coefficients as 0-d tensors, read once (each read is a graph node)."""
    return [[coefficients[row, k] for k in range(6)] for row in range(2)]


def inverse_quadratic(coefficients: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      moving_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Moving pixels that the ``[2, 6]`` quadratic sends to fixed pixels (x, y):
    ``quadratic.inverse_map`` (fitted inverse on the moving image's grid, then Newton)."""
    steps = torch.arange(INVERSE_GRID, dtype=x.dtype) / (INVERSE_GRID - 1)
    grid_x = (steps * (moving_size[0] - 1))[None, :].expand(INVERSE_GRID, INVERSE_GRID)
    grid_y = (steps * (moving_size[1] - 1))[:, None].expand(INVERSE_GRID, INVERSE_GRID)
    grid = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)
    forward = coefficient_terms(coefficients)
    mapped = torch.stack(evaluate_quadratic(forward, grid[:, 0], grid[:, 1]), dim=1)
    everywhere = torch.ones_like(grid[:, 0], dtype=torch.bool)
    mapped_n, mapped_centre, mapped_scale = hartley_frame(mapped, everywhere)
    grid_n, grid_centre, grid_scale = hartley_frame(grid, everywhere)
    backward = quadratic_to_pixels(
        LeastSquares(quadratic_design(mapped_n), grid_n, everywhere).solution(6),
        (mapped_centre, mapped_scale), (grid_centre, grid_scale))
    estimate_x, estimate_y = evaluate_quadratic(coefficient_terms(backward), x, y)
    (c00, c01, c02, c03, c04, _), (c10, c11, c12, c13, c14, _) = forward
    for _ in range(_NEWTON_STEPS):
        forward_x, forward_y = evaluate_quadratic(forward, estimate_x, estimate_y)
        residual_x, residual_y = forward_x - x, forward_y - y
        j00 = 2 * estimate_x * c00 + estimate_y * c01 + c03
        j01 = estimate_x * c01 + 2 * estimate_y * c02 + c04
        j10 = 2 * estimate_x * c10 + estimate_y * c11 + c13
        j11 = estimate_x * c11 + 2 * estimate_y * c12 + c14
        det = j00 * j11 - j01 * j10
        det = torch.where(torch.abs(det) > _MIN_NEWTON_DET, det,
                          torch.full_like(det, _MIN_NEWTON_DET))
        estimate_x = estimate_x - (j11 * residual_x - j01 * residual_y) / det
        estimate_y = estimate_y - (-j10 * residual_x + j00 * residual_y) / det
    return estimate_x, estimate_y


def inverse_affine(matrix: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Moving pixels that the ``[3, 3]`` affine sends to fixed pixels (x, y), by the 2 x 2
    adjugate (a singular matrix, which only a failed registration has, gives finite junk)."""
    a, b, shift_x = matrix[0, 0], matrix[0, 1], matrix[0, 2]
    c, d, shift_y = matrix[1, 0], matrix[1, 1], matrix[1, 2]
    det = a * d - b * c
    det = torch.where(det != 0, det, torch.ones_like(det))
    u, v = x - shift_x, y - shift_y
    return (d * u - b * v) / det, (a * v - c * u) / det


def _node_weights(length, num_nodes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of ``length`` pixels, its lower node, the next one and the fraction between
    them, nodes every _REMAP_GRID_STEP px (``quadratic._linear_weights``, as gathers)."""
    position = torch.arange(length, dtype=torch.float32) / _REMAP_GRID_STEP
    last_lower = torch.full((), num_nodes - 2, dtype=torch.float32)
    lower = torch.clamp(torch.minimum(torch.floor(position), last_lower), min=0.0)
    return lower.to(torch.int64), lower.to(torch.int64) + 1, position - lower


def remap_quadratic(coefficients: torch.Tensor, height, width, moving_size: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[H, W]`` moving pixels that the quadratic sends to each fixed pixel, as
    ``quadratic.remap_tables``: solved exactly every _REMAP_GRID_STEP px, linear in between
    (the interpolation is the runtime's to rounding; it is within 1e-3 px of solving every
    pixel, at a fraction of the work)."""
    nodes_x = torch.arange(0, width - 1 + _REMAP_GRID_STEP, _REMAP_GRID_STEP,
                           dtype=torch.float32)
    nodes_y = torch.arange(0, height - 1 + _REMAP_GRID_STEP, _REMAP_GRID_STEP,
                           dtype=torch.float32)
    solved = inverse_quadratic(coefficients, nodes_x[None, :], nodes_y[:, None], moving_size)
    low_y, high_y, fraction_y = _node_weights(height, nodes_y.shape[0])
    low_x, high_x, fraction_x = _node_weights(width, nodes_x.shape[0])
    tables = []
    for values in solved:  # [ny, nx] each
        values = values.expand(nodes_y.shape[0], nodes_x.shape[0])
        rows = (values.index_select(0, low_y) * (1 - fraction_y)[:, None]
                + values.index_select(0, high_y) * fraction_y[:, None])  # [H, nx]
        tables.append(rows.index_select(1, low_x) * (1 - fraction_x)
                      + rows.index_select(1, high_x) * fraction_x)  # [H, W]
    return tables[0], tables[1]


class Warp(nn.Module):
    """The moving image warped into the fixed image's frame by the registration's transform.

    Forward: :data:`WARP_INPUTS` in order (the moving uint8 image ``[H1, W1, C]``, the fixed
    image, whose ``[H0, W0]`` sets the output's size, and the estimation's status, transform,
    matrix and coefficients); returns the warped uint8 ``[H0, W0, C]``.
    """

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, status: torch.Tensor,
                transform: torch.Tensor, matrix: torch.Tensor,
                coefficients: torch.Tensor) -> torch.Tensor:
        height, width = fixed.shape[0], fixed.shape[1]
        moving_height, moving_width = moving.shape[0], moving.shape[1]
        x = torch.arange(width, dtype=torch.float32)[None, :]
        y = torch.arange(height, dtype=torch.float32)[:, None]
        moving_size = torch.stack([torch.full((), moving_width, dtype=torch.float32),
                                   torch.full((), moving_height, dtype=torch.float32)])
        quadratic = transform == QUADRATIC_CODE
        # A failed registration carries zeros, whose inverse quadratic is degenerate: warp it
        # as the identity quadratic so that no step divides by ~0 (the output is zeroed anyway).
        identity = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
        usable = quadratic & (status == STATUS_OK)
        source_qx, source_qy = remap_quadratic(torch.where(usable, coefficients, identity),
                                               height, width, moving_size)
        source_ax, source_ay = inverse_affine(matrix, x, y)
        source_x = torch.where(quadratic, source_qx, source_ax).expand(height, width)
        source_y = torch.where(quadratic, source_qy, source_ay).expand(height, width)
        # GridSample's align_corners: -1 and 1 are the centres of the first and last pixels
        scale_x = 2.0 / torch.clamp(moving_size[0] - 1, min=1.0)
        scale_y = 2.0 / torch.clamp(moving_size[1] - 1, min=1.0)
        grid = torch.stack([source_x * scale_x - 1.0, source_y * scale_y - 1.0], dim=-1)
        image = moving.permute(2, 0, 1)[None].to(torch.float32)
        sampled = F.grid_sample(image, grid[None], mode="bilinear", padding_mode="zeros",
                                align_corners=True)[0].permute(1, 2, 0)
        warped = torch.clamp(torch.round(sampled), 0.0, 255.0)
        warped = torch.where(status == STATUS_OK, warped, torch.zeros_like(warped))
        return warped.to(torch.uint8)


def sample_inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Tracing inputs: images of distinct sizes and channel counts (no dimension is
    specialised) and a mild quadratic."""
    rng = np.random.default_rng(seed)
    moving = torch.from_numpy(rng.integers(0, 256, (45, 52, 3), dtype=np.uint8))
    fixed = torch.from_numpy(rng.integers(0, 256, (38, 41, 2), dtype=np.uint8))
    matrix = torch.tensor([[0.98, -0.05, 2.0], [0.05, 0.98, -1.5], [0.0, 0.0, 1.0]])
    coefficients = torch.tensor([[1e-4, 0.0, -1e-4, 0.98, -0.05, 2.0],
                                 [0.0, 2e-4, 0.0, 0.05, 0.98, -1.5]])
    return (moving, fixed, torch.tensor(STATUS_OK), torch.tensor(QUADRATIC_CODE), matrix,
            coefficients)


def to_onnx(module: Warp):
    """The module as an ONNX graph at the contract's opset; both images' sizes and the moving
    image's channels dynamic."""
    from .onnx_io import export_with_dynamo, strip_trace_metadata

    dims = {name: torch.export.Dim(name, min=2) for name in
            ("height0", "width0", "height1", "width1")}
    dims["channels1"] = torch.export.Dim("channels1", min=1, max=4)
    dims["channels0"] = torch.export.Dim("channels0", min=1, max=4)
    dynamic = {spec.name: {axis: dims[name] for axis, name in enumerate(spec.shape)
                           if isinstance(name, str)} or None for spec in WARP_INPUTS}
    proto = export_with_dynamo(module, sample_inputs(), WARP_INPUTS, WARP_OUTPUTS, dynamic)
    strip_trace_metadata(proto)
    return proto
