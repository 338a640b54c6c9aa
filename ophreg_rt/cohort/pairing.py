"""The method's pairing rules, and the pairs file that ``ophreg pairs`` writes and ``batch`` reads.

Rules (Zhao and Guan; DESIGN.md "What it is"):

* Images are paired only within one patient, one eye and one field centre; every unordered
  pair of such images is considered once.
* Task 1: healthy eye, same image type. Task 2: diseased eye, same image type. Task 3: diseased
  eye, different image types. A pair is healthy only when both images are; one diseased image
  makes it a diseased-eye pair (an eye that fell ill between visits is a diseased eye).
  Healthy pairs of different types belong to none of the method's tasks and are not listed.
* Every pair is labelled ``same_date`` or ``across_dates``.
* Which image is FIXED (its frame is kept): for different types, the colour photograph when
  exactly one of the two is colour (other modalities are read against the colour image);
  otherwise the earlier visit (follow-ups are registered onto the baseline); on the same date,
  the image listed first in the manifest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .manifest import COLOUR, ImageRecord, ManifestError, read_csv_rows

TASK_HEALTHY = 1
TASK_DISEASED_SAME_TYPE = 2
TASK_DISEASED_CROSS_TYPE = 3
TASK_NAMES = {
    TASK_HEALTHY: "healthy, same type",
    TASK_DISEASED_SAME_TYPE: "diseased, same type",
    TASK_DISEASED_CROSS_TYPE: "diseased, different types",
}
SAME_DATE = "same_date"
ACROSS_DATES = "across_dates"

#: The pairs file's columns, in order: the one home of its schema.
PAIR_COLUMNS = ("pair_id", "task", "dates", "patient_id", "eye", "field",
                "fixed_path", "moving_path", "fixed_type", "moving_type",
                "fixed_date", "moving_date")
#: What a hand-written pairs file must hold at least; the other columns are carried when present.
REQUIRED_PAIR_COLUMNS = ("pair_id", "fixed_path", "moving_path")


@dataclass(frozen=True)
class Pair:
    """One registration to run: MOVING is warped onto FIXED. ``row`` is the pairs-file row."""

    pair_id: str
    fixed_path: Path
    moving_path: Path
    row: dict[str, str]

    @property
    def task(self) -> str:
        return self.row.get("task", "")


@dataclass(frozen=True)
class Pairing:
    pairs: list[Pair]
    #: Healthy pairs of different image types: in no task of the method, so not listed.
    unassigned: int


def pair_images(images: list[ImageRecord]) -> Pairing:
    """The method's pairs of a validated manifest, ordered by task, then manifest order."""
    groups: dict[tuple[str, str, str], list[ImageRecord]] = defaultdict(list)
    for image in images:
        groups[(image.patient_id, image.eye, image.field)].append(image)
    pairs: list[tuple[int, int, int, Pair]] = []
    unassigned = 0
    for group in groups.values():
        for first, second in itertools.combinations(sorted(group, key=lambda i: i.line), 2):
            task = _task(first, second)
            if task is None:
                unassigned += 1
                continue
            fixed, moving = _fixed_first(first, second)
            pairs.append((task, first.line, second.line, _pair(task, fixed, moving)))
    pairs.sort(key=lambda entry: entry[:3])
    return Pairing([entry[3] for entry in pairs], unassigned)


def _task(first: ImageRecord, second: ImageRecord) -> int | None:
    healthy = first.diagnosis == "healthy" and second.diagnosis == "healthy"
    same_type = first.image_type == second.image_type
    if healthy:
        return TASK_HEALTHY if same_type else None
    return TASK_DISEASED_SAME_TYPE if same_type else TASK_DISEASED_CROSS_TYPE


def _fixed_first(first: ImageRecord, second: ImageRecord) -> tuple[ImageRecord, ImageRecord]:
    """``first`` precedes ``second`` in the manifest; returns (fixed, moving) by the stated rule."""
    if (first.image_type == COLOUR) != (second.image_type == COLOUR):
        return (first, second) if first.image_type == COLOUR else (second, first)
    if second.date < first.date:
        return second, first
    return first, second


def _pair(task: int, fixed: ImageRecord, moving: ImageRecord) -> Pair:
    fixed_path, moving_path = fixed.path.resolve(), moving.path.resolve()
    # The id depends only on the two files, so re-running `pairs` on a grown manifest keeps the
    # ids (and so a batch's finished results) of the pairs it already had.
    pair_id = hashlib.sha256(f"{fixed_path}\n{moving_path}".encode()).hexdigest()[:16]
    row = {
        "pair_id": pair_id, "task": str(task),
        "dates": SAME_DATE if fixed.date == moving.date else ACROSS_DATES,
        "patient_id": fixed.patient_id, "eye": fixed.eye, "field": fixed.field,
        "fixed_path": str(fixed_path), "moving_path": str(moving_path),
        "fixed_type": fixed.image_type, "moving_type": moving.image_type,
        "fixed_date": fixed.date.isoformat(), "moving_date": moving.date.isoformat(),
    }
    return Pair(pair_id, fixed_path, moving_path, row)


def pairs_csv(pairs: list[Pair]) -> str:
    """The pairs file's text (PAIR_COLUMNS; paths absolute, so it works from any folder)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=PAIR_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for pair in pairs:
        writer.writerow({column: pair.row.get(column, "") for column in PAIR_COLUMNS})
    return out.getvalue()


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """The pairs of a pairs file; relative image paths are relative to the file's folder.

    Images are not opened here: one unreadable image must fail its pairs, not the batch.
    """
    path = Path(path)
    pairs = []
    line_of: dict[str, int] = {}
    for line, row in read_csv_rows(path, REQUIRED_PAIR_COLUMNS):
        for column in REQUIRED_PAIR_COLUMNS:
            if not row[column]:
                raise ManifestError(f"{path}: line {line}: {column} is empty")
        if row["pair_id"] in line_of:
            raise ManifestError(f"{path}: line {line}: pair_id {row['pair_id']} is already used "
                                f"on line {line_of[row['pair_id']]}")
        line_of[row["pair_id"]] = line
        fixed, moving = (Path(row[c]) for c in ("fixed_path", "moving_path"))
        # Absolute: workers (Ray actors) need not run in this folder.
        pairs.append(Pair(row["pair_id"], (path.parent / fixed).absolute(),
                          (path.parent / moving).absolute(), row))
    return pairs
