"""A folder of DICOM files to pairs (the manifest read from the tags), then batch, report and
DICOM instances: the clinic's path through the README's commands."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CC0_RETINA, DATA_DIR, REQUIRE_SHARED

from benchmarks.dicom_cohort import write_dicom_cohort
from ophreg_rt.cli import EXIT_OK, EXIT_USAGE, main
from ophreg_rt.cohort.manifest import read_manifest
from ophreg_rt.cohort.pairing import pair_images, read_pairs
from ophreg_rt.transforms import apply, fitted_from_json, map_points

try:
    import pydicom
except ImportError:
    if REQUIRE_SHARED:
        raise
    pytest.skip("pydicom (the dicom extra) is not installed", allow_module_level=True)

OPTIONS = ["--size", "256", "--threads", "1"]
#: As in test_batch: a registered pair agrees with the known transform within RANSAC's inlier
#: threshold (px at 1024).
TRUTH_TOLERANCE_PX = 4.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two patients (one healthy, one diseased), both eyes, two dates, colour and angiograms,
    JPEG-compressed and raw: the CC0 image and, when the shared data is there, a DRIVE image."""
    drive = DATA_DIR / "single" / "drive_training" / "21_training.tif"
    second = drive if drive.is_file() else CC0_RETINA
    return write_dicom_cohort(tmp_path_factory.mktemp("dicom_cohort"), [CC0_RETINA, second])


def identifiers(cohort) -> list[str]:
    """What must not leak: the patients' names and IDs as the files hold them."""
    found = set()
    for path in cohort.png_of:
        tags = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {str(tags.PatientID), str(tags.PatientName),
                  str(tags.PatientName).split("^")[0]}
    return sorted(found)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_manifest_read_from_the_tags_is_the_hand_written_one(cohort, tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    assert main(["pairs", str(cohort.folder), "--manifest-out", str(manifest),
                 "--diagnoses", str(cohort.diagnoses), "--out", str(tmp_path / "pairs.csv")]) \
        == EXIT_OK
    error = capsys.readouterr().err
    # The report object and the two-frame series are named, not paired.
    assert "skipped" in error and "SR0001.dcm" in error and "MF0001.dcm: 2 frames" in error
    truth = {(cohort.manifest.parent / r["path"]).resolve(): r
             for r in read_rows(cohort.manifest)}
    rows = read_rows(manifest)
    assert len(rows) == len(cohort.png_of)
    pseudonym_of = {}
    for row in rows:
        expected = truth[cohort.png_of[(manifest.parent / row["path"]).resolve()].resolve()]
        for column in ("eye", "field", "date", "diagnosis"):
            assert row[column] == expected[column], (row["path"], column)
        assert row["image_type"].lower() == expected["image_type"].lower()
        # One pseudonym a patient, and a different one for each.
        assert pseudonym_of.setdefault(expected["patient_id"], row["patient_id"]) == \
            row["patient_id"]
    assert len(set(pseudonym_of.values())) == len(pseudonym_of)
    sources = " ".join(row["source"] for row in rows)
    for tag in ("ImageLaterality", "Laterality", "AcquisitionDateTime", "ContentDate",
                "StudyDate", "ContrastBolusAgent", "SeriesDescription",
                "PhotometricInterpretation"):
        assert f"<-{tag}" in sources, tag  # every fallback of the cohort was exercised


def test_pairs_from_the_folder_are_the_pairs_of_the_hand_written_manifest(cohort, tmp_path):
    assert main(["pairs", str(cohort.folder), "--manifest-out", str(tmp_path / "m.csv"),
                 "--diagnoses", str(cohort.diagnoses), "--out",
                 str(tmp_path / "pairs.csv")]) == EXIT_OK
    from_tags = {(cohort.png_of[p.fixed_path].resolve(), cohort.png_of[p.moving_path].resolve(),
                  p.task, p.row["dates"]) for p in read_pairs(tmp_path / "pairs.csv")}
    by_hand = {(p.fixed_path, p.moving_path, p.task, p.row["dates"])
               for p in pair_images(read_manifest(cohort.manifest)).pairs}
    assert from_tags == by_hand and {task for *_, task, _ in from_tags} == {"1", "2", "3"}


def test_values_that_cannot_be_read_are_named_with_file_and_tag(cohort, tmp_path, capsys):
    folder = tmp_path / "dicom"
    shutil.copytree(cohort.folder, folder)
    no_eye, no_type = folder / "IM0001.dcm", folder / "IM0008.dcm"
    for path, keywords in ((no_eye, ("ImageLaterality", "Laterality")),
                           (no_type, ("ContrastBolusAgent", "SeriesDescription"))):
        dataset = pydicom.dcmread(path)
        for keyword in keywords:
            if keyword in dataset:
                delattr(dataset, keyword)
        dataset.save_as(path, enforce_file_format=True)
    manifest, pairs = tmp_path / "manifest.csv", tmp_path / "pairs.csv"
    command = ["pairs", str(folder), "--manifest-out", str(manifest), "--out", str(pairs),
               "--diagnoses", str(cohort.diagnoses), "--force"]
    assert main(command) == EXIT_USAGE
    error = capsys.readouterr().err
    assert f"not read: {no_eye}: eye: no ImageLaterality (0020,0062) or Laterality (0020,0060)" \
        in error
    assert f"not read: {no_type}: image_type: no modality named in ContrastBolusAgent " \
           "(0018,0010)" in error
    assert f"not read: {no_type}: field: no field centre" in error
    assert "--skip-incomplete" in error.splitlines()[-1] and not pairs.exists()
    # Written for review all the same, the unread values left empty.
    rows = {Path(r["path"]).name: r for r in read_rows(manifest)}
    assert rows["IM0001.dcm"]["eye"] == "" and rows["IM0008.dcm"]["field"] == ""

    assert main(command + ["--skip-incomplete"]) == EXIT_OK
    capsys.readouterr()
    listed = {p.fixed_path.name for p in read_pairs(pairs)} | \
        {p.moving_path.name for p in read_pairs(pairs)}
    assert not listed & {"IM0001.dcm", "IM0008.dcm"}

    overrides = tmp_path / "overrides.csv"
    overrides.write_text("path,eye,image_type,field\n"
                         "IM0001.dcm,right,,\n"
                         "IM0008.dcm,,FA,macula\n")
    assert main(command + ["--overrides", str(overrides)]) == EXIT_OK
    rows = {Path(r["path"]).name: r for r in read_rows(manifest)}
    assert rows["IM0001.dcm"]["eye"] == "right" and "eye<-overrides.csv" in \
        rows["IM0001.dcm"]["source"]
    assert len(read_pairs(pairs)) == len(pair_images(read_manifest(cohort.manifest)).pairs)
    capsys.readouterr()

    overrides.write_text("path,fild\nIM0001.dcm,macula\n")
    assert main(command + ["--overrides", str(overrides)]) == EXIT_USAGE
    assert "fild is not a manifest column" in capsys.readouterr().err


def test_without_diagnoses_one_line_says_where_they_come_from(cohort, tmp_path, capsys):
    assert main(["pairs", str(cohort.folder), "--manifest-out", str(tmp_path / "m.csv")]) \
        == EXIT_USAGE
    error = capsys.readouterr().err
    assert error.count("give --diagnoses CSV") == 1


def test_folder_options_with_a_manifest_and_a_folder_without_manifest_out_are_refused(
        cohort, tmp_path, capsys):
    assert main(["pairs", str(cohort.manifest), "--diagnoses", str(cohort.diagnoses)]) \
        == EXIT_USAGE
    assert "--diagnoses: only for a folder of DICOM files" in capsys.readouterr().err
    assert main(["pairs", str(cohort.folder)]) == EXIT_USAGE
    assert "needs --manifest-out" in capsys.readouterr().err


def test_patient_identifiers_are_written_only_when_asked(cohort, tmp_path, capsys):
    secret = identifiers(cohort)
    common = ["--diagnoses", str(cohort.diagnoses), "--force"]
    assert main(["pairs", str(cohort.folder), "--manifest-out", str(tmp_path / "m.csv"),
                 "--out", str(tmp_path / "p.csv"), *common]) == EXIT_OK
    logs = capsys.readouterr()
    for text in ((tmp_path / "m.csv").read_text(), (tmp_path / "p.csv").read_text(),
                 logs.out, logs.err):
        assert not [word for word in secret if word in text]
    assert main(["pairs", str(cohort.folder), "--manifest-out", str(tmp_path / "m.csv"),
                 "--out", str(tmp_path / "p.csv"), "--patient-ids", *common]) == EXIT_OK
    assert "MRN7310" in (tmp_path / "p.csv").read_text()


def test_a_dicom_cohort_goes_from_folder_to_report(cohort, tmp_path, capsys):
    """README's commands: pairs from the folder, batch with the report and DICOM instances."""
    pairs, out = tmp_path / "pairs.csv", tmp_path / "out"
    assert main(["pairs", str(cohort.folder), "--manifest-out", str(tmp_path / "manifest.csv"),
                 "--diagnoses", str(cohort.diagnoses), "--out", str(pairs)]) == EXIT_OK
    assert main(["batch", str(pairs), "--out-dir", str(out), "--report", "--dicom",
                 *OPTIONS]) == EXIT_OK
    logs = capsys.readouterr()
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == len(read_pairs(pairs)) and all(r["status"] == "ok" for r in records)
    for record in records:
        fixed, moving = Path(record["fixed_path"]), Path(record["moving_path"])
        width, height = record["fixed_size"]
        ys, xs = np.mgrid[height // 4:3 * height // 4:8, width // 4:3 * width // 4:8]
        points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
        error = np.linalg.norm(map_points(*fitted_from_json(record), points)
                               - apply(cohort.truth(fixed, moving), points), axis=1).mean()
        assert error * 1024 / max(width, height) < TRUTH_TOLERANCE_PX, record["pair_id"]
    page = (out / "report.html").read_text()
    assert page.count("<tr data-status=\"ok\"") == len(records)
    table = read_rows(out / "results.csv")
    # results.jsonl is in completion order (pairs sharing images run together); the report's
    # table keeps the pairs file's order.
    assert [row["pair_id"] for row in table] == [p.pair_id for p in read_pairs(pairs)]
    instances = sorted((out / "dicom").glob("*.dcm"))
    assert len(instances) == len(records)
    for row in table:
        derived = pydicom.dcmread(out / row["dicom"])
        record = next(r for r in records if r["pair_id"] == row["pair_id"])
        fixed = pydicom.dcmread(record["fixed_path"], stop_before_pixels=True)
        assert derived.StudyInstanceUID == fixed.StudyInstanceUID
        assert derived.SourceImageSequence[1].ReferencedSOPInstanceUID == fixed.SOPInstanceUID
    # No patient name or ID in anything the batch and report wrote or said, nor in file names.
    secret = identifiers(cohort)
    for path in out.rglob("*"):
        assert not [word for word in secret if word in path.name]
        if path.suffix in (".html", ".csv", ".jsonl", ".json"):
            # Thumbnails' base64 holds any three letters somewhere: only the text counts.
            text = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", path.read_text())
            assert not [word for word in secret if word in text], path
    assert not [word for word in secret if word in logs.out + logs.err]
