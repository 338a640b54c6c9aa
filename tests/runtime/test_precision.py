"""``precision`` picks the shipped SuperPoint graph: fp32 by default, int8 on request."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnxruntime as ort

from benchmarks.known_truth import make_cases, mean_fov_error
from conftest import CC0_RETINA, MODELS_DIR
from ophreg_rt import Registrar, RegistrarConfig, model_files
from ophreg_rt.cli import main
from ophreg_rt.config import MatcherName, Precision
from ophreg_rt.contract import METADATA_PREFIX, MetaKey
from ophreg_rt.imageio import write_image


def test_default_precision_is_fp32_and_int8_names_the_shipped_int8_graph(monkeypatch):
    monkeypatch.delenv(model_files.MODELS_DIR_ENV, raising=False)
    assert RegistrarConfig().precision is Precision.FP32
    assert model_files.default_superpoint() == MODELS_DIR / model_files.SUPERPOINT_FILE
    int8 = model_files.default_superpoint(Precision.INT8)
    assert int8 == MODELS_DIR / model_files.SUPERPOINT_INT8_FILE and int8.is_file()


def test_shipped_int8_graph_matches_its_manifest_entry_and_says_it_is_int8():
    manifest = json.loads((MODELS_DIR / "manifest.json").read_text())
    (entry,) = [g for g in manifest["graphs"] if g["file"] == model_files.SUPERPOINT_INT8_FILE]
    path = MODELS_DIR / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    metadata = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) \
        .get_modelmeta().custom_metadata_map
    assert metadata[METADATA_PREFIX + MetaKey.PRECISION] == "int8-qdq"
    float_sha = hashlib.sha256((MODELS_DIR / model_files.SUPERPOINT_FILE).read_bytes()).hexdigest()
    assert metadata[METADATA_PREFIX + MetaKey.SOURCE_GRAPH_SHA256] == float_sha


def test_a_named_superpoint_graph_overrides_precision():
    config = RegistrarConfig(precision=Precision.INT8, matcher=MatcherName.MNN, threads=1)
    registrar = Registrar(config, superpoint_model=MODELS_DIR / model_files.SUPERPOINT_FILE)
    assert registrar.models["superpoint"]["file"] == model_files.SUPERPOINT_FILE


def test_cli_precision_int8_registers_a_known_warp_with_the_int8_graph(tmp_path):
    case = make_cases([CC0_RETINA], per_image=1, seed=3)[0]
    fixed, moving, report = tmp_path / "fixed.png", tmp_path / "moving.png", tmp_path / "r.json"
    write_image(fixed, case.fixed)
    write_image(moving, case.moving)
    code = main(["register", str(fixed), str(moving), "--precision", "int8", "--matcher", "mnn",
                 "--size", "256", "--threads", "2", "--json", str(report)])
    assert code == 0
    written = json.loads(report.read_text())
    assert written["models"]["superpoint"]["file"] == model_files.SUPERPOINT_INT8_FILE
    matrix = np.vstack([np.asarray(written["affine"]), [0.0, 0.0, 1.0]])
    # The success bar (5 px at 1024), reached from a 256-px network input.
    assert mean_fov_error(matrix, case) < 5.0
