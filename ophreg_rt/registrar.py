"""The engine: two eye images in, a verified transform (or an honest refusal) out."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .config import REFERENCE_SIZE, MatcherName, RegistrarConfig, TransformModel
from .errors import RegistrationFailedError
from .features import Features, SuperPointRunner
from .imageio import ImageSource, read_image
from .matching import Matches, SuperGlueRunner, mutual_nearest_neighbours
from .model_files import default_matcher_graph, default_superpoint
from .preprocess import network_input, network_to_original
from .ransac import STATUS_FAILED, STATUS_OK, ransac
from .transforms import implausibility, warp_image


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of one registration. Image 0 is FIXED (target), image 1 is MOVING (source).

    status: "ok" or "failed"; reason says why it failed (None when ok).
    transform: the fitted model (affine, similarity or homography).
    matrix: ``(3, 3)`` float64 mapping MOVING pixel (x, y) to FIXED pixel (x, y), original
        resolution, pixel centres at integers; None when failed.
    fixed_size, moving_size: (width, height) in pixels.
    keypoints_fixed, keypoints_moving: ``(N, 2)`` float64 keypoints in original pixels.
    matches: ``(M, 2)`` int64 (index into keypoints_fixed, index into keypoints_moving).
    match_scores: ``(M,)`` float32 matcher confidence.
    inliers: ``(M,)`` bool, the matches RANSAC kept (all False when it found no model).
    timings_ms: milliseconds per stage.
    models: graph file name and sha256 per model used.
    provider: the onnxruntime execution provider that ran the graphs.
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
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    provider: str = ""

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def affine(self) -> np.ndarray | None:
        """``(2, 3)`` moving -> fixed, as ``cv2.warpAffine`` takes it; None for homographies."""
        if self.matrix is None or self.transform is TransformModel.HOMOGRAPHY:
            return None
        return self.matrix[:2].copy()

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
            "fixed_size": list(self.fixed_size),
            "moving_size": list(self.moving_size),
            "num_keypoints": [len(self.keypoints_fixed), len(self.keypoints_moving)],
            "num_matches": len(self.matches),
            "num_inliers": self.num_inliers,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "models": self.models,
            "provider": self.provider,
        }


class Registrar:
    """Loads the graphs once; ``register`` may then be called for many pairs, from many threads."""

    def __init__(self, config: RegistrarConfig = RegistrarConfig(),
                 superpoint_model: str | os.PathLike | None = None,
                 matcher_model: str | os.PathLike | None = None):
        self.config = config
        session_options = dict(device=config.device, threads=config.threads,
                               allow_cpu_fallback=config.allow_cpu_fallback)
        self.superpoint = SuperPointRunner(superpoint_model or default_superpoint(),
                                           **session_options)
        self.superglue: SuperGlueRunner | None = None
        if MatcherName(config.matcher) is MatcherName.SUPERGLUE:
            self.superglue = SuperGlueRunner(
                matcher_model or default_matcher_graph(MatcherName.SUPERGLUE), **session_options)
        self.models = {"superpoint": _describe(self.superpoint.model)}
        if self.superglue is not None:
            self.models["superglue"] = _describe(self.superglue.model)

    @property
    def provider(self) -> str:
        return self.superpoint.model.provider

    def register(self, fixed: ImageSource, moving: ImageSource,
                 fixed_name: str | None = None, moving_name: str | None = None) -> RegistrationResult:
        """Register MOVING onto FIXED. Bad input raises an OphregError; a pair that cannot be
        registered returns a result with status "failed" and the reason."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        fixed_image = read_image(fixed, fixed_name)
        moving_image = read_image(moving, moving_name)
        fixed_size = (fixed_image.shape[1], fixed_image.shape[0])
        moving_size = (moving_image.shape[1], moving_image.shape[0])
        keypoints_fixed, keypoints_moving, matches = self._correspondences(
            fixed_image, moving_image, timings)

        with _timed(timings, "ransac"):
            threshold = self.config.ransac.threshold * max(fixed_size) / REFERENCE_SIZE
            fit = ransac(keypoints_moving[matches.pairs[:, 1]],
                         keypoints_fixed[matches.pairs[:, 0]],
                         self.config.ransac, threshold, np.random.default_rng(self.config.seed))
        status, reason, matrix = STATUS_OK, None, fit.matrix
        if fit.status != STATUS_OK:
            status, reason, matrix = STATUS_FAILED, fit.reason, None
        else:
            refusal = implausibility(fit.matrix, self.config.ransac.model, fixed_size,
                                     moving_size, self.config.plausibility)
            if refusal is not None:
                status, reason, matrix = STATUS_FAILED, refusal, None
        timings["total"] = (time.perf_counter() - started) * 1000.0
        return RegistrationResult(
            status=status, reason=reason, transform=TransformModel(self.config.ransac.model),
            matrix=matrix, fixed_size=fixed_size, moving_size=moving_size,
            keypoints_fixed=keypoints_fixed, keypoints_moving=keypoints_moving,
            matches=matches.pairs, match_scores=matches.scores,
            inliers=np.asarray(fit.inliers, dtype=bool), timings_ms=timings,
            models=dict(self.models), provider=self.provider)

    def _correspondences(self, fixed_image: np.ndarray, moving_image: np.ndarray,
                         timings: dict[str, float]) -> tuple[np.ndarray, np.ndarray, Matches]:
        """Keypoints of both images in original pixels, and the matches between them.

        The seam between features and geometry: everything after it (RANSAC, refusal, warp)
        is the same whatever detector and matcher produced the correspondences.
        """
        network_size = self.config.preprocess.size
        with _timed(timings, "preprocess"):
            batch = np.stack([network_input(fixed_image, self.config.preprocess),
                              network_input(moving_image, self.config.preprocess)])
        with _timed(timings, "superpoint"):
            features_fixed, features_moving = self.superpoint(batch)
        with _timed(timings, "matching"):
            matches = self._match(features_fixed, features_moving, network_size)
        fixed_size = (fixed_image.shape[1], fixed_image.shape[0])
        moving_size = (moving_image.shape[1], moving_image.shape[0])
        return (network_to_original(features_fixed.keypoints, fixed_size, network_size),
                network_to_original(features_moving.keypoints, moving_size, network_size),
                matches)

    def warp(self, moving: ImageSource, result: RegistrationResult) -> np.ndarray:
        """The moving image in the fixed frame; refuses a failed registration."""
        if not result.ok or result.matrix is None:
            raise RegistrationFailedError(f"cannot warp: registration failed ({result.reason})")
        return warp_image(read_image(moving), result.matrix, result.transform, result.fixed_size)

    def _match(self, features_fixed: Features, features_moving: Features,
               network_size: tuple[int, int]) -> Matches:
        if self.superglue is not None:
            return self.superglue(features_fixed, features_moving, network_size, network_size)
        return mutual_nearest_neighbours(features_fixed, features_moving, self.config.mnn)


def _describe(model) -> dict[str, str]:
    return {"file": model.path.name, "sha256": model.sha256}


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[stage] = (time.perf_counter() - started) * 1000.0
