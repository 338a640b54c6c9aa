"""``ophreg pairs DICOM_DIR``: the cohort manifest read from the files' DICOM tags.

Each value of a manifest row comes from tags, in this order of preference (the first that is
present and readable wins, and the row's ``source`` column names it for the reviewer):

``patient_id``  PatientID (0010,0020), written as a pseudonym (P0001, ... in the order of the
                real IDs) unless ``--patient-ids``: the manifest and pairs files then carry no
                identifier, and the real ID only decides which images belong together
``eye``         ImageLaterality (0020,0062), then the series' Laterality (0020,0060)
``date``        AcquisitionDateTime (0008,002A), AcquisitionDate, ContentDate (0008,0023),
                SeriesDate, StudyDate (0008,0020)
``image_type``  words of the contrast agent (0018,0010 and its code sequence), SeriesDescription,
                ProtocolName, AcquisitionDeviceProcessingDescription, ImageComments, ImageType;
                failing those, a colour photometric interpretation means ``colour``
``field``       words of the same descriptions and the anatomic region code sequences
                ("macula", "fovea"; "optic disc", "ONH", "papilla")
``diagnosis``   the ``--diagnoses`` CSV (``patient_id``, ``diagnosis``, optional ``eye``): DICOM
                rarely carries it

An ``--overrides`` CSV (column ``path``, a path or glob relative to the folder, and any manifest
columns) replaces values, later rows over earlier ones. The manifest is always written (for
review) before anything is paired; a value that could not be read is left empty and named, with
the file and the tags looked at, on stderr. Files that are not single-frame images (DICOMDIR,
reports, multi-frame series) are listed as skipped.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import fnmatch
import io
import os
import re
import sys
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path

from ..dicom import is_dicom_file, read_tags
from ..errors import ImageReadError
from ..imageio import check_writable, write_bytes_atomic
from .manifest import COLUMNS, ImageRecord, ManifestError, _record, read_csv_rows

#: The manifest's columns as written from DICOM: the ones ``read_manifest`` needs, then where
#: each value came from (``read_manifest`` ignores extra columns).
MANIFEST_COLUMNS = COLUMNS + ("source",)
OVERRIDABLE = tuple(column for column in COLUMNS if column != "path")

_EYE_TAGS = (("ImageLaterality", "0020,0062"), ("Laterality", "0020,0060"))
_DATE_TAGS = (("AcquisitionDateTime", "0008,002A"), ("AcquisitionDate", "0008,0022"),
              ("ContentDate", "0008,0023"), ("SeriesDate", "0008,0021"),
              ("StudyDate", "0008,0020"))
_TEXT_TAGS = (("SeriesDescription", "0008,103E"), ("ProtocolName", "0018,1030"),
              ("AcquisitionDeviceProcessingDescription", "0018,1400"),
              ("ImageComments", "0020,4000"))
_CONTRAST_TAGS = (("ContrastBolusAgent", "0018,0010"),
                  ("ContrastBolusAgentSequence", "0018,0012"))
_ANATOMY_TAGS = (("AnatomicRegionSequence", "0008,2218"),
                 ("PrimaryAnatomicStructureSequence", "0008,2228"))
#: Words that name a modality, most specific first ("ICG angiography" is not FA, and
#: "autofluorescence" is not fluorescein angiography).
_TYPE_WORDS = (
    ("ICGA", re.compile(r"\bICG|INDOCYANINE")),
    ("FAF", re.compile(r"AUTO.?FLUOR|\bFAF\b|\bB?AF\b")),
    ("FA", re.compile(r"FLUORESCEIN|\bFF?AG?\b|ANGIO")),
    ("IR", re.compile(r"INFRA.?RED|\bN?IR\b")),
    ("red_free", re.compile(r"RED.?FREE|\bRF\b")),
    ("colour", re.compile(r"COLOU?R|\bCFP?\b")),
)
_FIELD_WORDS = (
    ("optic_disc", re.compile(r"OPTIC.?(DIS[CK]|NERVE)|\bDIS[CK]\b|\bONH\b|PAPILL")),
    ("macula", re.compile(r"MACUL|FOVEA")),
)
_NO_DIAGNOSES = "DICOM does not carry it: give --diagnoses CSV"
_COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
                        "PALETTE COLOR")


def add_options(parser: argparse.ArgumentParser) -> None:
    """``ophreg pairs``' options for a folder of DICOM files."""
    group = parser.add_argument_group("a folder of DICOM files instead of a manifest")
    group.add_argument("--manifest-out", type=Path,
                       help="write the manifest read from the tags there, for review (needed "
                            "with a folder)")
    group.add_argument("--diagnoses", type=Path,
                       help="CSV with patient_id (the DICOM PatientID), diagnosis "
                            "(healthy/diseased) and optionally eye")
    group.add_argument("--overrides", type=Path,
                       help="CSV with path (relative to the folder; globs allowed) and any "
                            "manifest columns whose non-empty values replace the tags' ")
    group.add_argument("--skip-incomplete", action="store_true",
                       help="pair the images whose values were all read, leaving the others "
                            "out (default: stop when any value is missing)")
    group.add_argument("--patient-ids", action="store_true",
                       help="write the real PatientIDs in the manifest and pairs files "
                            "(default: pseudonyms P0001, ...)")


def refuse_folder_options(args: argparse.Namespace) -> None:
    """A folder's options given with a manifest CSV would be silently ignored: refuse them."""
    given = [option for option, value in (
        ("--manifest-out", args.manifest_out), ("--diagnoses", args.diagnoses),
        ("--overrides", args.overrides), ("--skip-incomplete", args.skip_incomplete),
        ("--patient-ids", args.patient_ids)) if value]
    if given:
        raise ManifestError(f"{', '.join(given)}: only for a folder of DICOM files; "
                            f"{args.manifest} is a manifest")


@dataclass
class Scan:
    """What the tags of a folder gave: one manifest row per image, and what could not be read."""

    rows: list[dict[str, str]] = dataclass_field(default_factory=list)
    #: row index -> the values that could not be read, each "file: column: why"
    missing: dict[int, list[str]] = dataclass_field(default_factory=dict)
    skipped: list[str] = dataclass_field(default_factory=list)
    not_dicom: int = 0


def manifest_from_folder(args: argparse.Namespace) -> list[ImageRecord]:
    """The records of the manifest built from ``args.manifest`` (a folder), written to
    ``args.manifest_out``; stops with every unreadable value named unless --skip-incomplete."""
    folder: Path = args.manifest
    if args.manifest_out is None:
        raise ManifestError(f"{folder}: a folder of DICOM files needs --manifest-out PATH (the "
                            "manifest read from the tags is written there for review)")
    check_writable([args.manifest_out], args.force)
    scan = scan_folder(folder, diagnoses=args.diagnoses, overrides=args.overrides,
                       real_ids=args.patient_ids)
    write_bytes_atomic(args.manifest_out, manifest_csv(scan.rows, args.manifest_out).encode())
    for line in scan.skipped:
        print(f"skipped {line}", file=sys.stderr)
    if scan.not_dicom:
        print(f"{scan.not_dicom} files of {folder} are not DICOM and were ignored",
              file=sys.stderr)
    no_diagnoses = f"diagnosis: {_NO_DIAGNOSES}"
    for problems in scan.missing.values():
        for problem in problems:
            if not problem.endswith(no_diagnoses):
                print(f"not read: {problem}", file=sys.stderr)
    if args.diagnoses is None:  # one line, not one a file: no file could have it
        print(f"not read: every image's {no_diagnoses}", file=sys.stderr)
    print(f"{len(scan.rows)} images, {len(scan.rows) - len(scan.missing)} complete; manifest: "
          f"{args.manifest_out}", file=sys.stderr)
    if scan.missing and not args.skip_incomplete:
        count = sum(len(problems) for problems in scan.missing.values())
        raise ManifestError(
            f"{folder}: {count} values of {len(scan.missing)} images could not be read from "
            f"the tags (listed above); fill them in {args.manifest_out} and run `ophreg pairs "
            f"{args.manifest_out}`, give them with --overrides/--diagnoses, or leave those "
            "images out with --skip-incomplete")
    records = []
    incomplete_lines = {index + 2 for index in scan.missing}  # header is line 1
    for line, row in read_csv_rows(args.manifest_out, COLUMNS) if scan.rows else []:
        if line not in incomplete_lines:
            records.append(_record(args.manifest_out, line, row))
    if not records:
        raise ManifestError(f"{folder}: no image with every value read; nothing to pair")
    return records


def scan_folder(folder: Path, diagnoses: Path | None = None, overrides: Path | None = None,
                real_ids: bool = False) -> Scan:
    """Manifest rows (``path`` absolute) from every DICOM image under ``folder``."""
    if not folder.is_dir():
        raise ManifestError(f"{folder}: no such folder")
    diagnosis_of = _read_diagnoses(diagnoses) if diagnoses else None
    scan = Scan()
    real_id_of_row: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if not is_dicom_file(path):
            scan.not_dicom += 1
            continue
        try:
            tags = read_tags(path)
        except ImageReadError as exc:
            scan.skipped.append(f"{exc}")
            continue
        why_not = _not_an_image(tags)
        if why_not:
            scan.skipped.append(f"{path}: {why_not}")
            continue
        row, problems = _row(path, tags, diagnosis_of, diagnoses)
        real_id_of_row.append(row["patient_id"])
        if problems:
            scan.missing[len(scan.rows)] = problems
        scan.rows.append(row)
    if not scan.rows:
        raise ManifestError(f"{folder}: no DICOM image found")
    if overrides:
        _apply_overrides(scan, folder, overrides)
    if not real_ids:
        _pseudonymise(scan.rows, real_id_of_row)
    return scan


def _not_an_image(tags) -> str | None:
    if "Rows" not in tags or "Columns" not in tags:
        kind = getattr(tags.get("SOPClassUID"), "name", "") or "object"
        return f"a DICOM {kind} without an image"
    frames = int(tags.get("NumberOfFrames") or 1)
    if frames > 1:
        return f"{frames} frames (multi-frame): only single images are paired"
    return None


def _row(path: Path, tags, diagnosis_of: dict | None,
         diagnoses: Path | None) -> tuple[dict[str, str], list[str]]:
    row = {column: "" for column in MANIFEST_COLUMNS}
    row["path"] = str(path.absolute())
    sources, problems = [], []

    def found(column: str, value: str, tag: str) -> None:
        row[column] = value
        sources.append(f"{column}<-{tag}")

    def lost(column: str, why: str) -> None:
        problems.append(f"{path}: {column}: {why}")

    patient = str(tags.get("PatientID") or "").strip()
    if patient:
        found("patient_id", patient, "PatientID")
    else:
        lost("patient_id", "PatientID (0010,0020) is missing or empty")

    for keyword, tag in _EYE_TAGS:
        value = str(tags.get(keyword) or "").strip().upper()
        if value in ("L", "R"):
            found("eye", "left" if value == "L" else "right", keyword)
            break
    else:
        seen = [f"{k} ({t}) = {str(tags.get(k)).strip()!r}" for k, t in _EYE_TAGS if tags.get(k)]
        lost("eye", ", ".join(seen) + " is not L or R" if seen else
             "no ImageLaterality (0020,0062) or Laterality (0020,0060)")

    for keyword, tag in _DATE_TAGS:
        date = _date(tags.get(keyword))
        if date:
            found("date", date, keyword)
            break
    else:
        lost("date", "no readable " + ", ".join(f"{k} ({t})" for k, t in _DATE_TAGS))

    image_type, type_tag = _image_type(tags)
    if image_type:
        found("image_type", image_type, type_tag)
    else:
        lost("image_type", "no modality named in " + ", ".join(
            f"{k} ({t})" for k, t in _CONTRAST_TAGS + _TEXT_TAGS + (("ImageType", "0008,0008"),))
             + ", and a grey image (PhotometricInterpretation) can be any modality")

    field_value, field_tag, conflict = _field(tags)
    if field_value:
        found("field", field_value, field_tag)
    else:
        lost("field", conflict or "no field centre (macula, optic disc) named in " + ", ".join(
            f"{k} ({t})" for k, t in _TEXT_TAGS + _ANATOMY_TAGS))

    if diagnosis_of is None:
        lost("diagnosis", _NO_DIAGNOSES)
    else:
        value = diagnosis_of.get((patient, row["eye"])) or diagnosis_of.get((patient, ""))
        if value:
            found("diagnosis", value, diagnoses.name)
        else:
            lost("diagnosis", f"this PatientID (and eye) is not in {diagnoses}")
    row["source"] = " ".join(sources)
    return row, problems


def _date(value) -> str | None:
    text = str(value or "").strip()
    if len(text) < 8:
        return None
    try:
        return datetime.datetime.strptime(text[:8], "%Y%m%d").date().isoformat()
    except ValueError:
        return None


def _texts(tags, keywords) -> list[tuple[str, str]]:
    """(keyword, upper-case text) of each tag present: values, and the meanings of codes."""
    texts = []
    for keyword, _ in keywords:
        value = tags.get(keyword)
        if value is None or value == "":
            continue
        if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
            parts = []
            for item in value:
                if hasattr(item, "get"):  # a sequence item: its code's meaning
                    parts.append(str(item.get("CodeMeaning") or ""))
                    for modifier in item.get("AnatomicRegionModifierSequence") or []:
                        parts.append(str(modifier.get("CodeMeaning") or ""))
                else:
                    parts.append(str(item))
            text = " ".join(parts)
        else:
            text = str(value)
        if text.strip():
            texts.append((keyword, text.upper().replace("_", " ")))
    return texts


def _image_type(tags) -> tuple[str | None, str]:
    for keyword, text in _texts(tags, _CONTRAST_TAGS + _TEXT_TAGS + (("ImageType", ""),)):
        for name, words in _TYPE_WORDS:
            if words.search(text):
                return name, keyword
    photometric = str(tags.get("PhotometricInterpretation") or "").strip().upper()
    if photometric in _COLOUR_PHOTOMETRICS and not tags.get("ContrastBolusAgent"):
        return "colour", "PhotometricInterpretation"
    return None, ""


def _field(tags) -> tuple[str | None, str, str | None]:
    for keyword, text in _texts(tags, _TEXT_TAGS + _ANATOMY_TAGS):
        named = {name for name, words in _FIELD_WORDS if words.search(text)}
        if len(named) == 1:
            return named.pop(), keyword, None
        if len(named) > 1:
            return None, "", f"{keyword} names both the macula and the optic disc"
    return None, "", None


def _read_diagnoses(path: Path) -> dict[tuple[str, str], str]:
    """(PatientID, eye or "") -> diagnosis; eye-specific rows win over whole-patient ones."""
    diagnoses: dict[tuple[str, str], str] = {}
    for line, row in read_csv_rows(path, ("patient_id", "diagnosis")):
        value = row["diagnosis"].lower()
        if value not in ("healthy", "diseased"):
            raise ManifestError(f"{path}: line {line}: diagnosis '{row['diagnosis']}' is not "
                                "one of healthy, diseased")
        eye = (row.get("eye") or "").lower()
        eye = {"os": "left", "od": "right", "l": "left", "r": "right"}.get(eye, eye)
        if eye not in ("", "left", "right"):
            raise ManifestError(f"{path}: line {line}: eye '{row['eye']}' is not left or right")
        if not row["patient_id"]:
            raise ManifestError(f"{path}: line {line}: patient_id is empty")
        diagnoses[(row["patient_id"], eye)] = value
    return diagnoses


def _apply_overrides(scan: Scan, folder: Path, path: Path) -> None:
    relative = [os.path.relpath(row["path"], folder.absolute()) for row in scan.rows]
    for line, override in read_csv_rows(path, ("path",)):
        unknown = [c for c in override if c not in OVERRIDABLE + ("path",) and override[c]]
        if unknown:
            raise ManifestError(f"{path}: line {line}: {', '.join(unknown)} is not a manifest "
                                f"column ({', '.join(OVERRIDABLE)})")
        pattern = override["path"].replace(os.sep, "/")
        hits = [i for i, name in enumerate(relative)
                if fnmatch.fnmatchcase(name.replace(os.sep, "/"), pattern)]
        if not hits:
            raise ManifestError(f"{path}: line {line}: '{override['path']}' matches no DICOM "
                                f"image of {folder}")
        for index in hits:
            row = scan.rows[index]
            for column in OVERRIDABLE:
                value = override.get(column, "")
                if not value:
                    continue
                row[column] = value
                row["source"] = " ".join(
                    [s for s in row["source"].split() if not s.startswith(column + "<-")]
                    + [f"{column}<-{path.name}"])
                problems = [p for p in scan.missing.get(index, [])
                            if not p.startswith(f"{row['path']}: {column}: ")]
                if problems:
                    scan.missing[index] = problems
                else:
                    scan.missing.pop(index, None)


def _pseudonymise(rows: list[dict[str, str]], real_ids: list[str]) -> None:
    numbers = {real: f"P{n:04d}" for n, real in enumerate(sorted(set(real_ids) - {""}), 1)}
    for row, real in zip(rows, real_ids):
        # An override of patient_id is the user's own label, not an identifier from the files.
        if row["patient_id"] == real and real:
            row["patient_id"] = numbers[real]


def manifest_csv(rows: list[dict[str, str]], manifest: Path) -> str:
    """The manifest's text; image paths relative to the manifest's folder."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    base = manifest.absolute().parent
    for row in rows:
        writer.writerow({**row, "path": os.path.relpath(row["path"], base)})
    return out.getvalue()
