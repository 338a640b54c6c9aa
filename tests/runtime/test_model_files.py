"""Where the default graphs are found: environment, wheel, or source checkout."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import MODELS_DIR, REPO_ROOT
from ophreg_rt import model_files


def test_environment_variable_overrides_the_models_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(model_files.MODELS_DIR_ENV, str(tmp_path))
    assert model_files.default_superpoint() == tmp_path / model_files.SUPERPOINT_FILE


def test_source_checkout_uses_the_shipped_models_folder(monkeypatch):
    monkeypatch.delenv(model_files.MODELS_DIR_ENV, raising=False)
    assert model_files.default_superpoint() == MODELS_DIR / model_files.SUPERPOINT_FILE
    assert model_files.default_superpoint().is_file()


def test_shipped_graph_matches_its_manifest_entry():
    manifest = json.loads((MODELS_DIR / "manifest.json").read_text())
    (entry,) = [g for g in manifest["graphs"] if g["file"] == model_files.SUPERPOINT_FILE]
    digest = hashlib.sha256((MODELS_DIR / entry["file"]).read_bytes()).hexdigest()
    assert digest == entry["sha256"]


@pytest.mark.slow
def test_the_wheel_carries_the_default_graph(tmp_path):
    # Built from a copy: setuptools leaves a build/ folder beside the sources it builds.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for name in ("ophreg_rt", "models"):
        shutil.copytree(REPO_ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(source)], check=True, timeout=300,
                   capture_output=True)
    (wheel,) = tmp_path.glob("ophreg_rt-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = archive.read("ophreg_rt/_models/" + model_files.SUPERPOINT_FILE)
        names = archive.namelist()
    assert packed == (MODELS_DIR / model_files.SUPERPOINT_FILE).read_bytes()
    assert not any(name.startswith(("export/", "tests/")) for name in names)
