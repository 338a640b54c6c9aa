"""Graphs are verified before a session is made: a default graph must have the sha256 its
folder's manifest records; a graph the user names from elsewhere is taken by that choice, and
its hash is reported. Also: exactly one onnxruntime build, and extras that keep it so."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import CC0_RETINA, MODELS_DIR, REPO_ROOT
from ophreg_rt import model_files, runtime_check
from ophreg_rt.cli import EXIT_OK, EXIT_USAGE, main
from ophreg_rt.config import MatcherName, RegistrarConfig
from ophreg_rt.errors import ModelChecksumError, ProviderUnavailableError
from ophreg_rt.registrar import Registrar
from ophreg_rt.sessions import sha256_file

MNN = RegistrarConfig(matcher=MatcherName.MNN)  # SuperPoint only: one graph to load


def _shipped_sha256(name: str) -> str:
    manifest = json.loads((MODELS_DIR / model_files.MANIFEST_FILE).read_text())
    return {g["file"]: g["sha256"] for g in manifest["graphs"]}[name]


def _corrupt(path) -> None:
    """64 bytes flipped mid-file: in the weights, so onnxruntime still loads and runs it."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def models_copy(tmp_path, monkeypatch):
    """A copy of the shipped SuperPoint graph and the manifest, as OPHREG_MODELS_DIR."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in (model_files.SUPERPOINT_FILE, model_files.MANIFEST_FILE):
        shutil.copy2(MODELS_DIR / name, folder / name)
    monkeypatch.setenv(model_files.MODELS_DIR_ENV, str(folder))
    return folder


def test_an_intact_copy_loads(models_copy):
    registrar = Registrar(MNN)
    assert registrar.models["superpoint"]["sha256"] == _shipped_sha256("superpoint.onnx")


def test_a_corrupted_default_graph_is_refused_naming_both_hashes(models_copy):
    graph = models_copy / model_files.SUPERPOINT_FILE
    _corrupt(graph)
    with pytest.raises(ModelChecksumError) as caught:
        Registrar(MNN)
    message = str(caught.value)
    assert message.startswith(str(graph))
    assert _shipped_sha256("superpoint.onnx") in message and sha256_file(graph) in message


def test_a_default_graph_missing_from_its_manifest_is_refused(models_copy):
    (models_copy / model_files.MANIFEST_FILE).unlink()
    with pytest.raises(ModelChecksumError, match="not listed"):
        Registrar(MNN)


def test_a_graph_named_explicitly_is_accepted_and_its_hash_reported(tmp_path):
    own = tmp_path / "own" / "superpoint.onnx"
    own.parent.mkdir()
    shutil.copy2(MODELS_DIR / model_files.SUPERPOINT_FILE, own)
    _corrupt(own)  # stands for a user's own, different graph
    registrar = Registrar(MNN, superpoint_model=own)
    assert registrar.models["superpoint"]["sha256"] == sha256_file(own)


def test_the_command_line_refuses_a_corrupted_default_in_one_line(models_copy):
    _corrupt(models_copy / model_files.SUPERPOINT_FILE)
    done = subprocess.run([sys.executable, "-m", "ophreg_rt.cli", "register", str(CC0_RETINA),
                           str(CC0_RETINA), "--matcher", "mnn"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_USAGE
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "superpoint.onnx" in line and _shipped_sha256("superpoint.onnx") in line


def test_every_shipped_graph_matches_the_manifest():
    manifest = json.loads((MODELS_DIR / model_files.MANIFEST_FILE).read_text())
    for entry in manifest["graphs"]:
        assert sha256_file(MODELS_DIR / entry["file"]) == entry["sha256"], entry["file"]


def test_exactly_one_onnxruntime_build_is_installed():
    builds = runtime_check.installed_builds()
    assert len(builds) == 1, builds
    assert runtime_check.onnxruntime_module().__name__ == "onnxruntime"


def test_two_builds_side_by_side_are_refused(monkeypatch):
    monkeypatch.setattr(runtime_check, "installed_builds",
                        lambda: ["onnxruntime", "onnxruntime-gpu"])
    with pytest.raises(ProviderUnavailableError, match="side by side") as caught:
        runtime_check.onnxruntime_module()
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in str(caught.value)


def test_cpu_and_gpu_are_extras_of_which_one_is_installed():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]

    def builds(requirements):
        names = [r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()
                 for r in requirements]
        return [name for name in names if name in runtime_check.ONNXRUNTIME_BUILDS]

    assert builds(project["dependencies"]) == []
    extras = project["optional-dependencies"]
    assert builds(extras["cpu"]) == ["onnxruntime"]
    assert builds(extras["gpu"]) == ["onnxruntime-gpu"]
    assert all(builds(extras[name]) == [] for name in extras if name not in ("cpu", "gpu"))


def test_without_onnxruntime_sift_runs_and_the_graphs_name_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as after a bare `pip install .`
    image = str(CC0_RETINA)
    assert main(["register", image, image, "--features", "sift", "--size", "256"]) == EXIT_OK
    capsys.readouterr()
    assert main(["register", image, image, "--matcher", "mnn", "--size", "256"]) == EXIT_USAGE
    assert "pip install 'ophreg-rt[cpu]'" in capsys.readouterr().err
