"""What a hostile or careless input cannot do: decode past the pixel budget, reach a codec's
own stderr, overflow a float16 array, draw a gigabyte picture, pass a nonsense option to the
work, leave half the outputs behind, or stop an evaluation. All inputs are generated, small."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.robustness import corrupt_jpeg, declared_png, encoded
from conftest import CC0_RETINA
from ophreg_rt.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, OUTPUT_FILES, main
from ophreg_rt.config import NETWORK_SIDE_RANGE
from ophreg_rt.errors import ImageReadError, ImageTooLargeError, OutputWriteError
from ophreg_rt.image_headers import read_header
from ophreg_rt.imageio import read_image, write_files_atomic, write_image
from ophreg_rt.visualize import MATCHES_HEIGHT, MATCHES_MAX_ASPECT, draw_matches

#: SIFT at a small network size: registrations in these tests take a fraction of a second.
FAST = ["--features", "sift", "--size", "256"]


def _noise(height=48, width=64, channels=None, dtype=np.uint8) -> np.ndarray:
    shape = (height, width) if channels is None else (height, width, channels)
    high = np.iinfo(dtype).max
    return np.random.default_rng(1).integers(0, high, size=shape).astype(dtype)


def _one_line_error(text: str, *fragments: str) -> str:
    assert "Traceback" not in text
    lines = [line for line in text.strip().splitlines() if line]
    assert len(lines) == 1, text
    assert lines[0].startswith("ophreg: error:"), text
    for fragment in fragments:
        assert fragment in lines[0], text
    return lines[0]


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """The CC0 retina at 320 px and a shifted copy: SIFT registers it."""
    folder = tmp_path_factory.mktemp("small_pair")
    fixed = cv2.resize(read_image(CC0_RETINA), (320, 320), interpolation=cv2.INTER_AREA)
    moving = np.roll(fixed, (6, -9), axis=(0, 1))
    write_image(folder / "fixed.png", fixed)
    write_image(folder / "moving.png", moving)
    return folder / "fixed.png", folder / "moving.png"


# --- headers: read before decoding ----------------------------------------------------------

@pytest.mark.parametrize("suffix, image", [
    (".png", _noise(37, 53)), (".png", _noise(37, 53, 4, np.uint16)),
    (".jpg", _noise(37, 53, 3)), (".tif", _noise(37, 53, dtype=np.uint16)),
    (".tif", _noise(37, 53, 3)), (".pgm", _noise(37, 53)),
    (".pgm", _noise(37, 53, dtype=np.uint16)),
    (".ppm", _noise(37, 53, 3)), (".bmp", _noise(37, 53, 3)), (".bmp", _noise(37, 53)),
])
def test_the_header_gives_the_size_of_every_supported_format(suffix, image):
    header = read_header(encoded(suffix, image))
    assert (header.width, header.height) == (53, 37)


def test_a_huge_declared_size_is_refused_from_the_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(declared_png(40000, 40000))
    with pytest.raises(ImageTooLargeError, match="40000x40000") as caught:
        read_image(bomb)
    assert str(caught.value).startswith(str(bomb)) and "--max-pixels" in str(caught.value)


def test_the_pixel_budget_is_an_option(tmp_path, capfd):
    image = tmp_path / "eye.png"
    write_image(image, _noise(100, 100))
    assert read_image(image).shape == (100, 100)  # the default budget is generous
    with pytest.raises(ImageTooLargeError):
        read_image(image, max_pixels=9_999)
    assert main(["register", str(image), str(image), "--max-pixels", "9999", *FAST]) == EXIT_USAGE
    _one_line_error(capfd.readouterr().err, "eye.png", "100x100", "--max-pixels")


def test_arrays_over_the_budget_are_refused_too():
    with pytest.raises(ImageTooLargeError, match="array"):
        read_image(np.zeros((200, 200), np.uint8), max_pixels=100 * 100)


def _truncated(suffix: str) -> bytes:
    data = encoded(suffix, _noise(120, 160, 3 if suffix in (".ppm", ".bmp") else None))
    return data[:len(data) // 2]


def _flipped_png() -> bytes:
    data = bytearray(encoded(".png", _noise(120, 160)))
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("name, data, problem", [
    ("cut.png", _truncated(".png"), "truncated"),
    ("cut.jpg", _truncated(".jpg"), "truncated"),
    ("cut.tif", _truncated(".tif"), "truncated"),
    ("cut.pgm", encoded(".pgm", _noise(120, 160))[:-500], "truncated"),
    ("cut.ppm", _truncated(".ppm"), "truncated"),
    ("cut.bmp", _truncated(".bmp"), "truncated"),
    ("flipped.png", _flipped_png(), "CRC"),
    ("zero.png", declared_png(0, 10), "0x10"),
    ("image.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(32), "not an image"),
])
def test_broken_files_are_refused_with_our_line_only(tmp_path, capfd, name, data, problem):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageReadError, match=problem) as caught:
        read_image(path)
    assert str(caught.value).startswith(str(path))
    # fd-level capture: libpng and libtiff write to stderr from C, below Python's sys.stderr.
    assert capfd.readouterr().err == ""


def test_the_command_line_prints_one_line_for_a_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(_truncated(".png"))
    done = subprocess.run([sys.executable, "-m", "ophreg_rt.cli", "register", str(path),
                           str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_USAGE
    _one_line_error(done.stderr, "cut.png", "truncated")


def test_a_codecs_complaint_becomes_one_warning_line(tmp_path, capfd):
    path = tmp_path / "scrambled.jpg"
    path.write_bytes(corrupt_jpeg())
    assert main(["register", str(path), str(path), *FAST]) in (EXIT_OK, EXIT_FAILED)
    lines = capfd.readouterr().err.strip().splitlines()
    warnings = [line for line in lines if line.startswith("ophreg: warning:")]
    assert len(warnings) == 1 and str(path) in warnings[0] and "Corrupt JPEG" in warnings[0]
    assert not [line for line in lines if line.startswith("Corrupt")]


def test_float16_arrays_in_the_unit_range_do_not_overflow():
    image = np.linspace(0, 1, 48 * 64).astype(np.float16).reshape(48, 64)
    loaded = read_image(image)
    assert loaded.dtype == np.uint16 and loaded.max() == 65535 and loaded.min() == 0
    assert np.all(np.diff(loaded.ravel().astype(np.int64)) >= 0)


def test_the_matches_picture_is_bounded_whatever_the_shapes():
    wide, tall = np.zeros((32, 40000), np.uint8), np.zeros((20000, 40), np.uint8)
    points = np.array([[39999.0, 31.0], [0.0, 0.0]])
    picture = draw_matches(wide, tall, points, points[:, ::-1], np.array([[0, 1]]),
                           np.array([True]))
    assert picture.shape[0] <= MATCHES_HEIGHT
    assert picture.shape[1] <= 2 * MATCHES_HEIGHT * MATCHES_MAX_ASPECT


# --- options: refused before any work --------------------------------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["--size", "100000"], "--size 100000"),
    (["--size", "1073741824"], "--size 1073741824"),
    (["--size", str(NETWORK_SIDE_RANGE[0] - 8)], "--size"),
    (["--threshold", "inf"], "--threshold inf"),
    (["--threshold", "nan"], "--threshold nan"),
    (["--seed", "-1"], "--seed -1"),
    (["--seed", str(2**63)], "--seed"),
    (["--threads", "1000000"], "--threads 1000000"),
    (["--max-pixels", "0"], "--max-pixels 0"),
    (["--superglue", "x.onnx"], "--superglue x.onnx"),
    (["--matcher", "mnn", "--lightglue", "x.onnx"], "--lightglue"),
    (["--features", "sift", "--superpoint", "x.onnx"], "--superpoint"),
])
def test_nonsense_options_exit_2_before_any_image_is_read(capfd, monkeypatch, tmp_path, argv,
                                                         fragment):
    monkeypatch.chdir(tmp_path)
    # The images do not exist: the option must be refused first.
    for command in (["register", "absent1.png", "absent2.png"],
                    ["evaluate", "points", "absent.csv"],
                    ["batch", "absent.csv", "--out-dir", "absent-out"]):
        assert main([*command, *argv]) == EXIT_USAGE, command
        _one_line_error(capfd.readouterr().err, fragment)
    assert not Path("absent-out").exists()


def test_auc_limit_is_bounded(capfd):
    assert main(["evaluate", "points", "absent.csv", "--auc-limit", "1000000000"]) == EXIT_USAGE
    _one_line_error(capfd.readouterr().err, "--auc-limit")


def test_version_and_help_say_what_a_user_needs(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("ophreg ") and "onnxruntime" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert "exit codes:" in help_text and "ophreg register fixed.jpg moving.jpg" in help_text
    for code in ("0", "2", "3", "130"):
        assert f"\n  {code} " in help_text


# --- outputs: all or nothing, the user's paths, the user's umask -------------------------------

def test_an_unwritable_json_path_is_refused_before_any_work(small_pair, tmp_path, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    out = tmp_path / "out"
    code = main(["register", *map(str, small_pair), "--out-dir", str(out),
                 "--json", str(blocker / "result.json"), *FAST])
    assert code == EXIT_USAGE
    _one_line_error(capfd.readouterr().err, str(blocker / "result.json"), "not a folder")
    assert not out.exists()


def test_a_failed_write_leaves_no_file_and_names_the_users_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    first, second = tmp_path / "first.png", blocker / "second.json"
    with pytest.raises(OutputWriteError) as caught:
        write_files_atomic({first: b"picture", second: b"{}"})
    assert str(caught.value).startswith(str(second))
    assert ".tmp" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_outputs_get_the_users_umask(small_pair, tmp_path):
    previous = os.umask(0o022)
    try:
        code = main(["register", *map(str, small_pair), "--out-dir", str(tmp_path / "out"),
                     "--json", str(tmp_path / "result.json"), *FAST])
    finally:
        os.umask(previous)
    assert code == EXIT_OK
    for path in [tmp_path / "result.json", *(tmp_path / "out").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_refusal_with_force_leaves_no_earlier_warp_behind(small_pair, tmp_path):
    out = tmp_path / "out"
    assert main(["register", *map(str, small_pair), "--out-dir", str(out), *FAST]) == EXIT_OK
    flat = tmp_path / "flat.png"
    write_image(flat, np.full((320, 320), 90, np.uint8))
    code = main(["register", str(small_pair[0]), str(flat), "--out-dir", str(out), "--force",
                 *FAST])
    assert code == EXIT_FAILED
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_FILES["matches"]]


# --- evaluate: one bad pair, one bad report path ---------------------------------------------

def _points_csv(folder: Path, rows: list[tuple[str, str]]) -> Path:
    csv_path = folder / "pairs.csv"
    identity = "1,0,0,0,1,0"
    csv_path.write_text("src,tgt,m00,m01,m02,m10,m11,m12\n"
                        + "".join(f"{src},{tgt},{identity}\n" for src, tgt in rows))
    return csv_path


def test_evaluate_records_an_undecodable_image_and_goes_on(small_pair, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(_truncated(".png"))
    fixed = small_pair[0]
    csv_path = _points_csv(tmp_path, [(str(broken), str(fixed)), (str(fixed), str(fixed))])
    report = tmp_path / "report.json"
    assert main(["evaluate", "points", str(csv_path), "--out", str(report), *FAST]) == EXIT_OK
    pairs = json.loads(report.read_text())["pairs"]
    assert [p["status"] for p in pairs] == ["error", "ok"]
    assert pairs[0]["reason"].startswith(str(broken)) and "truncated" in pairs[0]["reason"]
    assert pairs[0]["verdict"] == "failed"


def test_evaluate_refuses_an_unwritable_report_before_registering(small_pair, tmp_path, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    fixed = small_pair[0]
    csv_path = _points_csv(tmp_path, [(str(fixed), str(fixed))])
    code = main(["evaluate", "points", str(csv_path), "--out", str(blocker / "r.json"), *FAST])
    assert code == EXIT_USAGE
    captured = capfd.readouterr()
    _one_line_error(captured.err, "r.json", "not a folder")
    assert captured.out == ""  # no pair was registered


def test_evaluate_loads_the_lightglue_graph_it_is_given(small_pair, tmp_path, capfd):
    junk = tmp_path / "my-lightglue.onnx"
    junk.write_bytes(b"not a graph")
    fixed = small_pair[0]
    csv_path = _points_csv(tmp_path, [(str(fixed), str(fixed))])
    code = main(["evaluate", "points", str(csv_path), "--size", "256", "--lightglue", str(junk)])
    assert code == EXIT_USAGE
    _one_line_error(capfd.readouterr().err, "my-lightglue.onnx")

