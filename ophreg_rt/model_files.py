"""Where the runtime finds its graphs when the caller names none."""

from __future__ import annotations

import os
from pathlib import Path

from .config import MatcherName, Precision

#: Overrides the folder of default graphs (for installs that keep models elsewhere).
MODELS_DIR_ENV = "OPHREG_MODELS_DIR"

SUPERPOINT_FILE = "superpoint.onnx"
#: Shipped: the same weights statically quantised to INT8 (``python -m export quantize``).
SUPERPOINT_INT8_FILE = "superpoint_int8.onnx"
#: Not shipped: SuperGlue's trained weights are not redistributable here; a user exports their
#: own checkpoint to this name (``python -m export superglue --weights ...``).
SUPERGLUE_FILE = "superglue.onnx"
#: Shipped: LightGlue's published SuperPoint weights (models/README.md for the licence).
LIGHTGLUE_FILE = "lightglue.onnx"


def models_dir() -> Path:
    """Folder of the default graphs.

    ``$OPHREG_MODELS_DIR`` when set; else the graphs a wheel carries (``ophreg_rt/_models``,
    mapped from the repository's ``models/`` by pyproject.toml); else ``models/`` of the source
    checkout this package runs from (editable install).
    """
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override)
    packaged = Path(__file__).resolve().parent / "_models"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "models"


def default_superpoint(precision: Precision = Precision.FP32) -> Path:
    name = SUPERPOINT_INT8_FILE if Precision(precision) is Precision.INT8 else SUPERPOINT_FILE
    return models_dir() / name


def default_matcher_graph(matcher: MatcherName) -> Path | None:
    """The graph a matcher needs, or None for matchers computed in NumPy."""
    if MatcherName(matcher) is MatcherName.SUPERGLUE:
        return models_dir() / SUPERGLUE_FILE
    if MatcherName(matcher) is MatcherName.LIGHTGLUE:
        return models_dir() / LIGHTGLUE_FILE
    return None
