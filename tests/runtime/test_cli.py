"""The ``ophreg register`` contract: exit codes, JSON fields, outputs never overwritten."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from benchmarks.known_truth import make_cases
from conftest import CC0_RETINA, MODELS_DIR, python_output
from ophreg_rt.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, OUTPUT_FILES, main
from ophreg_rt.imageio import write_image
from ophreg_rt.transforms import fitted_from_json, warp_image


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The CC0 retina (fixed) and a known warp of it (moving), as files."""
    folder = tmp_path_factory.mktemp("pair")
    case = make_cases([CC0_RETINA], per_image=1, seed=11)[0]
    write_image(folder / "fixed.png", case.fixed)
    write_image(folder / "moving.png", case.moving)
    return folder / "fixed.png", folder / "moving.png"


@pytest.fixture(scope="module")
def registered(pair, tmp_path_factory):
    """One successful CLI run, shared by the tests that inspect its outputs."""
    out = tmp_path_factory.mktemp("out")
    code = main(["register", str(pair[0]), str(pair[1]), "--out-dir", str(out / "results"),
                 "--json", str(out / "result.json")])
    return code, out


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ophreg: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], err


def test_a_registrable_pair_exits_0_with_every_output(registered):
    code, out = registered
    assert code == EXIT_OK
    for name in OUTPUT_FILES.values():
        image = cv2.imread(str(out / "results" / name))
        assert image is not None and image.size > 0, name


def test_json_has_the_contract_fields(registered):
    _, out = registered
    document = json.loads((out / "result.json").read_text())
    assert document["status"] == "ok"
    # the default (auto) reports the model it chose, with its parameters in that model's field
    assert document["model_selection"]["chosen"] == document["transform"]
    if document["transform"] == "quadratic":
        assert np.asarray(document["quadratic"]["coefficients"]).shape == (2, 6)
        assert document["affine"] is None and document["matrix"] is None
    else:
        assert np.asarray(document["affine"]).shape == (2, 3)
    assert len(document["num_keypoints"]) == 2 and min(document["num_keypoints"]) > 0
    assert 0 < document["num_inliers"] <= document["num_matches"]
    assert {"superpoint", "matching", "ransac", "total"} <= set(document["timings_ms"])
    manifest = json.loads((MODELS_DIR / "manifest.json").read_text())
    shipped = {g["file"]: g["sha256"] for g in manifest["graphs"]}
    assert document["models"]["superpoint"]["sha256"] == shipped["superpoint.onnx"]


def test_warped_output_matches_the_reported_transform(registered, pair):
    _, out = registered
    document = json.loads((out / "result.json").read_text())
    fixed = cv2.imread(str(pair[0]))
    moving = cv2.imread(str(pair[1]))
    model, parameters = fitted_from_json(document)
    expected = warp_image(moving, parameters, model, fixed.shape[1::-1])
    written = cv2.imread(str(out / "results" / OUTPUT_FILES["warped"]))
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1


def test_existing_outputs_are_kept_without_force(registered, pair, capsys):
    _, out = registered
    json_path = out / "result.json"
    before = json_path.read_bytes()
    code = main(["register", str(pair[0]), str(pair[1]), "--json", str(json_path)])
    assert code == EXIT_USAGE
    _one_line_error(capsys, "result.json", "already exists", "--force")
    assert json_path.read_bytes() == before


def test_force_overwrites(registered, pair, capsys):
    _, out = registered
    json_path = out / "forced.json"
    json_path.write_text("old")
    code = main(["register", str(pair[0]), str(pair[1]), "--json", str(json_path), "--force"])
    assert code == EXIT_OK
    assert json.loads(json_path.read_text())["status"] == "ok"


def test_an_unregistrable_pair_exits_3_with_the_reason_and_no_warp(pair, tmp_path, capsys):
    flat = tmp_path / "flat.png"
    write_image(flat, np.full((500, 500), 90, np.uint8))
    code = main(["register", str(pair[0]), str(flat), "--out-dir", str(tmp_path / "out"),
                 "--json", str(tmp_path / "r.json")])
    assert code == EXIT_FAILED
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["status"] == "failed" and document["reason"]
    assert document["affine"] is None
    assert not (tmp_path / "out" / OUTPUT_FILES["warped"]).exists()
    assert "failed" in capsys.readouterr().err


@pytest.mark.parametrize("make_bad, fragments", [
    (lambda d: d / "absent.jpg", ["absent.jpg", "no such file"]),
    (lambda d: (d / "notes.jpg").write_text("hello") and d / "notes.jpg",
     ["notes.jpg", "not an image"]),
])
def test_bad_input_files_exit_2_naming_the_file(pair, tmp_path, capsys, make_bad, fragments):
    code = main(["register", str(pair[0]), str(make_bad(tmp_path))])
    assert code == EXIT_USAGE
    _one_line_error(capsys, *fragments)


def test_a_bad_model_file_exits_2_naming_it(pair, tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk")
    assert main(["register", str(pair[0]), str(pair[1]), "--superpoint", str(junk)]) == EXIT_USAGE
    _one_line_error(capsys, "junk.onnx")


def test_superglue_without_an_exported_graph_exits_2(pair, tmp_path, capsys):
    missing = tmp_path / "superglue.onnx"
    code = main(["register", str(pair[0]), str(pair[1]), "--matcher", "superglue",
                 "--superglue", str(missing)])
    assert code == EXIT_USAGE
    _one_line_error(capsys, "superglue.onnx", "not found")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="the refusal concerns onnxruntime builds without CUDA")
def test_cuda_on_a_cpu_only_runtime_exits_2_unless_fallback_allowed(pair, capsys):
    assert main(["register", str(pair[0]), str(pair[1]), "--device", "cuda"]) == EXIT_USAGE
    _one_line_error(capsys, "CUDAExecutionProvider")
    assert main(["register", str(pair[0]), str(pair[1]), "--device", "cuda",
                 "--allow-cpu-fallback"]) == EXIT_OK


@pytest.mark.parametrize("argv, fragment", [
    (["--size", "100"], "--size 100"),
    (["--threads", "0"], "--threads 0"),
    (["--threshold", "-1"], "--threshold -1"),
])
def test_bad_options_exit_2(pair, capsys, argv, fragment):
    assert main(["register", str(pair[0]), str(pair[1]), *argv]) == EXIT_USAGE
    _one_line_error(capsys, fragment)


def test_usage_errors_exit_2_without_traceback(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["register", "only-one-image.png"])
    assert exited.value.code == EXIT_USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_installed_console_script_runs(pair, tmp_path):
    script = shutil.which("ophreg") or str(__import__("pathlib").Path(sys.executable).with_name("ophreg"))
    done = subprocess.run([script, "register", str(pair[0]), str(tmp_path / "absent.png")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_USAGE
    assert "absent.png" in done.stderr and "Traceback" not in done.stderr


def test_an_affine_asked_for_warps_exactly_like_cv2_warp_affine(pair, tmp_path):
    out = tmp_path / "affine"
    assert main(["register", str(pair[0]), str(pair[1]), "--transform", "affine",
                 "--out-dir", str(out), "--json", str(tmp_path / "affine.json")]) == EXIT_OK
    document = json.loads((tmp_path / "affine.json").read_text())
    assert document["transform"] == "affine" and document["quadratic"] is None
    fixed, moving = cv2.imread(str(pair[0])), cv2.imread(str(pair[1]))
    expected = cv2.warpAffine(moving, np.asarray(document["affine"]), fixed.shape[1::-1])
    written = cv2.imread(str(out / OUTPUT_FILES["warped"]))
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1


def test_no_mask_keeps_keypoints_the_mask_drops(pair, tmp_path):
    counts = {}
    for flags in ([], ["--no-mask"]):
        path = tmp_path / f"{len(flags)}.json"
        assert main(["register", str(pair[0]), str(pair[1]), "--json", str(path), *flags]) == EXIT_OK
        counts[len(flags)] = json.loads(path.read_text())["num_keypoints"]
    # the CC0 photograph has a black surround whose edge the mask removes
    assert all(masked < unmasked for masked, unmasked in zip(counts[0], counts[1]))


def test_the_subcommand_modules_import_the_shared_options_not_the_command_line():
    # cli builds its parser from cohort.cli and evaluation.cli; were they to import cli back,
    # `python -m ophreg_rt.cli` would run with two copies of it (one as __main__).
    code = ("import sys\n"
            "import ophreg_rt.cohort.cli, ophreg_rt.evaluation.cli\n"
            "print('ophreg_rt.cli' in sys.modules)\n")
    assert python_output(code) == "False"
