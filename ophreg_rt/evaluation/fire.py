"""FIRE (Hernandez-Matas et al. 2017, "FIRE: Fundus Image Registration dataset") as laid out
on disk, read into pairs with control-point truth.

Layout::

    DIR/Images/<pair>_1.jpg, DIR/Images/<pair>_2.jpg
    DIR/Ground Truth/control_points_<pair>_1_2.txt    one point a line: x1 y1 x2 y2

``<pair>`` is a category letter and a number (S01, P37, A14): S, P and A are FIRE's three
categories. Image 1 is FIXED and image 2 MOVING, as in the field's usual evaluation
(SuperRetina's ``test_on_FIRE.py`` maps the points of ``<pair>_2`` with the estimate and
compares them with those of ``<pair>_1``): the error of a pair is the mean distance between
(x1, y1) and the estimate applied to (x2, y2), in image 1's native pixels.

P37 is left out, as SuperRetina's evaluation does ("control_points_P37_1_2.txt is ignored"):
its annotation is known to be wrong, and keeping it would score a correct registration as
inaccurate.

Everything is checked before any pair is registered, so that a typo in pair 130 does not cost
the 129 registrations before it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DatasetError, ImageReadError
from . import protocol
from .runner import ControlPoints, Pair

IMAGES = "Images"
GROUND_TRUTH = "Ground Truth"
CATEGORIES = ("S", "P", "A")
EXCLUDED_PAIRS = ("P37",)
_TRUTH_NAME = re.compile(r"control_points_(?P<pair>[A-Za-z]\w*?)_1_2\.txt")


def read_control_points(path: Path) -> ControlPoints:
    """Points of a FIRE truth file: image 2's (x2, y2) are moving, image 1's (x1, y1) fixed."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(field) for field in fields]
        except ValueError:
            values = []
        if len(values) != 4 or not np.all(np.isfinite(values)):
            raise DatasetError(f"{path}:{number}: expected four numbers 'x1 y1 x2 y2', "
                               f"found {line.strip()[:60]!r}")
        rows.append(values)
    if not rows:
        raise DatasetError(f"{path}: no control points")
    points = np.asarray(rows, dtype=np.float64)
    return ControlPoints(moving=points[:, 2:4], fixed=points[:, 0:2])


def discover(root: Path) -> tuple[list[Pair], list[str]]:
    """The pairs of a FIRE folder (sorted by name), and the names of those left out."""
    images, truth = root / IMAGES, root / GROUND_TRUTH
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    for folder in (images, truth):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such folder (FIRE's layout has '{IMAGES}/' and "
                               f"'{GROUND_TRUTH}/' side by side)")
    pairs, excluded = [], []
    for truth_file in sorted(truth.iterdir()):
        match = _TRUTH_NAME.fullmatch(truth_file.name)
        if match is None or not truth_file.is_file():
            continue
        name = match["pair"]
        category = name[0].upper()
        if category not in CATEGORIES:
            raise DatasetError(f"{truth_file}: pair {name!r} does not start with a FIRE "
                               f"category ({', '.join(CATEGORIES)})")
        if name.upper() in EXCLUDED_PAIRS:
            excluded.append(name)
            continue
        fixed, moving = images / f"{name}_1.jpg", images / f"{name}_2.jpg"
        for image in (fixed, moving):
            if not image.is_file():
                raise ImageReadError(f"{image}: no such file (an image of pair {name}, "
                                     f"whose control points are in {truth_file.name})")
        pairs.append(Pair(name=name, group=category, fixed=fixed, moving=moving,
                          truth=read_control_points(truth_file),
                          details={"control_points": str(truth_file)}))
    if not pairs:
        raise DatasetError(f"{truth}: no control_points_<pair>_1_2.txt file to evaluate")
    return pairs, excluded


PROTOCOL_NOTES = {
    "fixed": "image 1 (<pair>_1.jpg); the moving image 2 is mapped onto it",
    "pair_error": "mean distance between (x1, y1) and the estimate applied to (x2, y2), "
                  "px in image 1's native resolution",
    **protocol.NOTES,
    "excluded": list(EXCLUDED_PAIRS),
    "reference": "Hernandez-Matas et al. 2017 (FIRE); protocol as evaluated by SuperRetina "
                 "(Liu et al., CVPR 2022)",
}
