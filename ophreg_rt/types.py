"""Plain values the front ends and matchers hand each other: what was detected in an image,
and which detections correspond. They carry arrays and nothing else, so that a front end
(OpenCV's SIFT, the SuperPoint graph) and a matcher (NumPy, a graph) depend only on this module,
never on each other's runners."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import FeatureName


@dataclass(frozen=True)
class Features:
    """Detections of one image, padding removed, best score first.

    keypoints: ``(N, 2)`` float32, (x, y) pixels of the image the network saw.
    scores: ``(N,)`` float32 detector confidence: SuperPoint's in (threshold, 1], SIFT's
        OpenCV response.
    descriptors: ``(N, D)`` float32, unit L2 norm (D 256 for SuperPoint, 128 for SIFT).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.keypoints)


@dataclass(frozen=True)
class Matches:
    """Correspondences between image 0 (fixed) and image 1 (moving).

    pairs: ``(M, 2)`` int64, row = (index into features0, index into features1).
    scores: ``(M,)`` float32 confidence (cosine similarity for MNN, assignment probability for
    SuperGlue and LightGlue).
    """

    pairs: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.pairs)


def no_matches() -> Matches:
    return Matches(pairs=np.zeros((0, 2), np.int64), scores=np.zeros((0,), np.float32))


@dataclass(frozen=True)
class Detections:
    """Keypoints of one image from one front end, as the matchers and the geometry need them.

    features: keypoints in pixels of the network input, scores, descriptors (256-d SuperPoint,
        128-d SIFT), strongest first.
    keypoints: ``(N, 2)`` float64, the same keypoints in original pixels.
    image_size, network_size: (width, height) of the original image and of the network input.
    front_end: which front end found them; a matcher refuses another front end's detections.
    """

    features: Features
    keypoints: np.ndarray
    image_size: tuple[int, int]
    network_size: tuple[int, int]
    front_end: FeatureName

    def __len__(self) -> int:
        return len(self.keypoints)
