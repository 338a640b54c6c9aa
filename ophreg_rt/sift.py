"""The classical front end: OpenCV SIFT and Lowe's ratio test (the method's baseline).

SIFT sees exactly the image SuperPoint sees (``preprocess.network_grey``), and its matches go
through the same RANSAC, refusal and warp, so the two front ends differ only in their
correspondences.
"""

from __future__ import annotations

import cv2
import numpy as np

from .config import SiftConfig
from .types import Features, Matches, no_matches

#: What the result's ``models`` record says ran: OpenCV's SIFT has no weights file to hash.
SIFT_DESCRIPTION = {"file": f"opencv {cv2.__version__} SIFT", "sha256": ""}


def detect_sift(grey: np.ndarray, config: SiftConfig = SiftConfig()) -> Features:
    """SIFT keypoints of one ``(H, W)`` uint8 image, strongest response first.

    keypoints in (x, y) pixels of ``grey``; scores are OpenCV's responses; descriptors are
    ``(N, 128)`` float32, L2-normalised so that a dot product compares them as for SuperPoint.
    """
    # One detector per call: OpenCV does not promise that a Feature2D is safe across threads,
    # and creating one costs microseconds against the detection's tens of milliseconds.
    sift = cv2.SIFT_create(nfeatures=config.max_features,
                           contrastThreshold=config.contrast_threshold)
    keypoints, descriptors = sift.detectAndCompute(grey, None)
    if not keypoints:
        return Features(keypoints=np.zeros((0, 2), np.float32), scores=np.zeros((0,), np.float32),
                        descriptors=np.zeros((0, 128), np.float32))
    points = np.array([k.pt for k in keypoints], np.float32)
    responses = np.array([k.response for k in keypoints], np.float32)
    order = np.argsort(-responses, kind="stable")
    descriptors = descriptors[order].astype(np.float32)
    descriptors /= np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    return Features(keypoints=points[order], scores=responses[order], descriptors=descriptors)


def ratio_test_matches(features0: Features, features1: Features,
                       config: SiftConfig = SiftConfig()) -> Matches:
    """Pairs whose nearest neighbour is clearly nearer than the second (Lowe's ratio test).

    With ``config.mutual`` the pair must also be nearest neighbours the other way round.
    scores: ``1 - d1 / d2``, the margin of the ratio test (higher is more distinctive).
    """
    if len(features0) < 2 or len(features1) < 2:
        return no_matches()
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    nearest = matcher.knnMatch(features0.descriptors, features1.descriptors, k=2)
    index0 = np.array([m[0].queryIdx for m in nearest], np.int64)
    index1 = np.array([m[0].trainIdx for m in nearest], np.int64)
    first = np.array([m[0].distance for m in nearest], np.float64)
    second = np.array([m[1].distance for m in nearest], np.float64)
    # Identical descriptors (second == 0) cannot tell two places apart: not a match.
    keep = first < config.ratio * second
    if config.mutual:
        backward = matcher.match(features1.descriptors, features0.descriptors)
        nearest0_of1 = np.empty(len(features1), np.int64)
        nearest0_of1[[m.queryIdx for m in backward]] = [m.trainIdx for m in backward]
        keep &= nearest0_of1[index1] == index0
    pairs = np.stack([index0[keep], index1[keep]], axis=1)
    scores = (1.0 - first[keep] / second[keep]).astype(np.float32)
    return Matches(pairs=pairs, scores=scores)
