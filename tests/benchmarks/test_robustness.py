"""The robustness benchmark runs its cases and classifies them (two cheap ones here; the whole
table is `python -m benchmarks.robustness`)."""

from __future__ import annotations

from benchmarks import robustness


def test_cases_are_classified_and_a_clean_run_exits_0(capsys):
    names = ["png-truncated", "threshold-inf", "float16-array"]
    assert robustness.main(["--only", *names]) == 0
    out = capsys.readouterr().out
    for name in names:
        (row,) = [line for line in out.splitlines() if line.startswith(name)]
        assert robustness.CLEAN in row or robustness.EXPECTED in row


def test_case_names_are_unique():
    names = [case.name for case in robustness.CASES]
    assert len(names) == len(set(names))
