"""The pictures a person checks a batch with: one static HTML page, a CSV, DICOM instances.

``ophreg report DIR`` (or ``ophreg batch ... --report``) reads ``DIR/results.jsonl`` and writes,
beside it:

* ``report.html``: one self-contained page (inline style, script and thumbnails, a Content
  Security Policy that forbids every external load), a row per pair with its task, status,
  reason, inliers, transform model, time, and thumbnails of the checkerboard and of a
  magenta/green overlay linked to the full pictures; a summary per task; a filter by status and
  task; a legend; and the options that produced it.
* ``results.csv``: the same rows for a spreadsheet.
* ``report/``: the full pictures, rebuilt from each result line (the moving image warped by its
  line's transform with ``transforms.warp_image``); a picture already there for the same
  transform is reused, so the report of a resumed batch redraws only the new pairs.

``--dicom`` also writes each registered pair's warped image as a DICOM instance of the fixed
image's study (``dicom/<pair_id>_<digest>.dcm``; see ``ophreg_rt.dicom.derived_instance``).

Privacy: the outputs carry no patient name or ID; file names are the pair ids (a hash of the two
paths); the input paths, which a clinic may have named after patients, are shown only with
``--show-paths`` (without it they are also cut out of error reasons). Pixels with burned-in
text are shown as they are.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import hashlib
import html
import io
import json
import os
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..config import TransformModel
from ..errors import BatchFolderError, InvalidConfigError, OphregError, OutputWriteError
from ..imageio import encode_image, read_image, to_display_rgb, write_bytes_atomic
from ..ransac import STATUS_ERROR, STATUS_FAILED, STATUS_OK
from ..transforms import fitted_from_json, warp_image
from ..visualize import checkerboard
from .batch import OPTIONS_FILE, RESULTS_FILE, ResultsLog

REPORT_FILE = "report.html"
CSV_FILE = "results.csv"
PICTURES_DIR = "report"
DICOM_DIR = "dicom"
#: Longer side of a thumbnail, px: eight rows of two fit a laptop screen.
THUMBNAIL_SIDE = 200
STATUS_LABELS = {STATUS_OK: "registered", STATUS_FAILED: "refused", STATUS_ERROR: "error"}
#: Background, text and symbol of each status: Okabe and Ito's palette (safe for the common
#: colour-vision deficiencies), text of at least 4.5:1 contrast on it, and a symbol so that no
#: meaning rests on colour alone.
STATUS_STYLE = {STATUS_OK: ("#0072B2", "#FFFFFF", "\u2713"),
                STATUS_FAILED: ("#E69F00", "#1B1F24", "\u2715"),
                STATUS_ERROR: ("#CC79A7", "#1B1F24", "!")}
CSV_COLUMNS = ("pair_id", "task", "dates", "status", "reason", "transform", "num_inliers",
               "num_matches", "keypoints_fixed", "keypoints_moving", "time_s", "parameters",
               "checkerboard", "overlay", "dicom")
PATH_COLUMNS = ("fixed_path", "moving_path")


def add_command(commands) -> None:
    report = commands.add_parser(
        "report", help="an HTML page and a CSV to check a batch's registrations",
        description=f"Write DIR/{REPORT_FILE} (one offline page: a row per pair with "
                    "thumbnails of the checkerboard and of a magenta/green overlay, a summary "
                    f"per task, a filter by status) and DIR/{CSV_FILE} from DIR/{RESULTS_FILE}.")
    report.add_argument("out_dir", type=Path, metavar="DIR", help="the batch's --out-dir")
    add_options(report, batch=False)
    report.set_defaults(handler=report_command)


def add_options(parser: argparse.ArgumentParser, batch: bool = True) -> None:
    """The report's options (``batch`` adds --report, which asks for the report at all)."""
    if batch:
        parser.add_argument("--report", action="store_true",
                            help=f"when the batch ends, write OUT_DIR/{REPORT_FILE} and "
                                 f"{CSV_FILE} (as `ophreg report OUT_DIR`)")
    parser.add_argument("--dicom", action="store_true",
                        help=f"write each registered pair's warped image to {DICOM_DIR}/"
                             "<pair_id>_<digest>.dcm, a new series in the fixed image's study "
                             "(the fixed image must be DICOM)")
    parser.add_argument("--show-paths", action="store_true",
                        help="show the input images' paths in the report and CSV (default: "
                             "hidden, as a clinic's paths may name patients)")


def report_command(args: argparse.Namespace) -> int:
    outcome = write_outputs(args.out_dir, report=True, dicom=args.dicom,
                            show_paths=args.show_paths)
    print(outcome.summary(), file=sys.stderr)
    return 0


@dataclass(frozen=True)
class Outcome:
    pairs: int
    pictures_drawn: int
    dicom_written: int
    report: Path | None

    def summary(self) -> str:
        parts = [f"{self.pairs} pairs"]
        if self.report is not None:
            parts.append(f"report: {self.report} ({self.pictures_drawn} pictures drawn)")
        if self.dicom_written:
            parts.append(f"{self.dicom_written} DICOM instances written")
        return "; ".join(parts)


def write_outputs(out_dir: Path, report: bool = True, dicom: bool = False,
                  show_paths: bool = False, records: list[dict] | None = None) -> Outcome:
    """The report, the CSV and (``dicom``) the DICOM instances of ``out_dir``'s results.

    ``records``: the results to report (the batch passes those of its pairs file); default:
    every line of ``results.jsonl``.
    """
    results = out_dir / RESULTS_FILE
    if records is None:
        if not results.is_file():
            raise BatchFolderError(f"{out_dir}: no {RESULTS_FILE} (run `ophreg batch` with "
                                   f"--out-dir {out_dir} first)")
        records = ResultsLog(results).read()
    if not records:
        raise BatchFolderError(f"{results}: no results yet")
    options = _read_options(out_dir / OPTIONS_FILE)
    rows, drawn, written = [], 0, 0
    for record in records:
        row = _Row(record, out_dir, show_paths)
        images = row.read_images(report, dicom)
        if report:
            drawn += row.draw(images)
        if dicom:
            written += row.write_dicom(images)
        rows.append(row)
    page = None
    if report:
        page = out_dir / REPORT_FILE
        write_bytes_atomic(page, _page(rows, options, show_paths, dicom).encode())
        write_bytes_atomic(out_dir / CSV_FILE, _csv(rows, show_paths).encode())
    return Outcome(len(rows), drawn, written, page)


def _read_options(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --- one pair -----------------------------------------------------------------------------------

class _Row:
    """A result line and the pictures and files made for it."""

    def __init__(self, record: dict, out_dir: Path, show_paths: bool):
        self.record, self.out_dir, self.show_paths = record, out_dir, show_paths
        self.pair_id = str(record.get("pair_id", ""))
        self.status = record.get("status") or STATUS_ERROR
        self.model, self.parameters = _transform(record)
        # Pictures are named by the pair and a digest of what they show: a stale picture (same
        # pair, other transform after a fresh batch in the same folder) is never reused.
        digest = hashlib.sha256(json.dumps(
            [self.status, self.model and self.model.value,
             None if self.parameters is None else self.parameters.tolist(),
             record.get("fixed_path"), record.get("moving_path")]).encode()).hexdigest()[:8]
        self.stem = f"{self.pair_id}_{digest}"
        self.pictures: dict[str, Path] = {}
        self.thumbnails: dict[str, str] = {}
        self.dicom: Path | None = None
        self.image_errors: dict[str, str] = {}

    @property
    def registered(self) -> bool:
        return self.status == STATUS_OK and self.parameters is not None

    def picture_names(self) -> tuple[str, ...]:
        return ("checkerboard", "overlay") if self.registered else ("inputs",)

    def read_images(self, report: bool, dicom: bool) -> dict[str, np.ndarray] | None:
        """Fixed and moving images; None when every picture and instance asked for exists."""
        folder = self.out_dir / PICTURES_DIR
        needed = [folder / f"{self.stem}_{name}.jpg" for name in self.picture_names()] \
            if report else []
        if dicom and self.registered:
            needed.append(self.dicom_path)
        if all(path.is_file() for path in needed):
            return None
        images = {}
        for role in ("fixed", "moving"):
            try:
                images[role] = read_image(self.record.get(f"{role}_path", ""))
            except OphregError as exc:
                self.image_errors[role] = self.redact(str(exc))
        return images

    @property
    def dicom_path(self) -> Path:
        # The digest too: an instance of another transform of the same pair is not reused.
        return self.out_dir / DICOM_DIR / f"{self.stem}.dcm"

    def draw(self, images: dict[str, np.ndarray] | None) -> int:
        """Full pictures (or reused ones) and their thumbnails; returns how many were drawn."""
        folder = self.out_dir / PICTURES_DIR
        drawn = 0
        for name in self.picture_names():
            path = folder / f"{self.stem}_{name}.jpg"
            if path.is_file():
                picture = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            else:
                picture = self._picture(name, images or {})
                write_bytes_atomic(path, encode_image(path, picture))
                drawn += 1
            self.pictures[name] = path
            self.thumbnails[name] = _data_uri(_thumbnail(picture))
        return drawn

    def _picture(self, name: str, images: dict[str, np.ndarray]) -> np.ndarray:
        if name == "inputs":
            return _side_by_side([images.get("fixed"), images.get("moving")])
        fixed, moving = images["fixed"], images["moving"]
        warped = warp_image(moving, self.parameters, self.model,
                            (fixed.shape[1], fixed.shape[0]))
        return checkerboard(fixed, warped) if name == "checkerboard" else overlay(fixed, warped)

    def write_dicom(self, images: dict[str, np.ndarray] | None) -> int:
        if not self.registered:
            return 0
        from ..dicom import derived_instance, is_dicom_file
        from .. import __version__

        path = self.dicom = self.dicom_path
        if path.is_file():
            return 0
        fixed_path = Path(self.record["fixed_path"])
        if not is_dicom_file(fixed_path):
            raise InvalidConfigError(f"pair {self.pair_id}: --dicom needs DICOM fixed images "
                                     "(the warped image joins the fixed image's study); this one "
                                     "is not")
        if images is None or "moving" not in images:
            images = {"moving": read_image(self.record["moving_path"])}
        warped = warp_image(images["moving"], self.parameters, self.model,
                            tuple(self.record["fixed_size"]))
        data = derived_instance(fixed_path, Path(self.record["moving_path"]), warped,
                                self.record, f"ophreg-rt {__version__}")
        write_bytes_atomic(path, data)
        return 1

    def redact(self, text: str) -> str:
        """``text`` without the input paths, unless they are to be shown."""
        if self.show_paths or not text:
            return text
        for role in ("fixed", "moving"):
            path = str(self.record.get(f"{role}_path") or "")
            if path:
                text = text.replace(path, role.upper())
                text = text.replace(os.path.basename(path), role.upper())
        return text

    @property
    def reason(self) -> str:
        return self.redact(str(self.record.get("reason") or ""))

    @property
    def time_s(self) -> float | None:
        total = (self.record.get("timings_ms") or {}).get("total")
        return None if total is None else total / 1e3


def _transform(record: dict) -> tuple[TransformModel | None, np.ndarray | None]:
    """The model and parameters ``warp_image`` takes: the (2, 6) coefficients of a quadratic,
    else the 3x3 matrix (a line from before the ``matrix`` field has only ``affine``)."""
    if record.get("status") != STATUS_OK:
        return None, None
    try:
        return fitted_from_json(record)
    except ValueError:
        return None, None


# --- pictures -----------------------------------------------------------------------------------

def overlay(fixed: np.ndarray, warped: np.ndarray) -> np.ndarray:
    """Fixed image in magenta, warped moving image in green, 8-bit RGB.

    Where the two agree the sum is grey; a misplaced vessel shows as a magenta and a green
    fringe. Magenta and green stay apart for the common colour-vision deficiencies, unlike red
    and green. Each image is stretched to its own 1-99 percentile range so that a dark
    angiogram and a bright photograph weigh the same.
    """
    fixed_grey, warped_grey = (_stretched_grey(image) for image in (fixed, warped))
    return np.dstack([fixed_grey, warped_grey, fixed_grey])


def _stretched_grey(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(to_display_rgb(image), cv2.COLOR_RGB2GRAY)
    inside = grey[grey > 0]  # the black border of a fundus photograph (or warp) is not the eye
    if inside.size == 0:
        return grey
    low, high = np.percentile(inside, (1, 99))
    scaled = (grey.astype(np.float32) - low) * (255.0 / max(high - low, 1.0))
    return np.where(grey > 0, np.clip(scaled, 0, 255), 0).astype(np.uint8)


def _side_by_side(images: list[np.ndarray | None], height: int = 512) -> np.ndarray:
    """Fixed and moving at one height (a grey tile for an unreadable image)."""
    tiles = []
    for image in images:
        if image is None:
            tiles.append(np.full((height, height, 3), 96, np.uint8))
            continue
        scale = height / image.shape[0]
        size = (max(1, round(image.shape[1] * scale)), height)
        tiles.append(to_display_rgb(cv2.resize(image, size, interpolation=cv2.INTER_AREA)))
    gap = np.full((height, 8, 3), 255, np.uint8)
    return np.concatenate([tiles[0], gap, tiles[1]], axis=1)


def _thumbnail(picture: np.ndarray) -> np.ndarray:
    scale = THUMBNAIL_SIDE / max(picture.shape[:2])
    if scale >= 1:
        return picture
    size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
    return cv2.resize(picture, size, interpolation=cv2.INTER_AREA)


def _data_uri(picture: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise OutputWriteError("OpenCV could not encode a thumbnail")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


# --- the CSV ------------------------------------------------------------------------------------

def _csv(rows: list[_Row], show_paths: bool) -> str:
    columns = CSV_COLUMNS + (PATH_COLUMNS if show_paths else ())
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        record = row.record
        keypoints = record.get("num_keypoints") or ["", ""]
        values = {
            "pair_id": row.pair_id, "task": record.get("task", ""),
            "dates": record.get("dates", ""), "status": STATUS_LABELS.get(row.status, row.status),
            "reason": row.reason, "transform": row.model.value if row.model else "",
            "num_inliers": record.get("num_inliers", ""),
            "num_matches": record.get("num_matches", ""),
            "keypoints_fixed": keypoints[0], "keypoints_moving": keypoints[1],
            "time_s": "" if row.time_s is None else f"{row.time_s:.3f}",
            "parameters": "" if row.parameters is None else json.dumps(row.parameters.tolist()),
            "checkerboard": _relative(row.pictures.get("checkerboard"), row.out_dir),
            "overlay": _relative(row.pictures.get("overlay"), row.out_dir),
            "dicom": _relative(row.dicom, row.out_dir),
        }
        if show_paths:
            values.update({column: record.get(column, "") for column in PATH_COLUMNS})
        writer.writerow(values)
    return out.getvalue()


def _relative(path: Path | None, base: Path) -> str:
    return "" if path is None else Path(os.path.relpath(path, base)).as_posix()


# --- the page -----------------------------------------------------------------------------------

def _page(rows: list[_Row], options: dict, show_paths: bool, dicom: bool) -> str:
    from .. import __version__

    counts = Counter(row.status for row in rows)
    tasks = sorted({str(row.record.get("task") or "-") for row in rows})
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    filters = "".join(
        f'<label class="filter"><input type="checkbox" checked data-status="{status}"> '
        f'{_badge(status)} <span class="count">{counts.get(status, 0)}</span></label>'
        for status in STATUS_LABELS)
    task_options = "".join(f'<option value="{_e(task)}">task {_e(task)}</option>'
                           for task in tasks)
    body = "\n".join(_table_row(number, row, show_paths) for number, row in enumerate(rows, 1))
    return _TEMPLATE.format(
        style=_STYLE, script=_SCRIPT, version=_e(__version__), generated=_e(generated),
        total=len(rows), registered=counts.get(STATUS_OK, 0),
        summary=_summary(rows), legend=_legend(), filters=filters, task_options=task_options,
        rows=body, options=_options(options, rows, show_paths, dicom),
        path_header="<th>images (fixed / moving)</th>" if show_paths else "")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _badge(status: str) -> str:
    background, text, symbol = STATUS_STYLE.get(status, ("#555555", "#FFFFFF", "?"))
    label = STATUS_LABELS.get(status, status)
    return (f'<span class="badge" style="background:{background};color:{text}">'
            f'<span aria-hidden="true">{symbol}</span> {_e(label)}</span>')


def _table_row(number: int, row: _Row, show_paths: bool) -> str:
    record = row.record
    dicom = "" if row.dicom is None else \
        f'<br><a href="{_e(_relative(row.dicom, row.out_dir))}">DICOM</a>'
    cells = [f'<td class="num">{number}</td>',
             f'<td><code>{_e(row.pair_id)}</code>{dicom}</td>']
    if show_paths:
        cells.append(f'<td class="paths">{_e(record.get("fixed_path", ""))}<br>'
                     f'{_e(record.get("moving_path", ""))}</td>')
    inliers = record.get("num_inliers")
    matches = record.get("num_matches")
    cells += [
        f'<td>{_e(record.get("task") or "-")}</td>',
        f'<td>{_e(str(record.get("dates") or "").replace("_", " "))}</td>',
        f"<td>{_badge(row.status)}</td>",
        f'<td class="reason">{_e(row.reason)}'
        + "".join(f"<br><small>{_e(role)}: {_e(message)}</small>"
                  for role, message in row.image_errors.items() if message not in row.reason)
        + "</td>",
        f'<td class="num">{"" if inliers is None else _e(inliers)}'
        f'{"" if inliers is None or matches is None else " / " + _e(matches)}</td>',
        f'<td>{_e(row.model.value if row.model else "")}</td>',
        f'<td class="num">{"" if row.time_s is None else f"{row.time_s:.2f}"}</td>',
    ]
    if row.registered:
        for name in ("checkerboard", "overlay"):
            cells.append(_thumbnail_cell(row, name))
    else:
        cells.append(f'<td colspan="2" class="inputs">{_thumbnail_cell(row, "inputs", False)}'
                     "<div><small>not registered: fixed (left) and moving (right) as read"
                     "</small></div></td>")
    return (f'<tr data-status="{_e(row.status)}" data-task="{_e(record.get("task") or "-")}">'
            + "".join(cells) + "</tr>")


def _thumbnail_cell(row: _Row, name: str, cell: bool = True) -> str:
    uri = row.thumbnails.get(name)
    if uri is None:
        inner = "<small>no picture</small>"
    else:
        link = _e(_relative(row.pictures[name], row.out_dir))
        inner = (f'<a href="{link}" title="full picture"><img src="{uri}" '
                 f'alt="{_e(name)} of pair {_e(row.pair_id)}"></a>')
    return f'<td class="thumb">{inner}</td>' if cell else inner


def _summary(rows: list[_Row]) -> str:
    by_task: dict[str, list[_Row]] = {}
    for row in rows:
        by_task.setdefault(str(row.record.get("task") or "-"), []).append(row)
    lines = []
    for task in sorted(by_task):
        group = by_task[task]
        status = Counter(row.status for row in group)
        inliers = [row.record.get("num_inliers", 0) for row in group if row.status == STATUS_OK]
        times = [row.time_s for row in group if row.time_s is not None]
        reasons = Counter(row.reason for row in group if row.status != STATUS_OK and row.reason)
        commonest = "; ".join(f"{count} \u00d7 {_e(reason)}"
                              for reason, count in reasons.most_common(2))
        lines.append(
            f"<tr><td>{_e(task)}</td><td class=num>{len(group)}</td>"
            f"<td class=num>{status.get(STATUS_OK, 0)}</td>"
            f"<td class=num>{status.get(STATUS_FAILED, 0)}</td>"
            f"<td class=num>{status.get(STATUS_ERROR, 0)}</td>"
            f"<td class=num>{f'{statistics.median(inliers):.0f}' if inliers else '-'}</td>"
            f"<td class=num>{f'{statistics.median(times):.2f}' if times else '-'}</td>"
            f"<td class=reason>{commonest}</td></tr>")
    return "\n".join(lines)


def _legend() -> str:
    return (
        '<div class="legend-item"><span class="checker" aria-hidden="true"></span><div>'
        "<b>Checkerboard</b>: tiles alternate between the <b>fixed</b> image and the "
        "<b>moving image warped</b> onto it; vessels run straight across tile edges when the "
        "registration is right.</div></div>"
        '<div class="legend-item"><span class="swatch" style="background:#FF00FF"></span>'
        '<span class="swatch" style="background:#00FF00"></span><div><b>Overlay</b>: '
        "<b>fixed</b> image in <b>magenta</b>, <b>warped moving</b> image in <b>green</b>. "
        "Aligned structures look grey or white; magenta and green fringes side by side mean "
        "a misalignment. Outside the warped image only magenta shows. Across modalities "
        "(a colour photograph and an angiogram) vessels are dark in one and bright in the "
        "other: judge those pairs by the checkerboard.</div></div>"
        '<div class="legend-item"><div>Status: '
        f"{_badge(STATUS_OK)} a transform was found and passed the plausibility checks; "
        f"{_badge(STATUS_FAILED)} the engine refused (too few inliers, implausible transform); "
        f"{_badge(STATUS_ERROR)} the pair could not be attempted (unreadable image). "
        "Thumbnails link to the full pictures.</div></div>")


def _options(options: dict, rows: list[_Row], show_paths: bool, dicom: bool) -> str:
    config = options.get("config") or {}
    ran = next((row.record for row in rows if row.status in (STATUS_OK, STATUS_FAILED)), {})
    preprocess = config.get("preprocess") or {}
    ransac = config.get("ransac") or {}
    size = preprocess.get("size") or ["?"]
    facts = [
        ("features, matcher", f"{ran.get('features', config.get('features', '?'))}, "
                              f"{ran.get('matcher', config.get('matcher') or 'default')}"),
        ("transform asked for", ransac.get("model", "?")),
        ("network input, preprocessing", f"{size[0]} px, {preprocess.get('mode', '?')}"),
        ("RANSAC threshold, seed", f"{ransac.get('threshold', '?')} px at 1024, "
                                   f"{config.get('seed', '?')}"),
        ("precision, device", f"{config.get('precision', '?')}, {config.get('device', '?')}"),
        ("models", ", ".join(f"{m.get('file')} ({str(m.get('sha256', ''))[:12]})"
                             for m in (ran.get("models") or {}).values()) or "?"),
        ("report options", f"--show-paths {'on' if show_paths else 'off'} (input paths "
                           f"{'shown' if show_paths else 'hidden'}); --dicom "
                           f"{'on' if dicom else 'off'}"),
        ("privacy", "no patient name or ID is written by the report; pictures show the "
                    "images' pixels as they are"),
    ]
    listing = "".join(f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>" for key, value in facts)
    raw = _e(json.dumps(options, indent=2)) if options else "(no options.json)"
    return (f"<dl>{listing}</dl><details><summary>{_e(OPTIONS_FILE)} (every registration "
            f"option of this folder's results)</summary><pre>{raw}</pre></details>")


_STYLE = """
:root { color-scheme: light; --line: #d0d4da; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.2em;
       color: #1b1f24; background: #fff; }
h1 { font-size: 1.5em; margin: 0 0 .2em; } h2 { font-size: 1.15em; margin: 1.2em 0 .4em; }
table { border-collapse: collapse; } th, td { border-bottom: 1px solid var(--line);
        padding: 4px 8px; text-align: left; vertical-align: middle; }
th { background: #f1f3f5; position: sticky; top: 0; z-index: 1; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.reason { max-width: 22em; font-size: .92em; } td.paths { font-size: .8em; max-width: 24em;
        word-break: break-all; }
td.thumb img, td.inputs img { display: block; max-height: 200px; border: 1px solid #888; }
.badge { border-radius: 3px; padding: 1px 6px; white-space: nowrap;
         font-weight: 600; }
.legend { display: flex; flex-wrap: wrap; gap: .6em 2em; max-width: 80em; }
.legend-item { display: flex; gap: .5em; align-items: flex-start; max-width: 38em; }
.swatch { width: 1.1em; height: 1.1em; border: 1px solid #555; flex: none; }
.checker { width: 1.6em; height: 1.6em; flex: none; border: 1px solid #555;
           background: conic-gradient(#444 25%, #ccc 0 50%, #444 0 75%, #ccc 0) 0 0/50% 50%; }
.filters { margin: .8em 0; display: flex; gap: 1.2em; align-items: center; flex-wrap: wrap; }
.filter { cursor: pointer; } .count { color: #555; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; }
dt { font-weight: 600; } dd { margin: 0; } pre { background: #f6f8fa; padding: .6em; }
tr[hidden] { display: none; }
"""

_SCRIPT = """
(function () {
  var boxes = Array.prototype.slice.call(document.querySelectorAll('input[data-status]'));
  var task = document.getElementById('task');
  var rows = Array.prototype.slice.call(document.querySelectorAll('#pairs tbody tr'));
  var shown = document.getElementById('shown');
  function apply() {
    var wanted = {};
    boxes.forEach(function (box) { wanted[box.dataset.status] = box.checked; });
    var count = 0;
    rows.forEach(function (row) {
      var visible = !!wanted[row.dataset.status] &&
                    (task.value === '' || row.dataset.task === task.value);
      row.hidden = !visible;
      if (visible) { count += 1; }
    });
    shown.textContent = count + ' of ' + rows.length + ' pairs shown';
  }
  boxes.forEach(function (box) { box.addEventListener('change', apply); });
  task.addEventListener('change', apply);
  apply();
}());
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<link rel="icon" href="data:,">
<title>ophreg registration report</title>
<style>{style}</style>
</head>
<body>
<h1>Registration report</h1>
<p>{total} pairs, {registered} registered. Made by ophreg-rt {version} on {generated}.</p>
<h2>Per task</h2>
<table id="summary"><thead><tr><th>task</th><th class="num">pairs</th>
<th class="num">registered</th><th class="num">refused</th><th class="num">errors</th>
<th class="num">median inliers</th><th class="num">median s</th>
<th>commonest reasons not registered</th></tr></thead>
<tbody>
{summary}
</tbody></table>
<h2>How to read the pictures</h2>
<div class="legend">{legend}</div>
<h2>Pairs</h2>
<div class="filters" role="group" aria-label="filter the pairs">{filters}
<label>Task <select id="task"><option value="">all</option>{task_options}</select></label>
<span id="shown" aria-live="polite"></span></div>
<table id="pairs"><thead><tr><th class="num">#</th><th>pair</th>{path_header}<th>task</th>
<th>dates</th><th>status</th><th>reason</th><th class="num">inliers / matches</th>
<th>model</th><th class="num">time s</th><th>checkerboard</th><th>overlay</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<h2>How this report was made</h2>
{options}
<script>{script}</script>
</body>
</html>
"""
