"""What a fitted transform means: plausibility for two photographs of one eye, and the warp."""

from __future__ import annotations

import cv2
import numpy as np

from .config import REFERENCE_SIZE, PlausibilityConfig, QuadraticConfig, TransformModel
from .quadratic import QuadraticFit, jacobians, map_quadratic, remap_tables


def reference_scale(size: tuple[int, int]) -> float:
    """Factor that brings an image of (width, height) to REFERENCE_SIZE on its longer side."""
    return REFERENCE_SIZE / float(max(size))


def to_reference_frame(matrix: np.ndarray, fixed_size: tuple[int, int],
                       moving_size: tuple[int, int]) -> np.ndarray:
    """The same 3x3 transform between both images scaled to REFERENCE_SIZE (longer side).

    Cameras of different resolution make an honest registration scale pixels by their
    resolution ratio; in this frame that ratio is gone and what is left is the eye's motion.
    """
    scale_fixed = np.diag([reference_scale(fixed_size)] * 2 + [1.0])
    unscale_moving = np.diag([1.0 / reference_scale(moving_size)] * 2 + [1.0])
    return scale_fixed @ matrix @ unscale_moving


def implausibility(matrix: np.ndarray, model: TransformModel, fixed_size: tuple[int, int],
                   moving_size: tuple[int, int], config: PlausibilityConfig) -> str | None:
    """Why ``matrix`` (moving -> fixed, original pixels) cannot relate two photos of one eye.

    Returns None when it can. Checked on the linear part in the reference frame: both singular
    values within [min_scale, max_scale], their ratio (shear, squash) at most max_anisotropy,
    no reflection, and, for a homography, a bounded perspective term.
    """
    if not np.all(np.isfinite(matrix)):
        return "the transform is not finite"
    normalised = to_reference_frame(matrix, fixed_size, moving_size)
    if abs(normalised[2, 2]) < 1e-12:
        return "the transform is singular"
    normalised = normalised / normalised[2, 2]
    linear = normalised[:2, :2]
    if np.linalg.det(linear) <= 0:
        return "the transform mirrors the image"
    largest, smallest = np.linalg.svd(linear, compute_uv=False)
    if smallest < config.min_scale or largest > config.max_scale:
        return (f"implausible scale: singular values {largest:.3f}, {smallest:.3f} outside "
                f"[{config.min_scale}, {config.max_scale}]")
    if largest / smallest > config.max_anisotropy:
        return (f"implausible shear or squash: anisotropy {largest / smallest:.3f} > "
                f"{config.max_anisotropy}")
    if model is TransformModel.HOMOGRAPHY:
        perspective = float(np.abs(normalised[2, :2]).max() * REFERENCE_SIZE)
        if perspective > config.max_perspective:
            return f"implausible perspective: {perspective:.3f} > {config.max_perspective}"
    return None


def quadratic_implausibility(fit: QuadraticFit, fixed_size: tuple[int, int],
                             moving_size: tuple[int, int], plausibility: PlausibilityConfig,
                             config: QuadraticConfig, fixed_inliers: np.ndarray,
                             moving_inliers: np.ndarray) -> str | None:
    """Why the inliers cannot support ``fit`` (moving -> fixed, original pixels), or None.

    fixed_inliers, moving_inliers: ``(K, 2)`` the inliers' pixels in each image. Refused: fewer
    than ``config.min_inliers`` inliers; inliers whose convex hull covers less than
    ``config.min_coverage`` of the area the images share; and, where the inliers support the
    map (their hull grown by ``config.support_margin``, inside the shared area), a departure
    from the affine of the same inliers of more than ``config.max_departure`` px (at
    REFERENCE_SIZE), or a Jacobian that folds over (det <= 0) or breaks the scale and
    anisotropy bounds every transform is held to (``implausibility``).
    """
    count = int(fit.inliers.sum())
    if count < config.min_inliers:
        return (f"a quadratic needs {config.min_inliers} inliers, the correspondences "
                f"support {count}")
    shared = _shared_points(fit.affine, fixed_size, moving_size)
    refusal = _coverage_refusal(map_quadratic(fit.coefficients, shared), fixed_inliers,
                                config.min_coverage, "a quadratic")
    if refusal is not None:
        return refusal
    shared = _supported(shared, moving_inliers, config.support_margin * max(moving_size))
    to_reference = reference_scale(fixed_size)
    departure = float(np.linalg.norm(map_quadratic(fit.coefficients, shared)
                                     - apply(fit.affine, shared), axis=1).max()) * to_reference
    if departure > config.max_departure:
        return (f"the quadratic departs {departure:.1f} px from the affine of its inliers, "
                f"more than {config.max_departure:g} px")
    # The Jacobian in the reference frame: scaled like the linear part of ``implausibility``.
    local = jacobians(fit.coefficients, shared) * (to_reference / reference_scale(moving_size))
    det = local[:, 0, 0] * local[:, 1, 1] - local[:, 0, 1] * local[:, 1, 0]
    if np.any(det <= 0):
        return "the quadratic folds over inside the shared field of view"
    singular = np.linalg.svd(local, compute_uv=False)
    largest, smallest = float(singular[:, 0].max()), float(singular[:, 1].min())
    if smallest < plausibility.min_scale or largest > plausibility.max_scale:
        return (f"implausible local scale of the quadratic: singular values from {smallest:.3f} "
                f"to {largest:.3f}, outside [{plausibility.min_scale}, {plausibility.max_scale}]")
    anisotropy = float((singular[:, 0] / singular[:, 1]).max())
    if anisotropy > plausibility.max_anisotropy:
        return (f"implausible local shear or squash of the quadratic: anisotropy "
                f"{anisotropy:.3f} > {plausibility.max_anisotropy}")
    return None


#: Points per side of the grid over the moving image on which a quadratic is checked.
_CHECK_GRID = 25


def sparse_support(matrix: np.ndarray, fixed_inliers: np.ndarray, fixed_size: tuple[int, int],
                   moving_size: tuple[int, int], config: PlausibilityConfig) -> str | None:
    """Why inliers at ``(K, 2)`` fixed pixels are too bunched to support the planar transform
    ``matrix`` (moving -> fixed) over the area the images share, or None."""
    shared = _shared_points(matrix, fixed_size, moving_size)
    return _coverage_refusal(apply(matrix, shared), fixed_inliers, config.min_coverage,
                             "the transform")


def _coverage_refusal(shared_fixed: np.ndarray, fixed_inliers: np.ndarray, min_coverage: float,
                      what: str) -> str | None:
    if len(shared_fixed) < 3:
        return f"{what} sends the moving image outside the fixed one"
    overlap_area = _hull_area(shared_fixed)
    coverage = _hull_area(fixed_inliers) / overlap_area if overlap_area > 0 else 0.0
    if coverage < min_coverage:
        return (f"the inliers cover {100 * coverage:.0f} % of the shared field of view, "
                f"fewer than the {100 * min_coverage:.0f} % {what} needs")
    return None


def _shared_points(matrix: np.ndarray, fixed_size: tuple[int, int],
                   moving_size: tuple[int, int]) -> np.ndarray:
    """Moving pixels of a grid over the moving image that the planar ``matrix`` sends inside
    the fixed image: the shared field of view (for a quadratic, judged by the affine of its
    inliers, so that a wild quadratic cannot shrink the area it is checked on)."""
    width, height = moving_size
    grid_x, grid_y = np.meshgrid(np.linspace(0, width - 1, _CHECK_GRID),
                                 np.linspace(0, height - 1, _CHECK_GRID))
    grid = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    mapped = apply(matrix, grid)
    inside = ((mapped[:, 0] >= 0) & (mapped[:, 0] <= fixed_size[0] - 1)
              & (mapped[:, 1] >= 0) & (mapped[:, 1] <= fixed_size[1] - 1))
    return grid[inside]


def _supported(points: np.ndarray, inliers: np.ndarray, margin: float) -> np.ndarray:
    """The ``points`` within ``margin`` pixels of the convex hull of ``inliers`` (or inside)."""
    hull = cv2.convexHull(np.asarray(inliers, dtype=np.float32))
    distance = np.array([cv2.pointPolygonTest(hull, (float(x), float(y)), True)
                         for x, y in points])
    return points[distance >= -margin]


def _hull_area(points: np.ndarray) -> float:
    if len(points) < 3:
        return 0.0
    hull = cv2.convexHull(np.asarray(points, dtype=np.float32))
    return float(cv2.contourArea(hull))


def map_points(model: TransformModel, parameters: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N, 2)`` moving pixels mapped into the fixed image by a fitted transform.

    parameters: the ``(3, 3)`` matrix of an affine, similarity or homography, or the ``(2, 6)``
    coefficients of a quadratic (``RegistrationResult.parameters``).
    """
    if TransformModel(model) is TransformModel.QUADRATIC:
        return map_quadratic(parameters, points)
    return apply(parameters, points)


def fitted_from_json(record: dict) -> tuple[TransformModel, np.ndarray]:
    """The fitted model and its parameters (as :func:`map_points` and :func:`warp_image` take
    them) from a result object as ``RegistrationResult.to_json`` writes it: the ``(2, 6)``
    quadratic coefficients, else the ``(3, 3)`` matrix (a line written before the ``matrix``
    field has only ``affine``). Raises ValueError for a failed result or a malformed one."""
    try:
        model = TransformModel(record.get("transform") or TransformModel.AFFINE.value)
        if model is TransformModel.QUADRATIC:
            parameters = np.asarray(record["quadratic"]["coefficients"], dtype=np.float64)
            shape = (2, 6)
        elif record.get("matrix") is not None:
            parameters, shape = np.asarray(record["matrix"], dtype=np.float64), (3, 3)
        else:
            parameters = np.vstack([np.asarray(record["affine"], dtype=np.float64),
                                    [0.0, 0.0, 1.0]])
            shape = (3, 3)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the result holds no transform ({exc})") from None
    if parameters.shape != shape or not np.all(np.isfinite(parameters)):
        raise ValueError(f"the result's {model.value} parameters have shape {parameters.shape}, "
                         f"expected {shape} finite numbers")
    return model, parameters


def warp_image(moving: np.ndarray, parameters: np.ndarray, model: TransformModel,
               fixed_size: tuple[int, int]) -> np.ndarray:
    """The moving image resampled into the fixed image's frame (same dtype and channels).

    parameters as for :func:`map_points`. A quadratic is warped with ``cv2.remap`` on its
    inverse, solved per fixed pixel (``quadratic.remap_tables``).
    """
    flags = cv2.INTER_LINEAR
    if TransformModel(model) is TransformModel.QUADRATIC:
        moving_size = (moving.shape[1], moving.shape[0])
        map_x, map_y = remap_tables(parameters, fixed_size, moving_size)
        return cv2.remap(moving, map_x, map_y, flags, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)
    matrix = parameters
    if TransformModel(model) is TransformModel.HOMOGRAPHY:
        return cv2.warpPerspective(moving, matrix, fixed_size, flags=flags,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.warpAffine(moving, matrix[:2], fixed_size, flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(N, 2)`` points by a 3x3 transform (affine or projective)."""
    points = np.asarray(points, dtype=np.float64)
    mapped = points @ matrix[:2, :2].T + matrix[:2, 2]
    denominator = points @ matrix[2, :2] + matrix[2, 2]
    return mapped / denominator[:, None]


#: Points per side of the grid over the moving image on which two transforms are compared.
COMPARISON_GRID = 21


def shared_grid(mapper, fixed_size: tuple[int, int], moving_size: tuple[int, int],
                points: int = COMPARISON_GRID) -> np.ndarray:
    """Moving pixels of a ``points`` x ``points`` grid spanning the moving image that
    ``mapper`` (moving -> fixed) sends inside the fixed image: the shared field."""
    width, height = moving_size
    grid_x, grid_y = np.meshgrid(np.linspace(0, width - 1, points),
                                 np.linspace(0, height - 1, points))
    grid = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    mapped = mapper(grid)
    inside = ((mapped[:, 0] >= 0) & (mapped[:, 0] <= fixed_size[0] - 1)
              & (mapped[:, 1] >= 0) & (mapped[:, 1] <= fixed_size[1] - 1))
    return grid[inside]


def transform_difference(mapper, reference, fixed_size: tuple[int, int],
                         moving_size: tuple[int, int]) -> float:
    """Largest distance between where two transforms (moving -> fixed point mappers) send the
    grid of ``reference``'s shared field, px at REFERENCE_SIZE (of the fixed image's longer
    side); inf when nothing is shared."""
    grid = shared_grid(reference, fixed_size, moving_size)
    if not len(grid):
        return float("inf")
    distance = np.linalg.norm(mapper(grid) - reference(grid), axis=1)
    return float(distance.max() * REFERENCE_SIZE / max(fixed_size))
