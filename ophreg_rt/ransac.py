"""Robust fit of the MOVING -> FIXED transform: vectorised RANSAC, adaptive stop, refit.

The parts, in the order they run (kornia's ``geometry/ransac.py`` names the same ones):

1. Minimal samples are drawn in batches of ``RansacConfig.batch_size`` from the injected
   ``numpy.random.Generator`` (distinct indices within a sample), so a run is reproducible.
2. Each sample is checked for degeneracy *before* any model is scored: duplicate points,
   collinear triples, coincident pairs; then every hypothesis solved from it is checked for
   non-finite entries, singularity and reflection (see :func:`_orientation_ok`).
3. All hypotheses of a batch are scored at once: a ``[batch, N]`` array of squared
   reprojection errors in pixels. A point is an inlier when its squared error is strictly below
   ``threshold ** 2``. Hypotheses are ranked by inlier count; ties are broken by the lower
   MSAC cost, the sum over all points of ``min(error ** 2, threshold ** 2)``, i.e. by the
   tighter fit of the same number of inliers.
4. The loop stops once ``log(1 - confidence) / log(1 - w ** s)`` hypotheses were drawn, with
   ``w`` the best inlier ratio so far and ``s`` the sample size: the number after which an
   all-inlier sample has been drawn with probability ``confidence``; never more than
   ``max_iterations``.
5. The best model is refitted by least squares on its inliers, the inliers are recomputed, and
   the refit is repeated until the inlier set stops changing (at most
   ``_MAX_REFIT_ROUNDS``). A refit round is refused only if it loses inliers *and* fits worse
   (higher MSAC cost); see :func:`_refit` for why losing an inlier alone is not a reason.

All computation happens in coordinates normalised per point set (Hartley: centroid at the
origin, mean distance sqrt(2)) so that the solvers are well conditioned at any image size;
scores and thresholds are in pixels of the caller's coordinates.

NumPy only: the runtime must not need torch, onnx or OpenCV for this step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import RansacConfig, TransformModel, ransac_model

STATUS_OK = "ok"
STATUS_FAILED = "failed"
#: Not a RANSAC outcome: a pair that could not be attempted (an unreadable image); batch lines
#: and evaluation reports use it.
STATUS_ERROR = "error"

#: Points per minimal sample of each model.
SAMPLE_SIZES: dict[TransformModel, int] = {
    TransformModel.AFFINE: 3,
    TransformModel.SIMILARITY: 2,
    TransformModel.HOMOGRAPHY: 4,
}

#: A triangle of a sample is "collinear" when its height over its longest side is below this.
#: Scale-free; at 1 % the perpendicular direction is so poorly determined by the sample that
#: the hypothesis is noise, and rejecting it costs only a few percent of the draws.
_MIN_TRIANGLE_SHAPE = 1e-2
#: Two points of a sample are "the same" when closer than this, in normalised units (the
#: point set's mean distance from its centroid is sqrt(2)).
_MIN_SEPARATION = 1e-3
#: The whole point set is "collinear" when its smaller principal spread is below this fraction
#: of the larger one; then no sample of an affine or a homography can be valid.
_MIN_SET_SHAPE = 1e-3
#: Determinant (area ratio, fixed px^2 per moving px^2) below which a linear part, or the
#: Jacobian of a homography, counts as singular or mirroring. Far below any plausible scale:
#: this guards numerics; plausibility is judged by the caller (``transforms.implausibility``).
_MIN_DET = 1e-6
#: Least-squares refit rounds on the inliers; each round typically changes a few boundary points.
_MAX_REFIT_ROUNDS = 5


@dataclass(frozen=True, eq=False)
class RansacResult:
    """Outcome of :func:`ransac`. Arrays are read-only.

    matrix: ``(3, 3)`` float64 mapping MOVING (src) pixel (x, y) to FIXED (dst) pixel (x, y),
        in the caller's pixel coordinates. Last row exactly ``[0, 0, 1]`` for an affine or a
        similarity; ``matrix[2, 2] == 1`` for a homography. None when failed.
    inliers: ``(N,)`` bool, correspondences within ``threshold`` pixels of the returned model
        (all False when failed).
    num_inliers: ``inliers.sum()``.
    num_iterations: hypotheses drawn (degenerate samples included).
    status: ``"ok"`` or ``"failed"``.
    reason: why it failed, in words; None when ok.
    """

    matrix: np.ndarray | None
    inliers: np.ndarray
    num_inliers: int
    num_iterations: int
    status: str
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


# --------------------------------------------------------------------------------------------
# Public API


def fit_transform(src: np.ndarray, dst: np.ndarray, model: TransformModel,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares transform mapping ``src`` onto ``dst`` using every given point.

    src, dst: ``(N, 2)`` pixel coordinates (x, y); N at least the model's sample size.
    model: affine (linear least squares in the six entries), similarity (linear least squares in
        ``(a, b, tx, ty)`` with linear part ``[[a, -b], [b, a]]``) or homography (normalised DLT,
        Hartley normalisation, SVD: minimises the algebraic, not the geometric, error).
    weights: optional ``(N,)`` non-negative weights of the squared residuals.

    Returns the ``(3, 3)`` float64 matrix (last row ``[0, 0, 1]`` for affine and similarity,
    ``[2, 2] == 1`` for a homography). Reflections are not rejected here (:func:`ransac` does).
    Raises ValueError for malformed input or a point configuration that does not determine the
    model (too few, coincident or collinear points).
    """
    model = TransformModel(model)
    if model not in SAMPLE_SIZES:
        raise ValueError(f"fit_transform fits {', '.join(m.value for m in SAMPLE_SIZES)}; "
                         "a quadratic is fitted by ophreg_rt.quadratic.fit_quadratic")
    src, dst = _as_points(src, dst)
    weights = _as_weights(weights, len(src))
    needed = SAMPLE_SIZES[model]
    if len(src) < needed:
        raise ValueError(f"a {model.value} needs at least {needed} points, got {len(src)}")
    matrix = _least_squares(src, dst, model, weights)
    if matrix is None:
        raise ValueError(f"the points do not determine a {model.value} "
                         "(coincident or collinear points, or zero weights)")
    return matrix


def ransac(src: np.ndarray, dst: np.ndarray, config: RansacConfig, threshold: float,
           rng: np.random.Generator, *, refit: bool = True) -> RansacResult:
    """Robustly fit ``config.model`` mapping ``src`` (MOVING) to ``dst`` (FIXED).

    src, dst: ``(N, 2)`` pixel coordinates (x, y) of N putative correspondences.
    config: model (for quadratic and auto: the affine they are grown from, ``Registrar.fit``),
        confidence, max_iterations, batch_size and min_inliers are read from it;
        ``config.threshold`` is NOT: it is stated at REFERENCE_SIZE and the caller scales it.
    threshold: inlier reprojection error in pixels of ``dst`` (inlier: error < threshold).
    rng: the only source of randomness; the same generator state gives the same result.
    refit: least-squares refit on the inliers (default); False returns the best minimal-sample
        hypothesis, for diagnostics and tests.

    Degenerate data is a result with ``status == "failed"`` and a reason, never an exception:
    too few correspondences, coincident or collinear points, every sample degenerate, or a best
    model with fewer than ``config.min_inliers`` inliers. Malformed arguments (shapes, non-finite
    coordinates, a threshold that is not a positive number, a confidence outside (0, 1), no
    iterations or an empty batch) raise ValueError; an ``rng`` that is not a
    ``numpy.random.Generator`` raises TypeError.
    """
    src, dst = _as_points(src, dst)
    threshold = float(threshold)
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive number of pixels, got {threshold}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    _check_config(config)
    model = ransac_model(config.model)  # quadratic and auto: the affine they grow from
    sample_size = SAMPLE_SIZES[model]
    n = len(src)

    reason = _point_set_problem(src, dst, model, config.min_inliers)
    if reason is not None:
        return _failed(n, 0, reason)

    src_norm, src_t = _normalise(src)
    dst_norm, dst_t = _normalise(dst)
    dst_t_inv = _inverse_normaliser(dst_t)
    solve = _MINIMAL_SOLVERS[model]
    thr2 = threshold * threshold

    best_matrix = None
    best_count, best_cost = -1, math.inf
    drawn, needed = 0, int(config.max_iterations)
    while drawn < min(needed, config.max_iterations):
        size = min(int(config.batch_size), config.max_iterations - drawn)
        samples = _draw_samples(rng, n, sample_size, size)
        drawn += size
        normalised, valid = solve(src_norm[samples], dst_norm[samples])
        if not valid.any():
            continue
        samples = samples[valid]
        matrices = dst_t_inv @ normalised[valid] @ src_t
        keep = np.all(np.isfinite(matrices), axis=(1, 2))
        keep[keep] = _orientation_ok(matrices[keep], model, src[samples[keep]])
        if not keep.any():
            continue
        matrices = _canonical_sign(matrices[keep], model, src[samples[keep][:, 0]])
        squared = _squared_errors(matrices, model, src, dst)
        counts = np.count_nonzero(squared < thr2, axis=1)
        costs = np.minimum(squared, thr2).sum(axis=1)
        top = np.lexsort((costs, -counts))[0]
        if counts[top] > best_count or (counts[top] == best_count and costs[top] < best_cost):
            best_matrix, best_count, best_cost = matrices[top], int(counts[top]), float(costs[top])
            needed = _needed_iterations(best_count / n, sample_size, config.confidence,
                                        config.max_iterations)

    if best_matrix is None:
        return _failed(n, drawn, f"all {drawn} sampled hypotheses were degenerate (duplicate or "
                                 "collinear points, singular or mirroring transforms)")
    matrix = best_matrix
    inliers = _squared_errors(matrix[None], model, src, dst)[0] < thr2
    if refit:
        matrix, inliers = _refit(matrix, inliers, model, src, dst, thr2)
    if inliers.sum() < config.min_inliers:
        return _failed(n, drawn, f"the best {model.value} has {int(inliers.sum())} inliers, "
                                 f"fewer than min_inliers={config.min_inliers}")
    matrix = _finalise(matrix, model)
    return _result(matrix, inliers, drawn, STATUS_OK, None)


# --------------------------------------------------------------------------------------------
# Input checks and results


def _as_points(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or dst.shape != src.shape:
        raise ValueError(f"src and dst must both be (N, 2) point arrays, got {src.shape} and "
                         f"{dst.shape}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("src and dst must be finite pixel coordinates")
    return src, dst


def _as_weights(weights: np.ndarray | None, count: int) -> np.ndarray | None:
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (count,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"weights must be ({count},) finite and non-negative, got "
                         f"shape {weights.shape}")
    return weights


def _check_config(config: RansacConfig) -> None:
    if not (0.0 < config.confidence < 1.0):
        raise ValueError(f"RansacConfig.confidence must be in (0, 1), got {config.confidence}")
    if config.max_iterations < 1 or config.batch_size < 1:
        raise ValueError("RansacConfig.max_iterations and batch_size must be at least 1, got "
                         f"{config.max_iterations} and {config.batch_size}")


def _point_set_problem(src: np.ndarray, dst: np.ndarray, model: TransformModel,
                       min_inliers: int) -> str | None:
    """Why no sample of this point set can give an acceptable model, or None."""
    n, sample_size = len(src), SAMPLE_SIZES[model]
    if n < sample_size:
        return f"{n} correspondences, fewer than the {sample_size} a {model.value} sample needs"
    if n < min_inliers:
        return f"{n} correspondences, fewer than min_inliers={min_inliers}"
    for name, points in (("source", src), ("destination", dst)):
        distinct = len(np.unique(points, axis=0))
        if distinct < sample_size:
            return (f"only {distinct} distinct {name} point(s); a {model.value} sample needs "
                    f"{sample_size}")
        if model is not TransformModel.SIMILARITY:
            # a similarity is fixed by two points, so points on one line still determine it
            centred = points - points.mean(axis=0)
            spread = np.linalg.svd(centred, compute_uv=False)
            if spread[1] <= _MIN_SET_SHAPE * spread[0]:
                return f"the {name} points are collinear; a {model.value} needs points off a line"
    return None


def _failed(n: int, drawn: int, reason: str) -> RansacResult:
    return _result(None, np.zeros(n, dtype=bool), drawn, STATUS_FAILED, reason)


def _result(matrix: np.ndarray | None, inliers: np.ndarray, drawn: int, status: str,
            reason: str | None) -> RansacResult:
    inliers = np.array(inliers, dtype=bool)
    inliers.setflags(write=False)
    if matrix is not None:
        matrix = np.array(matrix, dtype=np.float64)
        matrix.setflags(write=False)
    return RansacResult(matrix=matrix, inliers=inliers, num_inliers=int(inliers.sum()),
                        num_iterations=int(drawn), status=status, reason=reason)


# --------------------------------------------------------------------------------------------
# Normalisation


def _normalise(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points moved to centroid 0 and scaled to mean distance sqrt(2), and that 3x3 map."""
    centroid = points.mean(axis=0)
    mean_distance = np.linalg.norm(points - centroid, axis=1).mean()
    scale = math.sqrt(2.0) / mean_distance if mean_distance > 0 else 1.0
    transform = np.array([[scale, 0.0, -scale * centroid[0]],
                          [0.0, scale, -scale * centroid[1]],
                          [0.0, 0.0, 1.0]])
    return (points - centroid) * scale, transform


def _inverse_normaliser(transform: np.ndarray) -> np.ndarray:
    scale = transform[0, 0]
    return np.array([[1.0 / scale, 0.0, -transform[0, 2] / scale],
                     [0.0, 1.0 / scale, -transform[1, 2] / scale],
                     [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------------------------
# Sampling


def _draw_samples(rng: np.random.Generator, n: int, sample_size: int, count: int) -> np.ndarray:
    """``(count, sample_size)`` indices in [0, n), distinct within each row, uniformly drawn.

    The k-th index is drawn among the n - k not yet chosen: a uniform j in [0, n - k) is
    shifted past each chosen index it reaches, in increasing order. Costs O(count * s^2),
    independent of n (a permutation per sample would cost O(count * n)).
    """
    samples = np.empty((count, sample_size), dtype=np.intp)
    for k in range(sample_size):
        drawn = rng.integers(0, n - k, size=count)
        if k:
            chosen = np.sort(samples[:, :k], axis=1)
            for column in range(k):
                drawn += drawn >= chosen[:, column]
        samples[:, k] = drawn
    return samples


# --------------------------------------------------------------------------------------------
# Minimal solvers: (batch, s, 2) normalised samples -> (batch, 3, 3) matrices, (batch,) valid.
# Invalid rows hold finite placeholders and must be discarded by the caller.


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _triangle_ok(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Triangles (batched) that are neither collapsed to a point nor (nearly) collinear."""
    longest2 = np.maximum(np.maximum(((b - a) ** 2).sum(-1), ((c - b) ** 2).sum(-1)),
                          ((a - c) ** 2).sum(-1))
    twice_area = np.abs(_cross(b - a, c - a))
    # twice_area / longest2 is the triangle's height over its longest side
    return (longest2 > _MIN_SEPARATION ** 2) & (twice_area > _MIN_TRIANGLE_SHAPE * longest2)


def _affine_from_3(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # A collinear destination triple would make the linear part singular: checked up front too.
    valid = (_triangle_ok(src[:, 0], src[:, 1], src[:, 2])
             & _triangle_ok(dst[:, 0], dst[:, 1], dst[:, 2]))
    edges_src = np.stack([src[:, 1] - src[:, 0], src[:, 2] - src[:, 0]], axis=-1)  # columns
    edges_dst = np.stack([dst[:, 1] - dst[:, 0], dst[:, 2] - dst[:, 0]], axis=-1)
    det = _cross(edges_src[:, :, 0], edges_src[:, :, 1])
    det = np.where(valid, det, 1.0)
    adjugate = np.stack([np.stack([edges_src[:, 1, 1], -edges_src[:, 0, 1]], -1),
                         np.stack([-edges_src[:, 1, 0], edges_src[:, 0, 0]], -1)], axis=1)
    linear = edges_dst @ adjugate / det[:, None, None]  # edges_dst @ inv(edges_src)
    shift = dst[:, 0] - np.einsum("bij,bj->bi", linear, src[:, 0])
    return _assemble_affine(linear, shift), valid


def _similarity_from_2(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d_src = src[:, 1] - src[:, 0]
    d_dst = dst[:, 1] - dst[:, 0]
    norm2 = (d_src ** 2).sum(-1)
    valid = (norm2 > _MIN_SEPARATION ** 2) & ((d_dst ** 2).sum(-1) > _MIN_SEPARATION ** 2)
    norm2 = np.where(valid, norm2, 1.0)
    # (a + ib) = d_dst / d_src as complex numbers: rotation times isotropic scale
    a = (d_dst[:, 0] * d_src[:, 0] + d_dst[:, 1] * d_src[:, 1]) / norm2
    b = (d_dst[:, 1] * d_src[:, 0] - d_dst[:, 0] * d_src[:, 1]) / norm2
    linear = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], axis=1)
    shift = dst[:, 0] - np.einsum("bij,bj->bi", linear, src[:, 0])
    return _assemble_affine(linear, shift), valid


_TRIPLES_OF_4 = ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3))


def _homography_from_4(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    valid = np.ones(len(src), dtype=bool)
    for points in (src, dst):
        for i, j, k in _TRIPLES_OF_4:
            valid &= _triangle_ok(points[:, i], points[:, j], points[:, k])
    system = _dlt_rows(src, dst)  # (batch, 8, 9)
    _, _, vt = np.linalg.svd(system, full_matrices=True)
    return vt[:, -1, :].reshape(-1, 3, 3), valid


_MINIMAL_SOLVERS = {
    TransformModel.AFFINE: _affine_from_3,
    TransformModel.SIMILARITY: _similarity_from_2,
    TransformModel.HOMOGRAPHY: _homography_from_4,
}


def _assemble_affine(linear: np.ndarray, shift: np.ndarray) -> np.ndarray:
    matrices = np.zeros(linear.shape[:-2] + (3, 3))
    matrices[..., :2, :2] = linear
    matrices[..., :2, 2] = shift
    matrices[..., 2, 2] = 1.0
    return matrices


def _dlt_rows(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``(..., 2 * K, 9)`` DLT system ``A h = 0`` of a homography h taking src to dst."""
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zero, one = np.zeros_like(x), np.ones_like(x)
    rows_u = np.stack([-x, -y, -one, zero, zero, zero, u * x, u * y, u], axis=-1)
    rows_v = np.stack([zero, zero, zero, -x, -y, -one, v * x, v * y, v], axis=-1)
    rows = np.stack([rows_u, rows_v], axis=-2)  # (..., K, 2, 9)
    return rows.reshape(rows.shape[:-3] + (-1, 9))


# --------------------------------------------------------------------------------------------
# Orientation, scoring


def _orientation_ok(matrices: np.ndarray, model: TransformModel,
                    points: np.ndarray) -> np.ndarray:
    """Hypotheses that preserve orientation, with a non-singular Jacobian, at ``points``.

    matrices: ``(B, 3, 3)`` in pixels; points: ``(B, K, 2)`` moving pixels where the
    Jacobian of a homography is checked (the sample's points, or the inliers of a refit).

    Why reflections are rejected: both images are photographs of the same eye taken from the
    front, so the map between them is a proper motion of the fundus seen through optics and
    preserves orientation; a mirroring map (det <= 0) can only come from a chance fit to
    wrong matches (e.g. three matches whose triangle is flipped), never from the truth. A left
    and a right eye are not paired (DESIGN.md). The same test rejects singular maps.
    A homography's Jacobian determinant at p is det(H) / w(p)^3 with w(p) = h31 x + h32 y + h33.
    """
    if model is not TransformModel.HOMOGRAPHY:
        return np.linalg.det(matrices[:, :2, :2]) > _MIN_DET
    w = np.einsum("bj,bkj->bk", matrices[:, 2, :2], points) + matrices[:, 2, 2][:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        jacobian = np.linalg.det(matrices)[:, None] / w ** 3
    return np.all(jacobian > _MIN_DET, axis=1)


def _canonical_sign(matrices: np.ndarray, model: TransformModel,
                    anchors: np.ndarray) -> np.ndarray:
    """Homographies scaled so that w > 0 at ``anchors`` (one (B, 2) point of each sample).

    After :func:`_orientation_ok`, w has one sign at all sample points; making it positive lets
    scoring treat points with w <= 0 (beyond the horizon of the map) as outliers.
    """
    if model is not TransformModel.HOMOGRAPHY:
        return matrices
    w = np.einsum("bj,bj->b", matrices[:, 2, :2], anchors) + matrices[:, 2, 2]
    return matrices * np.sign(w)[:, None, None]


def _squared_errors(matrices: np.ndarray, model: TransformModel, src: np.ndarray,
                    dst: np.ndarray) -> np.ndarray:
    """``(B, N)`` squared reprojection errors in dst pixels^2 of ``(B, 3, 3)`` hypotheses."""
    # Component-wise (B, N) products: several times faster than a batched einsum/matmul of
    # 2x2 blocks, and this is the loop's hot spot.
    x, y = src[:, 0], src[:, 1]
    rows = matrices[:, :, :, None]  # (B, 3, 3, 1) broadcasts against (N,)
    mapped_x = rows[:, 0, 0] * x + rows[:, 0, 1] * y + rows[:, 0, 2]
    mapped_y = rows[:, 1, 0] * x + rows[:, 1, 1] * y + rows[:, 1, 2]
    if model is not TransformModel.HOMOGRAPHY:
        mapped_x -= dst[:, 0]
        mapped_y -= dst[:, 1]
        return mapped_x * mapped_x + mapped_y * mapped_y
    w = rows[:, 2, 0] * x + rows[:, 2, 1] * y + rows[:, 2, 2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        error_x = mapped_x / w - dst[:, 0]
        error_y = mapped_y / w - dst[:, 1]
        errors = error_x * error_x + error_y * error_y
    # points beyond the map's horizon (w <= 0 once w > 0 at the sample) cannot be inliers
    return np.where(w > 0, errors, np.inf)


def _needed_iterations(inlier_ratio: float, sample_size: int, confidence: float,
                       max_iterations: int) -> int:
    """Draws after which an all-inlier sample was seen with probability ``confidence``."""
    if inlier_ratio >= 1.0 or confidence <= 0.0:
        return 0
    if confidence >= 1.0:
        return int(max_iterations)
    all_inliers = inlier_ratio ** sample_size
    miss = math.log1p(-all_inliers)
    if miss == 0.0:
        return int(max_iterations)
    return int(min(max_iterations, math.ceil(math.log1p(-confidence) / miss)))


# --------------------------------------------------------------------------------------------
# Least squares and refit


def _least_squares(src: np.ndarray, dst: np.ndarray, model: TransformModel,
                   weights: np.ndarray | None) -> np.ndarray | None:
    """Least-squares matrix in pixels, or None when the points do not determine it."""
    if weights is not None:
        positive = weights > 0
        src, dst, weights = src[positive], dst[positive], weights[positive]
        if len(src) < SAMPLE_SIZES[model]:
            return None
    src_norm, src_t = _normalise(src)
    dst_norm, dst_t = _normalise(dst)
    root = np.ones(len(src)) if weights is None else np.sqrt(weights)
    if model is TransformModel.HOMOGRAPHY:
        system = _dlt_rows(src_norm, dst_norm) * np.repeat(root, 2)[:, None]
        if len(system) < 9:  # 4 points: 8 rows; the null vector needs the full basis
            system = np.vstack([system, np.zeros((9 - len(system), 9))])
        _, singular, vt = np.linalg.svd(system, full_matrices=False)
        if not singular[-2] > 1e-10 * singular[0]:  # null space of more than one dimension
            return None
        normalised = vt[-1].reshape(3, 3)
    elif model is TransformModel.AFFINE:
        design = np.column_stack([src_norm, np.ones(len(src))]) * root[:, None]
        solution, _, rank, _ = np.linalg.lstsq(design, dst_norm * root[:, None], rcond=None)
        if rank < 3:
            return None
        normalised = _assemble_affine(solution.T[:, :2], solution.T[:, 2])
    else:
        x, y = src_norm[:, 0], src_norm[:, 1]
        zero, one = np.zeros_like(x), np.ones_like(x)
        design = np.stack([np.stack([x, -y, one, zero], -1),
                           np.stack([y, x, zero, one], -1)], axis=1).reshape(-1, 4)
        design = design * np.repeat(root, 2)[:, None]
        solution, _, rank, _ = np.linalg.lstsq(design, dst_norm.reshape(-1) * np.repeat(root, 2),
                                               rcond=None)
        if rank < 4:
            return None
        a, b, tx, ty = solution
        normalised = _assemble_affine(np.array([[a, -b], [b, a]]), np.array([tx, ty]))
    matrix = _inverse_normaliser(dst_t) @ normalised @ src_t
    if not np.all(np.isfinite(matrix)):
        return None
    return _finalise(matrix, model)


def _finalise(matrix: np.ndarray, model: TransformModel) -> np.ndarray:
    matrix = np.array(matrix, dtype=np.float64)
    if model is TransformModel.HOMOGRAPHY:
        if abs(matrix[2, 2]) <= 1e-12 * np.abs(matrix).max():
            return matrix / np.abs(matrix).max()  # the origin maps to infinity: keep unscaled
        return matrix / matrix[2, 2]
    matrix[2] = (0.0, 0.0, 1.0)
    return matrix


def _refit(matrix: np.ndarray, inliers: np.ndarray, model: TransformModel, src: np.ndarray,
           dst: np.ndarray, thr2: float) -> tuple[np.ndarray, np.ndarray]:
    """Least squares on the inliers, repeated until the inlier set is stable.

    A round is refused only when it both loses inliers and raises the MSAC cost (the sum of
    squared errors truncated at the threshold). Refusing every round that loses an inlier is
    not enough: a minimal sample often passes within the threshold of one outlier that the
    least-squares fit, closer to the truth, then drops; keeping the minimal model for that one
    point left errors of 1.4 px where the refit had 0.1 px (2 % of seeds at 50 % outliers,
    0.5 px noise). A round that keeps every inlier is always taken.
    """
    count = int(inliers.sum())
    cost = float(np.minimum(_squared_errors(matrix[None], model, src, dst)[0], thr2).sum())
    for _ in range(_MAX_REFIT_ROUNDS):
        fitted = _least_squares(src[inliers], dst[inliers], model, None)
        if fitted is None or not _orientation_ok(fitted[None], model, src[inliers][None])[0]:
            break
        fitted = _canonical_sign(fitted[None], model, src[inliers][:1])[0]
        squared = _squared_errors(fitted[None], model, src, dst)[0]
        refitted = squared < thr2
        refitted_count = int(refitted.sum())
        refitted_cost = float(np.minimum(squared, thr2).sum())
        if refitted_count < count and refitted_cost > cost:
            break
        stable = np.array_equal(refitted, inliers)
        matrix, inliers, count, cost = fitted, refitted, refitted_count, refitted_cost
        if stable:
            break
    return matrix, inliers
