"""Registering many pairs that share images, detecting each image once: a bounded cache.

``Registrar.register`` reads and detects both images of every pair. In a cohort an image takes
part in several pairs (5 visits of one eye are 10 pairs, 20 detections where 5 suffice), and
detection is most of a pair's time, so ``DetectionCache.register`` keeps the detections of the
images it has seen and runs only match and fit for a pair whose images it holds.

Results are ``Registrar.register``'s: the same read, detect, match and fit, the detections
merely reused. A pair whose two images are both new detects them together in one batch, as
``register`` does; an image met later is detected alone.

Key: (resolved path, size, modification time in ns). A file rewritten meanwhile is detected
again; a path that cannot be stat'ed is never cached (reading it raises the error an uncached
pair would get).

Memory bound: at most ``capacity`` images' detections (least recently used dropped first;
default ``config.DETECTION_CACHE_IMAGES``), never the decoded images. One image's detections
are its keypoints in network pixels (2 float32), scores (float32), descriptors and keypoints in
original pixels (2 float64): for SuperPoint 8 + 4 + 1024 + 16 = 1052 B a keypoint, at most
max_keypoints of them (1.03 MiB at 1024); for SIFT 540 B a keypoint, a few thousand on a
1024-px fundus image. Arrays are copied out of the network's batch output when cached, so an
entry never pins its whole batch.

With fewer slots than a group of pairs has images, the order of the pairs decides how often an
image is detected again; ``cache_friendly_order`` arranges them so that each image's pairs come
together.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from .config import DETECTION_CACHE_IMAGES
from .imageio import read_image
from .registrar import Registrar, RegistrationResult
from .types import Detections, Features

CacheKey = tuple[str, int, int]


@dataclass(frozen=True)
class CachedRegistration:
    result: RegistrationResult
    #: [fixed, moving]: whether that image's detections came from the cache.
    cached: list[bool]


class DetectionCache:
    """A Registrar's detections of image files, least recently used dropped past ``capacity``.

    Not thread-safe: one per worker (the Registrar it wraps may be shared).
    """

    def __init__(self, registrar: Registrar, capacity: int = DETECTION_CACHE_IMAGES):
        if capacity < 0:
            raise ValueError(f"capacity {capacity}: must be at least 0")
        self.registrar, self.capacity = registrar, capacity
        self._entries: OrderedDict[CacheKey, Detections] = OrderedDict()
        #: Most entries held at once (what the bound promises to keep <= capacity).
        self.peak = 0
        #: Images read and detected (misses), for accounting and tests.
        self.detected = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def register(self, fixed: str | os.PathLike, moving: str | os.PathLike) -> CachedRegistration:
        """``Registrar.register(fixed, moving)`` from cached detections where there are some.

        Timings count only the reading and detection this pair did itself: a pair whose two
        images were cached has no ``read``, ``preprocess`` or ``superpoint`` stage.
        """
        registrar = self.registrar
        started = time.perf_counter()
        timings: dict[str, float] = {}
        paths = [Path(fixed), Path(moving)]
        keys = [_key(path) for path in paths]
        found: list[Detections | None] = [self._lookup(key) for key in keys]
        missing = [side for side in (0, 1) if found[side] is None]
        if missing:
            read_started = time.perf_counter()
            # Fixed first, as register reads them: the same image's error when both are bad.
            images = [read_image(paths[side], None, registrar.config.max_pixels)
                      for side in missing]
            timings["read"] = (time.perf_counter() - read_started) * 1e3
            for side, detections in zip(missing, registrar.detect(images, timings)):
                found[side] = detections
                self._store(keys[side], detections)
            self.detected += len(missing)
        match_started = time.perf_counter()
        matches = registrar.match(found[0], found[1])
        timings["matching"] = (time.perf_counter() - match_started) * 1e3
        result = registrar.fit(found[0], found[1], matches, timings=timings)
        result = replace(result, timings_ms={**result.timings_ms,
                                             "total": (time.perf_counter() - started) * 1e3})
        return CachedRegistration(result, [side not in missing for side in (0, 1)])

    def _lookup(self, key: CacheKey | None) -> Detections | None:
        if key is None or key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def _store(self, key: CacheKey | None, detections: Detections) -> None:
        if key is None or self.capacity == 0:
            return
        self._entries[key] = _owned(detections)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        self.peak = max(self.peak, len(self._entries))


def _key(path: Path) -> CacheKey | None:
    try:
        found = path.stat()
        return str(path.resolve()), found.st_size, found.st_mtime_ns
    except OSError:
        return None


def _owned(detections: Detections) -> Detections:
    """The detections with arrays of their own: a slice of the network's ``[batch, K, 256]``
    output would keep the whole batch alive (what happens without the mask's selection)."""
    def own(array: np.ndarray) -> np.ndarray:
        return array if array.base is None else array.copy()

    features = Features(**{f.name: own(getattr(detections.features, f.name))
                           for f in fields(Features)})
    return replace(detections, features=features, keypoints=own(detections.keypoints))


def detections_nbytes(detections: Detections) -> int:
    """Bytes of one cache entry's arrays (what the bound in the module docstring counts)."""
    features = detections.features
    return (features.keypoints.nbytes + features.scores.nbytes + features.descriptors.nbytes
            + detections.keypoints.nbytes)


def distinct_images(pairs: Iterable[tuple[Path, Path]]) -> list[str]:
    """Resolved paths of the images of ``pairs`` (fixed, moving), in first-seen order."""
    seen: dict[str, None] = {}
    for fixed, moving in pairs:
        for path in (fixed, moving):
            seen.setdefault(_resolved(path), None)
    return list(seen)


def cache_friendly_order(pairs: list[tuple[Path, Path]], capacity: int) -> list[int]:
    """Indices of ``pairs`` in an order that detects few images again with ``capacity`` slots.

    When the pairs' images fit in the cache any order detects each once, and the given order
    is kept. Otherwise the images are ranked by first appearance and each pair is filed under
    its lower-ranked image: that image's pairs run together (it stays cached through them),
    and every other row visits its partners backwards, so that a row starts with the partners
    the previous one used last, still cached (a forward scan over more images than slots would
    find none of them: least recently used evicts exactly the one needed next).
    """
    images = distinct_images(pairs)
    if len(images) <= capacity:
        return list(range(len(pairs)))
    rank = {image: number for number, image in enumerate(images)}
    ends = [sorted(rank[_resolved(path)] for path in pair) for pair in pairs]
    # Alternate by the row's place among rows that have pairs, not by rank: ranks skip.
    row_number = {row: number for number, row in enumerate(sorted({low for low, _ in ends}))}

    def position(index: int) -> tuple[int, int]:
        low, high = ends[index]
        return low, (-high if row_number[low] % 2 else high)

    return sorted(range(len(pairs)), key=position)


def _resolved(path: str | os.PathLike) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return str(path)
