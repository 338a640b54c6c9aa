"""``ophreg report``: pictures rebuilt from result lines (affine, quadratic, old lines), the CSV,
privacy, reuse on a second run, and the page in a real headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CC0_RETINA
from headless_browser import Browser, find_chromium

from ophreg_rt.cli import EXIT_OK, EXIT_USAGE, main
from ophreg_rt.cohort.report import CSV_FILE, REPORT_FILE, overlay, write_outputs
from ophreg_rt.config import TransformModel
from ophreg_rt.imageio import read_image, write_image
from ophreg_rt.transforms import warp_image
from ophreg_rt.visualize import checkerboard

#: Set by .ci/run, where Debian's chromium is installed: a missing browser fails the run there.
REQUIRE_BROWSER = os.environ.get("OPHREG_REQUIRE_BROWSER") == "1"
WIDTH = 320
TRUTH = np.array([[0.96, -0.12, 24.0], [0.12, 0.96, -10.0], [0.0, 0.0, 1.0]])


@pytest.fixture
def batch_dir(tmp_path) -> Path:
    """A batch folder as ``ophreg batch`` leaves it, with one line of each kind: registered
    (affine, quadratic, and an old line with only ``affine``), refused, and an unreadable
    image whose file is named after a patient."""
    image = read_image(CC0_RETINA)
    fixed = cv2.resize(image, (WIDTH, WIDTH), interpolation=cv2.INTER_AREA)
    moving = cv2.warpAffine(fixed, np.linalg.inv(TRUTH)[:2], (WIDTH, WIDTH))
    images = tmp_path / "images"
    write_image(images / "fixed.png", fixed)
    write_image(images / "moving.png", moving)
    out = tmp_path / "out"
    out.mkdir()
    common = {"fixed_path": str(images / "fixed.png"), "moving_path": str(images / "moving.png"),
              "fixed_size": [WIDTH, WIDTH], "moving_size": [WIDTH, WIDTH],
              "num_keypoints": [500, 480], "num_matches": 200, "features": "superpoint",
              "matcher": "lightglue",
              "models": {"superpoint": {"file": "superpoint.onnx", "sha256": "78563fd4ac69"}}}
    quadratic = np.zeros((2, 6))
    quadratic[:, 3:] = TRUTH[:2]
    missing = images / "DOE_JANE_left_eye.png"
    lines = [
        {"pair_id": "a1", "task": "1", "dates": "same_date", **common, "status": "ok",
         "reason": None, "transform": "affine", "affine": TRUTH[:2].tolist(),
         "matrix": TRUTH.tolist(), "num_inliers": 150, "timings_ms": {"total": 812.0}},
        {"pair_id": "q2", "task": "2", "dates": "across_dates", **common, "status": "ok",
         "reason": None, "transform": "quadratic", "affine": None, "matrix": None,
         "quadratic": {"terms": ["x^2", "x*y", "y^2", "x", "y", "1"],
                       "coefficients": quadratic.tolist()},
         "num_inliers": 140, "timings_ms": {"total": 950.0}},
        {"pair_id": "o3", "task": "2", "dates": "same_date", **common, "status": "ok",
         "reason": None, "affine": TRUTH[:2].tolist(), "num_inliers": 120,
         "timings_ms": {"total": 700.0}},
        {"pair_id": "f4", "task": "3", "dates": "across_dates", **common, "status": "failed",
         "reason": "too few inliers: 6 < 10", "affine": None, "num_inliers": 6,
         "timings_ms": {"total": 640.0}},
        {"pair_id": "e5", "task": "3", "dates": "same_date", **common,
         "moving_path": str(missing), "status": "error",
         "reason": f"{missing}: no such file", "error": "ImageReadError",
         "timings_ms": {"total": 1.0}},
    ]
    (out / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (out / "options.json").write_text(json.dumps(
        {"config": {"features": "superpoint", "preprocess": {"size": [1024, 1024],
                                                             "mode": "clahe"},
                    "ransac": {"model": "auto", "threshold": 4.0}, "seed": 0},
         "superpoint": "", "matcher_model": ""}))
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def picture(out: Path, row: dict, name: str) -> np.ndarray:
    return read_image(out / row[name])


def test_pictures_are_rebuilt_from_the_result_lines_whatever_the_model(batch_dir):
    outcome = write_outputs(batch_dir)
    # Two pictures of each registered pair, one (fixed and moving as read) of the others.
    assert outcome.pairs == 5 and outcome.pictures_drawn == 3 * 2 + 2
    rows = {row["pair_id"]: row for row in read_csv(batch_dir / CSV_FILE)}
    fixed = read_image(batch_dir.parent / "images" / "fixed.png")
    moving = read_image(batch_dir.parent / "images" / "moving.png")
    warped = warp_image(moving, TRUTH, TransformModel.AFFINE, (WIDTH, WIDTH))
    expected = {"checkerboard": checkerboard(fixed, warped), "overlay": overlay(fixed, warped)}
    for pair_id in ("a1", "q2", "o3"):  # the quadratic and the old line are the same map
        for name, truth in expected.items():
            drawn = picture(batch_dir, rows[pair_id], name)
            assert np.abs(drawn.astype(float) - truth).mean() < 3.0, (pair_id, name)
    # Registered: the moving image lands on the fixed one, so the overlay's magenta (fixed)
    # and green (warped) agree inside the eye.
    inside = expected["overlay"][:, :, 1] > 0
    agreement = np.corrcoef(expected["overlay"][:, :, 0][inside],
                            expected["overlay"][:, :, 1][inside])[0, 1]
    assert agreement > 0.9
    assert rows["q2"]["transform"] == "quadratic" and rows["o3"]["transform"] == "affine"
    assert rows["f4"]["status"] == "refused" and rows["e5"]["status"] == "error"
    assert rows["f4"]["checkerboard"] == "" and rows["a1"]["time_s"] == "0.812"


def test_a_second_report_reuses_its_pictures(batch_dir):
    first = write_outputs(batch_dir)
    second = write_outputs(batch_dir)
    assert first.pictures_drawn > 0 and second.pictures_drawn == 0
    assert (batch_dir / REPORT_FILE).is_file()


def test_paths_are_shown_only_when_asked_and_cut_out_of_reasons(batch_dir, capsys):
    assert main(["report", str(batch_dir)]) == EXIT_OK
    page, table = (batch_dir / REPORT_FILE).read_text(), (batch_dir / CSV_FILE).read_text()
    for text in (page, table, capsys.readouterr().err):
        assert "DOE_JANE" not in text and str(batch_dir.parent / "images") not in text
    assert "MOVING: no such file" in table and "MOVING: no such file" in page
    assert "--show-paths off" in page and "auto" in page  # the options that produced it
    assert main(["report", str(batch_dir), "--show-paths"]) == EXIT_OK
    page, rows = (batch_dir / REPORT_FILE).read_text(), read_csv(batch_dir / CSV_FILE)
    assert "DOE_JANE_left_eye.png" in page and rows[4]["moving_path"].endswith(
        "DOE_JANE_left_eye.png")


def test_report_of_a_folder_without_results_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no results.jsonl" in error


@pytest.fixture(scope="module")
def chromium() -> str:
    executable = find_chromium()
    if executable is None:
        message = "no chromium (Debian: apt-get install chromium)"
        if REQUIRE_BROWSER:
            pytest.fail(message + " and OPHREG_REQUIRE_BROWSER=1", pytrace=False)
        pytest.skip(message)
    return executable


def test_the_page_works_in_a_real_headless_browser(batch_dir, chromium, tmp_path):
    write_outputs(batch_dir)
    with Browser(chromium, tmp_path / "profile") as browser:
        browser.open((batch_dir / REPORT_FILE).as_uri())
        rows = "document.querySelectorAll('#pairs tbody tr')"
        visible = f"Array.from({rows}).filter(r => !r.hidden && r.offsetHeight > 0).length"
        assert browser.evaluate(f"{rows}.length") == 5
        assert browser.evaluate(visible) == 5
        # Every thumbnail decoded (an inline image the policy or the encoder broke has no size).
        assert browser.evaluate("Array.from(document.images).every(i => i.complete && "
                                "i.naturalWidth > 0)")
        assert browser.evaluate("document.images.length") == 3 * 2 + 2
        screenshot = browser.screenshot(tmp_path / "report.png")
        # Filter: registered pairs off, then task 3 only.
        browser.evaluate("document.querySelector('input[data-status=ok]').click()")
        assert browser.evaluate(visible) == 2
        assert browser.evaluate("document.getElementById('shown').textContent") == \
            "2 of 5 pairs shown"
        browser.evaluate("document.querySelector('input[data-status=ok]').click();"
                         "const task = document.getElementById('task'); task.value = '2';"
                         "task.dispatchEvent(new Event('change'))")
        assert browser.evaluate(visible) == 2
        assert browser.problems == []  # no console error, exception, or blocked load
    image = read_image(screenshot)
    assert image.shape[1] == 1400 and image.shape[0] > 900
    keep = os.environ.get("OPHREG_SCREENSHOT_DIR")
    if keep:  # a person looks at it (DESIGN.md, "Cohorts")
        shutil.copy(screenshot, Path(keep) / "report.png")
