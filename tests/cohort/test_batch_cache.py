"""``ophreg batch`` detects each distinct image once per group of pairs that share images, and
its results are those of ``Registrar.register`` run pair by pair (only timings differ)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_batch import OPTIONS, cohort, read_results  # noqa: F401 - cohort is a fixture

from ophreg_rt.cli import EXIT_FAILED, EXIT_OK, build_parser, main
from ophreg_rt.cli_options import registration_config
from ophreg_rt.cohort.batch import PairRegistrar, WorkerSpec, group_pairs
from ophreg_rt.cohort.pairing import Pair, read_pairs
from ophreg_rt.registrar import Registrar

#: What a cached line adds to the uncached line (timings differ by nature).
CACHE_ONLY_FIELDS = ("timings_ms", "detections_cached")


def _config(tmp_path: Path):
    args = build_parser().parse_args(["batch", str(tmp_path / "pairs.csv"), "--out-dir",
                                       str(tmp_path / "unused"), *OPTIONS])
    return registration_config(args)


def test_batch_results_equal_register_pair_by_pair(cohort, tmp_path):  # noqa: F811
    _, pairs_file = cohort
    out = tmp_path / "out"
    assert main(["batch", str(pairs_file), "--out-dir", str(out), *OPTIONS]) in (EXIT_OK,
                                                                                 EXIT_FAILED)
    results = read_results(out)
    pairs = read_pairs(pairs_file)
    assert results.keys() == {pair.pair_id for pair in pairs}
    registrar = Registrar(_config(tmp_path))
    cached_somewhere = False
    for pair in pairs:
        line = dict(results[pair.pair_id])
        cached_somewhere |= any(line["detections_cached"])
        expected = registrar.register(pair.fixed_path, pair.moving_path).to_json()
        # Through JSON, as the line was: tuples become lists, floats round-trip exactly.
        expected = json.loads(json.dumps(expected))
        for key in ("status", "reason", "transform", "matrix", "affine", "quadratic",
                    "num_keypoints", "num_matches", "num_inliers"):
            assert line[key] == expected[key], (pair.pair_id, key)
        for key in CACHE_ONLY_FIELDS:
            line.pop(key)
        expected.pop("timings_ms")
        assert {k: v for k, v in line.items() if k in expected} == expected, pair.pair_id
    assert cached_somewhere, "no pair reused a detection: the cohort has no shared images"


def _count_detections(monkeypatch) -> list[int]:
    """Patches Registrar.detect to count the images it is given."""
    counted: list[int] = []
    original = Registrar.detect

    def counting(self, images, timings=None):
        counted.append(len(images))
        return original(self, images, timings)

    monkeypatch.setattr(Registrar, "detect", counting)
    return counted


def test_each_distinct_image_is_detected_once_per_group(cohort, tmp_path,  # noqa: F811
                                                        monkeypatch):
    _, pairs_file = cohort
    pairs = read_pairs(pairs_file)
    groups = group_pairs(pairs)
    assert sorted(p.pair_id for group in groups for p in group) == sorted(p.pair_id
                                                                         for p in pairs)
    worker = PairRegistrar(WorkerSpec(_config(tmp_path)))
    counted = _count_detections(monkeypatch)
    total_images = 0
    for group in groups:
        images = {Path(path).resolve() for pair in group
                  for path in (pair.fixed_path, pair.moving_path)}
        before = sum(counted)
        lines = list(worker.register_group(group))
        assert [line["pair_id"] for line in lines] == [pair.pair_id for pair in group]
        assert sum(counted) - before == len(images)
        # The first pair detects both of its images; a pair whose two images were seen before
        # has no detection stage in its timings.
        for line in lines:
            if all(line["detections_cached"]):
                assert "superpoint" not in line["timings_ms"] and "read" not in line["timings_ms"]
            else:
                assert "superpoint" in line["timings_ms"]
        total_images += len(images)
    assert sum(counted) == total_images < 2 * len(pairs)


def test_groups_are_connected_components_in_first_seen_order(tmp_path):
    def pair(pair_id: str, fixed: str, moving: str) -> Pair:
        return Pair(pair_id=pair_id, fixed_path=tmp_path / fixed,
                    moving_path=tmp_path / moving, row={"task": "1"})

    pairs = [pair("ab", "a", "b"), pair("cd", "c", "d"), pair("bc2", "e", "f"),
             pair("xb", "x", "b"), pair("ef", "f", "g"), pair("dd", "d", "./d")]
    groups = group_pairs(pairs)
    assert [[p.pair_id for p in group] for group in groups] == [["ab", "xb"], ["cd", "dd"],
                                                              ["bc2", "ef"]]


def test_a_changed_image_is_detected_again_within_a_group(cohort, tmp_path,  # noqa: F811
                                                          monkeypatch):
    """The cache key is (path, size, mtime): an image rewritten mid-group is not reused."""
    import os
    import shutil

    _, pairs_file = cohort
    first = read_pairs(pairs_file)[0]
    fixed, moving = tmp_path / "fixed.png", tmp_path / "moving.png"
    shutil.copy(first.fixed_path, fixed)
    shutil.copy(first.moving_path, moving)
    pair = Pair(pair_id="p", fixed_path=fixed, moving_path=moving, row={"task": "1"})
    worker = PairRegistrar(WorkerSpec(_config(tmp_path)))
    counted = _count_detections(monkeypatch)
    lines = worker.register_group([pair, pair])
    assert next(lines)["detections_cached"] == [False, False]
    stat = fixed.stat()
    os.utime(fixed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert next(lines)["detections_cached"] == [False, True]
    assert sum(counted) == 3


@pytest.mark.parametrize("missing", ["fixed", "moving"])
def test_an_unreadable_image_gives_the_uncached_error_line(cohort, tmp_path, missing):  # noqa: F811
    _, pairs_file = cohort
    good = read_pairs(pairs_file)[0]
    paths = {"fixed": good.fixed_path, "moving": good.moving_path, missing: tmp_path / "no.png"}
    pair = Pair(pair_id="p", fixed_path=paths["fixed"], moving_path=paths["moving"],
                row={"task": "1"})
    worker = PairRegistrar(WorkerSpec(_config(tmp_path)))
    cached = next(worker.register_group([pair]))
    uncached = worker(pair)
    assert cached["status"] == uncached["status"] == "error"
    assert cached["reason"] == uncached["reason"] and cached["error"] == uncached["error"]
