"""Real-pair precision: every pipeline and transform model, scored on independent control points.

Method.

* Truth: ``benchmarks/real_pairs/control_points.csv``, control points of the four real pairs of
  ``../shared/data/dev/pairs`` made by ``benchmarks/control_points.py`` from vessel maps by local
  normalised cross-correlation, with nothing from the registration pipeline and no global
  transform model involved (its docstring and ``benchmarks/real_pairs/README.md`` say how).
* Scores: each pipeline (``PIPELINES``: SuperPoint + LightGlue, the default; SuperPoint + MNN;
  SIFT) with each value of ``TransformModel`` (so a model added to the enum is measured without
  touching this file) registers every pair through ``ophreg evaluate points CSV --out JSON``,
  called in-process with default options otherwise (CLAHE on green, 1024, RANSAC seed 0). Per
  pair: status, the model actually fitted (``auto`` picks one per pair), and the mean / median /
  max distance between each fixed control point and the registration's image of its moving
  point, in the fixed image's native px and at 1024 scale (native x 1024 / the fixed image's
  longer side).
* Floors: for each model that can be fitted to points in closed form (similarity, affine and
  homography by ``ransac.fit_transform``, the quadratic by ``quadratic.fit_quadratic``),
  leave-one-out over the control points themselves: fit on all points but one, measure the
  held-out point's error, over every point; mean / median / max at 1024. It is what the model
  itself leaves when the correspondences are as good as the control points: a registration
  with that model cannot be expected to do better on these points, and the gap between a
  model's floor and its registrations is the pipeline's share. ``auto`` chooses per pair, so it
  has no floor of its own. The floor includes the control points' own noise. Two references
  that are no runtime model are printed beside them: a cubic polynomial, and an affine fitted to
  the LOCAL_NEIGHBOURS points nearest the held-out one (it follows any smooth map, so it shows
  what the points themselves allow).

Run: ``.venv/bin/python -m benchmarks.real_pairs_precision [--pipelines NAME ...] [--models
MODEL ...] [--floors-only]``. Writes ``results/real_pairs_precision.json`` and ``.md`` (a run
restricted by ``--pipelines``/``--models`` writes to ``--out`` only when given one, so that a
quick check does not overwrite the full table) and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime

from ophreg_rt import cli
from ophreg_rt.config import TransformModel
from ophreg_rt.evaluation.control_points import read_pairs
from ophreg_rt.imageio import read_image
from ophreg_rt.quadratic import fit_quadratic, map_quadratic
from ophreg_rt.ransac import fit_transform
from ophreg_rt.sessions import sha256_file
from ophreg_rt.transforms import apply

BENCHMARKS = Path(__file__).resolve().parent
CONTROL_POINTS = BENCHMARKS / "real_pairs" / "control_points.csv"
RESULTS_DIR = BENCHMARKS / "results"
REFERENCE = 1024

#: Pipeline name -> the options of ``ophreg evaluate points`` that select it.
PIPELINES = {
    "superpoint+lightglue": ["--features", "superpoint", "--matcher", "lightglue"],
    "superpoint+mnn": ["--features", "superpoint", "--matcher", "mnn"],
    "sift": ["--features", "sift"],
}
#: Models whose leave-one-out floor is computed with ``ransac.fit_transform``.
MATRIX_MODELS = (TransformModel.SIMILARITY, TransformModel.AFFINE, TransformModel.HOMOGRAPHY)
#: Points in the local-affine reference fit.
LOCAL_NEIGHBOURS = 10


def _fit_and_map(model: TransformModel):
    """A function (src, dst, points) -> mapped points for the model, or None (no floor)."""
    if model in MATRIX_MODELS:
        return lambda src, dst, points: apply(fit_transform(src, dst, model), points)
    if model is TransformModel.QUADRATIC:
        return lambda src, dst, points: map_quadratic(fit_quadratic(src, dst), points)
    return None


def loo_errors(src: np.ndarray, dst: np.ndarray, model: TransformModel) -> np.ndarray | None:
    """Leave-one-out errors, in dst's px, of ``model`` fitted to src -> dst; None when the model
    has no closed-form fit (``auto``). ``(N,)``: the distance between dst[i] and where the model
    fitted to every other point sends src[i]."""
    fit_map = _fit_and_map(TransformModel(model))
    if fit_map is None:
        return None
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    errors = np.empty(len(src))
    for index in range(len(src)):
        others = np.arange(len(src)) != index
        mapped = fit_map(src[others], dst[others], src[index:index + 1])
        errors[index] = float(np.linalg.norm(mapped[0] - dst[index]))
    return errors


def _cubic_fit_and_map(src: np.ndarray, dst: np.ndarray, points: np.ndarray) -> np.ndarray:
    centre, spread = src.mean(axis=0), src.std()

    def design(p: np.ndarray) -> np.ndarray:
        x, y = ((p - centre) / spread).T
        return np.stack([x ** i * y ** j for i in range(4) for j in range(4 - i)], axis=1)

    coefficients = np.linalg.lstsq(design(src), dst, rcond=None)[0]
    return design(points) @ coefficients


def reference_errors(src: np.ndarray, dst: np.ndarray) -> dict[str, np.ndarray]:
    """Leave-one-out errors (dst px) of two references that are no runtime model: a cubic
    polynomial (20 parameters), and an affine fitted to the LOCAL_NEIGHBOURS points nearest to
    the held-out one (in dst). The second follows any smooth map, so it approaches the control
    points' own noise (a little above it: the neighbours' noise adds in): what the points
    allow."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    cubic, local = np.empty(len(src)), np.empty(len(src))
    for index in range(len(src)):
        others = np.flatnonzero(np.arange(len(src)) != index)
        mapped = _cubic_fit_and_map(src[others], dst[others], src[index:index + 1])
        cubic[index] = float(np.linalg.norm(mapped[0] - dst[index]))
        distances = np.linalg.norm(dst[others] - dst[index], axis=1)
        near = others[np.argsort(distances)[:LOCAL_NEIGHBOURS]]
        matrix = fit_transform(src[near], dst[near], TransformModel.AFFINE)
        local[index] = float(np.linalg.norm(apply(matrix, src[index:index + 1])[0] - dst[index]))
    return {"cubic": cubic, f"local_affine_{LOCAL_NEIGHBOURS}": local}


def _stats(errors: np.ndarray, scale: float = 1.0) -> dict:
    return {"mean": float(np.mean(errors) * scale), "median": float(np.median(errors) * scale),
            "max": float(np.max(errors) * scale)}


def load_points(csv_path: Path) -> dict[str, dict]:
    """Per pair (the CSV's ``pair`` column, else src -> tgt): its images, points and scale."""
    pairs, schema = read_pairs(csv_path)
    if schema != "points":
        raise SystemExit(f"{csv_path}: not a control-point CSV")
    names = {}
    with csv_path.open(encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            names.setdefault((row["src"].strip(), row["tgt"].strip()),
                             (row.get("pair") or "").strip())
    loaded = {}
    for pair in pairs:
        key = (pair.details["src"], pair.details["tgt"])
        name = names.get(key) or pair.name
        height, width = read_image(pair.fixed).shape[:2]
        loaded[name] = {"key": key, "fixed": pair.fixed, "moving": pair.moving,
                        "fixed_size": [width, height], "scale": REFERENCE / max(width, height),
                        "src": pair.truth.moving, "dst": pair.truth.fixed}
    return loaded


def floors(points: dict[str, dict], models: list[TransformModel]) -> dict:
    """{pair: {model: {mean, median, max} at 1024, or None}}."""
    table = {}
    for name, entry in points.items():
        table[name] = {}
        for model in models:
            errors = loo_errors(entry["src"], entry["dst"], model)
            table[name][model.value] = None if errors is None else _stats(errors, entry["scale"])
    return table


def reference_floors(points: dict[str, dict]) -> dict:
    """{pair: {reference: {mean, median, max} at 1024}} of :func:`reference_errors`."""
    return {name: {key: _stats(errors, entry["scale"])
                   for key, errors in reference_errors(entry["src"], entry["dst"]).items()}
            for name, entry in points.items()}


def evaluate(csv_path: Path, pipeline: str, model: TransformModel,
             points: dict[str, dict]) -> dict:
    """One ``ophreg evaluate points`` run; per pair its status and errors (native and 1024)."""
    by_key = {entry["key"]: name for name, entry in points.items()}
    with tempfile.TemporaryDirectory() as folder:
        report_path = Path(folder) / "report.json"
        argv = ["evaluate", "points", str(csv_path), "--out", str(report_path),
                *PIPELINES[pipeline], "--transform", model.value]
        printed = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            code = cli.main(argv)
        wall = time.perf_counter() - started
        if code != 0 or not report_path.is_file():
            raise SystemExit(f"ophreg {' '.join(argv)} exited {code}:\n{printed.getvalue()}")
        report = json.loads(report_path.read_text())
    pairs = {}
    for entry in report["pairs"]:
        name = by_key[(entry["src"], entry["tgt"])]
        scale = points[name]["scale"]
        native = {key: entry[f"{key}_error_px"] for key in ("mean", "median", "max")}
        pairs[name] = {
            "status": entry["status"], "reason": entry["reason"],
            "transform": entry.get("transform"),
            "native_px": native,
            "px_1024": {key: None if value is None else value * scale
                        for key, value in native.items()},
            "num_inliers": entry["num_inliers"], "time_ms": entry["time_ms"],
        }
    return {"pipeline": pipeline, "model": model.value, "command": "ophreg " + " ".join(argv),
            "wall_s": round(wall, 1), "models": report.get("models"),
            "provider": report.get("provider"), "pairs": pairs}


def _floor_cell(stats: dict) -> str:
    """Mean (median / max) of a floor, px at 1024."""
    return f"{stats['mean']:.2f} ({stats['median']:.2f} / {stats['max']:.2f})"


def _cell(value: float | None) -> str:
    return "failed" if value is None else f"{value:.2f}"


def markdown(document: dict) -> str:
    names = list(document["control_points"]["pairs"])
    lines = ["# Real-pair precision: every pipeline and transform model", "",
             "Control points: `benchmarks/real_pairs/control_points.csv` (how they were made: "
             "`benchmarks/real_pairs/README.md`); points per pair: "
             + ", ".join(f"{n} {document['control_points']['pairs'][n]['points']}"
                         for n in names) + ".",
             f"Written by `{document['command']}` on {document['machine']} "
             f"({document['cpu_count']} CPUs), onnxruntime {document['versions']['onnxruntime']},"
             f" OpenCV {document['versions']['opencv']}, NumPy {document['versions']['numpy']}.",
             "", "## Floors: leave-one-out over the control points (px at 1024)", "",
             "Mean (median / max) held-out error of each model fitted to the other points.", "",
             "| model | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for model in document["models"]:
        cells = []
        for name in names:
            stats = document["floors"][name].get(model)
            cells.append("n/a (chosen per pair)" if stats is None else _floor_cell(stats))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    for key in next(iter(document["reference_floors"].values()), {}):
        cells = [_floor_cell(document["reference_floors"][name][key]) for name in names]
        lines.append(f"| *{key.replace('_', ' ')} (reference)* | " + " | ".join(cells) + " |")
    lines += ["", "*References* are no runtime model: a cubic polynomial (20 parameters), and an "
              f"affine fitted to the {LOCAL_NEIGHBOURS} control points nearest to the held-out "
              "one, which follows any smooth map and so approaches the points' own noise: "
              "what the points allow."]
    if document["runs"]:
        lines += ["", "## Registrations: mean error at 1024 (px)", "",
                  "`failed`: refused (an infinite error). With `auto`, the model chosen per pair "
                  "is in brackets.", "",
                  "| pipeline | model | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for run in document["runs"]:
            cells = []
            for name in names:
                pair = run["pairs"][name]
                cell = _cell(pair["px_1024"]["mean"])
                if run["model"] != pair["transform"] and pair["status"] == "ok":
                    cell += f" [{pair['transform']}]"
                cells.append(cell)
            lines.append(f"| {run['pipeline']} | {run['model']} | " + " | ".join(cells) + " |")
        lines += ["", "## Registrations: every number", "",
                  "Mean / median / max error at 1024, then the same in the fixed image's native "
                  "px; inliers; status.", "",
                  "| pipeline | model | pair | at 1024 | native | inliers | status |",
                  "|---|---|---|---|---|---|---|"]
        for run in document["runs"]:
            for name in names:
                pair = run["pairs"][name]
                at, native = pair["px_1024"], pair["native_px"]
                status = pair["status"] + (f" ({pair['reason']})" if pair["reason"] else "")
                lines.append(
                    f"| {run['pipeline']} | {run['model']} | {name} | "
                    + " / ".join(_cell(at[k]) for k in ("mean", "median", "max")) + " | "
                    + " / ".join(_cell(native[k]) for k in ("mean", "median", "max"))
                    + f" | {pair['num_inliers']} | {status} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    every_model = [model.value for model in TransformModel]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, default=CONTROL_POINTS, help="default: %(default)s")
    parser.add_argument("--pipelines", nargs="+", choices=list(PIPELINES),
                        default=list(PIPELINES))
    parser.add_argument("--models", nargs="+", choices=every_model, default=every_model)
    parser.add_argument("--floors-only", action="store_true",
                        help="only the leave-one-out floors (no registration)")
    parser.add_argument("--out", type=Path,
                        help="JSON report (the .md goes beside it); default: "
                             "results/real_pairs_precision.json for a full run, none otherwise")
    args = parser.parse_args(argv)
    full = (args.pipelines == list(PIPELINES) and args.models == every_model
            and not args.floors_only)
    out = args.out or (RESULTS_DIR / "real_pairs_precision.json" if full else None)
    models = [TransformModel(value) for value in args.models]
    points = load_points(args.csv)
    document = {
        "method": __doc__,
        "command": " ".join(["python -m benchmarks.real_pairs_precision",
                             *(sys.argv[1:] if argv is None else argv)]),
        "machine": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "versions": {"onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
                     "numpy": np.__version__},
        "control_points": {
            "csv": os.path.relpath(args.csv.resolve(), BENCHMARKS.parent),
            "sha256": sha256_file(args.csv),
            "pairs": {name: {"points": len(entry["src"]), "fixed_size": entry["fixed_size"],
                             "tgt": entry["key"][1], "src": entry["key"][0]}
                      for name, entry in points.items()},
        },
        "models": [model.value for model in models],
        "floors": floors(points, models),
        "reference_floors": reference_floors(points),
        "runs": [],
    }
    print(markdown(document), flush=True)
    if not args.floors_only:
        for pipeline in args.pipelines:
            for model in models:
                run = evaluate(args.csv, pipeline, model, points)
                document["runs"].append(run)
                summary = ", ".join(
                    f"{name} {_cell(pair['px_1024']['mean'])}"
                    for name, pair in run["pairs"].items())
                print(f"{pipeline} {model.value}: {summary} ({run['wall_s']} s)", flush=True)
        print()
        print(markdown(document))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        out.with_suffix(".md").write_text(markdown(document))
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
