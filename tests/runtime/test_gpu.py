"""The CUDA provider computes what the CPU provider computes (runs only where CUDA is present)."""

from __future__ import annotations

from dataclasses import replace

import onnxruntime as ort
import pytest

from benchmarks.known_truth import make_cases, mean_fov_error
from conftest import CC0_RETINA
from ophreg_rt import Registrar, RegistrarConfig
from ophreg_rt.config import Device

#: The runtime's own bar for a known warp (issue 3), stricter than the benchmark's 5 px success.
WITHIN_PX = 2.0

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                       reason="onnxruntime here has no CUDAExecutionProvider (install .[gpu])"),
]


def test_cuda_registration_applies_cuda_and_agrees_with_cpu():
    case = make_cases([CC0_RETINA], per_image=1, seed=7)[0]
    cpu = Registrar(RegistrarConfig())
    cuda = Registrar(replace(RegistrarConfig(), device=Device.CUDA))
    assert cuda.provider == "CUDAExecutionProvider"
    on_cpu = cpu.register(case.fixed, case.moving)
    on_cuda = cuda.register(case.fixed, case.moving)
    assert on_cpu.ok and on_cuda.ok
    assert mean_fov_error(on_cuda, case) < WITHIN_PX
    # GPU convolutions may round differently, which can flip keypoints whose score sits on the
    # 0.005 threshold; the sets must still agree almost entirely.
    shared = {tuple(p) for p in on_cpu.keypoints_fixed.round(3).tolist()} & \
        {tuple(p) for p in on_cuda.keypoints_fixed.round(3).tolist()}
    assert len(shared) >= 0.98 * max(len(on_cpu.keypoints_fixed), len(on_cuda.keypoints_fixed))
    as_if_cpu_were_truth = replace(case, truth=on_cpu.matrix)
    assert mean_fov_error(on_cuda, as_if_cpu_were_truth) < 0.5
