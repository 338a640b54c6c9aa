"""A CSV of pairs with their truth, for data sets other than FIRE.

Two schemas; the header says which (other columns are ignored):

``src,tgt,m00,m01,m02,m10,m11,m12``, one row a pair: the true affine M with
    x_tgt = M · [x_src, y_src, 1], as the colour fundus / fluorescein angiography data set of
    Hajeb Mohammad Alipour et al. publishes its truth. The error of an estimate is measured on
    an 11 × 11 grid spanning the src image (pixel centres (0, 0) to (width - 1, height - 1),
    corners included): the distance between where M and the estimate send each grid point.

``src,tgt,x_src,y_src,x_tgt,y_tgt``, one row a control point: the point (x_src, y_src) of src
    is (x_tgt, y_tgt) of tgt. The rows of one (src, tgt) pair need not be adjacent.

Since the truth maps src onto tgt, src is MOVING and tgt is FIXED; errors are in tgt's native
pixels. Image paths are relative to the CSV's folder (absolute paths are kept). Every row and
image is checked before any pair is registered.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..errors import DatasetError, ImageReadError
from .runner import GRID_POINTS_PER_SIDE, AffineTruth, ControlPoints, Pair

AFFINE_COLUMNS = ("src", "tgt", "m00", "m01", "m02", "m10", "m11", "m12")
POINT_COLUMNS = ("src", "tgt", "x_src", "y_src", "x_tgt", "y_tgt")
GROUP = "all"

SCHEMA_HELP = f"""\
CSV schemas (the header says which; other columns are ignored):
  {','.join(AFFINE_COLUMNS)}
      one row a pair; the true affine M with x_tgt = M [x_src, y_src, 1]; the error is
      measured on {GRID_POINTS_PER_SIDE}x{GRID_POINTS_PER_SIDE} grid points spanning the src image
  {','.join(POINT_COLUMNS)}
      one row a control point; rows of the same (src, tgt) form one pair
src is MOVING, tgt is FIXED (the truth maps src onto tgt); errors are px of tgt's native
resolution. Image paths are relative to the CSV's folder."""


def read_pairs(csv_path: Path) -> tuple[list[Pair], str]:
    """The pairs of the CSV, in order of first appearance, and the schema's name."""
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: no such file")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{csv_path}: cannot be read as UTF-8 text ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    has_affine = set(AFFINE_COLUMNS) <= set(header)
    has_points = set(POINT_COLUMNS) <= set(header)
    if has_affine == has_points:
        problem = "has the columns of both schemas" if has_affine else "matches neither schema"
        raise DatasetError(f"{csv_path}: header {','.join(header) or '(empty)'} {problem}; "
                           f"expected {','.join(AFFINE_COLUMNS)} or {','.join(POINT_COLUMNS)}")
    schema = "affine" if has_affine else "points"
    rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise DatasetError(f"{csv_path}: no rows after the header")
    folder = csv_path.parent
    if schema == "affine":
        return [_affine_pair(csv_path, folder, line, row) for line, row in rows], schema
    return _point_pairs(csv_path, folder, rows), schema


def _affine_pair(csv_path: Path, folder: Path, line: int, row: dict) -> Pair:
    src, tgt = _images(csv_path, folder, line, row)
    values = [_number(csv_path, line, row, name) for name in AFFINE_COLUMNS[2:]]
    matrix = np.vstack([np.reshape(values, (2, 3)), [0.0, 0.0, 1.0]])
    if abs(np.linalg.det(matrix[:2, :2])) < 1e-12:
        raise DatasetError(f"{csv_path}:{line}: the affine's linear part is singular")
    return Pair(name=f"{row['src']} -> {row['tgt']}", group=GROUP, fixed=tgt, moving=src,
                truth=AffineTruth(matrix),
                details={"src": row["src"], "tgt": row["tgt"], "line": line,
                         "truth_affine": matrix[:2].tolist()})


def _point_pairs(csv_path: Path, folder: Path, rows: list[tuple[int, dict]]) -> list[Pair]:
    grouped: dict[tuple[str, str], dict] = {}
    for line, row in rows:
        src, tgt = _images(csv_path, folder, line, row)
        entry = grouped.setdefault((row["src"], row["tgt"]),
                                   {"src": src, "tgt": tgt, "lines": [], "moving": [], "fixed": []})
        entry["lines"].append(line)
        entry["moving"].append([_number(csv_path, line, row, "x_src"),
                                _number(csv_path, line, row, "y_src")])
        entry["fixed"].append([_number(csv_path, line, row, "x_tgt"),
                               _number(csv_path, line, row, "y_tgt")])
    return [Pair(name=f"{src_name} -> {tgt_name}", group=GROUP, fixed=entry["tgt"],
                 moving=entry["src"],
                 truth=ControlPoints(moving=np.asarray(entry["moving"], dtype=np.float64),
                                     fixed=np.asarray(entry["fixed"], dtype=np.float64)),
                 details={"src": src_name, "tgt": tgt_name, "lines": entry["lines"]})
            for (src_name, tgt_name), entry in grouped.items()]


def _images(csv_path: Path, folder: Path, line: int, row: dict) -> tuple[Path, Path]:
    paths = []
    for column in ("src", "tgt"):
        value = (row.get(column) or "").strip()
        if not value:
            raise DatasetError(f"{csv_path}:{line}: column {column} is empty")
        row[column] = value
        path = folder / value
        if not path.is_file():
            raise ImageReadError(f"{csv_path}:{line}: {column} image {path}: no such file")
        paths.append(path)
    return paths[0], paths[1]


def _number(csv_path: Path, line: int, row: dict, column: str) -> float:
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DatasetError(f"{csv_path}:{line}: column {column}: {text!r} is not a finite number")
    return value
