"""What the tests of the JavaScript examples share: where things are, skips that say why, the
Node command and the page server run as subprocesses, and the transform comparison.

Not a conftest.py: this folder has no package, and a second module named ``conftest`` would
shadow the suite's own for tests that import from it. The test modules import these fixtures.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from conftest import REPO_ROOT

from benchmarks.embeddings import drive_page, page_server  # noqa: F401 (the tests' imports)
from ophreg_rt import contract, one_graph
from ophreg_rt.imageio import read_image
from ophreg_rt.transforms import fitted_from_json, map_points

EXAMPLES = REPO_ROOT / "examples"
NODE_EXAMPLE = EXAMPLES / "node"
WEB_EXAMPLE = EXAMPLES / "web"
REGISTER_MJS = NODE_EXAMPLE / "register.mjs"
#: Node's oldest release the examples' packages support (sharp 0.34's engines field; Debian 12
#: ships 18.20).
MIN_NODE = (18, 17)
#: The issue's bound on any two registrations of the same pair: px at the 1024-px reference.
SAME_TRANSFORM_PX = 0.5
#: The dev pair (JPEG) the examples are compared with `ophreg register` on. Not toolbox_fundus:
#: there the graph's RANSAC (a fixed hypothesis table) and the runtime's (seeded sampling) land
#: 1.8 px apart, within the runtime's own spread over RANSAC seeds (measured by the graph's
#: author); that is the graph's property, not the examples', and is tested with the graph.
DEV_PAIR = "toolbox_example"

#: Fields that say how a run went, not what it found: they differ between any two runs.
RUN_FIELDS = ("timings_ms", "models", "provider")

#: Set by .ci/run where Node (and the examples' packages) are installed: their absence fails
#: the run there instead of skipping the examples' tests.
REQUIRE_NODE = os.environ.get("OPHREG_REQUIRE_NODE") == "1"
#: Set by .ci/run where Debian's chromium is installed (as for the batch report's test).
REQUIRE_BROWSER = os.environ.get("OPHREG_REQUIRE_BROWSER") == "1"


def _absent(message: str, required: bool, variable: str) -> None:
    if required:
        pytest.fail(f"{message} and {variable}=1", pytrace=False)
    pytest.skip(message)


def _headless_browser_module():
    """tests/cohort/headless_browser.py, the suite's one finder of a Chromium executable."""
    if "headless_browser" not in sys.modules:
        path = REPO_ROOT / "tests" / "cohort" / "headless_browser.py"
        spec = importlib.util.spec_from_file_location("headless_browser", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["headless_browser"] = module
    return sys.modules["headless_browser"]


@pytest.fixture(scope="session")
def node() -> str:
    executable = shutil.which("node")
    if executable is None:
        _absent("no node (Debian: apt-get install nodejs npm)", REQUIRE_NODE, "OPHREG_REQUIRE_NODE")
    version = subprocess.run([executable, "--version"], capture_output=True, text=True).stdout
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < MIN_NODE:
        _absent(f"node {version.strip()} is older than {'.'.join(map(str, MIN_NODE))}",
                REQUIRE_NODE, "OPHREG_REQUIRE_NODE")
    return executable


def _packages(folder: Path, names: tuple[str, ...], required: bool, variable: str) -> None:
    missing = [name for name in names if not (folder / "node_modules" / name / "package.json")
               .is_file()]
    if missing:
        _absent(f"{', '.join(missing)} not installed in {folder.relative_to(REPO_ROOT)} "
                f"(npm ci --prefix {folder.relative_to(REPO_ROOT)})", required, variable)


@pytest.fixture(scope="session")
def node_example(node: str) -> str:
    """Node, with examples/node's packages installed; returns the node executable."""
    _packages(NODE_EXAMPLE, ("onnxruntime-node", "sharp"), REQUIRE_NODE, "OPHREG_REQUIRE_NODE")
    return node


@pytest.fixture(scope="session")
def web_example(node: str) -> str:
    """Node, with examples/web's packages (the page's runtime and the test's driver)."""
    _packages(WEB_EXAMPLE, ("onnxruntime-web", "playwright-core"), REQUIRE_NODE or
              REQUIRE_BROWSER, "OPHREG_REQUIRE_NODE or OPHREG_REQUIRE_BROWSER")
    return node


@pytest.fixture(scope="session")
def chromium() -> str:
    executable = _headless_browser_module().find_chromium()
    if executable is None:
        _absent("no chromium (Debian: apt-get install chromium)", REQUIRE_BROWSER,
                "OPHREG_REQUIRE_BROWSER")
    return executable


def run_register(node: str, *args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(REGISTER_MJS), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT)


def assert_one_line_error(completed: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user's mistake: exit 2, one line on stderr naming the problem, no stack trace."""
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.strip().split("\n")
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("register.mjs: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert completed.stdout == ""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli_register(fixed: Path, moving: Path, work: Path) -> dict:
    """``ophreg register FIXED MOVING --json``'s record (the reference both examples meet)."""
    cli_json = work / "cli.json"
    cli = subprocess.run([sys.executable, "-m", "ophreg_rt.cli", "register", str(fixed),
                          str(moving), "--json", str(cli_json)], capture_output=True, text=True,
                         timeout=900)
    assert cli.returncode == 0, cli.stderr
    return json.loads(cli_json.read_text())


def keep_artifact(path: Path) -> None:
    """A copy in $OPHREG_ARTIFACTS_DIR (CI keeps it), when that is set."""
    folder = os.environ.get("OPHREG_ARTIFACTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(folder) / path.name)


def transform_gap_px(record: dict, reference: dict, steps: int = 11) -> float:
    """Largest distance between where two results send the moving image's points, px at the
    1024-px reference size of the fixed image, over a ``steps`` x ``steps`` grid spanning the
    moving image (corners included) restricted to the points ``reference`` sends into the
    fixed image: the shared field both registrations are judged on."""
    width, height = reference["moving_size"]
    xs, ys = np.meshgrid(np.linspace(0, width - 1, steps), np.linspace(0, height - 1, steps))
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
    mapped = {}
    for name, result in (("record", record), ("reference", reference)):
        model, parameters = fitted_from_json(result)
        mapped[name] = map_points(model, parameters, grid)
    fixed_width, fixed_height = reference["fixed_size"]
    inside = ((mapped["reference"] >= 0) & (mapped["reference"] <= [fixed_width - 1,
                                                                    fixed_height - 1])).all(1)
    assert inside.sum() >= steps, "the reference sends almost nothing into the fixed image"
    gaps = np.linalg.norm(mapped["record"][inside] - mapped["reference"][inside], axis=1)
    return float(gaps.max() * 1024 / max(fixed_width, fixed_height))


def python_reference(graph: Path, fixed: Path | np.ndarray,
                     moving: Path | np.ndarray) -> one_graph.OneGraphResult:
    """ophreg_rt.one_graph's result for the pair (the reference the examples copy):
    onnxruntime's Python binding runs the graph on OpenCV's decoding of the files (or on the
    arrays given), and one_graph.decode reads its outputs."""
    images = [one_graph.as_graph_image(read_image(image) if isinstance(image, Path) else image,
                                       str(image) if isinstance(image, Path) else "array")
              for image in (fixed, moving)]
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, dict(zip(contract.RegistrationIO.IMAGES,
                                                          images)))))
    return one_graph.decode(outputs, images[0].shape, images[1].shape)


def without_run_fields(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in RUN_FIELDS}
