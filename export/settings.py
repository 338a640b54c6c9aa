"""The one home of every export default: the settings baked into the SuperPoint, SuperGlue and
LightGlue graphs, and how the INT8 SuperPoint graph is quantised.

The reference implementations disagree with themselves (100 vs 20 Sinkhorn iterations, -1 vs
1024 max keypoints); each value is fixed here once and recorded in the graph's metadata at
export, where the runtime reads it back. Torch-free, so that tests and benchmarks may read a
default without the export extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class SuperPointSettings:
    """Detector settings baked into the SuperPoint graph (values of the method, DESIGN.md)."""

    nms_radius: int = 4
    keypoint_threshold: float = 0.005
    remove_borders: int = 4
    max_keypoints: int = 1024


class QuantizedActivations(str, Enum):
    UINT8 = "uint8"  # u8 activations x s8 weights: MLAS's fast path on x86 (AVX2 and VNNI)
    INT8 = "int8"


class CalibrationMethodName(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"


@dataclass(frozen=True)
class QuantizationSettings:
    """Static INT8 (QDQ) quantisation of the SuperPoint graph (export/quantize.py).

    Chosen by benchmarks/int8.py's lever study (benchmarks/README.md, "INT8"): s8 activations
    were slower, per-tensor weights and reduce_range lost keypoint agreement, onnxruntime's
    pre-processing changed nothing; the histogram calibrations did not fit in memory.
    """

    activations: QuantizedActivations = QuantizedActivations.UINT8
    per_channel: bool = True  # one weight scale per output channel
    reduce_range: bool = False  # 7-bit weights: only needed on CPUs without VNNI
    calibration: CalibrationMethodName = CalibrationMethodName.MINMAX
    percentile: float = 99.999  # used by CalibrationMethodName.PERCENTILE only
    ort_preprocess: bool = False  # onnxruntime's quant_pre_process before quantising


class SinkhornDomain(str, Enum):
    """How the Sinkhorn iterations are written in the exported graph; both reach one fixed point.

    ``log``: the reference form, potentials updated with log-sum-exp (two per iteration over the
    whole coupling matrix). ``scaling``: the same iterations on exp(potentials), with the
    couplings exponentiated once after subtracting each row's maximum, so an iteration is two
    matrix-vector products. Every row then holds a 1 (its maximum) and every column the dustbin
    row's 1, so no normaliser is 0; entries more than ~87 below their row's maximum underflow to
    0 in float32, i.e. assignment probabilities under e^-87 are dropped (benchmarks/README.md,
    "Sinkhorn formulation", has the parity and speed figures).
    """

    LOG = "log"
    SCALING = "scaling"


@dataclass(frozen=True)
class SuperGlueSettings:
    """Matcher settings baked into the SuperGlue graph (Sarlin et al. 2020; the method's values)."""

    sinkhorn_iterations: int = 100
    sinkhorn_domain: SinkhornDomain = SinkhornDomain.SCALING
    match_threshold: float = 0.2
    descriptor_dim: int = 256
    keypoint_encoder: tuple[int, ...] = (32, 64, 128, 256)
    gnn_layer_pairs: int = 9  # each pair is one self- and one cross-attention layer
    num_heads: int = 4


@dataclass(frozen=True)
class LightGlueSettings:
    """Matcher settings baked into the LightGlue graph (Lindenberger et al. 2023).

    The published model's values. Every layer runs: the adaptive early exit and point pruning
    are not in the graph (export/lightglue.py says why), so no confidence thresholds here.
    """

    filter_threshold: float = 0.1  # minimum match probability, after the mutual check
    descriptor_dim: int = 256
    num_layers: int = 9  # each one self- and one cross-attention block
    num_heads: int = 4
