"""The JavaScript embeddings run from Python: the page's server, the page driven in headless
Chromium, and the graph timed in onnxruntime-node. One home for the tests of the examples
(tests/examples) and for ``benchmarks/one_graph_latency.py``.

Needs Node with the examples' packages (``npm ci --prefix examples/node``, ``npm ci --prefix
examples/web``) and, for the page, a Chromium executable.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVE_PY = REPO_ROOT / "examples" / "web" / "serve.py"
DRIVE_PAGE = REPO_ROOT / "tests" / "examples" / "drive_page.mjs"
NODE_TIMING = REPO_ROOT / "benchmarks" / "one_graph_node.mjs"


@contextlib.contextmanager
def page_server(model: Path) -> Iterator[str]:
    """examples/web/serve.py on a free port of this machine; yields the page's address."""
    process = subprocess.Popen(
        [sys.executable, str(SERVE_PY), "--model", str(model), "--port", "0", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        line = process.stdout.readline()
        match = re.search(r"http://\S+", line)
        if match is None:
            process.kill()
            raise RuntimeError(f"serve.py did not start: {line}{process.stderr.read()}")
        yield match.group(0)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def drive_page(node: str, chromium: str, url: str, fixed: Path, moving: Path, work: Path,
               screenshot: Path | None = None, repeat: int = 1,
               timeout_s: float = 900) -> dict:
    """The page registers FIXED and MOVING ``repeat`` times in headless Chromium
    (tests/examples/drive_page.mjs); returns what the page reported (state, result, runtime,
    stages, problems, the durations of each run and the page's timings of each)."""
    command = [node, str(DRIVE_PAGE), "--url", url, "--chromium", chromium,
               "--profile", str(work / "chromium-profile"), "--fixed", str(fixed),
               "--moving", str(moving), "--repeat", str(repeat),
               "--timeout-ms", str(int(timeout_s * 1000))]
    if screenshot is not None:
        command += ["--screenshot", str(screenshot)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s + 60,
                               cwd=REPO_ROOT)
    if completed.returncode != 0:
        raise RuntimeError(f"drive_page.mjs failed: {completed.stderr[-3000:]}")
    return json.loads(completed.stdout)


def node_graph_times(node: str, model: Path, fixed: Path, moving: Path, threads: int | None,
                     warmup: int, repeat: int, timeout_s: float = 1800) -> dict:
    """The graph's run times in onnxruntime-node with one session (benchmarks/
    one_graph_node.mjs); FIXED and MOVING are binary PGM/PPM. Returns load_ms, graph_ms (one
    per timed run), status and the onnxruntime-node version."""
    command = [node, str(NODE_TIMING), "--model", str(model), "--fixed", str(fixed),
               "--moving", str(moving), "--warmup", str(warmup), "--repeat", str(repeat)]
    if threads is not None:
        command += ["--threads", str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                               cwd=REPO_ROOT)
    if completed.returncode != 0:
        raise RuntimeError(f"one_graph_node.mjs failed: {completed.stderr[-3000:]}")
    return json.loads(completed.stdout)
