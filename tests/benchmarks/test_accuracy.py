"""The accuracy benchmark, run for real on a tiny set: its schema, its metric, its report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import accuracy
from benchmarks.accuracy import MODELS
from benchmarks.known_truth import (CATEGORIES, SUCCESS_PX, make_category_cases, mean_fov_error,
                                    overlap)
from conftest import CC0_RETINA
from ophreg_rt.imageio import read_image, write_image
from ophreg_rt.transforms import apply

PIPELINES = ["SIFT, CLAHE green", "SuperPoint + MNN, CLAHE green"]


def test_auc_is_the_normalised_area_under_the_success_curve():
    assert accuracy.auc(np.array([0.0, np.inf])) == pytest.approx(0.5, abs=1e-3)
    assert accuracy.auc(np.array([5.0])) == pytest.approx(0.5, abs=1e-3)
    assert accuracy.auc(np.array([np.inf, 12.0])) == 0.0


def test_the_error_is_measured_over_the_fixed_field_of_view_in_fixed_pixels():
    case = make_category_cases([CC0_RETINA], per_image=1, seed=3)["small"][0]
    assert mean_fov_error(case.truth, case) == pytest.approx(0.0, abs=1e-9)
    # An estimate off by 4 fixed pixels everywhere is off by 4 px, scaled to a 1024-px side.
    shifted = np.eye(3)
    shifted[0, 2] = 4.0
    expected = 4.0 * 1024 / max(case.fixed.shape[:2])
    assert mean_fov_error(shifted @ case.truth, case) == pytest.approx(expected, rel=1e-9)
    assert math.isinf(mean_fov_error(None, case))
    assert np.allclose(apply(case.truth, apply(np.linalg.inv(case.truth), [[10.0, 20.0]])),
                       [[10.0, 20.0]])


def test_categories_are_deterministic_and_large_motion_only_partly_overlaps():
    first = make_category_cases([CC0_RETINA], per_image=2, seed=5)
    again = make_category_cases([CC0_RETINA], per_image=2, seed=5)
    assert list(first) == list(CATEGORIES)
    for category in CATEGORIES:
        for a, b in zip(first[category], again[category]):
            assert np.array_equal(a.truth, b.truth) and np.array_equal(a.moving, b.moving)
    assert all(overlap(case) < 0.9 for case in first["large"])
    assert all(case.moving.ndim == 2 for case in first["angio"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One real run of the benchmark: the CC0 image, one case per category, two pipelines,
    and one 'real' pair made from a known warp of the same image."""
    data = tmp_path_factory.mktemp("data")
    write_image(data / "single" / "cc0.jpg", read_image(CC0_RETINA))
    pair = make_category_cases([CC0_RETINA], per_image=1, seed=9)["small"][0]
    write_image(data / "pairs" / "cc0_warp" / "fixed.png", pair.fixed)
    write_image(data / "pairs" / "cc0_warp" / "moving.png", pair.moving)
    out = tmp_path_factory.mktemp("out")
    # 512-px network input: a quarter of SuperPoint's work, still a real registration.
    arguments = ["--data-dir", str(data), "--per-image", "1", "--out-dir", str(out),
                 "--size", "512"]
    for name in PIPELINES:
        arguments += ["--only", name]
    accuracy.main(arguments)
    return out, json.loads((out / "accuracy.json").read_text())


# About 5 s of CPU, but tens of seconds of wall time on a busy 2-core machine.
@pytest.mark.slow
def test_the_report_has_every_pipeline_model_and_category(report):
    _, document = report
    assert set(document["pipelines"]) == set(PIPELINES)
    assert document["success_px"] == SUCCESS_PX
    entries = {(e["pipeline"], e["transform"], e["category"]): e for e in document["known_truth"]}
    assert len(entries) == len(PIPELINES) * len(MODELS) * len(CATEGORIES)
    for entry in entries.values():
        assert entry["cases"] == 1 and len(entry["errors_px"]) == 1
        assert 0.0 <= entry["success_rate"] <= 1.0 and 0.0 <= entry["auc"] <= 1.0
        assert entry["median_time_ms"] > 0
    assert set(document["best"]["success_rate"]) == set(CATEGORIES)


@pytest.mark.slow
def test_a_known_good_case_scores_as_a_success(report):
    _, document = report
    # SuperPoint + MNN registers a small known warp of the CC0 image (tests/runtime too).
    entry = next(e for e in document["known_truth"] if e["pipeline"] == PIPELINES[1]
                 and e["transform"] == "affine" and e["category"] == "small")
    assert entry["success_rate"] == 1.0 and entry["errors_px"][0] < SUCCESS_PX
    assert entry["auc"] > 0.5


@pytest.mark.slow
def test_real_pairs_page_shows_each_pipeline_with_picture_and_consistency(report):
    out, document = report
    pair = document["real_pairs"]["cc0_warp"]
    assert set(pair) == set(PIPELINES)
    for entry in pair.values():
        assert entry["status"] == ["ok", "ok"]
        assert 0.0 <= entry["round_trip_px"] < SUCCESS_PX
        assert (out / entry["picture"]).is_file()
    page = (out / "real_pairs.md").read_text()
    assert all(name in page for name in PIPELINES)
    assert (out / "accuracy.md").read_text().count("| SIFT, CLAHE green |") == len(MODELS)
    assert (out / "accuracy_curves.png").stat().st_size > 0
