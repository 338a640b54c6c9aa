"""The quadratic model for the curved retina: fit, held-out residuals, growth, refusals, warp."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from benchmarks.known_truth import mean_fov_error, random_quadratic, warp_by_quadratic
from conftest import CC0_RETINA
from ophreg_rt import Registrar, RegistrarConfig, TransformModel
from ophreg_rt.config import PlausibilityConfig, QuadraticConfig
from ophreg_rt.imageio import read_image
from ophreg_rt.quadratic import (QuadraticFit, fit_quadratic, grow_quadratic, inverse_map,
                                 jacobian_determinant, loo_residuals, map_quadratic,
                                 refine_cauchy, refined_fit, remap_tables)
from ophreg_rt.ransac import fit_transform
from ophreg_rt.transforms import map_points, quadratic_implausibility, warp_image

#: A rotation, a shift and a bend that leaves 2.4 px (at 1024) between it and its best affine.
BENT = np.array([[2e-6, -1.5e-6, 3e-6, 0.99, 0.05, 30.0],
                 [1e-6, 2.5e-6, -2e-6, -0.04, 1.01, -20.0]])
SIZE = (2000, 1800)


def _grid(size, per_side=30):
    xs, ys = np.meshgrid(np.linspace(0, size[0] - 1, per_side), np.linspace(0, size[1] - 1, per_side))
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def test_an_exact_quadratic_is_recovered_from_its_points():
    src = _grid(SIZE)
    np.testing.assert_allclose(fit_quadratic(src, map_quadratic(BENT, src)), BENT,
                               rtol=1e-7, atol=1e-9)


def test_an_affine_is_a_quadratic_with_zero_second_order_terms():
    affine = np.array([[1.02, 0.1, 5.0], [-0.1, 0.98, 7.0]])
    src = _grid(SIZE)
    fitted = fit_quadratic(src, src @ affine[:, :2].T + affine[:, 2])
    np.testing.assert_allclose(fitted[:, :3], 0.0, atol=1e-12)
    np.testing.assert_allclose(fitted[:, 3:], affine, atol=1e-8)


@pytest.mark.parametrize("points", [np.zeros((5, 2)), np.column_stack([np.arange(20.0)] * 2)])
def test_points_that_do_not_determine_a_quadratic_are_refused(points):
    with pytest.raises(ValueError, match="quadratic"):
        fit_quadratic(points, points)


def test_leave_one_out_residuals_equal_refitting_without_each_point():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 1000, (25, 2))
    dst = map_quadratic(BENT, src) + rng.normal(0, 1.0, (25, 2))
    held_out = []
    for i in range(len(src)):
        keep = np.arange(len(src)) != i
        coefficients = fit_quadratic(src[keep], dst[keep])
        held_out.append(np.linalg.norm(map_quadratic(coefficients, src[i:i + 1]) - dst[i]))
    np.testing.assert_allclose(loo_residuals(src, dst, quadratic=True), held_out, rtol=1e-6)


def test_held_out_residuals_tell_a_bend_from_noise():
    src = _grid(SIZE, 12)
    bent = map_quadratic(BENT, src)
    assert loo_residuals(src, bent, quadratic=True).max() < 1e-6
    assert loo_residuals(src, bent, quadratic=False).mean() > 1.0


def test_the_inverse_map_undoes_the_quadratic():
    fixed_points = np.random.default_rng(1).uniform(100, 1700, (200, 2))
    moving_points = inverse_map(BENT, fixed_points, SIZE)
    np.testing.assert_allclose(map_quadratic(BENT, moving_points), fixed_points, atol=1e-6)


def test_remap_tables_send_every_fixed_pixel_to_its_moving_pixel():
    fixed_size = (640, 480)
    coefficients = BENT * [[1e1, 1e1, 1e1, 1, 1, 0.1]] * 1.0  # a stronger bend on a small image
    map_x, map_y = remap_tables(coefficients, fixed_size, (600, 500))
    assert map_x.shape == (480, 640) and map_x.dtype == np.float32
    ys, xs = np.mgrid[0:480:37, 0:640:41]
    moving = np.stack([map_x[ys, xs].ravel(), map_y[ys, xs].ravel()], axis=1).astype(np.float64)
    fixed = np.stack([xs.ravel(), ys.ravel()], axis=1)
    np.testing.assert_allclose(map_quadratic(coefficients, moving), fixed, atol=2e-3)


def test_growth_brings_back_the_periphery_an_affine_loses():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, SIZE[0], (400, 2))
    dst = map_quadratic(BENT, src) + rng.normal(0, 0.3, src.shape)
    dst[:60] += rng.uniform(50, 200, (60, 2))  # wrong matches
    seed = np.zeros(len(src), bool)
    centre = np.linalg.norm(src - 1000, axis=1) < 500
    seed[60:][centre[60:]] = True  # an affine holds only near the centre
    fit = grow_quadratic(src, dst, seed, threshold=2.0, rounds=5)
    assert fit.inliers[60:].mean() > 0.99 and not fit.inliers[:60].any()
    np.testing.assert_allclose(map_quadratic(fit.coefficients, _grid(SIZE)),
                               map_quadratic(BENT, _grid(SIZE)), atol=0.5)
    assert fit.loo_rms["quadratic"] < 0.5 < fit.loo_rms["affine"]


def _fit_of(coefficients, src):
    from ophreg_rt.ransac import fit_transform
    dst = map_quadratic(coefficients, src)
    return QuadraticFit(coefficients=np.asarray(coefficients, float),
                        inliers=np.ones(len(src), bool),
                        affine=fit_transform(src, dst, TransformModel.AFFINE),
                        loo_rms={"affine": 1.0, "quadratic": 0.5}), dst


def _refusal(coefficients, src, **changes):
    fit, dst = _fit_of(coefficients, src)
    return quadratic_implausibility(fit, SIZE, SIZE, PlausibilityConfig(),
                                    replace(QuadraticConfig(), **changes), dst[fit.inliers],
                                    src[fit.inliers])


def test_a_retinal_bend_on_well_spread_inliers_is_accepted():
    assert _refusal(BENT, _grid(SIZE, 10)) is None


def test_too_few_inliers_for_a_quadratic_are_refused():
    assert "inliers" in _refusal(BENT, _grid(SIZE, 5))  # 25 < 30


def test_inliers_in_one_corner_do_not_support_a_quadratic():
    corner = _grid((500, 500), 8)
    assert "cover" in _refusal(BENT, corner)


def test_a_quadratic_that_folds_over_is_refused():
    # x' = x - x² / 1000 turns back on itself at x = 500, inside the image
    folding = np.array([[-1e-3, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0]])
    assert jacobian_determinant(folding, np.array([[900.0, 10.0]]))[0] < 0
    reason = _refusal(folding, _grid(SIZE, 10), max_departure=1e6)
    assert "folds over" in reason


def test_a_bend_far_from_the_affine_is_refused():
    strong = BENT.copy()
    strong[:, :3] *= 20  # 49 px from its best affine
    assert "departs" in _refusal(strong, _grid(SIZE, 10))


def test_map_points_and_warp_follow_the_quadratic():
    moving = np.zeros((SIZE[1], SIZE[0]), np.float32)
    spot = np.array([[1500.0, 1400.0]])
    moving[1400, 1500] = 1000.0
    moving = cv2.GaussianBlur(moving, (0, 0), 3)
    expected = map_quadratic(BENT, spot)[0]
    np.testing.assert_allclose(map_points(TransformModel.QUADRATIC, BENT, spot)[0], expected)
    warped = warp_image(moving, BENT, TransformModel.QUADRATIC, (2100, 1900))
    assert warped.shape == (1900, 2100) and warped.dtype == np.float32
    ys, xs = np.mgrid[0:1900, 0:2100]
    centroid = np.array([(warped * xs).sum(), (warped * ys).sum()]) / warped.sum()
    np.testing.assert_allclose(centroid, expected, atol=0.1)


@pytest.fixture(scope="module")
def curved_case():
    fixed = read_image(CC0_RETINA)
    truth = random_quadratic(np.random.default_rng(11), (fixed.shape[1], fixed.shape[0]))
    return fixed, warp_by_quadratic(fixed, truth), truth


def test_a_known_curved_warp_is_recovered_by_the_quadratic_within_half_a_pixel(curved_case):
    from benchmarks.known_truth import Case
    fixed, moving, truth = curved_case
    registrar = Registrar(RegistrarConfig(ransac=replace(RegistrarConfig().ransac,
                                                         model=TransformModel.QUADRATIC)))
    result = registrar.register(fixed, moving)
    assert result.ok, result.reason
    assert result.transform is TransformModel.QUADRATIC and result.matrix is None
    case = Case("curved", fixed, moving, truth)
    assert mean_fov_error(result, case) < 0.5
    affine = registrar.fit(*registrar.detect([fixed, moving]),
                           registrar.match(*registrar.detect([fixed, moving])),
                           model=TransformModel.AFFINE)
    assert mean_fov_error(affine, case) > mean_fov_error(result, case)


def test_the_result_json_carries_the_quadratic_and_warps_with_it(curved_case):
    fixed, moving, _ = curved_case
    registrar = Registrar(RegistrarConfig(ransac=replace(RegistrarConfig().ransac,
                                                         model=TransformModel.QUADRATIC)))
    result = registrar.register(fixed, moving)
    document = json.loads(json.dumps(result.to_json()))
    assert document["transform"] == "quadratic" and document["affine"] is None
    assert document["quadratic"]["terms"] == ["x^2", "x*y", "y^2", "x", "y", "1"]
    coefficients = np.array(document["quadratic"]["coefficients"])
    np.testing.assert_array_equal(coefficients, result.coefficients)
    points = np.array([[100.0, 200.0], [700.0, 900.0]])
    np.testing.assert_allclose(map_quadratic(coefficients, points), result.map_points(points))
    warped = registrar.warp(moving, result)
    assert warped.shape == fixed.shape


def _registrar_with(model: TransformModel) -> Registrar:
    return Registrar(RegistrarConfig(ransac=replace(RegistrarConfig().ransac, model=model)))


def test_auto_takes_the_quadratic_for_a_curved_warp(curved_case):
    from benchmarks.known_truth import Case
    fixed, moving, truth = curved_case
    result = _registrar_with(TransformModel.AUTO).register(fixed, moving)
    assert result.ok and result.transform is TransformModel.QUADRATIC
    selection = result.model_selection
    assert selection["requested"] == "auto" and selection["chosen"] == "quadratic"
    assert selection["loo_rms_px"]["quadratic"] < selection["loo_rms_px"]["affine"]
    assert mean_fov_error(result, Case("curved", fixed, moving, truth)) < 0.5


def test_auto_falls_back_to_the_affine_and_says_why_when_a_quadratic_is_refused(curved_case):
    fixed, moving, _ = curved_case
    strict = replace(RegistrarConfig().quadratic, min_inliers=100_000)
    config = RegistrarConfig(ransac=replace(RegistrarConfig().ransac, model=TransformModel.AUTO),
                             quadratic=strict)
    result = Registrar(config).register(fixed, moving)
    assert result.ok and result.transform is TransformModel.AFFINE
    assert result.affine is not None and result.coefficients is None
    assert "inliers" in result.model_selection["why_not_quadratic"]
    assert result.model_selection["chosen"] == "affine"
    # asked for explicitly, the same refusal is a failed registration, not an affine
    explicit = Registrar(replace(config, ransac=replace(config.ransac,
                                                        model=TransformModel.QUADRATIC)))
    refused = explicit.register(fixed, moving)
    assert not refused.ok and "inliers" in refused.reason and refused.parameters is None


def _bent_matches(rng: np.random.Generator, count: int = 400, outliers: int = 80):
    src = rng.uniform(0, 1900, (count, 2))
    dst = map_quadratic(BENT, src) + rng.normal(0, 0.4, (count, 2))
    dst[:outliers] += rng.uniform(15, 90, (outliers, 2)) * rng.choice([-1, 1], (outliers, 2))
    return src, dst


def test_the_cauchy_refinement_goes_to_the_same_answer_from_different_starts():
    """Two starts a RANSAC could give (inlier sets differing near the threshold) end on one
    map: the answer no longer depends on the draw."""
    rng = np.random.default_rng(5)
    src, dst = _bent_matches(rng)
    good = np.arange(len(src)) >= 80
    starts = [fit_quadratic(src[good][::2], dst[good][::2]),
              fit_quadratic(src[good][1::2], dst[good][1::2])]
    grid = rng.uniform(0, 1900, (200, 2))
    before = np.linalg.norm(map_quadratic(starts[0], grid) - map_quadratic(starts[1], grid), 1)
    ends = [refine_cauchy(start, src, dst, scale=2.0, rounds=10) for start in starts]
    after = np.linalg.norm(map_quadratic(ends[0], grid) - map_quadratic(ends[1], grid), axis=1)
    assert before.max() > 0.05 and after.max() < 0.01 * before.max()
    truth_error = np.linalg.norm(map_quadratic(ends[0], grid) - map_quadratic(BENT, grid), axis=1)
    assert truth_error.max() < 0.5  # and it is the right map, outliers notwithstanding


def test_zero_rounds_leave_the_fit_unchanged():
    rng = np.random.default_rng(6)
    src, dst = _bent_matches(rng)
    start = fit_quadratic(src[80:], dst[80:])
    np.testing.assert_array_equal(refine_cauchy(start, src, dst, scale=2.0, rounds=0), start)


def test_the_refined_fit_has_the_inliers_and_affine_of_its_own_map():
    rng = np.random.default_rng(7)
    src, dst = _bent_matches(rng)
    fit = grow_quadratic(src, dst, np.arange(len(src)) >= 80, threshold=4.0, rounds=5)
    refined = refined_fit(fit, src, dst, 4.0, QuadraticConfig())
    residuals = np.linalg.norm(map_quadratic(refined.coefficients, src) - dst, axis=1)
    np.testing.assert_array_equal(refined.inliers, residuals < 4.0)
    assert refined.loo_rms == fit.loo_rms  # auto's choice was made on the unrefined fit
    np.testing.assert_allclose(refined.affine, fit_transform(
        src[refined.inliers], dst[refined.inliers], TransformModel.AFFINE))


def test_auto_refines_the_quadratic_it_takes_and_can_be_told_not_to(curved_case):
    from benchmarks.known_truth import Case
    fixed, moving, truth = curved_case
    refined = _registrar_with(TransformModel.AUTO).register(fixed, moving)
    plain_config = RegistrarConfig(quadratic=replace(QuadraticConfig(), cauchy_rounds=0))
    plain = Registrar(plain_config).register(fixed, moving)
    assert refined.transform is plain.transform is TransformModel.QUADRATIC
    assert not np.array_equal(refined.coefficients, plain.coefficients)
    case = Case("curved", fixed, moving, truth)
    assert mean_fov_error(refined, case) < 0.5 and mean_fov_error(plain, case) < 0.5
