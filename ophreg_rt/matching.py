"""Matchers: mutual nearest neighbours in NumPy; SuperGlue and LightGlue through onnxruntime."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .config import Device, MnnConfig
from .contract import (LIGHTGLUE_INPUTS, LIGHTGLUE_OUTPUTS, SUPERGLUE_INPUTS, SUPERGLUE_OUTPUTS,
                       MetaKey, ModelKind, SuperGlueIO, TensorSpec)
from .sessions import LoadedModel, load_model
from .types import Features, Matches, no_matches


def mutual_nearest_neighbours(features0: Features, features1: Features,
                              config: MnnConfig = MnnConfig()) -> Matches:
    """Pairs that are each other's most similar descriptor, above ``config.min_similarity``."""
    if len(features0) == 0 or len(features1) == 0:
        return no_matches()
    similarity = features0.descriptors @ features1.descriptors.T
    best1 = similarity.argmax(axis=1)
    best0 = similarity.argmax(axis=0)
    index0 = np.arange(len(features0))
    mutual = best0[best1] == index0
    scores = similarity[index0, best1]
    keep = mutual & (scores >= config.min_similarity)
    pairs = np.stack([index0[keep], best1[keep]], axis=1).astype(np.int64)
    return Matches(pairs=pairs, scores=scores[keep].astype(np.float32))


def matcher_feeds(inputs: Sequence[TensorSpec], features0: Features, features1: Features,
                  network_size0: tuple[int, int], network_size1: tuple[int, int]
                  ) -> dict[str, np.ndarray]:
    """The contract inputs of a learned matcher graph for two unpadded feature sets.

    LightGlue's input names are SuperGlue's less the detector scores, so one builder serves both:
    it fills every SuperGlue field and keeps the ones ``inputs`` names.
    """
    values = {}
    for i, (features, size) in enumerate(((features0, network_size0),
                                          (features1, network_size1))):
        values[SuperGlueIO.KEYPOINTS[i]] = features.keypoints[None].astype(np.float32)
        values[SuperGlueIO.SCORES[i]] = features.scores[None].astype(np.float32)
        values[SuperGlueIO.DESCRIPTORS[i]] = features.descriptors[None].astype(np.float32)
        values[SuperGlueIO.MASK[i]] = np.ones((1, len(features)), dtype=bool)
        values[SuperGlueIO.IMAGE_SIZE[i]] = np.array([size], dtype=np.float32)
    return {spec.name: values[spec.name] for spec in inputs}


def matches_from_graph(matches0: np.ndarray, scores0: np.ndarray) -> Matches:
    """Matches of image 0 of a batch of one: ``matches0`` [1, N0] (-1 unmatched), scores [1, N0]."""
    index0 = np.flatnonzero(matches0[0] >= 0)
    pairs = np.stack([index0, matches0[0, index0]], axis=1).astype(np.int64)
    return Matches(pairs=pairs, scores=scores0[0, index0].astype(np.float32))


class _GraphMatcherRunner:
    """A learned matcher graph: contract-checked session, same call for every such graph."""

    kind: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]

    def __init__(self, model_path: str | os.PathLike, device: Device = Device.CPU,
                 threads: int | None = None, allow_cpu_fallback: bool = False):
        self.model: LoadedModel = load_model(
            model_path, self.kind, self.inputs, self.outputs,
            device=device, threads=threads, allow_cpu_fallback=allow_cpu_fallback)
        self._outputs = [SuperGlueIO.MATCHES[0], SuperGlueIO.MATCHING_SCORES[0]]

    def __call__(self, features0: Features, features1: Features,
                 network_size0: tuple[int, int], network_size1: tuple[int, int]) -> Matches:
        """``network_size``: (width, height) of the image each detector saw."""
        if len(features0) == 0 or len(features1) == 0:
            return no_matches()
        feeds = matcher_feeds(self.inputs, features0, features1, network_size0, network_size1)
        return matches_from_graph(*self.model.session.run(self._outputs, feeds))


class SuperGlueRunner(_GraphMatcherRunner):
    """Runs an exported SuperGlue graph (Sinkhorn, mutual check and threshold are in-graph)."""

    kind, inputs, outputs = ModelKind.SUPERGLUE, SUPERGLUE_INPUTS, SUPERGLUE_OUTPUTS


class LightGlueRunner(_GraphMatcherRunner):
    """Runs an exported LightGlue graph (all layers, mutual check and filter threshold in-graph).

    Same call as :class:`SuperGlueRunner`; the detector scores are not an input of LightGlue.
    """

    kind, inputs, outputs = ModelKind.LIGHTGLUE, LIGHTGLUE_INPUTS, LIGHTGLUE_OUTPUTS

    def __init__(self, model_path: str | os.PathLike, device: Device = Device.CPU,
                 threads: int | None = None, allow_cpu_fallback: bool = False):
        super().__init__(model_path, device, threads, allow_cpu_fallback)
        self.filter_threshold = float(self.model.metadata[MetaKey.FILTER_THRESHOLD])
