"""Registering a list of pairs with known truth, and the report both evaluators write."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np

from ..config import DETECTION_CACHE_IMAGES, TransformModel
from ..detection_cache import DetectionCache
from ..errors import OphregError
from ..ransac import STATUS_ERROR
from ..registrar import Registrar, RegistrationResult
from ..transforms import apply
from . import protocol

#: The affine truth is compared on this many points per side of a grid over the moving image.
GRID_POINTS_PER_SIDE = 11


class Truth(Protocol):
    def errors(self, estimate: np.ndarray | protocol.Mapping,
               moving_size: tuple[int, int]) -> np.ndarray:
        """Point errors (fixed-image pixels) of ``estimate``: a 3x3 matrix (moving -> fixed)
        or a function mapping moving pixels to fixed ones (any transform model)."""


@dataclass(frozen=True)
class ControlPoints:
    """Corresponding points: ``moving[i]`` in the moving image is ``fixed[i]`` in the fixed."""

    moving: np.ndarray  # (N, 2) x, y
    fixed: np.ndarray  # (N, 2) x, y

    def errors(self, estimate: np.ndarray | protocol.Mapping,
               moving_size: tuple[int, int]) -> np.ndarray:
        return protocol.point_errors(estimate, self.moving, self.fixed)


@dataclass(frozen=True)
class AffineTruth:
    """A true transform (3x3, moving -> fixed). Its error is measured where the moving image
    is: on a GRID_POINTS_PER_SIDE² grid spanning the moving image from pixel centre (0, 0)
    to (width - 1, height - 1), corners included, in fixed-image pixels."""

    matrix: np.ndarray

    def errors(self, estimate: np.ndarray | protocol.Mapping,
               moving_size: tuple[int, int]) -> np.ndarray:
        points = moving_grid(moving_size)
        return protocol.point_errors(estimate, points, apply(self.matrix, points))


def moving_grid(size: tuple[int, int]) -> np.ndarray:
    width, height = size
    xs = np.linspace(0.0, width - 1.0, GRID_POINTS_PER_SIDE)
    ys = np.linspace(0.0, height - 1.0, GRID_POINTS_PER_SIDE)
    grid_x, grid_y = np.meshgrid(xs, ys)
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


@dataclass(frozen=True)
class Pair:
    """One pair to register. ``group`` is the category AUCs are computed per (FIRE: S, P, A)."""

    name: str
    group: str
    fixed: Path
    moving: Path
    truth: Truth
    details: dict  # what the data set says about the pair, copied into the report


@dataclass(frozen=True)
class PairOutcome:
    pair: Pair
    result: RegistrationResult
    score: protocol.PairScore


def register_pairs(registrar: Registrar, pairs: list[Pair],
                   on_outcome: Callable[[PairOutcome], None] = lambda _: None,
                   detection_cache: int = DETECTION_CACHE_IMAGES) -> list[PairOutcome]:
    """Register and score ``pairs`` in their order (rows print as they finish).

    Pairs that share an image reuse its detections: a ``DetectionCache`` of at most
    ``detection_cache`` images (least recently used dropped; SuperPoint <= 1.03 MiB an image)
    keyed by resolved path, size and modification time, so the results are those of
    ``Registrar.register`` pair by pair (tested). The order is kept (the report lists pairs as
    the data set does), so an image is reused while it is among the last ``detection_cache``
    images seen. 0: ``Registrar.register`` for every pair.
    """
    cache = DetectionCache(registrar, detection_cache) if detection_cache else None
    outcomes = []
    for pair in pairs:
        started = time.perf_counter()
        try:
            if cache is None:
                result = registrar.register(pair.fixed, pair.moving, fixed_name=str(pair.fixed),
                                            moving_name=str(pair.moving))
            else:
                result = cache.register(pair.fixed, pair.moving).result
        except OphregError as exc:
            # One undecodable image costs its pair (failed: an infinite error), not the hour of
            # registrations before and after it.
            result = not_attempted(registrar, str(exc),
                                   (time.perf_counter() - started) * 1000.0)
        errors = None
        if result.ok:
            errors = pair.truth.errors(result.map_points, result.moving_size)
        outcome = PairOutcome(pair, result, protocol.score(errors))
        on_outcome(outcome)
        outcomes.append(outcome)
    return outcomes


def not_attempted(registrar: Registrar, reason: str, total_ms: float) -> RegistrationResult:
    """The result of a pair that could not be registered at all (status "error")."""
    requested = TransformModel(registrar.config.ransac.model)
    empty_points, empty_pairs = np.zeros((0, 2)), np.zeros((0, 2), np.int64)
    return RegistrationResult(
        status=STATUS_ERROR, reason=reason,
        transform=TransformModel.AFFINE if requested is TransformModel.AUTO else requested,
        matrix=None, fixed_size=(0, 0), moving_size=(0, 0), keypoints_fixed=empty_points,
        keypoints_moving=empty_points, matches=empty_pairs,
        match_scores=np.zeros(0, np.float32), inliers=np.zeros(0, bool),
        timings_ms={"total": total_ms}, models=dict(registrar.models), provider=registrar.provider,
        features=registrar.front_end.value, matcher=registrar.matcher_name)


def summary(outcomes: list[PairOutcome], groups: list[str],
            auc_limit_px: int = protocol.AUC_LIMIT_PX) -> dict:
    """Verdict counts and shares, AUC per group (None for a group without pairs), mAUC."""
    counts = protocol.verdict_counts(o.score for o in outcomes)
    total = len(outcomes)
    aucs = {group: protocol.auc([o.score.mean_error for o in outcomes if o.pair.group == group],
                                auc_limit_px)
            for group in groups}
    return {
        "num_pairs": total,
        "counts": counts,
        "shares": {verdict: (count / total if total else None)
                   for verdict, count in counts.items()},
        "auc": aucs,
        "mAUC": protocol.mean_auc(aucs.values()),
        "auc_thresholds_px": [1, auc_limit_px],
    }


def report(dataset: str, source: Path, outcomes: list[PairOutcome], summary_: dict,
           registrar: Registrar, protocol_notes: dict) -> dict:
    """The JSON document written by ``--out``; errors of failed pairs are null (infinite)."""
    return {
        "dataset": dataset,
        "source": str(source),
        "protocol": protocol_notes,
        "config": _plain(registrar.config),
        "models": registrar.models,
        "provider": registrar.provider,
        "summary": summary_,
        "pairs": [_pair_json(o) for o in outcomes],
    }


def _pair_json(outcome: PairOutcome) -> dict:
    result, score = outcome.result, outcome.score
    return {
        "name": outcome.pair.name,
        "group": outcome.pair.group,
        "fixed": str(outcome.pair.fixed),
        "moving": str(outcome.pair.moving),
        **outcome.pair.details,
        "status": result.status,
        "reason": result.reason,
        "verdict": score.verdict,
        "mean_error_px": protocol.finite_or_none(score.mean_error),
        "median_error_px": protocol.finite_or_none(score.median_error),
        "max_error_px": protocol.finite_or_none(score.max_error),
        "transform": result.transform.value,
        "matrix": None if result.matrix is None else result.matrix.tolist(),
        "quadratic": None if result.coefficients is None else result.coefficients.tolist(),
        "num_matches": len(result.matches),
        "num_inliers": result.num_inliers,
        "time_ms": round(result.timings_ms.get("total", math.nan), 1),
    }


def _plain(value):
    """A config dataclass as JSON-ready values (enums by value, tuples as lists)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    return value


def table_header(name_width: int) -> str:
    return (f"{'pair':<{name_width}} {'group':<5} {'verdict':<10} {'mean px':>9} {'median':>9} "
            f"{'max':>9} {'inliers':>7} {'ms':>7}")


def name_width(pairs: list[Pair]) -> int:
    """Wide enough for every pair's name, so that the rows line up as they are printed."""
    return max([len("pair")] + [len(pair.name) for pair in pairs])


def table_row(outcome: PairOutcome, name_width: int) -> str:
    score, result = outcome.score, outcome.result

    def px(value: float) -> str:
        return f"{value:9.2f}" if math.isfinite(value) else f"{'-':>9}"

    row = (f"{outcome.pair.name:<{name_width}} {outcome.pair.group[:5]:<5} {score.verdict:<10} "
           f"{px(score.mean_error)} {px(score.median_error)} {px(score.max_error)} "
           f"{result.num_inliers:>7} {result.timings_ms.get('total', 0.0):>7.0f}")
    if score.failed and result.reason:
        row += f"  ({result.reason})"
    return row


def print_summary(summary_: dict, out: TextIO) -> None:
    total = summary_["num_pairs"]
    shares = ", ".join(f"{verdict} {count}/{total}"
                       + (f" ({100 * summary_['shares'][verdict]:.1f} %)" if total else "")
                       for verdict, count in summary_["counts"].items())
    low, high = summary_["auc_thresholds_px"]
    aucs = ", ".join(f"{group} {'-' if value is None else f'{value:.3f}'}"
                     for group, value in summary_["auc"].items())
    mean = summary_["mAUC"]
    print(f"pairs: {shares}", file=out)
    print(f"AUC ({low}..{high} px): {aucs}; mAUC {'-' if mean is None else f'{mean:.3f}'}",
          file=out)
