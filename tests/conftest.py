"""Shared fixtures: where the real weights and images are, and skips that say why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
DATA_DIR = Path(os.environ.get("OPHREG_DATA_DIR", SHARED / "data" / "dev"))
WEIGHTS_DIR = Path(os.environ.get("OPHREG_WEIGHTS_DIR", SHARED / "weights"))
MODELS_DIR = REPO_ROOT / "models"
#: The one image that may live in the project (CC0); everything else is read from ../shared.
CC0_RETINA = REPO_ROOT / "tests" / "fixtures" / "skimage_retina.jpg"
#: Set to 1 by .ci/run: there the real weights and images must be present, so their absence
#: fails the run instead of silently skipping the parity and accuracy proofs.
REQUIRE_SHARED = os.environ.get("OPHREG_REQUIRE_SHARED") == "1"


def _missing(message: str) -> None:
    if REQUIRE_SHARED:
        pytest.fail(message + " and OPHREG_REQUIRE_SHARED=1", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        _missing(f"real retinal images not found at {DATA_DIR} (set OPHREG_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def superpoint_weights() -> Path:
    path = WEIGHTS_DIR / "superpoint_v1.pth"
    if not path.is_file():
        _missing(f"SuperPoint checkpoint not found at {path} (set OPHREG_WEIGHTS_DIR)")
    return path


def one_line_error(capsys, *fragments: str) -> None:
    """The command's refusal was one ``ophreg: error:`` line on stderr holding every fragment,
    and no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("ophreg: error:"), err
    for fragment in fragments:
        assert fragment in err, err


def python_output(code: str) -> str:
    """What a fresh interpreter in the repository prints running ``code`` (it must succeed):
    for checks of what importing a module drags in, which this process has long since loaded."""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="session")
def registration_graph(tmp_path_factory, superpoint_weights) -> Path:
    """The one-graph registration (``python -m export registration``), exported once per test
    session from the published checkpoints (several minutes on two cores): the Python tests of
    export/registration.py and the JavaScript examples' tests run this same file.

    ``OPHREG_REGISTRATION_GRAPH=PATH`` uses a graph exported beforehand instead (to iterate on
    tests; CI exports it)."""
    given = os.environ.get("OPHREG_REGISTRATION_GRAPH")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"OPHREG_REGISTRATION_GRAPH={given}: no such file", pytrace=False)
        return Path(given)
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    lightglue_weights = WEIGHTS_DIR / "superpoint_lightglue.pth"
    if not lightglue_weights.is_file():
        _missing(f"LightGlue checkpoint not found at {lightglue_weights}")
    import torch

    from export import registration

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return registration.export(superpoint_weights, lightglue_weights,
                                   tmp_path_factory.mktemp("registration") / "registration.onnx")
    finally:
        torch.set_num_threads(before)
