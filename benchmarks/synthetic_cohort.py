"""A synthetic cohort with known transforms: several visits of real eyes, written as files.

Each real image is one eye's baseline. Every other visit is the baseline warped by a seeded
random affine (benchmarks/known_truth.py, small motion) with a photometric change; an ``FA``
visit is also given an angiogram-like appearance (green channel inverted: vessels bright on
dark). Every image's transform from the baseline is known, so the true registration of any
pair is known too: moving -> fixed = T_fixed @ inverse(T_moving).

``write_cohort`` (tests): per source image, one patient; the first source's patient is healthy,
the others diseased. Each patient's right eye, macula field, gets the visits of ``VISITS``; the
left eye and the optic disc field get one image each, so that a pairing that crossed eyes or
fields would show.

``write_method_cohort`` (throughput benchmark): a cohort shaped like the method's data,
patients x two eyes x 3-6 images of mixed dates and types (colour and angiogram-like), every
eye a distinct retina, so that pairs share images only within an eye.
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
    return SyntheticCohort(_write_manifest(folder, rows), from_baseline)


def _later(date: str, years: int) -> str:
    day = datetime.date.fromisoformat(date)
    return day.replace(year=day.year + years).isoformat()


#: Image types of an eye's successive images in the method-shaped cohort: a colour photograph
#: and an angiogram at each visit, visits a year apart (image k: visit k // 2).
METHOD_TYPES = ("colour", "FA")
METHOD_FIRST_VISIT = "2024-03-01"
#: Images per eye of the method's data (issue 16: "3-6 images of mixed dates and types").
METHOD_IMAGES_PER_EYE = (3, 6)


def write_method_cohort(folder: Path, sources: list[Path], patients: int,
                        images_per_eye: int | None = None, width: int = 512,
                        seed: int = 0) -> SyntheticCohort:
    """Write ``patients`` x two eyes x ``images_per_eye`` images (PNG) and ``manifest.csv``.

    ``images_per_eye`` None draws each eye's count from METHOD_IMAGES_PER_EYE (seeded). Every
    eye is diseased (so that all of its pairs are in the method's tasks 2 and 3: the healthy
    rule would drop colour-angiogram pairs) and has one field, the macula. An eye's retina is
    a source image (cycled over the patients; the left eye mirrored) moved by a seeded affine,
    so eyes sharing a source are still different images; each later image of the eye is that
    retina under another small-motion affine and a photometric change, angiogram-like for FA.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, from_baseline = [], {}
    low, high = METHOD_IMAGES_PER_EYE
    for patient_index in range(patients):
        source = read_image(sources[patient_index % len(sources)])
        height = round(source.shape[0] * width / source.shape[1])
        source = cv2.resize(source, (width, height), interpolation=cv2.INTER_AREA)
        patient = f"P{patient_index:03d}"
        for eye in ("right", "left"):
            retina = source if eye == "right" else np.ascontiguousarray(source[:, ::-1])
            retina = cv2.warpAffine(retina, random_affine(rng, (width, height))[:2],
                                    (width, height), flags=cv2.INTER_LINEAR)
            count = images_per_eye or int(rng.integers(low, high + 1))
            for number in range(count):
                kind = METHOD_TYPES[number % len(METHOD_TYPES)]
                date = _later(METHOD_FIRST_VISIT, number // len(METHOD_TYPES))
                forward = np.eye(3) if number == 0 else random_affine(rng, (width, height))
                image = retina if number == 0 else photometric_change(
                    cv2.warpAffine(retina, forward[:2], (width, height),
                                   flags=cv2.INTER_LINEAR), rng)
                if kind == "FA":
                    image = angiogram_like(image)
                path = folder / f"{patient}_{eye}_macula_{number}_{kind}_{date}.png"
                write_image(path, image)
                from_baseline[path] = forward
                rows.append([path.name, patient, eye, "macula", kind, date, "diseased"])
    return SyntheticCohort(_write_manifest(folder, rows), from_baseline)


def _write_manifest(folder: Path, rows: list[list[str]]) -> Path:
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id", "eye", "field", "image_type", "date", "diagnosis"])
        writer.writerows(rows)
    return manifest
