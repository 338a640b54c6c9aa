"""A batch's results stand for what produced them: one batch writes a folder at a time, a resume
with another graph is refused, and a result is kept only while its pair names the same,
unchanged images."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import CC0_RETINA, MODELS_DIR
from ophreg_rt.cli import EXIT_USAGE, main
from ophreg_rt.cohort.batch import LOCK_FILE, OPTIONS_FILE, RESULTS_FILE, PairRegistrar, WorkerSpec
from ophreg_rt.config import MatcherName, RegistrarConfig
from ophreg_rt.imageio import read_image, write_image
from ophreg_rt.transforms import fitted_from_json

#: SIFT at a small network size: no graph, a fraction of a second a pair.
FAST = ["--features", "sift", "--size", "256"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four 320-px images: the CC0 retina, two shifted copies, and a mirrored one."""
    folder = tmp_path_factory.mktemp("images")
    base = cv2.resize(read_image(CC0_RETINA), (320, 320), interpolation=cv2.INTER_AREA)
    variants = {"a": base, "b": np.roll(base, (5, -7), axis=(0, 1)),
                "c": np.roll(base, (-4, 6), axis=(0, 1)), "d": base[:, ::-1]}
    for name, image in variants.items():
        write_image(folder / f"{name}.png", image)
    return folder


def _pairs_file(folder: Path, rows: dict[str, tuple[Path, Path]]) -> Path:
    path = folder / "pairs.csv"
    path.write_text("pair_id,fixed_path,moving_path\n"
                    + "".join(f"{pid},{f},{m}\n" for pid, (f, m) in rows.items()))
    return path


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]


def _one_line_error(text: str, *fragments: str) -> None:
    lines = [line for line in text.strip().splitlines() if line.startswith("ophreg: error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in lines[0], text


def test_a_second_batch_on_a_locked_folder_is_refused(images, tmp_path, capfd):
    out = tmp_path / "out"
    out.mkdir()
    pairs = _pairs_file(tmp_path, {"p": (images / "a.png", images / "b.png")})
    # Another batch's hold on the folder (flock is per open file, so this process counts).
    with open(out / LOCK_FILE, "w") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        holder.write("4242\n")
        holder.flush()
        assert main(["batch", str(pairs), "--out-dir", str(out), *FAST]) == EXIT_USAGE
    _one_line_error(capfd.readouterr().err, str(out), "another ophreg batch", "4242")
    assert not (out / RESULTS_FILE).exists()
    # Released (as the kernel does when a holder dies, kill -9 included): the batch runs.
    assert main(["batch", str(pairs), "--out-dir", str(out), *FAST]) != EXIT_USAGE
    assert [r["pair_id"] for r in _lines(out)] == ["p"]


def test_a_pair_id_that_names_other_images_is_registered_again(images, tmp_path, capfd):
    out = tmp_path / "out"
    first = _pairs_file(tmp_path, {"p": (images / "a.png", images / "b.png"),
                                   "q": (images / "a.png", images / "c.png")})
    main(["batch", str(first), "--out-dir", str(out), *FAST])
    before = {r["pair_id"]: r for r in _lines(out)}
    capfd.readouterr()
    second = _pairs_file(tmp_path, {"p": (images / "a.png", images / "d.png"),
                                    "q": (images / "a.png", images / "c.png")})
    main(["batch", str(second), "--out-dir", str(out), *FAST])
    after = {r["pair_id"]: r for r in _lines(out)}
    assert len(_lines(out)) == 2  # still one line a pair: the stale one was dropped
    assert after["p"]["moving_path"] == str(images / "d.png")
    assert after["q"] == before["q"]  # unchanged pairs are not registered again
    assert "1 pairs processed by this run" in capfd.readouterr().err


def test_a_changed_image_is_registered_again(images, tmp_path):
    moving = tmp_path / "moving.png"
    shutil.copy2(images / "b.png", moving)
    pairs = _pairs_file(tmp_path, {"p": (images / "a.png", moving)})
    out = tmp_path / "out"
    main(["batch", str(pairs), "--out-dir", str(out), *FAST])
    (record,) = _lines(out)
    assert record["inputs"]["moving"]["size"] == moving.stat().st_size
    shutil.copyfile(images / "c.png", moving)  # same path, other content
    main(["batch", str(pairs), "--out-dir", str(out), *FAST])
    (again,) = _lines(out)
    assert again["inputs"]["moving"] == {"size": moving.stat().st_size,
                                         "mtime_ns": moving.stat().st_mtime_ns}
    assert not np.array_equal(fitted_from_json(again)[1], fitted_from_json(record)[1])


def test_a_resume_with_another_graph_is_refused(images, tmp_path, capfd):
    graph = tmp_path / "mine" / "superpoint.onnx"
    graph.parent.mkdir()
    shutil.copy2(MODELS_DIR / "superpoint.onnx", graph)
    pairs = _pairs_file(tmp_path, {"p": (images / "a.png", images / "b.png")})
    out = tmp_path / "out"
    options = ["--matcher", "mnn", "--size", "256", "--superpoint", str(graph)]
    main(["batch", str(pairs), "--out-dir", str(out), *options])
    recorded = json.loads((out / OPTIONS_FILE).read_text())["models"]
    assert set(recorded) == {"superpoint"} and len(recorded["superpoint"]) == 64
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same path, another graph
    graph.write_bytes(bytes(data))
    capfd.readouterr()
    assert main(["batch", str(pairs), "--out-dir", str(out), *options]) == EXIT_USAGE
    _one_line_error(capfd.readouterr().err, "other registration options", "models.superpoint")


def test_a_worker_whose_graph_changed_after_the_check_refuses_to_start():
    spec = WorkerSpec(RegistrarConfig(matcher=MatcherName.MNN), models={"superpoint": "0" * 64})
    worker = PairRegistrar(spec)
    assert worker.registrar is None and "the batch started with" in worker.start_error


def test_batch_files_get_the_users_umask(images, tmp_path):
    pairs = _pairs_file(tmp_path, {"p": (images / "a.png", images / "b.png")})
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        main(["batch", str(pairs), "--out-dir", str(out), *FAST])
    finally:
        os.umask(previous)
    for name in (RESULTS_FILE, OPTIONS_FILE, LOCK_FILE):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
