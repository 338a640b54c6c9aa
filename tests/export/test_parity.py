"""The one kind of parity figures: every export's verdict comes from the same rule, so a
difference past its tolerance or a failed exact check can never print "ok"."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from export.parity import Difference, ParityFigures  # noqa: E402

pytestmark = pytest.mark.export


def figures(value: float = 1e-4, held: bool = True) -> ParityFigures:
    return ParityFigures("case", {"score": Difference(value, 5e-4)}, {"matches identical": held},
                         {"matches": 12})


def test_figures_within_tolerance_and_exact_are_ok():
    assert figures().ok
    assert figures().line() == ("case: max |score diff| 1.0e-04 (tolerance 0.0005), "
                                "matches identical: True, 12 matches: ok")


@pytest.mark.parametrize("value,held", [(6e-4, True), (1e-4, False), (float("inf"), True),
                                        (float("nan"), True)])
def test_a_difference_past_its_tolerance_or_a_failed_fact_fails(value, held):
    failed = figures(value, held)
    assert not failed.ok
    assert failed.line().endswith(": FAILED")


def test_a_tolerance_is_inclusive_and_counts_are_never_judged():
    at_limit = ParityFigures("edge", {"x": Difference(5e-4, 5e-4)}, {}, {"matches": 0})
    assert at_limit.ok
