"""How every export proves itself: its graph and its reference run on the same contract
inputs, and one kind of figures judges the two (differences within stated tolerances, facts that
must hold exactly, counts that show the check was not empty)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ophreg_rt.contract import SUPERGLUE_INPUTS, SuperGlueIO, TensorSpec


@dataclasses.dataclass(frozen=True)
class Difference:
    """The largest absolute difference of one quantity, and the most it may be."""

    value: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.value <= self.tolerance


@dataclasses.dataclass(frozen=True)
class ParityFigures:
    """A graph against its reference on one input.

    ``differences``: per quantity, its largest absolute difference and tolerance;
    ``exact``: facts that must hold (identical matches, padding as the contract says...);
    ``counts``: what the check saw (matches, keypoints), reported, never judged.
    Keys are what the figures' line prints.
    """

    label: str
    differences: Mapping[str, Difference] = dataclasses.field(default_factory=dict)
    exact: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    counts: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (all(d.ok for d in self.differences.values()) and all(self.exact.values()))

    def line(self) -> str:
        parts = [f"max |{name} diff| {d.value:.1e} (tolerance {d.tolerance:g})"
                 for name, d in self.differences.items()]
        parts += [f"{name}: {held}" for name, held in self.exact.items()]
        parts += [f"{count} {name}" for name, count in self.counts.items()]
        return f"{self.label}: {', '.join(parts)}: {'ok' if self.ok else 'FAILED'}"


def onnx_session(path: str | Path, threads: int | None = None):
    """A plain onnxruntime CPU session for parity checks (``threads`` None: its default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_module(model: torch.nn.Module, feeds: Mapping[str, np.ndarray],
               inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
               ) -> dict[str, np.ndarray]:
    """A module's outputs on contract feeds (``inputs``/``outputs``: the contract's TensorSpecs)."""
    with torch.no_grad():
        results = model(*(torch.from_numpy(feeds[spec.name]) for spec in inputs))
    return {spec.name: t.numpy() for spec, t in zip(outputs, results)}


def run_graph(session, feeds: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec],
              outputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """A graph's outputs on the same feeds, by contract name."""
    names = [spec.name for spec in outputs]
    return dict(zip(names, session.run(names, {spec.name: feeds[spec.name] for spec in inputs})))


def synthetic_pair(n0: int, n1: int, size0: tuple[int, int], size1: tuple[int, int], seed: int,
                   batch: int = 1, valid0: int | None = None, valid1: int | None = None,
                   shared: float = 0.5, noise: float = 0.2) -> dict[str, np.ndarray]:
    """Contract inputs for a plausible pair, without a detector.

    Image 0 has ``valid0`` (default ``n0``) keypoints, uniform in the image, with random unit
    descriptors. About ``shared`` of image 1's ``valid1`` keypoints are an affine map (rotation,
    scale, shift) of image-0 keypoints, with those descriptors perturbed by Gaussian noise of
    relative size ``noise`` and re-normalised; the rest are new points. Slots are sorted by
    score, padded slots follow the contract ((-1, -1), 0, zero descriptor, mask False).
    ``size`` is (width, height).
    """
    rng = np.random.default_rng(seed)
    valid0 = n0 if valid0 is None else valid0
    valid1 = n1 if valid1 is None else valid1
    out: dict[str, list[np.ndarray]] = {spec.name: [] for spec in SUPERGLUE_INPUTS}
    for _ in range(batch):
        (w0, h0), (w1, h1) = size0, size1
        kp0 = rng.uniform([0, 0], [w0 - 1, h0 - 1], size=(valid0, 2))
        desc0 = _unit(rng.normal(size=(valid0, 256)))
        angle = rng.uniform(-0.2, 0.2)
        scale = rng.uniform(0.9, 1.1) * min(w1 / w0, h1 / h0)
        linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        shift = np.array([w1, h1]) / 2 - linear @ (np.array([w0, h0]) / 2) + rng.normal(0, 10, 2)
        mapped = kp0 @ linear.T + shift
        inside = np.flatnonzero((mapped >= 0).all(1) & (mapped <= [w1 - 1, h1 - 1]).all(1))
        common = rng.permutation(inside)[:min(len(inside), int(round(shared * valid1)))]
        fresh = valid1 - len(common)
        kp1 = np.concatenate([mapped[common] + rng.normal(0, 0.5, (len(common), 2)),
                              rng.uniform([0, 0], [w1 - 1, h1 - 1], size=(fresh, 2))])
        desc1 = np.concatenate([
            _unit(desc0[common] + noise / 16 * rng.normal(size=(len(common), 256))),
            _unit(rng.normal(size=(fresh, 256)))])
        for i, (kp, desc, n, valid, size) in enumerate(
                ((kp0, desc0, n0, valid0, size0), (kp1, desc1, n1, valid1, size1))):
            score = rng.uniform(0.005, 1.0, size=valid)
            order = np.argsort(-score, kind="stable")
            keypoints = np.full((n, 2), -1.0)
            scores = np.zeros(n)
            descriptors = np.zeros((n, 256))
            mask = np.zeros(n, dtype=bool)
            keypoints[:valid], scores[:valid] = kp[order], score[order]
            descriptors[:valid], mask[:valid] = desc[order], True
            out[SuperGlueIO.KEYPOINTS[i]].append(keypoints)
            out[SuperGlueIO.SCORES[i]].append(scores)
            out[SuperGlueIO.DESCRIPTORS[i]].append(descriptors)
            out[SuperGlueIO.MASK[i]].append(mask)
            out[SuperGlueIO.IMAGE_SIZE[i]].append(np.array(size, dtype=float))
    dtypes = {spec.name: spec.dtype for spec in SUPERGLUE_INPUTS}
    return {name: np.stack(arrays).astype(dtypes[name]) for name, arrays in out.items()}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
