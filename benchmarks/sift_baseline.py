"""The paper's baseline: SIFT + ratio test, then the engine's own RANSAC, refusal and warp.

Only the correspondences differ from ``Registrar``: SIFT (OpenCV) on the same preprocessed
1024x1024 input, Lowe's ratio test at 0.8, keypoints mapped back with the same function.
"""

from __future__ import annotations

import cv2
import numpy as np

from ophreg_rt import Registrar, RegistrarConfig
from ophreg_rt.matching import Matches
from ophreg_rt.preprocess import network_input, network_to_original

#: Lowe's ratio (Lowe 2004 used 0.8).
RATIO = 0.8


class SiftRegistrar(Registrar):
    def __init__(self, config: RegistrarConfig = RegistrarConfig()):
        self.config = config
        self.models = {"sift": {"file": f"opencv {cv2.__version__}", "sha256": ""}}
        self._sift = cv2.SIFT_create()

    @property
    def provider(self) -> str:
        return "opencv"

    def _correspondences(self, fixed_image, moving_image, timings):
        size = self.config.preprocess.size
        grey = [np.round(network_input(image, self.config.preprocess)[0] * 255).astype(np.uint8)
                for image in (fixed_image, moving_image)]
        found = [self._sift.detectAndCompute(g, None) for g in grey]
        points = [np.array([k.pt for k in keypoints], np.float64).reshape(-1, 2)
                  for keypoints, _ in found]
        pairs = []
        if len(points[0]) >= 2 and len(points[1]) >= 2:
            for candidates in cv2.BFMatcher(cv2.NORM_L2).knnMatch(found[0][1], found[1][1], k=2):
                if len(candidates) == 2 and candidates[0].distance < RATIO * candidates[1].distance:
                    pairs.append((candidates[0].queryIdx, candidates[0].trainIdx))
        pairs = np.array(pairs, np.int64).reshape(-1, 2)
        sizes = [(image.shape[1], image.shape[0]) for image in (fixed_image, moving_image)]
        return (network_to_original(points[0], sizes[0], size),
                network_to_original(points[1], sizes[1], size),
                Matches(pairs=pairs, scores=np.ones(len(pairs), np.float32)))
