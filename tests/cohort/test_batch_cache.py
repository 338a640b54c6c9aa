"""``ophreg batch`` detects each distinct image once per group of pairs that share images, and
its results are those of ``Registrar.register`` run pair by pair (only timings differ)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_batch import (  # noqa: F401 - cohort and local_cluster are fixtures
    OPTIONS,
    cohort,
    local_cluster,
    read_results,
    same_results,
)

from ophreg_rt.cli import EXIT_FAILED, EXIT_OK, build_parser, main
from ophreg_rt.cli_options import registration_config
from ophreg_rt.cohort.batch import PairRegistrar, WorkerSpec, group_pairs
from ophreg_rt.cohort.pairing import Pair, read_pairs
from ophreg_rt.detection_cache import (
    DetectionCache,
    cache_friendly_order,
    detections_nbytes,
)
from ophreg_rt.detection_cache import distinct_images as distinct
from ophreg_rt.registrar import Registrar

#: What a cached line adds to the uncached line (timings differ by nature).
CACHE_ONLY_FIELDS = ("timings_ms", "detections_cached")


def _config(tmp_path: Path):
    args = build_parser().parse_args(["batch", str(tmp_path / "pairs.csv"), "--out-dir",
                                       str(tmp_path / "unused"), *OPTIONS])
    return registration_config(args)


@pytest.fixture(scope="module")
def cached_batch(cohort, tmp_path_factory):  # noqa: F811
    """The cohort's batch with the detection cache (the default): its folder."""
    out = tmp_path_factory.mktemp("cached") / "out"
    assert main(["batch", str(cohort[1]), "--out-dir", str(out), *OPTIONS]) in (EXIT_OK,
                                                                                EXIT_FAILED)
    return out


@pytest.fixture(scope="module")
def uncached_results(cohort, tmp_path_factory):  # noqa: F811
    """The cohort's batch pair by pair (--no-detection-cache): the batch before the cache."""
    out = tmp_path_factory.mktemp("uncached") / "out"
    assert main(["batch", str(cohort[1]), "--out-dir", str(out), "--no-detection-cache",
                 *OPTIONS]) in (EXIT_OK, EXIT_FAILED)
    return read_results(out)


def test_batch_results_equal_register_pair_by_pair(cohort, cached_batch, tmp_path):  # noqa: F811
    _, pairs_file = cohort
    results = read_results(cached_batch)
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


def _detections_done(results: dict[str, dict]) -> int:
    return sum(not cached for line in results.values() for cached in line["detections_cached"])


def test_no_detection_cache_registers_pair_by_pair_with_the_same_results(
        cached_batch, uncached_results):
    cached = read_results(cached_batch)
    assert all(line["detections_cached"] == [False, False]
               for line in uncached_results.values())
    assert _detections_done(uncached_results) == 2 * len(uncached_results)
    assert _detections_done(cached) < len(cached)  # 13 pairs of 8 images
    same_results(uncached_results, cached)


def test_a_resume_may_switch_the_detection_cache(cohort, cached_batch, tmp_path,  # noqa: F811
                                                 capsys):
    """--no-detection-cache changes no result, so it is not an option a resume must repeat."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(cached_batch, out)
    results = out / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:-3]))
    capsys.readouterr()
    assert main(["batch", str(cohort[1]), "--out-dir", str(out), "--no-detection-cache",
                 *OPTIONS]) in (EXIT_OK, EXIT_FAILED)
    assert "3 pairs processed by this run" in capsys.readouterr().err
    resumed = read_results(out)
    assert [line["detections_cached"] for line in resumed.values()][-3:] == [[False, False]] * 3
    same_results(read_results(cached_batch), resumed)


def _five_image_group(pairs_file: Path) -> list[Pair]:
    """The diseased eye: 5 visits, all 10 pairs (tasks 2 and 3)."""
    (group,) = [group for group in group_pairs(read_pairs(pairs_file)) if len(group) == 10]
    return group


def test_a_group_larger_than_the_cache_holds_at_most_its_capacity(
        cohort, cached_batch, tmp_path, monkeypatch):  # noqa: F811
    group = _five_image_group(cohort[1])
    worker = PairRegistrar(WorkerSpec(_config(tmp_path), detection_cache=2))
    counted = _count_detections(monkeypatch)
    lines = list(worker.register_group(group))
    assert worker.cache.peak == 2 and len(worker.cache) == 0  # dropped after the group
    # Rows of cache_friendly_order on 5 images, 2 slots: the first row detects its 5 images,
    # each later pair one (its row's image, or its partner after the row turned): 5 + 3 + 2 + 1.
    # Forward rows would need 13, the pairs file's order (by task) more.
    assert sum(counted) == worker.cache.detected == 11
    reference = read_results(cached_batch)  # every image detected once
    for line in lines:
        reference[line["pair_id"]].pop("inputs")  # run_batch's, not the worker's
    same_results({line["pair_id"]: reference[line["pair_id"]] for line in lines},
                 {line["pair_id"]: line for line in lines})


def test_cache_friendly_order_runs_each_images_pairs_together(tmp_path):
    images = [tmp_path / name for name in "abcde"]
    everything = [(images[i], images[j]) for i in range(5) for j in range(i + 1, 5)]
    shuffled = [everything[k] for k in (9, 0, 5, 3, 7, 1, 8, 2, 6, 4)]
    # Room for all five: the given order stays.
    assert cache_friendly_order(shuffled, 5) == list(range(10))
    order = [shuffled[k] for k in cache_friendly_order(shuffled, 4)]
    rank = {Path(path).name: rank for rank, path in enumerate(distinct(shuffled))}
    rows = [sorted(rank[path.name] for path in pair) for pair in order]
    # Ranks by first appearance in the shuffled list; then row by row, every other row
    # backwards.
    assert list(rank) == ["d", "e", "a", "b", "c"]
    assert rows == [[0, 1], [0, 2], [0, 3], [0, 4], [1, 4], [1, 3], [1, 2], [2, 3], [2, 4],
                    [3, 4]]


def test_a_cache_entry_owns_its_arrays_and_costs_at_most_1052_bytes_a_keypoint(cohort,  # noqa: F811
                                                                               tmp_path):
    """Without the mask's selection the network's outputs are slices of its batch arrays: a
    cached slice would keep both images' padded [2, K, 256] alive."""
    first = read_pairs(cohort[1])[0]
    config = _config(tmp_path)
    registrar = Registrar(replace(config, mask=replace(config.mask, enabled=False)))
    cache = DetectionCache(registrar)
    cache.register(first.fixed_path, first.moving_path)
    assert len(cache) == 2
    budget = registrar.superpoint.max_keypoints * 1052
    for detections in cache._entries.values():
        arrays = [detections.keypoints, *(getattr(detections.features, name)
                                          for name in ("keypoints", "scores", "descriptors"))]
        assert all(array.base is None for array in arrays)
        assert 0 < detections_nbytes(detections) == sum(a.nbytes for a in arrays) <= budget
        assert detections_nbytes(detections) == len(detections) * 1052


@pytest.mark.slow
def test_ray_engine_registers_groups_with_the_per_pair_results(local_cluster, cohort,  # noqa: F811
                                                               cached_batch, uncached_results,
                                                               tmp_path):
    out = tmp_path / "out"
    main(["batch", str(cohort[1]), "--out-dir", str(out), "--engine", "ray", "--workers", "2",
          *OPTIONS])
    ray_results = read_results(out)
    same_results(uncached_results, ray_results)
    # One task per group: each image detected once, as by the local engine.
    assert _detections_done(ray_results) == _detections_done(read_results(cached_batch)) \
        == sum(len({Path(path).resolve() for pair in group
                    for path in (pair.fixed_path, pair.moving_path)})
               for group in group_pairs(read_pairs(cohort[1])))
