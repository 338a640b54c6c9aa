"""A synthetic cohort with known transforms: several visits of real eyes, written as files.

Each real image is one eye's baseline. Every other visit is the baseline warped by a seeded
random affine (benchmarks/known_truth.py, small motion) with a photometric change; an ``FA``
visit is also given an angiogram-like appearance (green channel inverted: vessels bright on
dark). Every image's transform from the baseline is known, so the true registration of any
pair is known too: moving -> fixed = T_fixed @ inverse(T_moving).

Per source image, one patient; the first source's patient is healthy, the others diseased.
Each patient's right eye, macula field, gets the visits of ``VISITS``; the left eye and the optic
disc field get one image each, so that a pairing that crossed eyes or fields would show.
"""

from __future__ import annotations

import csv
import datetime
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from benchmarks.known_truth import photometric_change, random_affine
from ophreg_rt.imageio import read_image, write_image

#: (image type, date) of the right-eye macula visits; the first is the baseline.
VISITS = (("colour", "2024-03-01"), ("colour", "2024-03-01"), ("colour", "2025-02-10"),
          ("FA", "2024-03-01"), ("FA", "2025-02-10"))
HEALTHY_VISITS = (("colour", "2024-03-01"), ("colour", "2024-03-01"), ("colour", "2025-02-10"))


@dataclass(frozen=True)
class SyntheticCohort:
    manifest: Path
    #: image path -> 3x3 map from the baseline's pixels to this image's pixels
    from_baseline: dict[Path, np.ndarray]

    def truth(self, fixed: Path, moving: Path) -> np.ndarray:
        """The true moving -> fixed map of a pair."""
        return self.from_baseline[fixed] @ np.linalg.inv(self.from_baseline[moving])


def angiogram_like(image: np.ndarray) -> np.ndarray:
    green = image[:, :, 1] if image.ndim == 3 else image
    return (np.iinfo(green.dtype).max - green).astype(green.dtype)


def write_cohort(folder: Path, sources: list[Path], width: int = 384, seed: int = 0,
                 visits_per_patient: int | None = None) -> SyntheticCohort:
    """Write the cohort's images (PNG) and ``manifest.csv`` under ``folder``.

    ``visits_per_patient`` repeats the diseased visit pattern to make bigger cohorts (throughput
    benchmark); the dates of repeated visits move on by a year each round.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, from_baseline = [], {}
    for index, source in enumerate(sources):
        baseline = read_image(source)
        height = round(baseline.shape[0] * width / baseline.shape[1])
        baseline = cv2.resize(baseline, (width, height), interpolation=cv2.INTER_AREA)
        patient = f"P{index:03d}"
        diagnosis = "healthy" if index == 0 else "diseased"
        visits = list(HEALTHY_VISITS if index == 0 else VISITS)
        if visits_per_patient and index > 0:
            visits = [(kind, _later(date, round_ // len(VISITS)))
                      for round_, (kind, date) in
                      ((k, VISITS[k % len(VISITS)]) for k in range(visits_per_patient))]
        for number, (kind, date) in enumerate(visits):
            forward = np.eye(3) if number == 0 else random_affine(rng, (width, height))
            image = baseline if number == 0 else photometric_change(
                cv2.warpAffine(baseline, forward[:2], (width, height), flags=cv2.INTER_LINEAR), rng)
            if kind == "FA":
                image = angiogram_like(image)
            path = folder / f"{patient}_right_macula_{number}_{kind}_{date}.png"
            write_image(path, image)
            from_baseline[path] = forward
            rows.append([path.name, patient, "right", "macula", kind, date, diagnosis])
        for eye, field in (("left", "macula"), ("right", "optic_disc")):
            path = folder / f"{patient}_{eye}_{field}.png"
            write_image(path, baseline)
            from_baseline[path] = np.eye(3)
            rows.append([path.name, patient, eye, field, "colour", VISITS[0][1], diagnosis])
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id", "eye", "field", "image_type", "date", "diagnosis"])
        writer.writerows(rows)
    return SyntheticCohort(manifest, from_baseline)


def _later(date: str, years: int) -> str:
    day = datetime.date.fromisoformat(date)
    return day.replace(year=day.year + years).isoformat()
