"""The seed-spread benchmark: its hull test, and a real run of two seeds on the real pairs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import seed_spread


def test_inside_hull_keeps_the_points_of_the_hull_and_its_edges():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10], [5, 5]], float)
    points = np.array([[5, 5], [0, 5], [10, 10], [10.5, 5], [-1, -1]], float)
    assert seed_spread.inside_hull(points, square).tolist() == [True, True, True, False, False]


@pytest.mark.slow
def test_two_seeds_on_the_real_pairs_write_the_report(tmp_path, data_dir):
    out = tmp_path / "spread.json"
    assert seed_spread.main(["--seeds", "2", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["seeds"] == 2 and document["transform"] == "auto"
    assert set(document["pairs"]) == {"varia_R067_R118", "toolbox_example", "toolbox_fundus",
                                      "cf_fa_demo"}
    for row in document["pairs"].values():
        errors = row["errors_px"]
        assert len(errors) == 2 and errors[0] == row["error_px"]["seed0"]
        assert row["error_px"]["min"] == pytest.approx(min(errors))
        assert row["error_px"]["max"] == pytest.approx(max(errors))
        # Every registered pair is within a few px of its control points (README's table).
        assert 0 < row["error_px"]["seed0"] < 3
        field, hull = row["max_difference_px"]["shared_field"], row["max_difference_px"]["inlier_hull"]
        assert 0 <= hull <= field and math.isfinite(field)
        assert sum(row["models"].values()) == 2
    assert "| cf_fa_demo |" in out.with_suffix(".md").read_text()
