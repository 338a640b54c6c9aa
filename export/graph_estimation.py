"""The estimation half of the one-graph registration (issue 14): everything ``Registrar.fit``
does after matching, as a torch module that exports to ONNX.

Matched points in original pixels come in fixed slots with a validity mask; out come the
contract's ``status``, ``reason``, ``transform``, ``matrix``, ``coefficients``, ``loo_rms``,
``quadratic_refusal``, ``num_inliers`` and ``inliers`` (``contract.REGISTRATION_OUTPUTS``).
The steps are the runtime's, in its order:

1. the point-set checks of ``ransac._point_set_problem`` (too few, duplicate, collinear);
2. an affine RANSAC whose minimal samples come from a CONSTANT table of uniform numbers u,
   slots ``floor(u * M)`` of the M valid matches: the graph has no random op, so every
   onnxruntime binding gives the same answer. A sample that repeats a slot is degenerate and
   gets no vote, like a flat one. All hypotheses are scored at once (count, then MSAC cost), as
   ``ransac.ransac`` scores a batch; there is no adaptive stop, the table is the budget;
3. the runtime's least-squares refit rounds (``ransac._refit``), its ``min_inliers``, its
   plausibility (singular values of the 2x2 linear part in closed form) and its coverage
   refusal;
4. for ``auto``: the quadratic grown from the affine's inliers and from the best minimal
   6-point quadratic of a second constant table (``quadratic.best_quadratic``), both growths
   run as one batch of two; leave-one-out residuals from the hat matrix's diagonal; the
   quadratic's refusals (``transforms.quadratic_implausibility``) and the ``auto_gain`` choice;
   a taken quadratic is then refined on all valid matches by Cauchy-reweighted least squares
   (``quadratic.refined_fit``) and kept refined where it passes the same refusals.

No linear-algebra operator exists in ONNX, so every least-squares fit is a weighted
Gram-Schmidt QR written out column by column (:class:`LeastSquares`), on Hartley-normalised
coordinates of the valid points, in float32, with the columns ordered by degree (1, u, v, u²,
uv, v²); its Q gives the hat matrix's diagonal (the leverages) as the runtime's
``np.linalg.qr`` does. Convex hulls (coverage, and the region that supports the quadratic's
checks) come from their support function in DIRECTIONS fixed directions: the support points
in angular order are a polygon inscribed in the hull (shoelace area), the support values bound
one circumscribed to it (distance of a point outside), both the hull as directions get dense.
The refit, growth and Cauchy rounds are ``torch.while_loop``s when exporting: one ONNX Loop
each.

Where the graph cannot decide exactly like the runtime: its hypotheses are another sample
of the same distribution, so where the runtime's own answer depends on its seed (a few
inliers near the threshold; tests/export/test_graph_estimation.py measures it) the graph
gives one of the runtime's answers, not necessarily seed 0's; rank checks use float32
thresholds; hull areas and distances are the polygons above (relative error under 1e-4).

Only standard ONNX operators; no random op, no data-dependent shape.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ophreg_rt.config import (REFERENCE_SIZE, PlausibilityConfig, QuadraticConfig,
                              RansacConfig, TransformModel)
from ophreg_rt.contract import (REGISTRATION_OUTPUTS, QuadraticRefusal,
                                REGISTRATION_REASONS, REGISTRATION_STATUS,
                                REGISTRATION_TRANSFORMS, RegistrationIO, TensorSpec)
# The runtime's own numerical guards: one home each, read here rather than retyped.
from ophreg_rt.ransac import (_MAX_REFIT_ROUNDS, _MIN_DET, _MIN_SEPARATION, _MIN_SET_SHAPE,
                              _MIN_TRIANGLE_SHAPE)
from ophreg_rt.transforms import _CHECK_GRID

#: Affine minimal samples in the constant table. The runtime stops once an all-inlier sample
#: was drawn with probability 0.999 (RansacConfig.confidence); a table of T samples misses
#: every all-inlier triple with probability (1 - w^3)^T, so 2048 keeps that confidence down
#: to an inlier ratio w of 0.15 (real pairs: 0.2-0.9). Measured on 40 synthetic affine cases
#: of 300 matches per ratio (fit within 2 px of the truth): T = 2048 40/40 at w = 0.15 and
#: above, 31/40 at w = 0.1; T = 1024 38/40 at w = 0.15; T = 512 38/40 at w = 0.2.
HYPOTHESES = 2048
#: Minimal 6-point quadratic samples (the second seed of ``auto``): 0.999 down to w = 0.47;
#: the runtime draws them in batches of 256 until its confidence is met (256 on the real
#: pairs). Measured: on synthetic curved cases the seed changed no answer at any table size;
#: on the real pairs it adds 1-2 inliers on the toolbox pairs, the same from 512 to 4096.
QUADRATIC_HYPOTHESES = 1024
#: Directions of the support function that stands for a convex hull: the inscribed polygon of
#: a circle misses (2 pi / D)^2 / 6 of its area, 1e-4 at 256.
DIRECTIONS = 256
#: Seed of the constant tables: fixed, so the exported graph is reproducible byte for byte.
TABLE_SEED = 0

#: A least-squares design is rank-deficient when R's smallest diagonal entry is under this
#: share of its largest. The runtime's 1e-9 is below float32 resolution: in float32 an exactly
#: degenerate design leaves ~1e-7 of rounding there.
_RANK_TOLERANCE = 1e-5
#: The runtime's conditioning floor for a minimal 6-point system, |det| in normalised units.
_MINIMAL_DET = 1e-9
#: Leverage at which a point counts as unpredictable by the others (the runtime's 1 - 1e-9,
#: at float32 resolution).
_MAX_LEVERAGE = 1.0 - 1e-6

AFFINE_CODE = REGISTRATION_TRANSFORMS.index(TransformModel.AFFINE.value)
QUADRATIC_CODE = REGISTRATION_TRANSFORMS.index(TransformModel.QUADRATIC.value)
STATUS_OK = REGISTRATION_STATUS.index("ok")
STATUS_FAILED = REGISTRATION_STATUS.index("failed")
REASON_NONE = 0
REASON_TOO_FEW = REGISTRATION_REASONS.index("too few correspondences for a transform")
REASON_DEGENERATE = REGISTRATION_REASONS.index(
    "every sampled hypothesis was degenerate (duplicate or collinear points)")
REASON_FEW_INLIERS = REGISTRATION_REASONS.index("the best transform has too few inliers")
REASON_IMPLAUSIBLE = REGISTRATION_REASONS.index(
    "the transform is implausible (not finite, mirrored, or scale or shear out of bounds)")
REASON_OUTSIDE = REGISTRATION_REASONS.index(
    "the transform sends the moving image outside the fixed one")
REASON_COVERAGE = REGISTRATION_REASONS.index(
    "the inliers cover too little of the shared field of view")
# Plain ints: they become constants of the traced graph.
QUADRATIC_TAKEN = int(QuadraticRefusal.TAKEN)
QUADRATIC_FEW_INLIERS = int(QuadraticRefusal.FEW_INLIERS)
QUADRATIC_COVERAGE = int(QuadraticRefusal.COVERAGE)
QUADRATIC_DEPARTURE = int(QuadraticRefusal.DEPARTURE)
QUADRATIC_FOLD = int(QuadraticRefusal.FOLD)
QUADRATIC_LOCAL = int(QuadraticRefusal.LOCAL)
QUADRATIC_NO_GAIN = int(QuadraticRefusal.NO_GAIN)
QUADRATIC_AFFINE_FAILED = int(QuadraticRefusal.AFFINE_FAILED)
#: ``quadratic_refusal`` of a module built affine-only (never in the registration graph,
#: which runs ``auto``): no quadratic was considered.
QUADRATIC_NOT_ASKED = -1


class EstimationIO:
    """Names of the estimation graph's inputs (its outputs have the registration's names)."""

    POINTS_FIXED = "points_fixed"
    POINTS_MOVING = "points_moving"
    VALID = "valid"
    SCORES = "scores"
    FIXED_SIZE = "fixed_size"
    MOVING_SIZE = "moving_size"


#: Symbolic name of the slot axis of a standalone estimation graph (the registration graph
#: fixes it at ``max_keypoints``).
SLOTS = "slots"

ESTIMATION_INPUTS = (
    TensorSpec(EstimationIO.POINTS_FIXED, "float32", (SLOTS, 2),
               "(x, y) original fixed pixels of each match, pixel centres at integers"),
    TensorSpec(EstimationIO.POINTS_MOVING, "float32", (SLOTS, 2),
               "(x, y) original moving pixels of each match"),
    TensorSpec(EstimationIO.VALID, "bool", (SLOTS,),
               "True for a real match, in any slot; a non-finite point counts as invalid"),
    TensorSpec(EstimationIO.SCORES, "float32", (SLOTS,),
               "matcher confidence (not used by the fit, as in the runtime)"),
    TensorSpec(EstimationIO.FIXED_SIZE, "float32", (2,), "(width, height) of the fixed image"),
    TensorSpec(EstimationIO.MOVING_SIZE, "float32", (2,), "(width, height) of the moving image"),
)


def _output_spec(name: str, shape: tuple) -> TensorSpec:
    contract = {spec.name: spec for spec in REGISTRATION_OUTPUTS}[name]
    return TensorSpec(name, contract.dtype, shape, contract.doc)


#: The estimation graph's outputs: the registration's, with the slot axis named ``slots``.
ESTIMATION_OUTPUTS = tuple(
    _output_spec(name, shape) for name, shape in (
        (RegistrationIO.STATUS, ()), (RegistrationIO.REASON, ()), (RegistrationIO.TRANSFORM, ()),
        (RegistrationIO.MATRIX, (3, 3)), (RegistrationIO.COEFFICIENTS, (2, 6)),
        (RegistrationIO.LOO_RMS, (2,)), (RegistrationIO.QUADRATIC_REFUSAL, ()),
        (RegistrationIO.NUM_INLIERS, ()), (RegistrationIO.INLIERS, (SLOTS,))))


# --------------------------------------------------------------------------------------------
# Frames and designs


def hartley_frame(points: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The runtime's Hartley normalisation (``ransac._normalise``) over the masked points.

    points ``[N, 2]``, mask ``[N]`` bool. Returns the normalised points (all of them), the
    centre ``[2]`` and the scale ``[]``: centroid at 0, mean distance sqrt(2); scale 1 for an
    empty or one-point set, as the runtime's.
    """
    weights = mask.to(points.dtype)
    total = weights.sum().clamp(min=1.0)
    centre = (points * weights[:, None]).sum(0) / total
    offset = points - centre
    mean_distance = (torch.sqrt((offset * offset).sum(1)) * weights).sum() / total
    scale = torch.where(mean_distance > 0, math.sqrt(2.0) / mean_distance.clamp(min=1e-30),
                        torch.ones_like(mean_distance))
    return offset * scale, centre, scale


def affine_design(points: torch.Tensor) -> torch.Tensor:
    """``[..., N, 3]`` columns (1, u, v) of normalised points ``[..., N, 2]``."""
    u, v = points[..., 0], points[..., 1]
    return torch.stack([torch.ones_like(u), u, v], dim=-1)


def quadratic_design(points: torch.Tensor) -> torch.Tensor:
    """``[..., N, 6]`` columns (1, u, v, u², uv, v²), by degree: the QR orthogonalises each
    column against the lower-degree ones first, which keeps float32 Gram-Schmidt accurate (the
    runtime's pixel order, (x², xy, y², x, y, 1), is restored by :func:`quadratic_to_pixels`)."""
    u, v = points[..., 0], points[..., 1]
    return torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v], dim=-1)


def affine_to_pixels(coefficients: torch.Tensor, source: tuple[torch.Tensor, torch.Tensor],
                     target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``[3, 3]`` pixel matrix (last row 0 0 1) of affine coefficients ``[3, 2]`` that map
    normalised source points (rows 1, u, v) to normalised target points (columns u', v').

    source, target: (centre ``[2]``, scale ``[]``) of the two Hartley frames.
    """
    (centre, scale), (target_centre, target_scale) = source, target
    a0, a1, a2 = coefficients[0], coefficients[1], coefficients[2]  # each [2]: (u', v')
    column_x = a1 * scale / target_scale
    column_y = a2 * scale / target_scale
    shift = (a0 - a1 * scale * centre[0] - a2 * scale * centre[1]) / target_scale + target_centre
    top = torch.stack([column_x, column_y, shift], dim=1)  # [2, 3]
    return torch.cat([top, _AFFINE_LAST_ROW.to(top.dtype)], dim=0)


def quadratic_to_pixels(coefficients: torch.Tensor, source: tuple[torch.Tensor, torch.Tensor],
                        target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``[..., 2, 6]`` pixel coefficients on (x², xy, y², x, y, 1) of quadratic coefficients
    ``[..., 6, 2]`` between normalised frames (rows 1, u, v, u², uv, v²): the substitution
    u = s (x - cx), v = s (y - cy) of the runtime's ``_NormalisedFrame.to_pixels``."""
    (centre, s), (target_centre, target_scale) = source, target
    cx, cy = centre[0], centre[1]
    a0, a1, a2, a3, a4, a5 = (coefficients[..., k, :] for k in range(6))
    s2 = s * s
    terms = torch.stack([
        a3 * s2,
        a4 * s2,
        a5 * s2,
        a1 * s - 2 * a3 * s2 * cx - a4 * s2 * cy,
        a2 * s - a4 * s2 * cx - 2 * a5 * s2 * cy,
        a0 - a1 * s * cx - a2 * s * cy + s2 * (a3 * cx * cx + a4 * cx * cy + a5 * cy * cy),
    ], dim=-1) / target_scale  # [..., 2, 6]
    return terms + target_centre[:, None] * _CONSTANT_TERM.to(terms.dtype)


_AFFINE_LAST_ROW = torch.tensor([[0.0, 0.0, 1.0]])
_CONSTANT_TERM = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])


def map_pixels_affine(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` images of ``[N, 2]`` pixels under a ``[3, 3]`` affine."""
    return points @ matrix[:2, :2].transpose(0, 1) + matrix[:2, 2]


def map_pixels_quadratic(coefficients: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` images of ``[N, 2]`` pixels under ``[2, 6]`` pixel coefficients."""
    x, y = points[:, 0], points[:, 1]
    terms = torch.stack([x * x, x * y, y * y, x, y, torch.ones_like(x)], dim=1)
    return terms @ coefficients.transpose(0, 1)


def quadratic_jacobians(coefficients: torch.Tensor, points: torch.Tensor
                        ) -> tuple[torch.Tensor, ...]:
    """Entries (dx'/dx, dx'/dy, dy'/dx, dy'/dy), each ``[N]``, of the quadratic's Jacobian at
    ``[N, 2]`` pixels (``quadratic.jacobians``): the derivatives of the monomials times the
    coefficients."""
    x, y = points[:, 0], points[:, 1]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    by_x = torch.stack([2 * x, y, zero, one, zero, zero], dim=1) @ coefficients.transpose(0, 1)
    by_y = torch.stack([zero, x, 2 * y, zero, one, zero], dim=1) @ coefficients.transpose(0, 1)
    return by_x[:, 0], by_y[:, 0], by_x[:, 1], by_y[:, 1]


# --------------------------------------------------------------------------------------------
# Least squares: weighted Gram-Schmidt that also builds R^-1 (ONNX has no linear algebra)


class LeastSquares:
    """Weighted least squares of 2-d targets on a design, for every leading batch index.

    design ``[..., N, P]``, target ``[..., N, 2]``, mask ``[..., N]`` bool (the rows fitted);
    root_weights, optional ``[..., N]``: each row of design and target is also multiplied by it,
    so the fit minimises the squared residuals weighted by its square (``loo_rms`` is then not
    meaningful: it is for unweighted fits).
    Classical Gram-Schmidt, each column orthogonalised twice against the earlier ones (as
    accurate as Householder for these well-conditioned designs, and one matrix product per
    step instead of one dot product per pair of columns), keeping T = R^-1 alongside Q = D T,
    so a solution is T (Q^T b) with no back-substitution. Gram-Schmidt is column-sequential,
    so the first ``p`` columns of Q and the leading p x p block of T are the QR of the first
    ``p`` columns of the design: one QR of (1, u, v, u², uv, v²) fits the affine (p = 3) and
    the quadratic (p = 6) of the same points.
    """

    def __init__(self, design: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                 root_weights: torch.Tensor | None = None):
        size = design.shape[-1]
        weights = mask.to(design.dtype)
        if root_weights is not None:
            weights = weights * root_weights
        weights = weights[..., None]
        weighted = design * weights
        q = torch.zeros_like(weighted)
        inverse = weighted.new_zeros(weighted.shape[:-2] + (size, size))  # T, upper triangular
        # an op, not a tensor literal: a literal inside a loop body breaks the ONNX exporter
        identity = torch.eye(size, dtype=design.dtype)
        norms = []
        for j in range(size):
            selector = identity[j:j + 1]  # [1, P]: writes column j
            vector = weighted[..., j:j + 1]  # [..., N, 1]
            column = identity[:, j:j + 1]  # e_j, [P, 1]
            for _ in range(2 if j else 0):
                projection = q.transpose(-1, -2) @ vector  # zero for the columns not yet made
                vector = vector - q @ projection
                column = column - inverse @ projection
            norm = torch.sqrt((vector * vector).sum(-2, keepdim=True))  # [..., 1, 1]
            # a zero column (rank deficiency) stays zero: 0 / tiny
            safe = norm.clamp(min=1e-30)
            q = q + (vector / safe) * selector
            inverse = inverse + (column / safe) * selector
            norms.append(norm[..., 0, 0])
        self.mask = mask
        self.q, self.inverse = q, inverse
        self.diagonal = torch.stack(norms, dim=-1)  # R's diagonal, [..., P]
        self.projected = q.transpose(-1, -2) @ (target * weights)  # Q^T b, [..., P, 2]
        self.target = target

    def full_rank(self, columns: int) -> torch.Tensor:
        """Whether the first ``columns`` columns have full rank: R's smallest diagonal entry at
        least ``_RANK_TOLERANCE`` of its largest (the runtime's lstsq rank, at float32)."""
        diagonal = self.diagonal[..., :columns]
        return diagonal.amin(-1) > _RANK_TOLERANCE * diagonal.amax(-1)

    def solution(self, columns: int) -> torch.Tensor:
        """``[..., columns, 2]`` coefficients on the first ``columns`` columns; zeros where they
        are rank-deficient (never inf or NaN)."""
        solved = self.inverse[..., :columns, :columns] @ self.projected[..., :columns, :]
        return torch.where(self.full_rank(columns)[..., None, None], solved,
                           torch.zeros_like(solved))

    def determinant(self) -> torch.Tensor:
        """|det| of a square design: the product of R's diagonal."""
        return torch.prod(self.diagonal, dim=-1)

    def loo_rms(self, columns: int, target_scale: torch.Tensor) -> torch.Tensor:
        """RMS leave-one-out residual over the masked points of the fit on the first
        ``columns`` columns, in target pixels: each ordinary residual over (1 - leverage), the
        leverage the hat matrix's diagonal (``quadratic.loo_residuals``); inf when a point
        cannot be predicted by the others or the design is rank-deficient, as the runtime's."""
        q = self.q[..., :columns]
        leverage = (q * q).sum(-1)
        difference = self.target - q @ self.projected[..., :columns, :]
        residual = torch.sqrt((difference * difference).sum(-1)) / target_scale
        predictable = leverage < _MAX_LEVERAGE
        held_out = residual / torch.where(predictable, 1.0 - leverage, torch.ones_like(leverage))
        squares = torch.where(self.mask & predictable, held_out * held_out,
                              torch.zeros_like(held_out))
        count = self.mask.sum(-1)
        rms = torch.sqrt(squares.sum(-1) / count.clamp(min=1).to(squares.dtype))
        finite = self.full_rank(columns) & ~(self.mask & ~predictable).any(-1) & (count > 0)
        return torch.where(finite, rms, torch.full_like(rms, math.inf))


def choose(condition: torch.Tensor, if_true: torch.Tensor, if_false: torch.Tensor
           ) -> torch.Tensor:
    """``torch.where`` for boolean values, as logic: onnxruntime's CPU Where has no bool
    kernel."""
    return (condition & if_true) | (~condition & if_false)


def pick(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[index]`` for a 0-d index tensor, as a Gather: plain indexing would make a
    view at a data-dependent offset, which torch.export cannot carry into a loop."""
    return tensor.index_select(0, index.to(torch.int64).reshape(1))[0]


def squared_errors(coefficients: torch.Tensor, design: torch.Tensor,
                   target: torch.Tensor) -> torch.Tensor:
    """``[..., N]`` squared distances between ``design @ coefficients`` and ``target``."""
    difference = design @ coefficients - target
    return (difference * difference).sum(-1)


def repeat(rounds: int, step, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``state = step(*state)`` ``rounds`` times: one ONNX Loop when exporting (one copy of the
    body in the graph instead of ``rounds``: export/superglue.py measured half the export
    time), a plain loop in eager mode (torch.while_loop compiles on first eager use)."""
    if torch.compiler.is_exporting():
        def keep_going(round_, *_):
            return round_ < rounds

        def body(round_, *carried):
            return (round_ + 1, *step(*carried))

        return tuple(torch.while_loop(keep_going, body,
                                      (torch.zeros((), dtype=torch.int64), *state))[1:])
    for _ in range(rounds):
        state = tuple(step(*state))
    return state


# --------------------------------------------------------------------------------------------
# Minimal samples


def hypothesis_table(count: int, sample_size: int, seed: int = TABLE_SEED) -> torch.Tensor:
    """``[count, sample_size]`` float32 uniform numbers in [0, 1): the constant table the
    graph's minimal samples are made from (NumPy's PCG64, so the table is the same on every
    machine and every export)."""
    rng = np.random.default_rng([seed, sample_size])
    return torch.from_numpy(rng.random((count, sample_size)).astype(np.float32))


def sample_indices(table: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """``[T, s]`` int64 indices ``floor(u * available)`` into the valid matches, from a table
    of uniform numbers ``u``. A row that repeats an index is a degenerate sample and gets no
    vote: its triangle is flat (``_triangle_ok``) or its 6 x 6 system singular, so the
    solvers reject it as they reject repeated points. Drawing without repetition, as
    ``ransac._draw_samples`` does, would cost a chain of comparisons per index in the graph;
    repeats waste 1 - (1 - 1/M)(1 - 2/M)... of the table: at M = 100 matches 3 % of the affine
    rows and 14 % of the 6-point rows, at M = 300 1 % and 5 %."""
    room = available.clamp(min=1).to(table.dtype)
    return torch.minimum(torch.floor(table * room), room - 1).to(torch.int64)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _triangle_ok(triangles: torch.Tensor) -> torch.Tensor:
    """``ransac._triangle_ok`` of triangles ``[..., 3, 2]``: neither collapsed to a point nor
    (nearly) collinear (height over the longest side at least _MIN_TRIANGLE_SHAPE)."""
    edges = triangles - torch.roll(triangles, 1, dims=-2)  # a - c, b - a, c - b
    longest2 = (edges * edges).sum(-1).amax(-1)
    twice_area = torch.abs(_cross(edges[..., 0, :], edges[..., 2, :]))
    return (longest2 > _MIN_SEPARATION ** 2) & (twice_area > _MIN_TRIANGLE_SHAPE * longest2)


def affine_from_triples(source: torch.Tensor, target: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Affines ``[T, 3, 2]`` (rows 1, u, v) through minimal samples ``[T, 3, 2]`` of
    normalised points, and ``[T]`` valid: neither triangle degenerate (``ransac._affine_from_3``:
    the linear part is the target's edges times the inverse of the source's, by adjugate)."""
    valid = _triangle_ok(torch.stack([source, target])).all(0)
    edges = (source[:, 1:] - source[:, :1]).transpose(1, 2)  # [T, 2, 2], edges as columns
    images = (target[:, 1:] - target[:, :1]).transpose(1, 2)
    determinant = edges[:, 0, 0] * edges[:, 1, 1] - edges[:, 0, 1] * edges[:, 1, 0]
    determinant = torch.where(valid, determinant, torch.ones_like(determinant))
    adjugate = torch.stack([edges[:, 1, 1], -edges[:, 0, 1], -edges[:, 1, 0], edges[:, 0, 0]],
                           dim=1).reshape(-1, 2, 2)
    linear = images @ adjugate / determinant[:, None, None]  # [T, 2 (out), 2 (in)]
    shift = target[:, 0] - (linear @ source[:, 0, :, None])[..., 0]
    return torch.cat([shift[:, None, :], linear.transpose(1, 2)], dim=1), valid


def linear_determinant(affine: torch.Tensor) -> torch.Tensor:
    """Determinant of the linear part of normalised affine coefficients ``[..., 3, 2]``."""
    return affine[..., 1, 0] * affine[..., 2, 1] - affine[..., 2, 0] * affine[..., 1, 1]


# --------------------------------------------------------------------------------------------
# Point-set checks, plausibility, hulls


def point_set_degenerate(points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """True when, in any of the point sets ``[B, N, 2]``, the masked points (``[N]``) hold
    fewer than 3 distinct points or lie on one line (``ransac._point_set_problem``: smaller
    principal spread at most _MIN_SET_SHAPE of the larger)."""
    def first_of(chosen: torch.Tensor) -> torch.Tensor:  # [B, 1, 2]: the first chosen point
        index = torch.argmax(chosen.to(torch.int64), dim=-1).reshape(-1, 1, 1)
        return torch.gather(points, 1, index.expand(-1, 1, 2))

    off_first = mask & (points != first_of(mask.expand(points.shape[:2]))).any(-1)  # [B, N]
    three_distinct = (off_first & (points != first_of(off_first)).any(-1)).any(-1)
    weights = mask.to(points.dtype)[None, :, None]
    centre = (points * weights).sum(1, keepdim=True) / weights.sum().clamp(min=1.0)
    offset = (points - centre) * weights
    sxx = (offset[..., 0] * offset[..., 0]).sum(-1)
    syy = (offset[..., 1] * offset[..., 1]).sum(-1)
    sxy = (offset[..., 0] * offset[..., 1]).sum(-1)
    half_gap = torch.sqrt(((sxx - syy) * 0.5) ** 2 + sxy * sxy)
    largest = (sxx + syy) * 0.5 + half_gap
    smallest = (sxx * syy - sxy * sxy) / largest.clamp(min=1e-30)
    # the spreads are the square roots of the scatter matrix's eigenvalues
    collinear = smallest <= (_MIN_SET_SHAPE ** 2) * largest
    return (~three_distinct | collinear).any()


def singular_values_2x2(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                        d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(largest, smallest singular value, determinant) of [[a, b], [c, d]], elementwise:
    s1 s2 = |det| and s1² + s2² = the squared Frobenius norm, so s1 +- s2 are square roots."""
    determinant = a * d - b * c
    frobenius = a * a + b * b + c * c + d * d
    total = torch.sqrt(frobenius + 2 * torch.abs(determinant))
    gap = torch.sqrt(torch.clamp(frobenius - 2 * torch.abs(determinant), min=0.0))
    largest = 0.5 * (total + gap)
    smallest = torch.abs(determinant) / torch.where(largest > 0, largest, torch.ones_like(largest))
    return largest, smallest, determinant


def out_of_bounds(largest: torch.Tensor, smallest: torch.Tensor,
                  config: PlausibilityConfig) -> torch.Tensor:
    """Scale or anisotropy outside ``config`` (``transforms.implausibility``'s bounds)."""
    return ((smallest < config.min_scale) | (largest > config.max_scale)
            | (largest > config.max_anisotropy * smallest))


def directions(count: int) -> torch.Tensor:
    """``[count, 2]`` unit vectors at angles 2 pi k / count, counter-clockwise."""
    angles = 2.0 * np.pi * np.arange(count) / count
    return torch.from_numpy(np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32))


def hull_area(points: torch.Tensor, mask: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Area of the convex hull of the masked points ``[N, 2]``: the shoelace area of their
    support points in the directions ``unit`` (in angular order they are the hull's vertices,
    some repeated, some skipped where a vertex's exterior angle is below the directions'
    spacing). 0 for fewer than 3 points, as ``transforms._hull_area``."""
    projections = torch.where(mask[:, None], points @ unit.transpose(0, 1),
                              torch.full_like(points[:, :1], -math.inf))
    vertices = points[torch.argmax(projections, dim=0)]
    vertices = vertices - vertices.mean(0)  # centred: the shoelace's products stay small
    x, y = vertices[:, 0], vertices[:, 1]
    area = 0.5 * torch.abs((x * torch.roll(y, -1, 0) - torch.roll(x, -1, 0) * y).sum())
    return torch.where(mask.sum() >= 3, area, torch.zeros_like(area))


def outside_distance(queries: torch.Tensor, points: torch.Tensor, mask: torch.Tensor,
                     unit: torch.Tensor) -> torch.Tensor:
    """``[Q]`` distance of each query point outside the convex hull of the masked points
    (negative inside, +inf for an empty set): max over directions of d . p - h(d), h the
    hull's support function; with every direction it is the exact distance (the polygon the
    directions circumscribe is within spacing² / 8 of the hull)."""
    support = torch.where(mask[:, None], points @ unit.transpose(0, 1),
                          torch.full_like(points[:, :1], -math.inf)).amax(0)
    return (queries @ unit.transpose(0, 1) - support[None, :]).amax(1)


def check_grid(size: torch.Tensor) -> torch.Tensor:
    """``[_CHECK_GRID², 2]`` points of the runtime's check grid over an image of (width,
    height) ``size``: np.linspace(0, side - 1, _CHECK_GRID) per axis, x fastest."""
    steps = torch.arange(_CHECK_GRID, dtype=size.dtype) / (_CHECK_GRID - 1)
    xs = steps * (size[0] - 1)
    ys = steps * (size[1] - 1)
    grid_x = xs[None, :].expand(_CHECK_GRID, _CHECK_GRID)
    grid_y = ys[:, None].expand(_CHECK_GRID, _CHECK_GRID)
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def inside_image(points: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    return ((points[:, 0] >= 0) & (points[:, 0] <= size[0] - 1)
            & (points[:, 1] >= 0) & (points[:, 1] <= size[1] - 1))


# --------------------------------------------------------------------------------------------
# The module


def _first_failure(checks: list[tuple[torch.Tensor, int]], success: int) -> torch.Tensor:
    """int64 code of the first failing check in order (``checks``: (failed, code)), else
    ``success``."""
    code = torch.tensor(success, dtype=torch.int64)
    for failed, failure in reversed(checks):
        code = torch.where(failed, torch.tensor(failure, dtype=torch.int64), code)
    return code


class Estimation(nn.Module):
    """``Registrar.fit`` as a graph: RANSAC on constant hypothesis tables, refit, refusals,
    and (``auto``) the quadratic and the model choice.

    Constructor: ``model`` AUTO (the runtime's default; the registration graph's) or AFFINE
    (the runtime's ``--transform affine``); the runtime's configs (their values are read, not
    copied); the table sizes. Forward: see :data:`ESTIMATION_INPUTS` and
    :data:`ESTIMATION_OUTPUTS` (the contract's ``REGISTRATION_OUTPUTS``), in that order.
    """

    def __init__(self, model: TransformModel = TransformModel.AUTO,
                 ransac: RansacConfig = RansacConfig(),
                 quadratic: QuadraticConfig = QuadraticConfig(),
                 plausibility: PlausibilityConfig = PlausibilityConfig(),
                 hypotheses: int = HYPOTHESES, quadratic_hypotheses: int = QUADRATIC_HYPOTHESES,
                 num_directions: int = DIRECTIONS):
        super().__init__()
        model = TransformModel(model)
        if model not in (TransformModel.AUTO, TransformModel.AFFINE):
            raise ValueError(f"the estimation graph fits 'auto' or 'affine', not {model.value!r}")
        self.grows_quadratic = model is TransformModel.AUTO
        self.ransac_config = ransac
        self.quadratic_config = quadratic
        self.plausibility = plausibility
        self.register_buffer("table", hypothesis_table(hypotheses, 3), persistent=False)
        self.register_buffer("quadratic_table", hypothesis_table(quadratic_hypotheses, 6),
                             persistent=False)
        self.register_buffer("unit", directions(num_directions), persistent=False)

    def forward(self, points_fixed: torch.Tensor, points_moving: torch.Tensor,
                valid: torch.Tensor, scores: torch.Tensor, fixed_size: torch.Tensor,
                moving_size: torch.Tensor) -> tuple[torch.Tensor, ...]:
        del scores  # the runtime's fit does not weight by matcher confidence either
        valid = (valid & torch.isfinite(points_fixed).all(-1)
                 & torch.isfinite(points_moving).all(-1))
        # Invalid slots are zeroed so that no NaN of theirs meets a product (0 * NaN is NaN).
        dst = torch.where(valid[:, None], points_fixed, torch.zeros_like(points_fixed))
        src = torch.where(valid[:, None], points_moving, torch.zeros_like(points_moving))
        count = valid.sum()
        threshold = self.ransac_config.threshold * fixed_size.max() / REFERENCE_SIZE
        src_n, src_centre, src_scale = hartley_frame(src, valid)
        dst_n, dst_centre, dst_scale = hartley_frame(dst, valid)
        source, target = (src_centre, src_scale), (dst_centre, dst_scale)
        thr2 = (threshold * dst_scale) ** 2
        # pixel determinant of a normalised linear part: (moving scale / fixed scale)²
        det_to_pixels = (src_scale / dst_scale) ** 2
        # the slot of the k-th valid match (valid slots need not come first)
        slots = valid.shape[0]
        rank = torch.cumsum(valid.to(torch.int64), 0) - 1
        order = torch.arange(slots, dtype=torch.int64)
        slot_of = torch.argmax(((rank[None, :] == order[:, None]) & valid[None, :])
                               .to(torch.int64), dim=1)

        # 1. the point set
        too_few = count < max(3, self.ransac_config.min_inliers)
        degenerate = point_set_degenerate(torch.stack([src, dst]), valid)

        # 2. RANSAC on the constant table
        design = affine_design(src_n)
        samples = slot_of[sample_indices(self.table, count)]
        hypotheses, usable = affine_from_triples(src_n[samples], dst_n[samples])
        usable = usable & (linear_determinant(hypotheses) * det_to_pixels > _MIN_DET)
        errors = squared_errors(hypotheses, design, dst_n)
        counts = torch.where(usable, (valid & (errors < thr2)).sum(-1),
                             torch.full_like(count, -1).expand(usable.shape))
        costs = torch.where(valid, torch.clamp(errors, max=thr2), torch.zeros_like(errors)).sum(-1)
        best_count = counts.max()
        best = torch.argmin(torch.where(counts == best_count, costs,
                                        torch.full_like(costs, math.inf)))
        no_hypothesis = best_count < 0

        # 3. refit rounds, min_inliers, plausibility, coverage
        affine, inliers = self._refit(pick(hypotheses, best), design, dst_n, valid, thr2,
                                      det_to_pixels)
        few_inliers = inliers.sum() < self.ransac_config.min_inliers
        matrix = affine_to_pixels(affine, source, target)
        implausible = self._implausible(matrix, fixed_size, moving_size)
        grid = check_grid(moving_size)
        shared_fixed = map_pixels_affine(matrix, grid)
        outside, sparse = self._coverage_refusals(
            shared_fixed, inside_image(shared_fixed, fixed_size), dst, inliers,
            self.plausibility.min_coverage)
        ransac_failed = too_few | degenerate | no_hypothesis | few_inliers
        reason = _first_failure([(too_few, REASON_TOO_FEW), (degenerate, REASON_DEGENERATE),
                                 (no_hypothesis, REASON_DEGENERATE),
                                 (few_inliers, REASON_FEW_INLIERS),
                                 (implausible, REASON_IMPLAUSIBLE), (outside, REASON_OUTSIDE),
                                 (sparse, REASON_COVERAGE)], REASON_NONE)
        ok = reason == REASON_NONE
        affine_coefficients = torch.cat([torch.zeros_like(matrix[:2]), matrix[:2]], dim=1)
        inliers = inliers & ~ransac_failed  # the runtime keeps the inliers of a refused model

        to_reference = REFERENCE_SIZE / fixed_size.max()
        nan2 = torch.full((2,), math.nan)
        if not self.grows_quadratic:
            refusal = torch.tensor(QUADRATIC_NOT_ASKED, dtype=torch.int64)
            return self._outputs(ok, reason, torch.zeros_like(ok), matrix, affine_coefficients,
                                 nan2, refusal, inliers)

        # 4. the quadratic of auto
        fit = self._best_quadratic(src_n, dst_n, valid, inliers, count, slot_of, thr2,
                                   dst_scale)
        quadratic_pixels = quadratic_to_pixels(fit["quadratic"], source, target)
        fit_matrix = affine_to_pixels(fit["affine"], source, target)
        refusal = self._quadratic_refusal(fit, quadratic_pixels, fit_matrix, src, dst, grid,
                                          fixed_size, moving_size)
        refusal = torch.where(ok, refusal, torch.tensor(QUADRATIC_AFFINE_FAILED))
        taken = refusal == QUADRATIC_TAKEN
        fit_inliers = fit["inliers"]
        if self.quadratic_config.cauchy_rounds:
            refined = self._refined_fit(fit, src_n, dst_n, valid, thr2)
            refined_pixels = quadratic_to_pixels(refined["quadratic"], source, target)
            refined_matrix = affine_to_pixels(refined["affine"], source, target)
            # The refinement moved the inliers, so it is kept only where it passes the same
            # checks; it carries the chosen fit's held-out residuals, so the gain test is the
            # one the taken fit already passed.
            kept = taken & (self._quadratic_refusal(refined, refined_pixels, refined_matrix,
                                                    src, dst, grid, fixed_size, moving_size)
                            == QUADRATIC_TAKEN)
            quadratic_pixels = torch.where(kept, refined_pixels, quadratic_pixels)
            fit_matrix = torch.where(kept, refined_matrix, fit_matrix)
            fit_inliers = choose(kept, refined["inliers"], fit_inliers)
        loo = torch.where(ok & fit["found"], fit["loo"] * to_reference, nan2)
        return self._outputs(
            ok, reason, taken, torch.where(taken, fit_matrix, matrix),
            torch.where(taken, quadratic_pixels, affine_coefficients), loo, refusal,
            choose(taken, fit_inliers, inliers))

    # ----------------------------------------------------------------------------------------

    @staticmethod
    def _outputs(ok: torch.Tensor, reason: torch.Tensor, quadratic: torch.Tensor,
                 matrix: torch.Tensor, coefficients: torch.Tensor, loo: torch.Tensor,
                 refusal: torch.Tensor, inliers: torch.Tensor) -> tuple[torch.Tensor, ...]:
        status = torch.where(ok, torch.tensor(STATUS_OK), torch.tensor(STATUS_FAILED))
        transform = torch.where(ok & quadratic, torch.tensor(QUADRATIC_CODE),
                                torch.tensor(AFFINE_CODE))
        matrix = torch.where(ok, matrix, torch.zeros_like(matrix))
        coefficients = torch.where(ok, coefficients, torch.zeros_like(coefficients))
        return (status, reason, transform, matrix, coefficients, loo, refusal, inliers.sum(),
                inliers)

    def _refit(self, affine: torch.Tensor, design: torch.Tensor, target: torch.Tensor,
               valid: torch.Tensor, thr2: torch.Tensor, det_to_pixels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ransac._refit``: least squares on the inliers until they are stable; a round that
        loses inliers and raises the MSAC cost, or cannot be solved, ends it unapplied."""
        def msac(errors: torch.Tensor) -> torch.Tensor:
            return torch.where(valid, torch.clamp(errors, max=thr2), torch.zeros_like(errors)).sum()

        def step(affine, inliers, count, cost, done):
            fit = LeastSquares(design, target, inliers)
            solution = fit.solution(3)
            oriented = linear_determinant(solution) * det_to_pixels > _MIN_DET
            errors = squared_errors(solution, design, target)
            refitted = valid & (errors < thr2)
            refitted_count, refitted_cost = refitted.sum(), msac(errors)
            worse = (refitted_count < count) & (refitted_cost > cost)
            take = ~done & fit.full_rank(3) & oriented & ~worse
            stable = (refitted == inliers).all()
            return (torch.where(take, solution, affine), choose(take, refitted, inliers),
                    torch.where(take, refitted_count, count),
                    torch.where(take, refitted_cost, cost), done | ~take | stable)

        errors = squared_errors(affine, design, target)
        inliers = valid & (errors < thr2)
        affine, inliers, *_ = repeat(_MAX_REFIT_ROUNDS, step, (
            affine, inliers, inliers.sum(), msac(errors), torch.zeros((), dtype=torch.bool)))
        return affine, inliers

    def _implausible(self, matrix: torch.Tensor, fixed_size: torch.Tensor,
                     moving_size: torch.Tensor) -> torch.Tensor:
        """``transforms.implausibility`` of an affine: its linear part in the reference frame
        (both images REFERENCE_SIZE on the longer side), mirrored or out of bounds."""
        linear = matrix[:2, :2] * (moving_size.max() / fixed_size.max())
        largest, smallest, determinant = singular_values_2x2(
            linear[0, 0], linear[0, 1], linear[1, 0], linear[1, 1])
        return (~torch.isfinite(matrix).all() | (determinant <= 0)
                | out_of_bounds(largest, smallest, self.plausibility))

    def _coverage_refusals(self, shared_fixed: torch.Tensor, shared: torch.Tensor,
                           dst: torch.Tensor, inliers: torch.Tensor, min_coverage: float
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """(outside, sparse): ``transforms._coverage_refusal`` with the check grid's ``shared``
        points (those the planar model keeps inside the fixed image) placed at
        ``shared_fixed``."""
        overlap = hull_area(shared_fixed, shared, self.unit)
        covered = hull_area(dst, inliers, self.unit)
        positive = overlap > 0
        coverage = torch.where(positive, covered / torch.where(positive, overlap,
                                                               torch.ones_like(overlap)),
                               torch.zeros_like(overlap))
        return shared.sum() < 3, coverage < min_coverage

    def _best_quadratic(self, src_n: torch.Tensor, dst_n: torch.Tensor, valid: torch.Tensor,
                        affine_inliers: torch.Tensor, count: torch.Tensor,
                        slot_of: torch.Tensor, thr2: torch.Tensor, dst_scale: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        """``quadratic.best_quadratic``: growths from the affine's inliers and from the best
        minimal 6-point quadratic of the constant table, run as one batch of two; the one with
        more inliers (then the lower held-out residual; the affine's seed on a tie) wins."""
        config = self.quadratic_config
        design = quadratic_design(src_n)
        if config.minimal_seed:
            minimal_seed, minimal_found = self._minimal_seed(design, dst_n, valid, count,
                                                             slot_of, thr2)
        else:
            minimal_seed, minimal_found = affine_inliers, torch.zeros((), dtype=torch.bool)
        seeds = torch.stack([affine_inliers, minimal_seed])
        seeded = torch.stack([torch.ones_like(minimal_found), minimal_found])
        seed_counts = seeds.sum(-1)

        rounds = config.refit_rounds

        def step(round_, coefficients, inliers_by_slot, done, seed_fitted, loo, affine):
            """Round 0 fits the seeds; rounds 1..refit_rounds regrow, stop when stable or
            fewer than the seed, and refit (``quadratic.grow_quadratic``); the last round
            changes nothing and fits the final inliers, for their affine and held-out
            residuals. The inliers travel as ``[slots, 2]``: a carried ``[2, slots]`` has a
            symbolic stride, which the ONNX exporter cannot translate."""
            started, growing = round_ > 0, round_ <= rounds
            inliers = inliers_by_slot.transpose(0, 1)
            regrown = valid & (squared_errors(coefficients, design, dst_n) < thr2)
            stop = (regrown == inliers).all(-1) | (regrown.sum(-1) < seed_counts)
            fitted_on = choose(started, regrown, seeds)
            fit = LeastSquares(design, dst_n, fitted_on)
            solved = fit.full_rank(6)
            take = choose(started, ~done & ~stop & solved & growing, solved)
            return (round_ + 1, torch.where(take[:, None, None], fit.solution(6), coefficients),
                    choose(take[:, None], fitted_on, inliers).transpose(0, 1).contiguous(),
                    choose(started, done | ~take, ~solved), choose(started, seed_fitted, solved),
                    torch.stack([fit.loo_rms(3, dst_scale), fit.loo_rms(6, dst_scale)], dim=-1),
                    fit.solution(3))

        _, coefficients, _, _, seed_fitted, loo, affine = repeat(rounds + 2, step, (
            torch.zeros((), dtype=torch.int64), design.new_zeros((2, 6, 2)),
            seeds.transpose(0, 1).contiguous(), torch.zeros_like(seeded),
            torch.zeros_like(seeded), design.new_zeros((2, 2)), design.new_zeros((2, 3, 2))))
        final = valid & (squared_errors(coefficients, design, dst_n) < thr2)
        final_counts = final.sum(-1)
        found = seeded & seed_fitted & (final_counts >= 6)
        second = found[1] & (~found[0] | (final_counts[1] > final_counts[0])
                             | ((final_counts[1] == final_counts[0]) & (loo[1, 1] < loo[0, 1])))
        return {"quadratic": pick(coefficients, second), "inliers": pick(final, second),
                "affine": pick(affine, second), "loo": pick(loo, second),
                "found": pick(found, second)}

    def _refined_fit(self, fit: dict[str, torch.Tensor], src_n: torch.Tensor,
                     dst_n: torch.Tensor, valid: torch.Tensor, thr2: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
        """``quadratic.refined_fit``: ``fit``'s quadratic refined on all valid matches by
        ``cauchy_rounds`` rounds of least squares with Cauchy weights 1 / (1 + (r / s)^2), r
        the distance under the previous round's map, s = ``cauchy_scale`` x the threshold; then
        the inliers of the refined map and the affine of those inliers. ``loo`` and ``found``
        are ``fit``'s (as the runtime's ``loo_rms``)."""
        config = self.quadratic_config
        design = quadratic_design(src_n)
        # r and s are both scaled by dst_scale in the normalised frame, so (r / s)^2 needs no
        # pixels: squared normalised error over cauchy_scale² thr2.
        scale2 = config.cauchy_scale ** 2 * thr2

        def step(coefficients):
            weights = 1.0 / (1.0 + squared_errors(coefficients, design, dst_n) / scale2)
            solve = LeastSquares(design, dst_n, valid, torch.sqrt(weights))
            # the runtime stops at a round it cannot solve; the next rounds would recompute the
            # same weights and fail again, so keeping the coefficients is the same
            return (torch.where(solve.full_rank(6), solve.solution(6), coefficients),)

        coefficients, = repeat(config.cauchy_rounds, step, (fit["quadratic"],))
        inliers = valid & (squared_errors(coefficients, design, dst_n) < thr2)
        affine = LeastSquares(affine_design(src_n), dst_n, inliers).solution(3)
        return {"quadratic": coefficients, "inliers": inliers, "affine": affine,
                "loo": fit["loo"], "found": fit["found"]}

    def _minimal_seed(self, design: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                      count: torch.Tensor, slot_of: torch.Tensor, thr2: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``quadratic.minimal_ransac``: inliers of the best exactly-solved 6-point quadratic
        (most inliers, first in the table on a tie), and whether it has at least 6."""
        samples = slot_of[sample_indices(self.quadratic_table, count)]
        systems = LeastSquares(design[samples], target[samples],
                               torch.ones_like(samples, dtype=torch.bool))
        conditioned = systems.full_rank(6) & (systems.determinant() > _MINIMAL_DET)
        inliers = valid & (squared_errors(systems.solution(6), design, target) < thr2)
        counts = torch.where(conditioned, inliers.sum(-1),
                             torch.full_like(count, -1).expand(conditioned.shape))
        best = torch.argmax(counts)
        return pick(inliers, best), (pick(counts, best) >= 6) & (count >= 6)

    def _quadratic_refusal(self, fit: dict[str, torch.Tensor], quadratic: torch.Tensor,
                           fit_matrix: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                           grid: torch.Tensor, fixed_size: torch.Tensor,
                           moving_size: torch.Tensor) -> torch.Tensor:
        """``transforms.quadratic_implausibility`` then ``auto``'s gain, as a QUADRATIC_REFUSALS
        code (0: the quadratic is taken). ``grid``: the check grid over the moving image."""
        config, bounds = self.quadratic_config, self.plausibility
        inliers = fit["inliers"]
        mapped = map_pixels_quadratic(quadratic, grid)
        planar = map_pixels_affine(fit_matrix, grid)
        # the shared field is judged by the affine, so a wild quadratic cannot shrink it
        shared = inside_image(planar, fixed_size)
        outside, sparse = self._coverage_refusals(mapped, shared, dst, inliers,
                                                  config.min_coverage)
        margin = config.support_margin * moving_size.max()
        supported = shared & (outside_distance(grid, src, inliers, self.unit) <= margin)
        to_reference = REFERENCE_SIZE / fixed_size.max()
        gap = mapped - planar
        departure = torch.where(supported, torch.sqrt((gap * gap).sum(-1)),
                                torch.zeros_like(gap[:, 0])).max() * to_reference
        local = [entry * (moving_size.max() / fixed_size.max())
                 for entry in quadratic_jacobians(quadratic, grid)]
        largest, smallest, determinant = singular_values_2x2(*local)
        folds = (supported & (determinant <= 0)).any()
        out_of_range = (supported & out_of_bounds(largest, smallest, bounds)).any()
        loo_affine, loo_quadratic = fit["loo"][0], fit["loo"][1]
        no_gain = loo_quadratic >= config.auto_gain * torch.clamp(loo_affine, min=1e-12)
        usable = fit["found"] & torch.isfinite(quadratic).all() & torch.isfinite(fit_matrix).all()
        return _first_failure([
            (~usable | (inliers.sum() < config.min_inliers), QUADRATIC_FEW_INLIERS),
            (outside | sparse, QUADRATIC_COVERAGE),
            (departure > config.max_departure, QUADRATIC_DEPARTURE),
            (folds, QUADRATIC_FOLD),
            (out_of_range, QUADRATIC_LOCAL),
            (no_gain, QUADRATIC_NO_GAIN)], QUADRATIC_TAKEN)


# --------------------------------------------------------------------------------------------
# Export


def sample_inputs(slots: int = 40, valid_count: int = 31, seed: int = 0
                  ) -> tuple[torch.Tensor, ...]:
    """Tracing inputs: an affine with noise and outliers in ``slots`` slots, the first
    ``valid_count`` valid (distinct sizes, so no dynamic dimension is specialised)."""
    rng = np.random.default_rng(seed)
    moving = rng.uniform(20, 600, (slots, 2))
    fixed = moving @ np.array([[0.98, -0.1], [0.1, 0.98]]).T + [12.0, -7.0]
    fixed += rng.normal(0, 0.5, fixed.shape)
    fixed[: valid_count // 4] = rng.uniform(20, 600, (valid_count // 4, 2))
    valid = np.arange(slots) < valid_count
    fixed[~valid] = moving[~valid] = -1.0
    scores = np.where(valid, 0.5, 0.0)
    return (torch.from_numpy(fixed.astype(np.float32)), torch.from_numpy(moving.astype(np.float32)),
            torch.from_numpy(valid), torch.from_numpy(scores.astype(np.float32)),
            torch.tensor([640.0, 600.0]), torch.tensor([620.0, 610.0]))


def to_onnx(module: Estimation):
    """The module as an ONNX graph at the contract's opset, slot axis dynamic (``slots``)."""
    from .onnx_io import export_with_dynamo, strip_trace_metadata

    slots = torch.export.Dim(SLOTS, min=2)
    dynamic = {spec.name: {axis: slots for axis, name in enumerate(spec.shape) if name == SLOTS}
               or None for spec in ESTIMATION_INPUTS}
    proto = export_with_dynamo(module, sample_inputs(), ESTIMATION_INPUTS, ESTIMATION_OUTPUTS,
                               dynamic)
    strip_trace_metadata(proto)
    return proto
