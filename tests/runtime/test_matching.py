"""Mutual nearest-neighbour matching in NumPy."""

from __future__ import annotations

import numpy as np

from ophreg_rt.config import MnnConfig
from ophreg_rt.matching import mutual_nearest_neighbours
from ophreg_rt.types import Features


def _features(descriptors):
    n = len(descriptors)
    return Features(keypoints=np.zeros((n, 2), np.float32), scores=np.ones(n, np.float32),
                    descriptors=np.asarray(descriptors, np.float32))


def _unit(rows):
    rows = np.asarray(rows, np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_mutual_pairs_above_the_similarity_floor_are_matched():
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(20, 256)))
    permutation = rng.permutation(20)
    noisy = _unit(base[permutation] + 0.02 * rng.normal(size=(20, 256)))
    matches = mutual_nearest_neighbours(_features(base), _features(noisy))
    expected = {(int(permutation[j]), j) for j in range(20)}
    assert {tuple(p) for p in matches.pairs.tolist()} == expected
    assert (matches.scores > 0.9).all()


def test_non_mutual_and_dissimilar_pairs_are_dropped():
    a = _unit([[1, 0, 0], [0.8, 0.6, 0]])
    b = _unit([[1, 0.05, 0]])  # nearest to both a-rows; only a[0] is mutual
    matches = mutual_nearest_neighbours(_features(a), _features(b), MnnConfig(min_similarity=0.0))
    assert matches.pairs.tolist() == [[0, 0]]
    unrelated = mutual_nearest_neighbours(_features(_unit([[1, 0, 0]])), _features(_unit([[0, 1, 0]])))
    assert len(unrelated) == 0


def test_empty_inputs_give_no_matches():
    empty = _features(np.zeros((0, 256)))
    assert len(mutual_nearest_neighbours(empty, _features(_unit(np.ones((3, 256)))))) == 0
