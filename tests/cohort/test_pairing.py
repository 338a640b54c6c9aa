"""The method's pairing rules and the manifest's checks (no registration runs here)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from ophreg_rt.cli import EXIT_OK, EXIT_USAGE, main
from ophreg_rt.cohort.manifest import COLUMNS, ManifestError, read_manifest
from ophreg_rt.cohort.pairing import pair_images, pairs_csv, read_pairs

# path, patient, eye, field, type, date, diagnosis. The expected pairs below follow from the
# rules in ophreg_rt/cohort/pairing.py's docstring, one row at a time.
ROWS = [
    ("a.png", "P1", "right", "macula", "colour", "2024-01-01", "healthy"),
    ("b.png", "P1", "right", "macula", "colour", "2023-01-01", "healthy"),
    ("c.png", "P1", "right", "macula", "FA", "2024-01-01", "healthy"),
    ("d.png", "P1", "left", "macula", "colour", "2024-01-01", "healthy"),
    ("e.png", "P1", "right", "optic_disc", "colour", "2024-01-01", "healthy"),
    ("f.png", "P2", "right", "macula", "FA", "2024-01-01", "diseased"),
    ("g.png", "P2", "right", "macula", "colour", "2025-01-01", "diseased"),
    ("h.png", "P2", "right", "macula", "FA", "2024-01-01", "diseased"),
    ("i.png", "P3", "right", "macula", "colour", "2024-01-01", "healthy"),
    ("j.png", "P3", "right", "macula", "colour", "2025-01-01", "diseased"),
    ("k.png", "P4", "right", "macula", "colour", "2024-01-01", "healthy"),
    ("l.png", "P5", "right", "macula", "colour", "2024-01-01", "healthy"),
]
EXPECTED = {
    # task 1: healthy, same type; the earlier date is fixed although listed second
    ("1", "across_dates", "b.png", "a.png"),
    # task 2: diseased, same type, same date: the one listed first is fixed
    ("2", "same_date", "f.png", "h.png"),
    # an eye with one diseased image is a diseased eye; earlier date fixed
    ("2", "across_dates", "i.png", "j.png"),
    # task 3: colour is fixed even when it is the later visit
    ("3", "across_dates", "g.png", "f.png"),
    ("3", "across_dates", "g.png", "h.png"),
}


def write_manifest(folder: Path, rows, header=COLUMNS, touch=True) -> Path:
    for row in rows:
        if touch:
            (folder / row[0]).write_bytes(b"")  # the manifest checks paths, it decodes nothing
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_pairs_follow_the_methods_rules(tmp_path):
    pairing = pair_images(read_manifest(write_manifest(tmp_path, ROWS)))
    found = {(p.task, p.row["dates"], p.fixed_path.name, p.moving_path.name)
             for p in pairing.pairs}
    assert found == EXPECTED
    assert pairing.unassigned == 2  # c.png with a.png and b.png: healthy, different types
    assert [p.task for p in pairing.pairs] == sorted(p.task for p in pairing.pairs)


def test_pairs_never_cross_patients_eyes_or_field_centres(tmp_path):
    images = {i.path.resolve(): i for i in read_manifest(write_manifest(tmp_path, ROWS))}
    for pair in pair_images(list(images.values())).pairs:
        fixed, moving = images[pair.fixed_path], images[pair.moving_path]
        assert (fixed.patient_id, fixed.eye, fixed.field) == (
            moving.patient_id, moving.eye, moving.field)


def test_clinical_spellings_are_read(tmp_path):
    rows = [("a.png", "P1", "OD", "Optic Disc", "Color", "2024-01-01", "Healthy"),
            ("b.png", "P1", "od", "optic-disc", "colour", "2024-01-02", "healthy")]
    images = read_manifest(write_manifest(tmp_path, rows))
    assert {(i.eye, i.field, i.image_type, i.diagnosis) for i in images} == {
        ("right", "optic_disc", "colour", "healthy")}
    assert len(pair_images(images).pairs) == 1


def test_the_pairs_file_round_trips_and_keeps_ids_when_the_manifest_grows(tmp_path):
    pairs = pair_images(read_manifest(write_manifest(tmp_path, ROWS[:8]))).pairs
    (tmp_path / "pairs.csv").write_text(pairs_csv(pairs))
    again = read_pairs(tmp_path / "pairs.csv")
    assert [(p.pair_id, p.fixed_path, p.moving_path, p.row) for p in again] == [
        (p.pair_id, p.fixed_path, p.moving_path, p.row) for p in pairs]
    grown = pair_images(read_manifest(write_manifest(tmp_path, ROWS))).pairs
    assert {p.pair_id for p in pairs} < {p.pair_id for p in grown}


@pytest.mark.parametrize("edit, message", [
    (lambda rows, header: (rows, header[:2] + header[3:]), "missing column eye"),
    (lambda rows, header: ([rows[0], rows[1][:2] + ("up",) + rows[1][3:]], header),
     "line 3: eye 'up' is not one of left, right"),
    (lambda rows, header: ([rows[0], rows[1][:3] + ("periphery",) + rows[1][4:]], header),
     "line 3: field 'periphery' is not one of optic_disc, macula"),
    (lambda rows, header: ([rows[0], rows[1][:5] + ("01/02/2024",) + rows[1][6:]], header),
     "line 3: date '01/02/2024' is not a YYYY-MM-DD date"),
    (lambda rows, header: ([rows[0], rows[1][:6] + ("unknown",)], header),
     "line 3: diagnosis 'unknown' is not one of healthy, diseased"),
    (lambda rows, header: ([rows[0], ("",) + rows[1][1:]], header), "line 3: path is empty"),
    (lambda rows, header: ([rows[0], rows[0]], header),
     "line 3: a.png is already listed on line 2"),
    (lambda rows, header: ([], header), "no rows after the header"),
])
def test_a_malformed_manifest_is_one_line_naming_the_row(tmp_path, capsys, edit, message):
    rows, header = edit(ROWS[:2], COLUMNS)
    for row in ROWS[:2]:
        (tmp_path / row[0]).write_bytes(b"")
    manifest = write_manifest(tmp_path, rows, header, touch=False)
    assert main(["pairs", str(manifest)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ophreg: error: {manifest}: ") and message in err, err
    assert len(err.splitlines()) == 1


def test_a_missing_image_names_its_line_and_path(tmp_path, capsys):
    manifest = write_manifest(tmp_path, ROWS[:2])
    (tmp_path / "b.png").unlink()
    assert main(["pairs", str(manifest)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"line 3: {tmp_path / 'b.png'}: no such file" in err


def test_pairs_command_writes_the_file_and_refuses_to_overwrite_it(tmp_path, capsys):
    manifest = write_manifest(tmp_path, ROWS)
    out = tmp_path / "pairs.csv"
    assert main(["pairs", str(manifest), "--out", str(out)]) == EXIT_OK
    assert len(read_pairs(out)) == len(EXPECTED)
    assert "task 3 (diseased, different types): 2 pairs" in capsys.readouterr().err
    assert main(["pairs", str(manifest), "--out", str(out)]) == EXIT_USAGE
    assert "already exists" in capsys.readouterr().err


def test_a_pairs_file_with_a_repeated_id_is_refused(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("pair_id,fixed_path,moving_path\nx,a.png,b.png\nx,a.png,c.png\n")
    with pytest.raises(ManifestError, match="line 3: pair_id x is already used on line 2"):
        read_pairs(path)


def test_cohort_modules_import_without_torch_onnx_or_ray():
    code = ("import sys\n"
            "for name in ('torch', 'onnx', 'ray'):\n"
            "    sys.modules[name] = None\n"
            "import ophreg_rt.cohort.cli, ophreg_rt.cohort.batch, ophreg_rt.cohort.ray_engine\n"
            "from ophreg_rt.cli import build_parser\n"
            "build_parser()\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
