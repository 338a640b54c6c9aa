"""The metric of retinal registration benchmarks: control-point errors, verdicts, AUC.

The protocol is FIRE's (Hernandez-Matas et al. 2017) as the field computes it, taken from
the evaluation published with SuperRetina (Liu et al., CVPR 2022; ``test_on_FIRE.py`` and
``common/eval_util.py`` of github.com/ruc-aimc-lab/SuperRetina):

* a pair's error is the mean distance, in the fixed image's native pixels, between the fixed
  image's control points and the moving image's control points mapped by the estimate;
* AUC is the mean, over the thresholds 1, 2, ..., 25 px, of the share of pairs whose error
  is strictly below the threshold; mAUC is the mean of the per-category AUCs;
* a registration that returns no transform is "failed" and its error is infinite, so it
  never falls below any threshold (SuperRetina gives it 1e6 px, which is the same thing);
* a registered pair is "inaccurate" when its largest point error exceeds 50 px or its
  median point error exceeds 20 px (the categories of GLAMpoints, Truong et al. 2019, as
  SuperRetina applies them), and "acceptable" otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..transforms import apply

#: Maps ``(N, 2)`` moving pixels to fixed pixels.
Mapping = Callable[[np.ndarray], np.ndarray]

#: AUC thresholds run 1, 2, ..., AUC_LIMIT_PX (native pixels of the fixed image).
AUC_LIMIT_PX = 25
#: A registered pair is inaccurate above either bound (native pixels).
INACCURATE_MAX_ERROR_PX = 50.0
INACCURATE_MEDIAN_ERROR_PX = 20.0

FAILED = "failed"
INACCURATE = "inaccurate"
ACCEPTABLE = "acceptable"
VERDICTS = (FAILED, INACCURATE, ACCEPTABLE)

#: What the report states about the metric, in words.
NOTES = {
    "auc": f"mean over thresholds 1..{AUC_LIMIT_PX} px of the share of pairs whose mean error "
           "is below the threshold, per group; mAUC is the mean over groups",
    "failed": "no transform returned; its error counts as infinite (below no threshold)",
    "inaccurate": f"registered, but max point error > {INACCURATE_MAX_ERROR_PX:g} px or "
                  f"median point error > {INACCURATE_MEDIAN_ERROR_PX:g} px",
}


@dataclass(frozen=True)
class PairScore:
    """How one registration scored against its truth.

    mean_error, median_error, max_error: px in the fixed image's native resolution, over the
        pair's control points; ``inf`` when the registration failed.
    verdict: "failed", "inaccurate" or "acceptable".
    """

    mean_error: float
    median_error: float
    max_error: float
    verdict: str

    @property
    def failed(self) -> bool:
        return self.verdict == FAILED


def point_errors(estimate: np.ndarray | Mapping, moving_points: np.ndarray,
                 fixed_points: np.ndarray) -> np.ndarray:
    """Distances between ``fixed_points`` and ``moving_points`` mapped by ``estimate``, one per
    point, in fixed-image pixels. ``estimate``: a 3x3 matrix (moving -> fixed, affine or
    projective) or a function mapping ``(N, 2)`` moving pixels to fixed pixels (such as
    ``RegistrationResult.map_points``, for any model)."""
    mapped = estimate(moving_points) if callable(estimate) else apply(estimate, moving_points)
    return np.linalg.norm(mapped - np.asarray(fixed_points, dtype=np.float64), axis=1)


def score(errors: np.ndarray | None) -> PairScore:
    """The score of a pair from its point errors; None stands for a failed registration."""
    if errors is None:
        return PairScore(math.inf, math.inf, math.inf, FAILED)
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        raise ValueError("a pair needs at least one control point")
    largest, median = float(errors.max()), float(np.median(errors))
    inaccurate = largest > INACCURATE_MAX_ERROR_PX or median > INACCURATE_MEDIAN_ERROR_PX
    return PairScore(float(errors.mean()), median, largest,
                     INACCURATE if inaccurate else ACCEPTABLE)


def success_rates(errors: Sequence[float], thresholds: np.ndarray) -> np.ndarray:
    """Per threshold, the share of ``errors`` strictly below it; ``inf`` (a failed
    registration) is below none. The one success curve every AUC here and in the benchmarks
    integrates."""
    errors = np.asarray(errors, dtype=np.float64)
    return (errors[None, :] < np.asarray(thresholds)[:, None]).mean(axis=1)


def auc(mean_errors: Sequence[float], limit_px: int = AUC_LIMIT_PX) -> float | None:
    """Area under the success-rate curve at thresholds 1..limit_px, in [0, 1].

    A pair succeeds at threshold t when its mean error is strictly below t; ``inf`` (a failed
    registration) succeeds nowhere. None for no pairs: an absent category has no AUC.
    """
    if limit_px < 1:
        raise ValueError(f"the AUC needs at least one threshold, got limit {limit_px}")
    errors = np.asarray(mean_errors, dtype=np.float64)
    if errors.size == 0:
        return None
    thresholds = np.arange(1, limit_px + 1, dtype=np.float64)
    return float(success_rates(errors, thresholds).mean())


def mean_auc(aucs: Iterable[float | None]) -> float | None:
    """mAUC: the mean over the categories that have pairs (None when none has)."""
    present = [value for value in aucs if value is not None]
    return float(np.mean(present)) if present else None


def verdict_counts(scores: Iterable[PairScore]) -> dict[str, int]:
    counts = dict.fromkeys(VERDICTS, 0)
    for pair in scores:
        counts[pair.verdict] += 1
    return counts


def finite_or_none(value: float) -> float | None:
    """JSON has no infinity: a failed pair's errors are written as null."""
    return value if math.isfinite(value) else None
