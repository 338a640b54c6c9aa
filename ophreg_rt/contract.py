"""The contract between the exporters (``export/``) and the runtime (``ophreg_rt``).

This is the one home of the graphs' input/output names, dtypes, layouts, symbolic dimension
names and ``ophreg.*`` metadata keys. Both sides import it; it must never import torch or onnx.

Variable keypoint counts cross the SuperPoint graph boundary as a fixed ``max_keypoints`` slots
per image with a boolean ``mask`` (see DESIGN.md, "Keypoint padding"):

* slots are sorted by score, best first, so the valid slots of an image are its first
  ``mask.sum()`` slots;
* padded slots have ``mask`` False, keypoint ``(-1, -1)``, score 0 and an all-zero descriptor;
* the SuperGlue and LightGlue graphs take the masks as inputs and never match a padded slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Mapping

from .errors import ContractMismatchError

#: Bumped whenever a name, dtype, layout or the meaning of a metadata key changes.
CONTRACT_VERSION = "1"

#: ONNX opset of every exported graph: 17 has LayerNormalization (LightGlue) and is the newest
#: the legacy and dynamo exporters both handle without contrib ops.
OPSET = 17

DESCRIPTOR_DIM = 256

#: SuperPoint's cell size: the network sees height and width as multiples of it.
CELL = 8

METADATA_PREFIX = "ophreg."

# Symbolic (dynamic) dimension names.
BATCH = "batch"
HEIGHT = "height"
WIDTH = "width"
NUM_KEYPOINTS0 = "num_keypoints0"
NUM_KEYPOINTS1 = "num_keypoints1"
#: Not dynamic: the SuperPoint graph's keypoint axis is fixed at export to the value of the
#: ``ophreg.max_keypoints`` metadata key. Specs use this label for that axis.
MAX_KEYPOINTS = "max_keypoints"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    ``shape`` holds ints for fixed axes and the symbolic names above for dynamic ones.
    """

    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]
    doc: str


class SuperPointIO:
    """Names of the SuperPoint graph's tensors."""

    IMAGE = "image"
    KEYPOINTS = "keypoints"
    SCORES = "scores"
    DESCRIPTORS = "descriptors"
    MASK = "mask"


SUPERPOINT_INPUTS = (
    TensorSpec(SuperPointIO.IMAGE, "float32", (BATCH, 1, HEIGHT, WIDTH),
               "grey image in [0, 1]; height and width multiples of 8"),
)
SUPERPOINT_OUTPUTS = (
    TensorSpec(SuperPointIO.KEYPOINTS, "float32", (BATCH, MAX_KEYPOINTS, 2),
               "(x, y) in pixels of the image the network saw, pixel centres at integers; "
               "(-1, -1) in padded slots"),
    TensorSpec(SuperPointIO.SCORES, "float32", (BATCH, MAX_KEYPOINTS),
               "detector score, descending along the slot axis; 0 in padded slots"),
    TensorSpec(SuperPointIO.DESCRIPTORS, "float32", (BATCH, MAX_KEYPOINTS, DESCRIPTOR_DIM),
               "L2-normalised descriptors; zeros in padded slots"),
    TensorSpec(SuperPointIO.MASK, "bool", (BATCH, MAX_KEYPOINTS), "True for a real keypoint"),
)


class SuperGlueIO:
    """Names of the SuperGlue graph's tensors; ``0`` is the fixed image, ``1`` the moving one."""

    KEYPOINTS = ("keypoints0", "keypoints1")
    SCORES = ("scores0", "scores1")
    DESCRIPTORS = ("descriptors0", "descriptors1")
    MASK = ("mask0", "mask1")
    IMAGE_SIZE = ("image_size0", "image_size1")
    MATCHES = ("matches0", "matches1")
    MATCHING_SCORES = ("matching_scores0", "matching_scores1")
    LOG_ASSIGNMENT = "log_assignment"


def _superglue_inputs() -> tuple[TensorSpec, ...]:
    specs = []
    for i, n in enumerate((NUM_KEYPOINTS0, NUM_KEYPOINTS1)):
        specs += [
            TensorSpec(SuperGlueIO.KEYPOINTS[i], "float32", (BATCH, n, 2),
                       "(x, y) pixels of the image the detector saw"),
            TensorSpec(SuperGlueIO.SCORES[i], "float32", (BATCH, n), "detector scores"),
            TensorSpec(SuperGlueIO.DESCRIPTORS[i], "float32", (BATCH, n, DESCRIPTOR_DIM),
                       "descriptors"),
            TensorSpec(SuperGlueIO.MASK[i], "bool", (BATCH, n),
                       "True for a real keypoint; False slots are never matched"),
            TensorSpec(SuperGlueIO.IMAGE_SIZE[i], "float32", (BATCH, 2),
                       "(width, height) of the image the detector saw, for keypoint normalisation"),
        ]
    return tuple(specs)


SUPERGLUE_INPUTS = _superglue_inputs()
SUPERGLUE_OUTPUTS = (
    TensorSpec(SuperGlueIO.MATCHES[0], "int64", (BATCH, NUM_KEYPOINTS0),
               "index into keypoints1 of each keypoint of image 0, -1 when unmatched"),
    TensorSpec(SuperGlueIO.MATCHES[1], "int64", (BATCH, NUM_KEYPOINTS1),
               "index into keypoints0 of each keypoint of image 1, -1 when unmatched"),
    TensorSpec(SuperGlueIO.MATCHING_SCORES[0], "float32", (BATCH, NUM_KEYPOINTS0),
               "exp(log-assignment) of the match, 0 when unmatched"),
    TensorSpec(SuperGlueIO.MATCHING_SCORES[1], "float32", (BATCH, NUM_KEYPOINTS1),
               "exp(log-assignment) of the match, 0 when unmatched"),
    TensorSpec(SuperGlueIO.LOG_ASSIGNMENT, "float32", (BATCH, "num_keypoints0+1", "num_keypoints1+1"),
               "log of Sinkhorn's transport plan with the dustbin row and column last"),
)


class LightGlueIO:
    """Names of the LightGlue graph's tensors: SuperGlue's, less the detector scores."""

    KEYPOINTS = SuperGlueIO.KEYPOINTS
    DESCRIPTORS = SuperGlueIO.DESCRIPTORS
    MASK = SuperGlueIO.MASK
    IMAGE_SIZE = SuperGlueIO.IMAGE_SIZE
    MATCHES = SuperGlueIO.MATCHES
    MATCHING_SCORES = SuperGlueIO.MATCHING_SCORES
    LOG_ASSIGNMENT = SuperGlueIO.LOG_ASSIGNMENT


#: LightGlue does not read detector scores; otherwise its inputs are SuperGlue's, same order.
LIGHTGLUE_INPUTS = tuple(spec for spec in SUPERGLUE_INPUTS
                         if spec.name not in SuperGlueIO.SCORES)
LIGHTGLUE_OUTPUTS = SUPERGLUE_OUTPUTS[:4] + (
    TensorSpec(LightGlueIO.LOG_ASSIGNMENT, "float32",
               (BATCH, "num_keypoints0+1", "num_keypoints1+1"),
               "log double-softmax assignment plus log-matchability; last row and column: "
               "log(1 - matchability) of each keypoint (the 'unmatched' entries)"),
)


class PipelineIO:
    """Names of the one-graph SuperPoint + matcher pipeline (for single-file deployments).

    Matches come in ``max_keypoints`` fixed slots, best matching score first; the valid ones
    are the first ``match_mask.sum()`` slots, padded slots hold (-1, -1), score 0, index -1.
    """

    IMAGES = ("image0", "image1")
    MATCHED_KEYPOINTS = ("matched_keypoints0", "matched_keypoints1")
    MATCH_SCORES = "match_scores"
    MATCH_MASK = "match_mask"
    MATCH_INDICES = ("match_indices0", "match_indices1")
    NUM_KEYPOINTS = "num_keypoints"


PIPELINE_INPUTS = (
    TensorSpec(PipelineIO.IMAGES[0], "float32", (1, 1, "height0", "width0"),
               "fixed image, grey in [0, 1]; height and width multiples of 8"),
    TensorSpec(PipelineIO.IMAGES[1], "float32", (1, 1, "height1", "width1"),
               "moving image, grey in [0, 1]; height and width multiples of 8"),
)
PIPELINE_OUTPUTS = (
    TensorSpec(PipelineIO.MATCHED_KEYPOINTS[0], "float32", (1, MAX_KEYPOINTS, 2),
               "(x, y) pixels of image0 of each match; (-1, -1) in padded slots"),
    TensorSpec(PipelineIO.MATCHED_KEYPOINTS[1], "float32", (1, MAX_KEYPOINTS, 2),
               "(x, y) pixels of image1 of each match; (-1, -1) in padded slots"),
    TensorSpec(PipelineIO.MATCH_SCORES, "float32", (1, MAX_KEYPOINTS),
               "matcher confidence, descending; 0 in padded slots"),
    TensorSpec(PipelineIO.MATCH_MASK, "bool", (1, MAX_KEYPOINTS), "True for a real match"),
    TensorSpec(PipelineIO.MATCH_INDICES[0], "int64", (1, MAX_KEYPOINTS),
               "slot of the match in image0's SuperPoint output; -1 in padded slots"),
    TensorSpec(PipelineIO.MATCH_INDICES[1], "int64", (1, MAX_KEYPOINTS),
               "slot of the match in image1's SuperPoint output; -1 in padded slots"),
    TensorSpec(PipelineIO.NUM_KEYPOINTS, "int64", (1, 2),
               "keypoints SuperPoint found in image0 and image1"),
)



class RegistrationIO:
    """Names of the one-graph registration (``python -m export registration``): two images in,
    the verified transform, its inliers, a status and the warped moving image out.

    Everything a port would otherwise redo (channel choice, resizing with the half-pixel
    convention, CLAHE, SuperPoint, LightGlue, RANSAC on a fixed hypothesis table, the refit,
    the quadratic of ``auto`` and every refusal, the warp) is inside, so any onnxruntime binding
    registers with no code of ours. Matches come in ``max_keypoints`` slots, best score first;
    coordinates are original pixels, pixel centres at integers.
    """

    IMAGES = ("fixed", "moving")
    STATUS = "status"
    REASON = "reason"
    TRANSFORM = "transform"
    MATRIX = "matrix"
    COEFFICIENTS = "coefficients"
    LOO_RMS = "loo_rms"
    QUADRATIC_REFUSAL = "quadratic_refusal"
    NUM_INLIERS = "num_inliers"
    NUM_KEYPOINTS = "num_keypoints"
    MATCHED_KEYPOINTS = ("matched_keypoints_fixed", "matched_keypoints_moving")
    MATCH_SCORES = "match_scores"
    MATCH_MASK = "match_mask"
    INLIERS = "inliers"
    WARPED = "warped"


#: ``status`` codes of the registration graph, with the runtime's status strings.
REGISTRATION_STATUS = ("ok", "failed")

#: ``transform`` codes of the registration graph: the model whose parameters hold.
REGISTRATION_TRANSFORMS = ("affine", "quadratic")

#: ``reason`` codes of the registration graph (index = code), in the runtime's words.
REGISTRATION_REASONS = (
    None,  # 0: ok
    "an image is too small to register",
    "too few correspondences for a transform",
    "every sampled hypothesis was degenerate (duplicate or collinear points)",
    "the best transform has too few inliers",
    "the transform is implausible (not finite, mirrored, or scale or shear out of bounds)",
    "the transform sends the moving image outside the fixed one",
    "the inliers cover too little of the shared field of view",
)

class QuadraticRefusal(IntEnum):
    """``quadratic_refusal`` codes: why ``auto`` kept the affine (TAKEN when it did not).
    The texts are QUADRATIC_REFUSALS[code]."""

    TAKEN = 0
    FEW_INLIERS = 1
    COVERAGE = 2
    DEPARTURE = 3
    FOLD = 4
    LOCAL = 5
    NO_GAIN = 6
    AFFINE_FAILED = 7


#: The runtime's words for each QuadraticRefusal (index = code).
QUADRATIC_REFUSALS = (
    None,  # 0: the quadratic was taken
    "too few inliers for a quadratic",
    "the inliers cover too little of the shared field of view for a quadratic",
    "the quadratic departs too far from the affine of its inliers",
    "the quadratic folds over inside the shared field of view",
    "implausible local scale or shear of the quadratic",
    "the quadratic does not predict held-out inliers better than the affine",
    "the affine failed; no quadratic is grown",
)

REGISTRATION_INPUTS = (
    TensorSpec(RegistrationIO.IMAGES[0], "uint8", ("height0", "width0", "channels0"),
               "fixed image, rows x columns x channels (1 grey, 3 RGB or 4 RGBA), any size"),
    TensorSpec(RegistrationIO.IMAGES[1], "uint8", ("height1", "width1", "channels1"),
               "moving image, same layout; warped into the fixed image's frame"),
)
REGISTRATION_OUTPUTS = (
    TensorSpec(RegistrationIO.STATUS, "int64", (), "index into REGISTRATION_STATUS"),
    TensorSpec(RegistrationIO.REASON, "int64", (), "index into REGISTRATION_REASONS; 0 when ok"),
    TensorSpec(RegistrationIO.TRANSFORM, "int64", (), "index into REGISTRATION_TRANSFORMS"),
    TensorSpec(RegistrationIO.MATRIX, "float32", (3, 3),
               "the affine of the inliers, moving -> fixed pixels (last row 0 0 1); "
               "zeros when failed"),
    TensorSpec(RegistrationIO.COEFFICIENTS, "float32", (2, 6),
               "the fitted map on the terms x^2, x*y, y^2, x, y, 1 of the moving pixel (an "
               "affine has zeros in the first three columns): fixed x = row 0 . terms, fixed y "
               "= row 1 . terms; zeros when failed"),
    TensorSpec(RegistrationIO.LOO_RMS, "float32", (2,),
               "leave-one-out RMS residual of the affine and of the quadratic on the inliers, "
               "px at the reference size; NaN where not fitted"),
    TensorSpec(RegistrationIO.QUADRATIC_REFUSAL, "int64", (), "index into QUADRATIC_REFUSALS"),
    TensorSpec(RegistrationIO.NUM_INLIERS, "int64", (), "inliers of the fitted model"),
    TensorSpec(RegistrationIO.NUM_KEYPOINTS, "int64", (2,), "keypoints found in fixed, moving"),
    TensorSpec(RegistrationIO.MATCHED_KEYPOINTS[0], "float32", (MAX_KEYPOINTS, 2),
               "(x, y) original fixed pixels of each match; (-1, -1) in padded slots"),
    TensorSpec(RegistrationIO.MATCHED_KEYPOINTS[1], "float32", (MAX_KEYPOINTS, 2),
               "(x, y) original moving pixels of each match; (-1, -1) in padded slots"),
    TensorSpec(RegistrationIO.MATCH_SCORES, "float32", (MAX_KEYPOINTS,),
               "matcher confidence, descending; 0 in padded slots"),
    TensorSpec(RegistrationIO.MATCH_MASK, "bool", (MAX_KEYPOINTS,), "True for a real match"),
    TensorSpec(RegistrationIO.INLIERS, "bool", (MAX_KEYPOINTS,),
               "True for a match the fitted model kept"),
    TensorSpec(RegistrationIO.WARPED, "uint8", ("height0", "width0", "channels1"),
               "the moving image in the fixed frame (bilinear, zeros outside); all zeros when "
               "failed"),
)

class MetaKey:
    """Names (without the ``ophreg.`` prefix) of the export settings every graph records."""

    CONTRACT_VERSION = "contract_version"
    MODEL = "model"
    WEIGHTS_FILE = "weights_file"
    WEIGHTS_SHA256 = "weights_sha256"
    OPSET = "opset"
    # SuperPoint
    NMS_RADIUS = "nms_radius"
    KEYPOINT_THRESHOLD = "keypoint_threshold"
    REMOVE_BORDERS = "remove_borders"
    MAX_KEYPOINTS = "max_keypoints"
    # SuperGlue
    SINKHORN_ITERATIONS = "sinkhorn_iterations"
    SINKHORN_DOMAIN = "sinkhorn_domain"  # recorded, not required: both domains meet the contract
    MATCH_THRESHOLD = "match_threshold"
    # LightGlue
    FILTER_THRESHOLD = "filter_threshold"
    NUM_LAYERS = "num_layers"  # transformer layers run; all of them (no adaptive early exit)
    # Pipeline (SuperPoint + matcher in one graph)
    MATCHER = "matcher"
    # Registration (the whole registration in one graph)
    TRANSFORM_MODEL = "transform_model"  # the runtime's model the graph fits ("auto")
    NETWORK_SIZE = "network_size"  # "WIDTHxHEIGHT" the images are resized to
    PREPROCESS = "preprocess"  # PreprocessMode of the in-graph preprocessing
    MIN_SIDE = "min_side"  # sides under it are refused (reason code 1)
    MASK = "mask"  # the parts of the runtime's keypoint mask that are in the graph
    WEIGHTS_DTYPE = "weights_dtype"  # recorded, not required: float32, or float16 initializers
    # Quantised graphs (recorded, not required: a float graph has none of them)
    PRECISION = "precision"  # "int8-qdq" for export/quantize.py's SuperPoint
    CALIBRATION = "calibration"  # the images, preprocessing and method that set the ranges
    SOURCE_GRAPH_SHA256 = "source_graph_sha256"  # the float graph that was quantised


class ModelKind:
    SUPERPOINT = "superpoint"
    SUPERGLUE = "superglue"
    LIGHTGLUE = "lightglue"
    PIPELINE = "pipeline"
    REGISTRATION = "registration"


_COMMON_KEYS = {
    MetaKey.CONTRACT_VERSION: str,
    MetaKey.MODEL: str,
    MetaKey.WEIGHTS_FILE: str,
    MetaKey.WEIGHTS_SHA256: str,
    MetaKey.OPSET: int,
}

#: The metadata keys each graph must carry, with the type each value parses to.
REQUIRED_METADATA: Mapping[str, Mapping[str, type]] = {
    ModelKind.SUPERPOINT: {
        **_COMMON_KEYS,
        MetaKey.NMS_RADIUS: int,
        MetaKey.KEYPOINT_THRESHOLD: float,
        MetaKey.REMOVE_BORDERS: int,
        MetaKey.MAX_KEYPOINTS: int,
    },
    ModelKind.SUPERGLUE: {
        **_COMMON_KEYS,
        MetaKey.SINKHORN_ITERATIONS: int,
        MetaKey.MATCH_THRESHOLD: float,
    },
    ModelKind.LIGHTGLUE: {
        **_COMMON_KEYS,
        MetaKey.FILTER_THRESHOLD: float,
        MetaKey.NUM_LAYERS: int,
    },
    ModelKind.PIPELINE: {
        **_COMMON_KEYS,
        MetaKey.MATCHER: str,
        MetaKey.MAX_KEYPOINTS: int,
        MetaKey.FILTER_THRESHOLD: float,
    },
    ModelKind.REGISTRATION: {
        **_COMMON_KEYS,
        MetaKey.MATCHER: str,
        MetaKey.MAX_KEYPOINTS: int,
        MetaKey.FILTER_THRESHOLD: float,
        MetaKey.TRANSFORM_MODEL: str,
        MetaKey.NETWORK_SIZE: str,
        MetaKey.PREPROCESS: str,
        MetaKey.MIN_SIDE: int,
        MetaKey.MASK: str,
    },
}


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}


def encode_metadata(settings: Mapping[str, object]) -> dict[str, str]:
    """Turn export settings into the string map stored in the ONNX model (prefix added)."""
    return {METADATA_PREFIX + key: str(value) for key, value in settings.items()}


def decode_metadata(custom_metadata: Mapping[str, str], expected_model: str,
                    source: str = "model") -> dict[str, object]:
    """Parse and check the ``ophreg.*`` metadata of a graph that claims to be ``expected_model``.

    ``custom_metadata`` is what ``session.get_modelmeta().custom_metadata_map`` returns.
    Raises :class:`ContractMismatchError` naming ``source``, what was expected and what was found.
    """
    found = {key[len(METADATA_PREFIX):]: value for key, value in custom_metadata.items()
             if key.startswith(METADATA_PREFIX)}
    if not found:
        raise ContractMismatchError(
            f"{source}: no '{METADATA_PREFIX}*' metadata; expected a graph exported by "
            f"'python -m export {expected_model}'")
    model = found.get(MetaKey.MODEL)
    if model != expected_model:
        raise ContractMismatchError(
            f"{source}: expected a {expected_model} graph, found model={model!r}")
    version = found.get(MetaKey.CONTRACT_VERSION)
    if version != CONTRACT_VERSION:
        raise ContractMismatchError(
            f"{source}: expected contract version {CONTRACT_VERSION}, found {version!r}; "
            f"re-export the graph with this version of export/")
    parsed: dict[str, object] = {}
    for key, kind in REQUIRED_METADATA[expected_model].items():
        if key not in found:
            raise ContractMismatchError(f"{source}: metadata key '{METADATA_PREFIX}{key}' is missing")
        try:
            parsed[key] = kind(found[key])
        except ValueError:
            raise ContractMismatchError(
                f"{source}: metadata '{METADATA_PREFIX}{key}'={found[key]!r} is not {_KIND_NAMES[kind]}"
            ) from None
    return parsed
