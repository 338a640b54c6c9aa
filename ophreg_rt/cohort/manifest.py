"""The cohort manifest: one CSV row per image, read and checked before any work is done.

Columns (a header row names them; extra columns are ignored):

``path``        the image file; a relative path is relative to the manifest's folder
``patient_id``  any non-empty text; images are only ever paired within one patient
``eye``         ``left`` or ``right`` (``OS``/``OD`` are accepted: oculus sinister/dexter)
``field``       the field centre: ``optic_disc`` or ``macula`` (``disc``, ``optic disc`` accepted)
``image_type``  the modality, e.g. ``colour``, ``FA``, ``FAF``, ``IR`` (case-insensitive; ``color``
                is read as ``colour``, which the pairing rules treat as the reference modality)
``date``        the visit date, ``YYYY-MM-DD``
``diagnosis``   ``healthy`` or ``diseased``

Every problem is reported as one :class:`ManifestError` naming the file, the line (as an editor
numbers it, header = line 1) and the value. Paths must exist and be readable; images are not
decoded here (that would read a cohort twice): an undecodable one fails its pairs in the batch.
"""

from __future__ import annotations

import csv
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import OphregError

COLUMNS = ("path", "patient_id", "eye", "field", "image_type", "date", "diagnosis")

EYES = ("left", "right")
FIELDS = ("optic_disc", "macula")
DIAGNOSES = ("healthy", "diseased")
#: The modality cross-type pairs keep fixed (the method registers other modalities onto it).
COLOUR = "colour"

_EYE_ALIASES = {"left": "left", "right": "right", "os": "left", "od": "right"}
_FIELD_ALIASES = {"optic_disc": "optic_disc", "disc": "optic_disc", "macula": "macula"}
_TYPE_ALIASES = {"color": COLOUR}


class ManifestError(OphregError):
    """A manifest (or pairs file) is missing, malformed, or names an unusable image."""


@dataclass(frozen=True)
class ImageRecord:
    """One manifest row, normalised. ``line`` is where it was read (for messages)."""

    path: Path
    patient_id: str
    eye: str
    field: str
    image_type: str
    date: datetime.date
    diagnosis: str
    line: int


def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row of a CSV whose header holds every ``required`` column."""
    if not path.is_file():
        raise ManifestError(f"{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in required if name not in header]
            if missing:
                raise ManifestError(
                    f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(missing)} (the header has: {', '.join(header) or 'nothing'})")
            reader.fieldnames = header
            rows = []
            for row in reader:
                if None in row:
                    raise ManifestError(f"{path}: line {reader.line_num}: more values than columns")
                if all(not (value or "").strip() for value in row.values()):
                    continue  # a blank line is not a row
                rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()}))
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a UTF-8 text file") from None
    except csv.Error as exc:
        raise ManifestError(f"{path}: not a readable CSV ({exc})") from None
    if not rows:
        raise ManifestError(f"{path}: no rows after the header")
    return rows


def read_manifest(path: str | os.PathLike) -> list[ImageRecord]:
    """Every image of the manifest, validated; raises ManifestError naming the first bad line."""
    path = Path(path)
    records: list[ImageRecord] = []
    first_line_of: dict[Path, int] = {}
    for line, row in read_csv_rows(path, COLUMNS):
        record = _record(path, line, row)
        key = record.path.resolve()
        if key in first_line_of:
            raise ManifestError(f"{path}: line {line}: {row['path']} is already listed on line "
                                f"{first_line_of[key]}")
        first_line_of[key] = line
        records.append(record)
    return records


def _record(manifest: Path, line: int, row: dict[str, str]) -> ImageRecord:
    where = f"{manifest}: line {line}"

    def choose(column: str, aliases: dict[str, str], allowed: tuple[str, ...]) -> str:
        value = row[column]
        key = value.lower().replace("-", " ").replace(" ", "_")
        if key not in aliases:
            raise ManifestError(f"{where}: {column} '{value}' is not one of {', '.join(allowed)}")
        return aliases[key]

    for column in ("path", "patient_id", "image_type", "date"):
        if not row[column]:
            raise ManifestError(f"{where}: {column} is empty")
    eye = choose("eye", _EYE_ALIASES, EYES + ("OS", "OD"))
    field = choose("field", _FIELD_ALIASES, FIELDS)
    diagnosis = choose("diagnosis", {d: d for d in DIAGNOSES}, DIAGNOSES)
    try:
        date = datetime.date.fromisoformat(row["date"])
    except ValueError:
        raise ManifestError(f"{where}: date '{row['date']}' is not a YYYY-MM-DD date") from None
    image_type = row["image_type"].lower()
    image_type = _TYPE_ALIASES.get(image_type, image_type)
    image_path = Path(row["path"])
    if not image_path.is_absolute():
        image_path = manifest.parent / image_path
    if not image_path.is_file():
        raise ManifestError(f"{where}: {image_path}: no such file")
    if not os.access(image_path, os.R_OK):
        raise ManifestError(f"{where}: {image_path}: not readable (permission denied)")
    return ImageRecord(path=image_path, patient_id=row["patient_id"], eye=eye, field=field,
                       image_type=image_type, date=date, diagnosis=diagnosis, line=line)
