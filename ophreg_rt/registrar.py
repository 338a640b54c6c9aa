"""The engine: two eye images in, a verified transform (or an honest refusal) out."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np

from .config import (GROWN_MODELS, REFERENCE_SIZE, FeatureName, MatcherName, RegistrarConfig,
                     TransformModel, ransac_model, resolved_matcher)
from .errors import InvalidConfigError, RegistrationFailedError
from .features import SuperPointRunner
from .imageio import ImageSource, read_image
from .masks import inside, keypoint_mask, select
from .matching import LightGlueRunner, SuperGlueRunner, mutual_nearest_neighbours
from .model_files import default_matcher_graph, default_superpoint
from .preprocess import network_grey, network_input, network_to_original
from .ransac import STATUS_FAILED, STATUS_OK, ransac
from .sift import SIFT_DESCRIPTION, detect_sift, ratio_test_matches
from .quadratic import QUADRATIC_TERMS, best_quadratic, refined_fit
from .transforms import (implausibility, map_points, quadratic_implausibility, sparse_support,
                         warp_image)
from .types import Detections, Features, Matches


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of one registration. Image 0 is FIXED (target), image 1 is MOVING (source).

    status: "ok" or "failed"; reason says why it failed (None when ok).
    transform: the fitted model (affine, similarity, homography or quadratic; never "auto":
        with ``auto`` the model that was chosen).
    matrix: ``(3, 3)`` float64 mapping MOVING pixel (x, y) to FIXED pixel (x, y), original
        resolution, pixel centres at integers; None when failed or quadratic.
    coefficients: ``(2, 6)`` float64 of a quadratic, same mapping and pixels, on the monomials
        ``quadratic.QUADRATIC_TERMS``; None otherwise. Use :meth:`map_points` to map points
        with whichever model was fitted.
    fixed_size, moving_size: (width, height) in pixels.
    keypoints_fixed, keypoints_moving: ``(N, 2)`` float64 keypoints in original pixels.
    matches: ``(M, 2)`` int64 (index into keypoints_fixed, index into keypoints_moving).
    match_scores: ``(M,)`` float32 matcher confidence.
    inliers: ``(M,)`` bool, the matches RANSAC kept (all False when it found no model).
    timings_ms: milliseconds per stage.
    models: graph file name and sha256 per model used.
    provider: the onnxruntime execution provider that ran the graphs ("opencv" for SIFT).
    features: the front end that ran ("superpoint" or "sift").
    matcher: the matcher that ran ("mnn", "superglue", ...; "ratio" for SIFT's ratio test).
    """

    status: str
    reason: str | None
    transform: TransformModel
    matrix: np.ndarray | None
    fixed_size: tuple[int, int]
    moving_size: tuple[int, int]
    keypoints_fixed: np.ndarray
    keypoints_moving: np.ndarray
    matches: np.ndarray
    match_scores: np.ndarray
    inliers: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    coefficients: np.ndarray | None = None
    #: With ``auto`` (or ``quadratic``): the leave-one-out residuals and why a model was taken.
    model_selection: dict | None = None
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    provider: str = ""
    features: str = FeatureName.SUPERPOINT.value
    matcher: str = MatcherName.MNN.value

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def affine(self) -> np.ndarray | None:
        """``(2, 3)`` moving -> fixed, as ``cv2.warpAffine`` takes it; None unless the fitted
        model is an affine or a similarity."""
        if self.matrix is None or self.transform is TransformModel.HOMOGRAPHY:
            return None
        return self.matrix[:2].copy()

    @property
    def parameters(self) -> np.ndarray | None:
        """The fitted model's parameters: ``coefficients`` of a quadratic, else ``matrix``."""
        return self.coefficients if self.transform is TransformModel.QUADRATIC else self.matrix

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` MOVING pixels -> FIXED pixels (original resolution) by the fitted model."""
        if not self.ok or self.parameters is None:
            raise RegistrationFailedError(f"no transform: registration failed ({self.reason})")
        return map_points(self.transform, self.parameters, points)

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())

    def to_json(self) -> dict:
        """The CLI's JSON object (DESIGN.md, "The CLI contract")."""
        return {
            "status": self.status,
            "reason": self.reason,
            "transform": self.transform.value,
            "affine": None if self.affine is None else self.affine.tolist(),
            "matrix": None if self.matrix is None else self.matrix.tolist(),
            "quadratic": None if self.coefficients is None else {
                "terms": list(QUADRATIC_TERMS), "coefficients": self.coefficients.tolist()},
            "model_selection": self.model_selection,
            "fixed_size": list(self.fixed_size),
            "moving_size": list(self.moving_size),
            "num_keypoints": [len(self.keypoints_fixed), len(self.keypoints_moving)],
            "num_matches": len(self.matches),
            "num_inliers": self.num_inliers,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "features": self.features,
            "matcher": self.matcher,
            "models": self.models,
            "provider": self.provider,
        }


class Registrar:
    """Loads the graphs once; ``register`` may then be called for many pairs, from many threads."""

    def __init__(self, config: RegistrarConfig = RegistrarConfig(),
                 superpoint_model: str | os.PathLike | None = None,
                 matcher_model: str | os.PathLike | None = None):
        self.config = config
        self.front_end = FeatureName(config.features)
        matcher = resolved_matcher(self.front_end, config.matcher)
        if self.front_end is FeatureName.SIFT and matcher is not MatcherName.MNN:
            raise InvalidConfigError(
                f"features 'sift' cannot go with matcher '{matcher.value}': "
                "the learned matchers were trained on SuperPoint keypoints and descriptors; "
                "SIFT is matched by its ratio test (matcher 'mnn')")
        session_options = dict(device=config.device, threads=config.threads,
                               allow_cpu_fallback=config.allow_cpu_fallback)
        # SIFT needs no ONNX session: a SIFT registrar loads no graph at all.
        self.superpoint: SuperPointRunner | None = None
        if self.front_end is FeatureName.SUPERPOINT:
            self.superpoint = SuperPointRunner(
                superpoint_model or default_superpoint(config.precision), **session_options)
        self.superglue: SuperGlueRunner | None = None
        self.lightglue: LightGlueRunner | None = None
        if matcher is MatcherName.SUPERGLUE:
            self.superglue = SuperGlueRunner(
                matcher_model or default_matcher_graph(MatcherName.SUPERGLUE), **session_options)
        elif matcher is MatcherName.LIGHTGLUE:
            self.lightglue = LightGlueRunner(
                matcher_model or default_matcher_graph(MatcherName.LIGHTGLUE), **session_options)
        if self.superpoint is None:
            self.models = {"sift": dict(SIFT_DESCRIPTION)}
        else:
            self.models = {"superpoint": _describe(self.superpoint.model)}
        if self.superglue is not None:
            self.models["superglue"] = _describe(self.superglue.model)
        if self.lightglue is not None:
            self.models["lightglue"] = _describe(self.lightglue.model)

    @property
    def provider(self) -> str:
        return "opencv" if self.superpoint is None else self.superpoint.model.provider

    @property
    def matcher_name(self) -> str:
        if self.front_end is FeatureName.SIFT:
            return "ratio"
        return resolved_matcher(self.front_end, self.config.matcher).value

    def register(self, fixed: ImageSource, moving: ImageSource,
                 fixed_name: str | None = None, moving_name: str | None = None) -> RegistrationResult:
        """Register MOVING onto FIXED. Bad input raises an OphregError; a pair that cannot be
        registered returns a result with status "failed" and the reason."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        with _timed(timings, "read"):
            fixed_image = read_image(fixed, fixed_name, self.config.max_pixels)
            moving_image = read_image(moving, moving_name, self.config.max_pixels)
        detections_fixed, detections_moving = self.detect([fixed_image, moving_image], timings)
        with _timed(timings, "matching"):
            matches = self.match(detections_fixed, detections_moving)
        result = self.fit(detections_fixed, detections_moving, matches, timings=timings)
        total_ms = (time.perf_counter() - started) * 1000.0
        return replace(result, timings_ms={**result.timings_ms, "total": total_ms})

    def detect(self, images: Sequence[np.ndarray],
               timings: dict[str, float] | None = None) -> list[Detections]:
        """Keypoints of each image (arrays as ``read_image`` returns them), configured front end.

        With ``config.mask.enabled`` (the default), keypoints outside the fundus field of
        view, on the image frame and on burnt-in overlays are dropped (ophreg_rt/masks.py).
        Together with :meth:`match` and :meth:`fit` this is ``register`` in three public steps,
        so a caller can reuse one image's detections for many pairs, one set of detections for
        several matchers, or one set of matches for several transform models.
        """
        timings = {} if timings is None else timings
        network_size = self.config.preprocess.size
        if self.superpoint is None:
            with _timed(timings, "preprocess"):
                greys = [network_grey(image, self.config.preprocess) for image in images]
            with _timed(timings, "sift"):
                features = [detect_sift(grey, self.config.sift) for grey in greys]
        else:
            with _timed(timings, "preprocess"):
                batch = np.stack([network_input(image, self.config.preprocess)
                                  for image in images])
            with _timed(timings, "superpoint"):
                features = self.superpoint(batch)
        # The mask is computed on the original image, not on the network's view: colour and
        # true saturation (what tells a pen's stroke from a vessel or the optic disc) are gone
        # from the CLAHE'd single channel, and one mask then serves every front end and
        # preprocessing; keypoints are looked up in original pixels, where they are mapped anyway.
        masks: list[np.ndarray | None] = [None] * len(images)
        if self.config.mask.enabled:
            with _timed(timings, "mask"):
                masks = [keypoint_mask(image, self.config.mask) for image in images]
        detections = []
        for image, found, mask in zip(images, features, masks):
            size = (image.shape[1], image.shape[0])
            keypoints = network_to_original(found.keypoints, size, network_size)
            if mask is not None:
                # Dropped before matching, so that no matcher ever sees the surround, the
                # frame or an overlay: a learned matcher's attention would use them too.
                keep = inside(mask, keypoints)
                found, keypoints = select(found, keep), keypoints[keep]
            detections.append(Detections(
                features=found, keypoints=keypoints,
                image_size=size, network_size=network_size, front_end=self.front_end))
        return detections

    def match(self, fixed: Detections, moving: Detections) -> Matches:
        """Correspondences (index into ``fixed``, index into ``moving``), configured matcher."""
        for detections in (fixed, moving):
            if detections.front_end is not self.front_end:
                raise InvalidConfigError(
                    f"a {self.front_end.value} registrar cannot match "
                    f"{detections.front_end.value} detections")
        if self.front_end is FeatureName.SIFT:
            return ratio_test_matches(fixed.features, moving.features, self.config.sift)
        return self._match(fixed.features, moving.features, fixed.network_size)

    def fit(self, fixed: Detections, moving: Detections, matches: Matches,
            model: TransformModel | None = None,
            timings: dict[str, float] | None = None) -> RegistrationResult:
        """RANSAC, refusal and result for given correspondences.

        ``model`` overrides ``config.ransac.model``, so one set of matches can be fitted with
        each transform model. A quadratic (and ``auto``) starts from an affine RANSAC and grows
        the quadratic on its inliers (:func:`quadratic.best_quadratic`).
        """
        timings = {} if timings is None else timings
        requested = TransformModel(self.config.ransac.model if model is None else model)
        planar = ransac_model(requested)
        ransac_config = replace(self.config.ransac, model=planar)
        fixed_size, moving_size = fixed.image_size, moving.image_size
        src = moving.keypoints[matches.pairs[:, 1]]
        dst = fixed.keypoints[matches.pairs[:, 0]]
        threshold = ransac_config.threshold * max(fixed_size) / REFERENCE_SIZE
        with _timed(timings, "ransac"):
            fit = ransac(src, dst, ransac_config, threshold,
                         np.random.default_rng(self.config.seed))
        outcome = dict(status=STATUS_OK, reason=None, transform=planar, matrix=fit.matrix,
                       inliers=np.asarray(fit.inliers, dtype=bool))
        if fit.status != STATUS_OK:
            outcome.update(status=STATUS_FAILED, reason=fit.reason, matrix=None)
        else:
            refusal = implausibility(fit.matrix, planar, fixed_size, moving_size,
                                     self.config.plausibility) or sparse_support(
                fit.matrix, dst[fit.inliers], fixed_size, moving_size, self.config.plausibility)
            if refusal is not None:
                outcome.update(status=STATUS_FAILED, reason=refusal, matrix=None)
            elif requested in GROWN_MODELS:
                with _timed(timings, "quadratic"):
                    outcome.update(self._grow(requested, src, dst, outcome["inliers"],
                                              threshold, fixed_size, moving_size))
        return RegistrationResult(
            fixed_size=fixed_size, moving_size=moving_size,
            keypoints_fixed=fixed.keypoints, keypoints_moving=moving.keypoints,
            matches=matches.pairs, match_scores=matches.scores, timings_ms=timings,
            models=dict(self.models), provider=self.provider, features=self.front_end.value,
            matcher=self.matcher_name, **outcome)

    def _grow(self, requested: TransformModel, src: np.ndarray, dst: np.ndarray,
              seed_inliers: np.ndarray, threshold: float, fixed_size: tuple[int, int],
              moving_size: tuple[int, int]) -> dict:
        """The quadratic grown from an accepted affine, or the affine when ``auto`` prefers it,
        as the fields of a RegistrationResult that change."""
        config = self.config.quadratic
        fit = best_quadratic(src, dst, seed_inliers, threshold, config, self.config.ransac,
                             np.random.default_rng(self.config.seed))
        refusal = "the inliers do not determine a quadratic" if fit is None else \
            quadratic_implausibility(fit, fixed_size, moving_size, self.config.plausibility,
                                     config, dst[fit.inliers], src[fit.inliers])
        selection = {"requested": requested.value,
                     "loo_rms_px": None if fit is None else
                     {name: round(value, 4) for name, value in fit.loo_rms.items()}}
        if refusal is None and requested is TransformModel.AUTO:
            gain = fit.loo_rms["quadratic"] / max(fit.loo_rms["affine"], 1e-12)
            if gain >= config.auto_gain:
                refusal = (f"the quadratic predicts held-out inliers {gain:.2f} times as far as "
                           f"the affine, not below {config.auto_gain:g}")
        if refusal is None:
            if config.cauchy_rounds:
                refined = refined_fit(fit, src, dst, threshold, config)
                # Kept only where it passes the same checks (it moved the inliers).
                if quadratic_implausibility(refined, fixed_size, moving_size,
                                            self.config.plausibility, config,
                                            dst[refined.inliers], src[refined.inliers]) is None:
                    fit = refined
            selection["chosen"] = TransformModel.QUADRATIC.value
            return dict(transform=TransformModel.QUADRATIC, matrix=None,
                        coefficients=fit.coefficients, inliers=fit.inliers,
                        model_selection=selection)
        selection["why_not_quadratic"] = refusal
        if requested is TransformModel.AUTO:
            selection["chosen"] = TransformModel.AFFINE.value
            return dict(model_selection=selection)
        return dict(status=STATUS_FAILED, reason=refusal, transform=TransformModel.QUADRATIC,
                    matrix=None, model_selection=selection)

    def warp(self, moving: ImageSource, result: RegistrationResult) -> np.ndarray:
        """The moving image in the fixed frame; refuses a failed registration."""
        if not result.ok or result.parameters is None:
            raise RegistrationFailedError(f"cannot warp: registration failed ({result.reason})")
        moving_image = read_image(moving, max_pixels=self.config.max_pixels)
        return warp_image(moving_image, result.parameters, result.transform, result.fixed_size)

    def _match(self, features_fixed: Features, features_moving: Features,
               network_size: tuple[int, int]) -> Matches:
        if self.superglue is not None:
            return self.superglue(features_fixed, features_moving, network_size, network_size)
        if self.lightglue is not None:
            return self.lightglue(features_fixed, features_moving, network_size, network_size)
        return mutual_nearest_neighbours(features_fixed, features_moving, self.config.mnn)


def _describe(model) -> dict[str, str]:
    return {"file": model.path.name, "sha256": model.sha256}


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[stage] = (time.perf_counter() - started) * 1000.0
