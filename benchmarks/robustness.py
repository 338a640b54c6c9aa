"""Robustness benchmark: hostile and careless inputs replayed through the command line.

Method: every case is generated into a temporary folder (broken and oversized images, nonsense
options, corrupted and mislabelled graphs, unwritable outputs, evaluation files with a bad row,
concurrent and changed batches) and run as its own ``python -m ophreg_rt.cli`` process under an
address-space limit (``--memory-limit-gb``, so that a blow-up fails instead of taking the
machine). Each process's peak resident memory comes from ``wait4``. An outcome is:

* ``clean refusal``: exit 2 and stderr exactly one line ``ophreg: error: ...`` (argparse's
  usage line is allowed above its own error line);
* ``as expected``: the exit code the case expects for a valid input (0 registered, 3 refused)
  and the case's own check of its outputs passes;
* ``noisy refusal``: exit 2 but other lines on stderr (a codec's own complaint);
* ``traceback``: a Python traceback or exit 1;
* ``wrong result``: the exit code or the outputs are not what the case requires (a corrupted
  graph that registers, a stale batch result kept, pictures written beside a failed JSON);
* ``resource blow-up``: peak memory over ``--rss-limit-gb``, killed by the address-space limit,
  or over the time limit.

Registrations use SIFT at ``--size 256`` unless a case is about the learned graphs or memory,
so the whole run takes a few minutes on 2 cores. ``--source DIR`` runs the cases against
another checkout of the package (e.g. an older commit unpacked with ``git archive``), to show
what a change fixed. Results: ``benchmarks/results/robustness.json`` and ``.md``.

Run: ``python -m benchmarks.robustness [--only NAME ...] [--source DIR] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CC0_RETINA = REPO / "tests" / "fixtures" / "skimage_retina.jpg"
FAST = ["--features", "sift", "--size", "256"]

CLEAN, EXPECTED = "clean refusal", "as expected"
NOISY, TRACEBACK, WRONG, BLOWUP = "noisy refusal", "traceback", "wrong result", "resource blow-up"
BAD_OUTCOMES = (NOISY, TRACEBACK, WRONG, BLOWUP)


# --- generated inputs ---------------------------------------------------------------------

def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def declared_png(width: int, height: int) -> bytes:
    """A valid, tiny PNG whose header declares ``width`` x ``height``."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def declared_jpeg(width: int, height: int) -> bytes:
    """SOI, a baseline frame header declaring the size, an empty scan, EOI."""
    frame = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
    return (b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(frame) + 2) + frame
            + b"\xff\xda" + struct.pack(">H", 8) + b"\x01\x01\x00\x00\x3f\x00" + b"\xff\xd9")


def declared_tiff(width: int, height: int) -> bytes:
    """Little-endian TIFF, one directory: width, length, 8-bit grey, one empty strip."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (262, 3, 1, 1),
               (273, 4, 1, 0), (279, 4, 1, 0)]
    body = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries)
    return b"II*\x00" + struct.pack("<I", 8) + body + struct.pack("<I", 0)


def declared_bmp(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def corrupt_jpeg() -> bytes:
    """A whole JPEG (end marker and all) with 50 bytes of its scan scrambled: libjpeg decodes
    it, complaining on stderr ("Corrupt JPEG data")."""
    data = bytearray(encoded(".jpg", _noise(200, 300, 3)))
    middle = len(data) // 2
    for i in range(middle, middle + 50):
        data[i] = 0xFF if i % 7 == 0 else data[i] ^ 0x55
    return bytes(data)


def _codec_lines_are_ours(work: Path, run: Run) -> str | None:
    raw = [line for line in run.stderr.splitlines() if "Corrupt JPEG" in line
           and not line.startswith("ophreg: warning:")]
    return f"the codec's own line on stderr: {raw[0]}" if raw else None


def encoded(suffix: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(suffix, image)
    if not ok:
        raise RuntimeError(f"OpenCV cannot encode {suffix}")
    return data.tobytes()


def _noise(height: int, width: int, channels: int | None = None) -> np.ndarray:
    shape = (height, width) if channels is None else (height, width, channels)
    return np.random.default_rng(3).integers(0, 255, size=shape).astype(np.uint8)


@dataclass
class Inputs:
    """Files every case may use, generated once into ``root``."""

    root: Path
    source: Path | None = None  # the checkout whose package the cases run (--source)
    fixed: Path = field(init=False)
    moving: Path = field(init=False)
    other: Path = field(init=False)

    def __post_init__(self) -> None:
        base = cv2.imread(str(CC0_RETINA))
        base = cv2.resize(base, (320, 320), interpolation=cv2.INTER_AREA)
        self.fixed, self.moving, self.other = (self.root / n for n in ("fixed.png", "moving.png",
                                                                       "other.png"))
        cv2.imwrite(str(self.fixed), base)
        cv2.imwrite(str(self.moving), np.roll(base, (6, -9), axis=(0, 1)))
        cv2.imwrite(str(self.other), base[:, ::-1])

    def file(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path


# --- cases ----------------------------------------------------------------------------------

@dataclass
class Run:
    code: int | None
    stderr: str
    stdout: str
    peak_rss_mb: float
    seconds: float
    killed: str | None  # "timeout", "memory" or None


@dataclass
class Case:
    name: str
    group: str
    what: str
    prepare: Callable[[Inputs, Path], list[str]]  # -> argv after `ophreg`; may write files
    expect: tuple[int, ...] = (2,)  # exit codes that are right; 2 alone: must refuse cleanly
    check: Callable[[Path, Run], str | None] | None = None  # a problem with the outputs
    env: Callable[[Inputs, Path], dict[str, str]] | None = None
    hold_lock: str | None = None  # a folder whose batch lock the benchmark holds meanwhile
    timeout_s: float = 240.0


def _register(*extra: str, images: tuple[str, str] | None = None):
    def prepare(inputs: Inputs, work: Path) -> list[str]:
        fixed, moving = images or (str(inputs.fixed), str(inputs.moving))
        return ["register", fixed, moving, *extra]
    return prepare


def _register_file(name: str, data: Callable[[], bytes], *extra: str):
    def prepare(inputs: Inputs, work: Path) -> list[str]:
        path = inputs.file(name, data())
        return ["register", str(inputs.fixed), str(path), *extra]
    return prepare


def _truncated(suffix: str, channels: int | None = None) -> Callable[[], bytes]:
    def make() -> bytes:
        data = encoded(suffix, _noise(200, 300, channels))
        return data[:len(data) // 2]
    return make


def _flipped_png() -> bytes:
    data = bytearray(encoded(".png", _noise(200, 300)))
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def _corrupted_models(inputs: Inputs, work: Path) -> dict[str, str]:
    folder = work / "models"
    folder.mkdir()
    for name in ("superpoint.onnx", "manifest.json"):
        shutil.copy2(REPO / "models" / name, folder / name)
    data = bytearray((folder / "superpoint.onnx").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    (folder / "superpoint.onnx").write_bytes(bytes(data))
    return {"OPHREG_MODELS_DIR": str(folder)}


def _models_without_manifest(inputs: Inputs, work: Path) -> dict[str, str]:
    folder = work / "models"
    folder.mkdir()
    shutil.copy2(REPO / "models" / "superpoint.onnx", folder / "superpoint.onnx")
    return {"OPHREG_MODELS_DIR": str(folder)}


def _json_under_a_file(inputs: Inputs, work: Path) -> list[str]:
    (work / "a-file").write_text("in the way")
    return ["register", str(inputs.fixed), str(inputs.moving), "--out-dir", str(work / "out"),
            "--json", str(work / "a-file" / "result.json"), *FAST]


def _no_pictures(work: Path, run: Run) -> str | None:
    out = work / "out"
    if out.exists() and any(out.iterdir()):
        names = sorted(p.name for p in out.iterdir())
        return f"pictures written although the JSON was not: {names}"
    return None


def _umask_outputs(inputs: Inputs, work: Path) -> list[str]:
    return ["register", str(inputs.fixed), str(inputs.moving), "--out-dir", str(work / "out"),
            "--json", str(work / "result.json"), *FAST]


def _modes_follow_umask(work: Path, run: Run) -> str | None:
    wrong = [p.name for p in [work / "result.json", *(work / "out").glob("*")]
             if p.exists() and (p.stat().st_mode & 0o777) != 0o644]
    return f"mode is not 0644 under umask 022: {wrong}" if wrong else None


def _bounded_matches(work: Path, run: Run) -> str | None:
    picture = work / "out" / "matches.png"
    if run.code in (0, 3) and (not picture.exists() or picture.stat().st_size > 10 << 20):
        return f"matches.png is {picture.stat().st_size >> 20} MB" if picture.exists() else \
            "no matches.png"
    return None


def _wide_image(width: int, height: int):
    def prepare(inputs: Inputs, work: Path) -> list[str]:
        path = work / "wide.png"
        cv2.imwrite(str(path), _noise(height, width))
        return ["register", str(path), str(path), "--out-dir", str(work / "out")]
    return prepare


def _points_csv(work: Path, rows: list[tuple[Path, Path]]) -> Path:
    csv_path = work / "pairs.csv"
    csv_path.write_text("src,tgt,m00,m01,m02,m10,m11,m12\n"
                        + "".join(f"{src},{tgt},1,0,0,0,1,0\n" for src, tgt in rows))
    return csv_path


def _evaluate_bad_row(inputs: Inputs, work: Path) -> list[str]:
    broken = inputs.file("evaluate-broken.png", _truncated(".png")())
    csv_path = _points_csv(work, [(inputs.fixed, inputs.fixed), (broken, inputs.fixed),
                                  (inputs.moving, inputs.moving)])
    return ["evaluate", "points", str(csv_path), "--out", str(work / "report.json"), *FAST]


def _report_has_every_pair(work: Path, run: Run) -> str | None:
    report = work / "report.json"
    if not report.exists():
        return "no report: the registered pairs were lost"
    statuses = [p["status"] for p in json.loads(report.read_text())["pairs"]]
    return None if statuses == ["ok", "error", "ok"] else f"pair statuses {statuses}"


def _evaluate_with(*extra: str):
    def prepare(inputs: Inputs, work: Path) -> list[str]:
        csv_path = _points_csv(work, [(inputs.fixed, inputs.fixed)])
        return ["evaluate", "points", str(csv_path), *extra]
    return prepare


def _junk_graph(name: str) -> Callable[[Inputs, Path], str]:
    def make(inputs: Inputs, work: Path) -> str:
        path = work / name
        path.write_bytes(b"not an onnx graph")
        return str(path)
    return make


def _with_junk(prepare_argv: Callable[[Inputs, Path, str], list[str]], name: str):
    def prepare(inputs: Inputs, work: Path) -> list[str]:
        return prepare_argv(inputs, work, _junk_graph(name)(inputs, work))
    return prepare


def _pairs_file(work: Path, rows: dict[str, tuple[Path, Path]], name="pairs.csv") -> Path:
    path = work / name
    path.write_text("pair_id,fixed_path,moving_path\n"
                    + "".join(f"{pid},{f},{m}\n" for pid, (f, m) in rows.items()))
    return path


def _batch_locked(inputs: Inputs, work: Path) -> list[str]:
    pairs = _pairs_file(work, {"p": (inputs.fixed, inputs.moving)})
    return ["batch", str(pairs), "--out-dir", str(work / "out"), *FAST]


def _no_results(work: Path, run: Run) -> str | None:
    results = work / "out" / "results.jsonl"
    return "the second batch wrote results" if results.exists() else None


def _batch_then(second: Callable[[Inputs, Path], list[str]], first_options=FAST):
    """Run one batch in the benchmark's process (its first run), then the case's argv."""
    def prepare(inputs: Inputs, work: Path) -> list[str]:
        pairs = _pairs_file(work, {"p": (inputs.fixed, inputs.moving),
                                   "q": (inputs.fixed, inputs.other)})
        graph = work / "mine" / "superpoint.onnx"
        graph.parent.mkdir(exist_ok=True)
        shutil.copy2(REPO / "models" / "superpoint.onnx", graph)
        options = [o.replace("{graph}", str(graph)) for o in first_options]
        # cwd: `python -m` puts the working folder first on sys.path, before PYTHONPATH.
        subprocess.run([sys.executable, "-m", "ophreg_rt.cli", "batch", str(pairs),
                        "--out-dir", str(work / "out"), *options], capture_output=True,
                       cwd=work, env=_child_env(inputs.source), timeout=240, check=False)
        return second(inputs, work)
    return prepare


def _resume_other_graph(inputs: Inputs, work: Path) -> list[str]:
    graph = work / "mine" / "superpoint.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    return ["batch", str(work / "pairs.csv"), "--out-dir", str(work / "out"), "--matcher", "mnn",
            "--size", "256", "--superpoint", str(graph)]


def _resume_other_images(inputs: Inputs, work: Path) -> list[str]:
    pairs = _pairs_file(work, {"p": (inputs.fixed, inputs.other),
                               "q": (inputs.fixed, inputs.other)})
    return ["batch", str(pairs), "--out-dir", str(work / "out"), *FAST]


def _results_follow_the_pairs(work: Path, run: Run) -> str | None:
    lines = [json.loads(x) for x in (work / "out" / "results.jsonl").read_text().splitlines()]
    moving = {r["pair_id"]: Path(r["moving_path"]).name for r in lines}
    if len(lines) != 2 or moving != {"p": "other.png", "q": "other.png"}:
        return f"results kept for other images: {len(lines)} lines, moving {moving}"
    return None


def _float16_library(inputs: Inputs, work: Path) -> list[str]:
    return ["-c", "import numpy as np; from ophreg_rt.imageio import read_image; "
                  "a = read_image(np.linspace(0, 1, 64 * 64).astype(np.float16).reshape(64, 64)); "
                  "assert a.max() == 65535 and a.min() == 0, (a.min(), a.max()); "
                  "print('ok')"]


CASES = [
    # images: sizes read from the header before decoding
    Case("png-declares-40000x40000", "image", "1 kB PNG whose header declares 1.6 gigapixels",
         _register_file("bomb.png", lambda: declared_png(40000, 40000))),
    Case("jpeg-declares-65535x65535", "image", "JPEG frame header of 4.3 gigapixels",
         _register_file("bomb.jpg", lambda: declared_jpeg(65535, 65535))),
    Case("tiff-declares-100000x100000", "image", "TIFF directory of 10 gigapixels",
         _register_file("bomb.tif", lambda: declared_tiff(100000, 100000))),
    Case("bmp-declares-50000x50000", "image", "BMP header of 2.5 gigapixels",
         _register_file("bomb.bmp", lambda: declared_bmp(50000, 50000))),
    Case("pgm-declares-huge", "image", "PGM header of 10 gigapixels, no pixels",
         _register_file("bomb.pgm", lambda: b"P5\n100000 100000\n255\n")),
    Case("png-over-max-pixels", "image", "640x480 PNG with --max-pixels 100000",
         _register_file("vga.png", lambda: encoded(".png", _noise(480, 640)),
                        "--max-pixels", "100000", *FAST)),
    Case("png-40000x32", "memory", "40000x32 PNG, default pipeline, pictures written",
         _wide_image(40000, 32), expect=(0, 3), check=_bounded_matches),
    Case("png-100000x32", "memory", "100000x32 PNG, default pipeline, pictures written",
         _wide_image(100000, 32), expect=(0, 3), check=_bounded_matches),
    Case("registration-1024", "memory", "the CC0 retina registered at 1024 (peak memory)",
         _register(images=(str(CC0_RETINA), str(CC0_RETINA))), expect=(0,)),
    # images: broken files
    Case("png-truncated", "image", "PNG cut in half",
         _register_file("cut.png", _truncated(".png"))),
    Case("png-crc-error", "image", "PNG with one byte flipped", _register_file("flip.png",
                                                                              _flipped_png)),
    Case("jpeg-truncated", "image", "JPEG cut in half", _register_file("cut.jpg",
                                                                      _truncated(".jpg", 3))),
    Case("tiff-truncated", "image", "TIFF cut in half", _register_file("cut.tif",
                                                                      _truncated(".tif"))),
    Case("pgm-truncated", "image", "PGM missing its last rows",
         _register_file("cut.pgm", lambda: encoded(".pgm", _noise(200, 300))[:-900])),
    Case("bmp-truncated", "image", "BMP cut in half", _register_file("cut.bmp",
                                                                    _truncated(".bmp", 3))),
    Case("jpeg-corrupt-scan", "image", "JPEG with scrambled scan data (decodes, libjpeg "
         "complains)", _register_file("scrambled.jpg", corrupt_jpeg, *FAST), expect=(0, 3),
         check=_codec_lines_are_ours),
    Case("png-zero-height", "image", "PNG header declaring 10x0",
         _register_file("zero.png", lambda: declared_png(10, 0))),
    Case("empty-file", "image", "0-byte .png", _register_file("empty.png", lambda: b"")),
    Case("text-as-png", "image", "a text file named .png",
         _register_file("notes.png", lambda: b"patient notes, not pixels\n")),
    Case("webp", "image", "WebP (not a supported format)",
         _register_file("eye.webp", lambda: b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(32))),
    Case("tiny-16x16", "image", "16x16 PNG (below the smallest side)",
         _register_file("tiny.png", lambda: encoded(".png", _noise(16, 16)))),
    Case("float-tiff-out-of-range", "image", "32-bit float TIFF with values up to 255",
         _register_file("float.tif", lambda: encoded(".tif", _noise(64, 64).astype(np.float32)))),
    Case("missing-file", "image", "an image path that does not exist",
         _register(images=("absent-fixed.png", "absent-moving.png"))),
    Case("folder-as-image", "image", "a folder given as the image",
         lambda i, w: ["register", str(i.fixed), str(w)]),
    Case("dev-null-as-image", "image", "/dev/null given as the image",
         _register(images=("/dev/null", "/dev/null"))),
    Case("float16-array", "library", "float16 array in [0, 1] given to read_image",
         _float16_library, expect=(0,)),
    # options: refused before any work
    Case("size-100000", "option", "--size 100000", _register("--size", "100000")),
    Case("size-2**30", "option", "--size 1073741824", _register("--size", "1073741824")),
    Case("size-4096", "option", "--size 4096 (17 GB measured)", _register("--size", "4096")),
    Case("size-100", "option", "--size 100 (not a multiple of 8)", _register("--size", "100")),
    Case("size-abc", "option", "--size abc", _register("--size", "abc")),
    Case("threshold-inf", "option", "--threshold inf", _register("--threshold", "inf", *FAST)),
    Case("threshold-nan", "option", "--threshold nan", _register("--threshold", "nan", *FAST)),
    Case("threshold-negative", "option", "--threshold -1", _register("--threshold", "-1")),
    Case("seed-negative", "option", "--seed -1", _register("--seed", "-1", *FAST)),
    Case("seed-2**64", "option", "--seed 2**64", _register("--seed", str(2**64), *FAST)),
    Case("threads-0", "option", "--threads 0", _register("--threads", "0")),
    Case("threads-1000000", "option", "--threads 1000000", _register("--threads", "1000000")),
    Case("max-pixels-0", "option", "--max-pixels 0", _register("--max-pixels", "0")),
    Case("sift-with-lightglue", "option", "--features sift --matcher lightglue",
         _register("--features", "sift", "--matcher", "lightglue")),
    Case("superglue-graph-unused", "option", "--superglue PATH while the matcher is LightGlue",
         _with_junk(lambda i, w, g: ["register", str(i.fixed), str(i.moving), "--superglue", g],
                    "superglue.onnx")),
    Case("superglue-not-exported", "option", "--matcher superglue without an exported graph",
         _register("--matcher", "superglue", "--superglue", "absent-superglue.onnx")),
    # models
    Case("corrupted-default-graph", "model", "superpoint.onnx with 64 bytes flipped, via "
         "OPHREG_MODELS_DIR (with its manifest)", _register("--matcher", "mnn", "--size", "256"),
         env=_corrupted_models),
    Case("default-graph-without-manifest", "model", "OPHREG_MODELS_DIR holding a graph and no "
         "manifest", _register("--matcher", "mnn", "--size", "256"),
         env=_models_without_manifest),
    Case("junk-superpoint", "model", "--superpoint naming a file that is no graph",
         _with_junk(lambda i, w, g: ["register", str(i.fixed), str(i.moving), "--superpoint", g],
                    "junk.onnx")),
    Case("superpoint-as-lightglue", "model", "--lightglue naming the SuperPoint graph",
         _register("--lightglue", str(REPO / "models" / "superpoint.onnx"))),
    # outputs
    Case("json-under-a-file", "output", "--json whose folder is a file, with --out-dir",
         _json_under_a_file, check=_no_pictures),
    Case("out-dir-is-a-file", "output", "--out-dir naming a file",
         lambda i, w: (w / "f").write_text("x") and ["register", str(i.fixed), str(i.moving),
                                                     "--out-dir", str(w / "f"), *FAST]),
    Case("output-exists", "output", "an existing --json without --force",
         lambda i, w: (w / "r.json").write_text("{}") and ["register", str(i.fixed),
                                                           str(i.moving), "--json",
                                                           str(w / "r.json"), *FAST]),
    Case("outputs-umask", "output", "file modes under umask 022", _umask_outputs, expect=(0,),
         check=_modes_follow_umask),
    # evaluate
    Case("evaluate-undecodable-row", "evaluate", "a points CSV whose second pair's image is "
         "truncated", _evaluate_bad_row, expect=(0,), check=_report_has_every_pair),
    Case("evaluate-lightglue-option", "evaluate", "evaluate --lightglue naming a junk graph",
         _with_junk(lambda i, w, g: _evaluate_with("--size", "256", "--lightglue", g)(i, w),
                    "my-lightglue.onnx")),
    Case("evaluate-auc-limit-1e9", "evaluate", "evaluate --auc-limit 1000000000",
         _evaluate_with("--auc-limit", "1000000000", *FAST)),
    Case("evaluate-threshold-inf", "evaluate", "evaluate --threshold inf",
         _evaluate_with("--threshold", "inf", *FAST)),
    Case("evaluate-report-under-a-file", "evaluate", "evaluate --out whose folder is a file",
         lambda i, w: (w / "f").write_text("x") and _evaluate_with(
             "--out", str(w / "f" / "r.json"), *FAST)(i, w)),
    # batch
    Case("batch-locked-folder", "batch", "a second batch on a folder another batch holds",
         _batch_locked, check=_no_results, hold_lock="out"),
    Case("batch-resume-other-graph", "batch", "resume after the --superpoint graph changed",
         _batch_then(_resume_other_graph,
                     ["--matcher", "mnn", "--size", "256", "--superpoint", "{graph}"])),
    Case("batch-pair-id-renamed", "batch", "resume with pair_ids now naming other images",
         _batch_then(_resume_other_images), expect=(0, 3), check=_results_follow_the_pairs),
    Case("batch-workers-0", "batch", "--workers 0",
         lambda i, w: ["batch", str(_pairs_file(w, {"p": (i.fixed, i.moving)})), "--out-dir",
                       str(w / "out"), "--workers", "0", *FAST]),
    Case("batch-bad-pairs-file", "batch", "a pairs file without moving_path",
         lambda i, w: (w / "p.csv").write_text("pair_id,fixed_path\np,a.png\n") and
         ["batch", str(w / "p.csv"), "--out-dir", str(w / "out"), *FAST]),
]


# --- running --------------------------------------------------------------------------------

def _child_env(source: Path | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, **(extra or {}))
    if source is not None and source.is_dir():
        env["PYTHONPATH"] = str(source) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_case(case: Case, inputs: Inputs, work: Path, source: Path | None,
             memory_limit_gb: float) -> Run:
    argv = case.prepare(inputs, work)
    command = [sys.executable, *argv] if argv[0] == "-c" else \
        [sys.executable, "-m", "ophreg_rt.cli", *argv]
    env = _child_env(source, case.env(inputs, work) if case.env else None)
    limit = int(memory_limit_gb * (1 << 30))

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.umask(0o022)

    holder = None
    if case.hold_lock:
        folder = work / case.hold_lock
        folder.mkdir(exist_ok=True)
        holder = open(folder / "batch.lock", "w")
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        holder.write("4242\n")
        holder.flush()
    started = time.monotonic()
    with open(work / "stdout", "w+") as out, open(work / "stderr", "w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=work, env=env,
                                   preexec_fn=limit_memory)
        killed = None
        deadline = started + case.timeout_s
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                killed = "timeout"
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if holder is not None:
        holder.close()
    code = process.returncode
    if code is not None and code < 0 and killed is None:
        killed = "memory" if code == -9 else f"signal {-code}"
    if "MemoryError" in stderr or "std::bad_alloc" in stderr:
        killed = "memory"
    return Run(code, stderr, stdout, usage.ru_maxrss / 1024.0, time.monotonic() - started,
               killed)


def classify(case: Case, run: Run, work: Path, rss_limit_mb: float) -> tuple[str, str]:
    """(outcome, detail)."""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    if run.killed or run.peak_rss_mb > rss_limit_mb:
        return BLOWUP, run.killed or f"peak {run.peak_rss_mb:.0f} MB"
    if "Traceback" in run.stderr or run.code == 1:
        last = lines[-1] if lines else ""
        return TRACEBACK, last[:160]
    problem = case.check(work, run) if case.check else None
    if run.code not in case.expect:
        return WRONG, f"exit {run.code}, expected {'/'.join(map(str, case.expect))}" + (
            f"; {problem}" if problem else "")
    if problem:
        return WRONG, problem
    if case.expect == (2,):
        errors = [line for line in lines if ": error:" in line]
        usage = [line for line in lines if line.startswith(("usage:", " "))]
        if len(errors) == 1 and len(errors) + len(usage) == len(lines):
            return CLEAN, errors[0][:200]
        return NOISY, " | ".join(lines)[:200]
    return EXPECTED, (lines[-1] if lines else run.stdout.strip()[:80])[:200]


def markdown(report: dict) -> str:
    counts = report["counts"]
    lines = ["# Robustness: hostile and careless inputs through the command line", "",
             f"{report['date']}, {report['machine']}; source: {report['source']}; "
             f"address-space limit {report['memory_limit_gb']:g} GB, blow-up above "
             f"{report['rss_limit_gb']:g} GB resident.", "",
             "Outcomes: " + ", ".join(f"{name} {counts.get(name, 0)}"
                                      for name in (CLEAN, EXPECTED, *BAD_OUTCOMES)), "",
             "| case | group | what | exit | outcome | peak MB | s | detail |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["cases"]:
        detail = row["detail"].replace("|", "\\|")
        lines.append(f"| {row['name']} | {row['group']} | {row['what']} | {row['exit']} | "
                     f"{row['outcome']} | {row['peak_rss_mb']:.0f} | {row['seconds']:.1f} | "
                     f"{detail} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these cases (names)")
    parser.add_argument("--source", type=Path,
                        help="run the cases against the ophreg_rt package in this folder; "
                             "results go to robustness_source.json/.md")
    parser.add_argument("--label", help="what --source is, for the report (e.g. a commit)")
    parser.add_argument("--memory-limit-gb", type=float, default=8.0,
                        help="address-space limit of each case's process (default: %(default)s)")
    parser.add_argument("--rss-limit-gb", type=float, default=2.5,
                        help="peak resident memory above which a case is a blow-up (default: "
                             "%(default)s; one registration at 1024 takes about 1.4)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                        help="folder of robustness.json and robustness.md (default: %(default)s)")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.only or c.name in args.only]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ophreg-robustness-") as scratch:
        root = Path(scratch) / "inputs"
        root.mkdir()
        source = args.source.resolve() if args.source else None
        inputs = Inputs(root, source)
        for case in cases:
            work = Path(scratch) / case.name
            work.mkdir()
            run = run_case(case, inputs, work, source, args.memory_limit_gb)
            outcome, detail = classify(case, run, work, args.rss_limit_gb * 1024)
            detail = detail.replace(scratch, "$TMP")  # the same table on every run
            rows.append({"name": case.name, "group": case.group, "what": case.what,
                         "exit": run.code, "outcome": outcome, "detail": detail,
                         "peak_rss_mb": round(run.peak_rss_mb, 1),
                         "seconds": round(run.seconds, 2)})
            print(f"{case.name:<32} {outcome:<16} exit {run.code!s:<4} "
                  f"{run.peak_rss_mb:7.0f} MB {run.seconds:6.1f} s  {detail[:90]}", flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "source": args.label or str(args.source or "this checkout"),
        "memory_limit_gb": args.memory_limit_gb, "rss_limit_gb": args.rss_limit_gb,
        "counts": dict(Counter(row["outcome"] for row in rows)),
        "cases": rows,
    }
    if not args.only:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "robustness" if args.source is None else "robustness_source"
        (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"{name}.md").write_text(markdown(report))
    print(markdown(report).split("\n\n")[2])
    return 1 if any(row["outcome"] in BAD_OUTCOMES for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
