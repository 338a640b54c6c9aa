"""The runtime imports and runs with torch and onnx made unimportable."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT


def test_runtime_imports_without_torch_or_onnx():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['onnx'] = None\n"
        "import ophreg_rt, ophreg_rt.cli, ophreg_rt.registrar, ophreg_rt.ransac\n"
        "from ophreg_rt import Registrar\n"
        "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
