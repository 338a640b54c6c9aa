"""The 12-parameter quadratic transform for the curved retina (Can, Stewart, Roysam and
Tanenbaum, IEEE TPAMI 2002): each fixed coordinate is a second-order polynomial of the moving
pixel, ``x' = C[0] . m(x, y)`` and ``y' = C[1] . m(x, y)`` with the monomials
``m = (x², xy, y², x, y, 1)`` (``QUADRATIC_TERMS``).

Why a quadratic: the retina is a curved surface seen through the eye's optics, and a planar
model (affine, homography) cannot follow it across a wide field; a quadratic is the
second-order model of that surface's projection, and on real pairs it leaves a third to a
quarter of an affine's residual (benchmarks/real_pairs_precision.py, DESIGN.md).

Coefficients are stated in original pixels, moving -> fixed, so the last three columns are an
affine's ``[[a, b, tx], [c, d, ty]]`` exactly when the quadratic terms are zero. Fits run in
Hartley-normalised coordinates (as ``ransac`` does) and are converted back, so a fit is well
conditioned at any image size.

NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import QuadraticConfig, RansacConfig, TransformModel
# the same input checks, sampling and stopping rule as every other model's RANSAC
from .ransac import (_as_points, _as_weights, _draw_samples, _needed_iterations, _normalise,
                     fit_transform)

#: The monomials each row of the (2, 6) coefficient array multiplies, in order.
QUADRATIC_TERMS = ("x^2", "x*y", "y^2", "x", "y", "1")
#: Parameters of the model (two rows of six).
NUM_PARAMETERS = 12
#: Newton steps after the fitted inverse when inverting the map for the warp; the fitted
#: inverse is already within ~1e-3 px, and each step squares the error.
_NEWTON_STEPS = 2


def monomials(points: np.ndarray) -> np.ndarray:
    """``(N, 6)`` values of (x², xy, y², x, y, 1) at ``(N, 2)`` points."""
    x, y = points[:, 0], points[:, 1]
    return np.stack([x * x, x * y, y * y, x, y, np.ones_like(x)], axis=1)


def map_quadratic(coefficients: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N, 2)`` images of ``(N, 2)`` moving pixels under ``(2, 6)`` coefficients."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return monomials(points) @ np.asarray(coefficients, dtype=np.float64).T


def jacobian_determinant(coefficients: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N,)`` determinant of the map's Jacobian at ``(N, 2)`` moving pixels (area ratio,
    fixed px² per moving px²); the map folds over where it is not positive."""
    j = jacobians(coefficients, points)
    return j[:, 0, 0] * j[:, 1, 1] - j[:, 0, 1] * j[:, 1, 0]


def jacobians(coefficients: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N, 2, 2)`` Jacobians d(x', y') / d(x, y) at ``(N, 2)`` moving pixels."""
    c = np.asarray(coefficients, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = points[:, 0], points[:, 1]
    d_dx = 2 * x[:, None] * c[:, 0] + y[:, None] * c[:, 1] + c[:, 3]  # (N, 2): d x'/dx, d y'/dx
    d_dy = x[:, None] * c[:, 1] + 2 * y[:, None] * c[:, 2] + c[:, 4]
    return np.stack([d_dx, d_dy], axis=2)


def fit_quadratic(src: np.ndarray, dst: np.ndarray,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares ``(2, 6)`` coefficients mapping ``src`` (moving) onto ``dst`` (fixed).

    src, dst: ``(N, 2)`` pixels, N >= 6 points not all on one conic; weights: optional ``(N,)``
    non-negative weights of the squared residuals. Raises ValueError when the points do not
    determine the model (too few, or degenerate such as collinear).
    """
    src, dst = _as_points(src, dst)
    weights = _as_weights(weights, len(src))
    if weights is not None:
        keep = weights > 0
        src, dst, weights = src[keep], dst[keep], weights[keep]
    if len(src) < 6:
        raise ValueError(f"a quadratic needs at least 6 points, got {len(src)}")
    frame = _NormalisedFrame(src, dst)
    design = monomials(frame.src)
    root = np.ones(len(src)) if weights is None else np.sqrt(weights)
    solution, _, rank, singular = np.linalg.lstsq(design * root[:, None],
                                                  frame.dst * root[:, None], rcond=None)
    if rank < 6 or singular[-1] < 1e-9 * singular[0]:
        raise ValueError("the points do not determine a quadratic (too few distinct points, "
                         "or all on one line or conic)")
    return frame.to_pixels(solution.T)


def loo_residuals(src: np.ndarray, dst: np.ndarray, quadratic: bool) -> np.ndarray:
    """``(N,)`` leave-one-out residuals (pixels of dst) of a least-squares affine
    (``quadratic=False``) or quadratic fit: for each point, its distance from the model fitted
    to the other N - 1 points.

    Exact and in one solve: for linear least squares the held-out residual is the ordinary
    residual divided by ``1 - h_ii`` (h the hat matrix's diagonal). A point the others cannot
    predict at all (``h_ii`` = 1) gets an infinite residual.
    """
    src, dst = _as_points(src, dst)
    frame = _NormalisedFrame(src, dst)
    design = monomials(frame.src)
    if not quadratic:
        design = design[:, 3:]
    q, r = np.linalg.qr(design)
    if np.any(np.abs(np.diag(r)) < 1e-9 * np.abs(r).max()):
        return np.full(len(src), np.inf)
    leverage = (q * q).sum(axis=1)
    fitted = q @ (q.T @ frame.dst)
    residual = np.linalg.norm(frame.dst - fitted, axis=1) / frame.dst_scale
    with np.errstate(divide="ignore"):
        return np.where(leverage < 1 - 1e-9, residual / (1 - leverage), np.inf)


def inverse_map(coefficients: np.ndarray, fixed_points: np.ndarray,
                moving_size: tuple[int, int]) -> np.ndarray:
    """Moving pixels that the quadratic sends to ``(N, 2)`` fixed pixels (for ``cv2.remap``).

    A quadratic's inverse is not a quadratic: start from a quadratic fitted the other way on
    a dense grid over the moving image, then polish with Newton steps on the forward map.
    Points the map does not reach stay where the fitted inverse puts them, which lies outside
    the moving image for any fixed pixel the moving image does not cover.
    """
    width, height = moving_size
    grid_x, grid_y = np.meshgrid(np.linspace(0, width - 1, 33), np.linspace(0, height - 1, 33))
    grid = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    backward = fit_quadratic(map_quadratic(coefficients, grid), grid)
    fixed_points = np.asarray(fixed_points, dtype=np.float64).reshape(-1, 2)
    estimate = map_quadratic(backward, fixed_points)
    for _ in range(_NEWTON_STEPS):
        residual = map_quadratic(coefficients, estimate) - fixed_points
        j = jacobians(coefficients, estimate)
        det = j[:, 0, 0] * j[:, 1, 1] - j[:, 0, 1] * j[:, 1, 0]
        det = np.where(np.abs(det) > 1e-12, det, 1e-12)
        step_x = (j[:, 1, 1] * residual[:, 0] - j[:, 0, 1] * residual[:, 1]) / det
        step_y = (-j[:, 1, 0] * residual[:, 0] + j[:, 0, 0] * residual[:, 1]) / det
        estimate -= np.stack([step_x, step_y], axis=1)
    return estimate


@dataclass(frozen=True)
class _NormalisedFrame:
    """Hartley normalisation of a point set pair, and the way back to pixel coefficients."""

    src: np.ndarray
    dst: np.ndarray
    src_centre: np.ndarray
    src_scale: float
    dst_centre: np.ndarray
    dst_scale: float

    def __init__(self, src: np.ndarray, dst: np.ndarray):
        for name, points in (("src", src), ("dst", dst)):
            normalised, transform = _normalise(points)  # the same normalisation as RANSAC's
            scale = float(transform[0, 0])
            object.__setattr__(self, f"{name}_centre", -transform[:2, 2] / scale)
            object.__setattr__(self, f"{name}_scale", scale)
            object.__setattr__(self, name, normalised)

    def to_pixels(self, normalised: np.ndarray) -> np.ndarray:
        """Coefficients on normalised monomials -> coefficients on pixel monomials."""
        s = self.src_scale
        cx, cy = self.src_centre
        # rows: normalised monomials (u², uv, v², u, v, 1) with u = s (x - cx), v = s (y - cy),
        # written on the pixel monomials (x², xy, y², x, y, 1)
        substitution = np.array([
            [s * s, 0, 0, -2 * s * s * cx, 0, s * s * cx * cx],
            [0, s * s, 0, -s * s * cy, -s * s * cx, s * s * cx * cy],
            [0, 0, s * s, 0, -2 * s * s * cy, s * s * cy * cy],
            [0, 0, 0, s, 0, -s * cx],
            [0, 0, 0, 0, s, -s * cy],
            [0, 0, 0, 0, 0, 1.0],
        ])
        pixels = normalised @ substitution / self.dst_scale
        pixels[:, 5] += self.dst_centre
        return pixels


#: Spacing, in fixed pixels, of the grid on which the warp's inverse map is solved exactly;
#: between nodes it is interpolated bilinearly. The inverse of a retinal quadratic bends by
#: well under 1e-4 px⁻¹, so the interpolation error is below 1e-3 px at this spacing, while
#: solving every pixel of a 2000² image took seconds.
_REMAP_GRID_STEP = 8


def remap_tables(coefficients: np.ndarray, fixed_size: tuple[int, int],
                 moving_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` tables: for every fixed pixel, the moving pixel the quadratic sends there.

    Returns ``(map_x, map_y)``, each ``(height, width)`` float32 of the fixed image.
    """
    width, height = fixed_size
    nodes_x = np.arange(0, width - 1 + _REMAP_GRID_STEP, _REMAP_GRID_STEP, dtype=np.float64)
    nodes_y = np.arange(0, height - 1 + _REMAP_GRID_STEP, _REMAP_GRID_STEP, dtype=np.float64)
    grid_x, grid_y = np.meshgrid(nodes_x, nodes_y)
    solved = inverse_map(coefficients, np.stack([grid_x.ravel(), grid_y.ravel()], axis=1),
                         moving_size).reshape(len(nodes_y), len(nodes_x), 2)
    along_x = _linear_weights(width, len(nodes_x))  # (width, nodes)
    along_y = _linear_weights(height, len(nodes_y))
    map_x = along_y @ solved[..., 0] @ along_x.T
    map_y = along_y @ solved[..., 1] @ along_x.T
    return map_x.astype(np.float32), map_y.astype(np.float32)


def _linear_weights(length: int, num_nodes: int) -> np.ndarray:
    """``(length, num_nodes)`` weights of linear interpolation between nodes every
    ``_REMAP_GRID_STEP`` pixels, so that ``weights @ values_at_nodes`` is every pixel's value."""
    position = np.arange(length, dtype=np.float64) / _REMAP_GRID_STEP
    lower = np.minimum(np.floor(position).astype(np.intp), num_nodes - 2)
    fraction = position - lower
    weights = np.zeros((length, num_nodes))
    rows = np.arange(length)
    weights[rows, lower] = 1.0 - fraction
    weights[rows, lower + 1] = fraction
    return weights


@dataclass(frozen=True, eq=False)
class QuadraticFit:
    """A quadratic grown from a seed set of inliers (:func:`grow_quadratic`).

    coefficients: ``(2, 6)`` moving -> fixed, original pixels.
    inliers: ``(N,)`` bool, correspondences within the threshold of the quadratic.
    affine: ``(3, 3)`` least-squares affine on the same inliers, the planar model it departs from.
    loo_rms: leave-one-out RMS residual on the inliers, px of the fixed image, of the
        ``"affine"`` and of the ``"quadratic"``: how well each predicts a point it was not
        fitted on.
    """

    coefficients: np.ndarray
    inliers: np.ndarray
    affine: np.ndarray
    loo_rms: dict[str, float]


def grow_quadratic(src: np.ndarray, dst: np.ndarray, seed_inliers: np.ndarray,
                   threshold: float, rounds: int) -> QuadraticFit | None:
    """Least squares on the inliers, inliers re-selected under the quadratic, until stable.

    src, dst: ``(N, 2)`` moving and fixed pixels of all correspondences; seed_inliers: ``(N,)``
    bool, typically an affine RANSAC's; threshold: inlier distance in fixed pixels. Points the
    affine lost to the retina's curvature (at the periphery) come back in the first rounds.
    A round that would leave fewer inliers than the seed stops the growth: the quadratic is
    there to explain more of the correspondences, not fewer. None when the seed does not
    determine a quadratic.
    """
    src, dst = _as_points(src, dst)
    inliers = np.asarray(seed_inliers, dtype=bool)
    try:
        coefficients = fit_quadratic(src[inliers], dst[inliers])
    except ValueError:
        return None
    for _ in range(rounds):
        regrown = np.linalg.norm(map_quadratic(coefficients, src) - dst, axis=1) < threshold
        if np.array_equal(regrown, inliers) or regrown.sum() < seed_inliers.sum():
            break
        try:
            coefficients = fit_quadratic(src[regrown], dst[regrown])
        except ValueError:
            break
        inliers = regrown
    inliers = np.linalg.norm(map_quadratic(coefficients, src) - dst, axis=1) < threshold
    if inliers.sum() < 6:
        return None
    affine = fit_transform(src[inliers], dst[inliers], TransformModel.AFFINE)
    loo = {name: float(np.sqrt(np.mean(loo_residuals(src[inliers], dst[inliers], quadratic) ** 2)))
           for name, quadratic in (("affine", False), ("quadratic", True))}
    return QuadraticFit(coefficients=coefficients, inliers=inliers, affine=affine, loo_rms=loo)


def refine_cauchy(coefficients: np.ndarray, src: np.ndarray, dst: np.ndarray, scale: float,
                  rounds: int) -> np.ndarray:
    """``(2, 6)`` coefficients refined on all correspondences (moving ``src`` -> fixed ``dst``,
    pixels) by ``rounds`` rounds of reweighted least squares with Cauchy weights
    ``1 / (1 + (r / scale)^2)``, r each point's distance under the previous round's map.
    Returns the input when a round's points do not determine a quadratic."""
    src, dst = _as_points(src, dst)
    for _ in range(rounds):
        residuals = np.linalg.norm(map_quadratic(coefficients, src) - dst, axis=1)
        try:
            coefficients = fit_quadratic(src, dst, 1.0 / (1.0 + (residuals / scale) ** 2))
        except ValueError:
            break
    return coefficients


def refined_fit(fit: QuadraticFit, src: np.ndarray, dst: np.ndarray, threshold: float,
                config: QuadraticConfig) -> QuadraticFit:
    """``fit`` refined by :func:`refine_cauchy` (``config.cauchy_rounds`` rounds, scale
    ``config.cauchy_scale`` x ``threshold``), with the inliers it then has (strictly within
    ``threshold``) and the affine of those inliers; ``loo_rms`` is the chosen fit's."""
    src, dst = _as_points(src, dst)
    coefficients = refine_cauchy(fit.coefficients, src, dst, config.cauchy_scale * threshold,
                                 config.cauchy_rounds)
    inliers = np.linalg.norm(map_quadratic(coefficients, src) - dst, axis=1) < threshold
    if inliers.sum() < 3:
        return fit
    affine = fit_transform(src[inliers], dst[inliers], TransformModel.AFFINE)
    return QuadraticFit(coefficients=coefficients, inliers=inliers, affine=affine,
                        loo_rms=fit.loo_rms)


def best_quadratic(src: np.ndarray, dst: np.ndarray, affine_inliers: np.ndarray,
                   threshold: float, config: QuadraticConfig, ransac_config: RansacConfig,
                   rng: np.random.Generator) -> QuadraticFit | None:
    """The quadratic grown from the affine's inliers or, with ``config.minimal_seed``, from a
    minimal 6-point RANSAC's, whichever ends with more inliers (then the lower held-out
    residual). ``ransac_config`` gives the 6-point RANSAC its confidence, iterations and batch
    size."""
    seeds = [np.asarray(affine_inliers, dtype=bool)]
    if config.minimal_seed:
        minimal = minimal_ransac(src, dst, threshold, rng, ransac_config.confidence,
                                 ransac_config.max_iterations, ransac_config.batch_size)
        if minimal is not None and minimal.sum() >= 6:
            seeds.append(minimal)
    fits = [fit for fit in (grow_quadratic(src, dst, seed, threshold, config.refit_rounds)
                            for seed in seeds) if fit is not None]
    if not fits:
        return None
    return max(fits, key=lambda fit: (int(fit.inliers.sum()), -fit.loo_rms["quadratic"]))


def minimal_ransac(src: np.ndarray, dst: np.ndarray, threshold: float,
                   rng: np.random.Generator, confidence: float, max_iterations: int,
                   batch_size: int) -> np.ndarray | None:
    """Inliers ``(N,)`` of the best quadratic solved from minimal samples of 6 points, or None.

    The alternative to growing the quadratic from an affine's inliers (``grow_quadratic``):
    hypotheses are quadratics themselves, so curvature never costs a peripheral inlier, but a
    sample needs 6 inliers instead of 3 (at half outliers 8 times as many draws), and 6 noisy
    points determine the second-order terms poorly; :func:`best_quadratic` grows from both
    seeds and keeps the better.
    """
    src, dst = _as_points(src, dst)
    n = len(src)
    if n < 6:
        return None
    frame = _NormalisedFrame(src, dst)
    design_all = monomials(frame.src)
    thr2 = (threshold * frame.dst_scale) ** 2
    best, best_count, drawn, needed = None, -1, 0, max_iterations
    while drawn < min(needed, max_iterations):
        size = min(batch_size, max_iterations - drawn)
        samples = _draw_samples(rng, n, 6, size)
        drawn += size
        systems = design_all[samples]  # (B, 6, 6)
        conditioned = np.abs(np.linalg.det(systems)) > 1e-9
        if not conditioned.any():
            continue
        solutions = np.linalg.solve(systems[conditioned], frame.dst[samples[conditioned]])
        mapped = np.einsum("nk,bkc->bnc", design_all, solutions)  # (B, N, 2)
        squared = ((mapped - frame.dst) ** 2).sum(axis=2)
        counts = (squared < thr2).sum(axis=1)
        top = int(np.argmax(counts))
        if counts[top] > best_count:
            best_count, best = int(counts[top]), squared[top] < thr2
            needed = _needed_iterations(best_count / n, 6, confidence, max_iterations)
    return best
