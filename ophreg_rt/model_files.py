"""Where the runtime finds its graphs when the caller names none."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import FeatureName, MatcherName, Precision, resolved_matcher
from .errors import ModelChecksumError

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


#: Beside every folder of graphs: file name and sha256 of each graph in it (export/common.py's
#: update_manifest writes an entry for every graph it exports).
MANIFEST_FILE = "manifest.json"


def expected_sha256(path: str | os.PathLike) -> str | None:
    """The sha256 a graph must have: the one the ``manifest.json`` beside it records.

    None for a graph the caller named that no manifest lists (accepted by explicit choice).
    Raises :class:`ModelChecksumError` for a graph in the default models folder that its
    manifest does not list: a default is only ever a graph whose content is recorded.
    """
    path = Path(path)
    manifest_path = path.parent / MANIFEST_FILE
    entry = None
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            entries = {e["file"]: e["sha256"] for e in manifest["graphs"]}
        except (OSError, ValueError, KeyError, TypeError):
            raise ModelChecksumError(
                f"{manifest_path}: not a readable manifest of graphs (file and sha256 each); "
                f"it vouches for {path.name}") from None
        entry = entries.get(path.name)
    if entry is None and _same_folder(path.parent, models_dir()):
        raise ModelChecksumError(
            f"{path}: not listed in {manifest_path}, so its content cannot be verified; export "
            "it with `python -m export` (which records it) or name it explicitly "
            "(--superpoint, --lightglue, --superglue)")
    return entry


def _same_folder(first: Path, second: Path) -> bool:
    try:
        return first.resolve() == second.resolve()
    except OSError:
        return False


def graphs_to_load(features: FeatureName, matcher: MatcherName | None, precision: Precision,
                   superpoint_model: str | os.PathLike | None = None,
                   matcher_model: str | os.PathLike | None = None) -> dict[str, Path]:
    """The graph file of each model a registrar with these options loads, by model name
    ("superpoint", "lightglue", "superglue"); none for SIFT with its ratio test."""
    graphs: dict[str, Path] = {}
    if FeatureName(features) is FeatureName.SUPERPOINT:
        graphs["superpoint"] = Path(superpoint_model or default_superpoint(precision))
    chosen = resolved_matcher(FeatureName(features), matcher)
    default = default_matcher_graph(chosen)
    if default is not None:  # MNN and SIFT's ratio test run without a graph
        graphs[chosen.value] = Path(matcher_model or default)
    return graphs
