"""SuperPoint through onnxruntime: keypoints, scores and descriptors of a batch of images."""

from __future__ import annotations

import os

import numpy as np

from .config import Device
from .contract import (CELL, SUPERPOINT_INPUTS, SUPERPOINT_OUTPUTS, MetaKey, ModelKind,
                       SuperPointIO)
from .sessions import LoadedModel, load_model
from .types import Features


class SuperPointRunner:
    """Runs an exported SuperPoint graph; one instance serves many images and threads."""

    def __init__(self, model_path: str | os.PathLike, device: Device = Device.CPU,
                 threads: int | None = None, allow_cpu_fallback: bool = False):
        self.model: LoadedModel = load_model(
            model_path, ModelKind.SUPERPOINT, SUPERPOINT_INPUTS, SUPERPOINT_OUTPUTS,
            device=device, threads=threads, allow_cpu_fallback=allow_cpu_fallback)
        self.max_keypoints = int(self.model.metadata[MetaKey.MAX_KEYPOINTS])
        self._output_names = [spec.name for spec in SUPERPOINT_OUTPUTS]

    def __call__(self, images: np.ndarray) -> list[Features]:
        """``images``: ``(B, 1, H, W)`` float32 in [0, 1], H and W multiples of 8."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected images of shape (B, 1, H, W), got {images.shape}")
        height, width = images.shape[2:]
        if height % CELL or width % CELL:
            raise ValueError(f"image size {width}x{height} must be multiples of {CELL}")
        keypoints, scores, descriptors, mask = self.model.session.run(
            self._output_names, {SuperPointIO.IMAGE: images})
        features = []
        for b in range(images.shape[0]):
            # Valid slots come first (sorted by score), so a count is a prefix.
            count = int(mask[b].sum())
            features.append(Features(keypoints=keypoints[b, :count], scores=scores[b, :count],
                                     descriptors=descriptors[b, :count]))
        return features
