"""SuperPoint + LightGlue as ONE graph, for deployments that want a single file (the C++, C#
or Java onnxruntime bindings, with no Python around the two graphs).

Inputs ``image0`` (fixed) and ``image1`` (moving), each ``[1, 1, H, W]`` float32 grey in
[0, 1] (each its own height and width, multiples of 8; the runtime's preprocessing gives them).
Outputs, in ``max_keypoints`` fixed slots sorted by matching score (see
``ophreg_rt.contract.PIPELINE_OUTPUTS``): the matched keypoints of both images in pixels of the
network input, the score, a mask, the SuperPoint slot of each side, and the keypoint counts.
The graph is the two modules of ``export.superpoint`` and ``export.lightglue`` composed, with
the same settings; :func:`two_graph_reference` computes the same thing from the two separate
graphs, and the tests prove the two equal.

``python -m export pipeline --superpoint-weights superpoint_v1.pth --lightglue-weights
superpoint_lightglue.pth [--out superpoint_lightglue_pipeline.onnx]``. Not shipped in
``models/`` (about 52 MB, which is the two shipped graphs again); the command builds it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ophreg_rt.contract import (
    CELL,
    CONTRACT_VERSION,
    LIGHTGLUE_OUTPUTS,
    OPSET,
    PIPELINE_INPUTS,
    PIPELINE_OUTPUTS,
    LightGlueIO,
    MetaKey,
    ModelKind,
    PipelineIO,
)

from .common import (
    add_checkpoint_options,
    attach_metadata,
    check_and_save,
    sha256_file,
)
from .lightglue import (
    PROBABILITY_TOLERANCE,
    LightGlue,
    load_lightglue,
    superpoint_feeds,
)
from .onnx_io import export_with_dynamo, strip_trace_metadata
from .parity import Difference, ParityFigures, onnx_session
from .settings import LightGlueSettings, SuperPointSettings
from .superpoint import SuperPoint, load_superpoint

COMMAND = ModelKind.PIPELINE
HELP = ("export SuperPoint + LightGlue as one graph (two images in, matched keypoints out) "
        "and prove it equals the two-graph path")

DEFAULT_OUT = Path("superpoint_lightglue_pipeline.onnx")

#: Pipeline vs two graphs: the same operators on the same inputs, but optimised by onnxruntime
#: as different graphs, so float32 descriptors differ in the last bits and 18 attention blocks
#: amplify that (measured 7e-5 on matching scores at 1024x1024, 655 / 662 keypoints).
#: Keypoints, keypoint counts and matches must be identical; scores within the tolerance of
#: the LightGlue graph against PyTorch.
SCORE_TOLERANCE = PROBABILITY_TOLERANCE


class Pipeline(nn.Module):
    """SuperPoint on each image, then LightGlue, then the matches gathered into sorted slots."""

    def __init__(self, superpoint: SuperPoint, matcher: LightGlue) -> None:
        super().__init__()
        self.superpoint = superpoint
        self.matcher = matcher

    def forward(self, image0: torch.Tensor, image1: torch.Tensor):
        keypoints0, _, descriptors0, mask0 = self.superpoint(image0)
        keypoints1, _, descriptors1, mask1 = self.superpoint(image1)
        size0 = torch.stack([_side(image0, 3), _side(image0, 2)])[None]
        size1 = torch.stack([_side(image1, 3), _side(image1, 2)])[None]
        matches0, _, scores0, _, _ = self.matcher.match(
            keypoints0, descriptors0, size0, keypoints1, descriptors1, size1, mask0, mask1)
        matched = matches0 >= 0
        # Unmatched slots rank below every match (scores are > the filter threshold >= 0).
        ranked = torch.where(matched, scores0, torch.full_like(scores0, -1.0))
        top, index0 = torch.topk(ranked, ranked.shape[1], dim=1, largest=True, sorted=True)
        valid = top >= 0
        index1 = matches0.gather(1, index0)
        points0 = keypoints0.gather(1, index0[..., None].expand(-1, -1, 2))
        points1 = keypoints1.gather(1, index1.clamp(min=0)[..., None].expand(-1, -1, 2))
        minus_one = torch.full((), -1.0)
        points0 = torch.where(valid[..., None], points0, minus_one)
        points1 = torch.where(valid[..., None], points1, minus_one)
        scores = torch.where(valid, top, torch.zeros(()))
        index0 = torch.where(valid, index0, torch.full((), -1, dtype=index0.dtype))
        index1 = torch.where(valid, index1, torch.full((), -1, dtype=index1.dtype))
        counts = torch.stack([mask0.sum(dim=1), mask1.sum(dim=1)], dim=1)
        return points0, points1, scores, valid, index0, index1, counts


def _side(image: torch.Tensor, axis: int) -> torch.Tensor:
    """Image height or width as a float32 scalar tensor that stays symbolic in the graph."""
    return torch.ones((), dtype=torch.float32) * image.shape[axis]


def to_onnx(model: Pipeline) -> onnx.ModelProto:
    from torch.export import Dim

    dynamic = {}
    for i, spec in enumerate(PIPELINE_INPUTS):
        dynamic[spec.name] = {2: CELL * Dim(f"cells_h{i}", min=1),
                              3: CELL * Dim(f"cells_w{i}", min=1)}
    examples = (torch.rand(1, 1, CELL * 9, CELL * 11), torch.rand(1, 1, CELL * 10, CELL * 7))
    proto = export_with_dynamo(model, examples, PIPELINE_INPUTS, PIPELINE_OUTPUTS, dynamic)
    strip_trace_metadata(proto)
    return proto


def export_metadata(superpoint_settings: SuperPointSettings,
                    lightglue_settings: LightGlueSettings, superpoint_weights: Path,
                    lightglue_weights: Path) -> dict[str, object]:
    """The pipeline's ``ophreg.*`` keys; both checkpoints, joined by '+' in file and hash."""
    return {
        MetaKey.CONTRACT_VERSION: CONTRACT_VERSION,
        MetaKey.MODEL: ModelKind.PIPELINE,
        MetaKey.WEIGHTS_FILE: f"{superpoint_weights.name}+{lightglue_weights.name}",
        MetaKey.WEIGHTS_SHA256: f"{sha256_file(superpoint_weights)}+"
                                f"{sha256_file(lightglue_weights)}",
        MetaKey.OPSET: OPSET,
        MetaKey.MATCHER: ModelKind.LIGHTGLUE,
        MetaKey.NMS_RADIUS: superpoint_settings.nms_radius,
        MetaKey.KEYPOINT_THRESHOLD: superpoint_settings.keypoint_threshold,
        MetaKey.REMOVE_BORDERS: superpoint_settings.remove_borders,
        MetaKey.MAX_KEYPOINTS: superpoint_settings.max_keypoints,
        MetaKey.FILTER_THRESHOLD: lightglue_settings.filter_threshold,
        MetaKey.NUM_LAYERS: lightglue_settings.num_layers,
    }


def export(superpoint_weights: Path, lightglue_weights: Path, out: Path,
           superpoint_settings: SuperPointSettings = SuperPointSettings(),
           lightglue_settings: LightGlueSettings = LightGlueSettings()) -> Path:
    model = Pipeline(load_superpoint(superpoint_weights, superpoint_settings),
                     load_lightglue(lightglue_weights, lightglue_settings))
    proto = to_onnx(model)
    attach_metadata(proto, export_metadata(superpoint_settings, lightglue_settings,
                                           Path(superpoint_weights), Path(lightglue_weights)))
    return check_and_save(proto, out)


# --------------------------------------------------------------------------------------------
# The two-graph path and the proof


def two_graph_reference(superpoint_session, lightglue_session, image0: np.ndarray,
                        image1: np.ndarray) -> dict[str, np.ndarray]:
    """What the pipeline must return, computed with the separate SuperPoint and LightGlue
    graphs (slots padded to the SuperPoint graph's ``max_keypoints``)."""
    names = [o.name for o in superpoint_session.get_outputs()]
    per_image = [superpoint_session.run(names, {"image": image}) for image in (image0, image1)]
    sizes = [(image.shape[3], image.shape[2]) for image in (image0, image1)]
    feeds = superpoint_feeds(*per_image, sizes[0])
    feeds[LightGlueIO.IMAGE_SIZE[1]] = np.array([sizes[1]], dtype=np.float32)
    out_names = [spec.name for spec in LIGHTGLUE_OUTPUTS]
    out = dict(zip(out_names, lightglue_session.run(out_names, feeds)))
    matches0 = out[LightGlueIO.MATCHES[0]][0]
    scores0 = out[LightGlueIO.MATCHING_SCORES[0]][0]
    index0 = np.flatnonzero(matches0 >= 0)
    index0 = index0[np.argsort(-scores0[index0], kind="stable")]
    index1 = matches0[index0]
    k = len(matches0)
    result = {
        PipelineIO.MATCHED_KEYPOINTS[0]: np.full((1, k, 2), -1.0, np.float32),
        PipelineIO.MATCHED_KEYPOINTS[1]: np.full((1, k, 2), -1.0, np.float32),
        PipelineIO.MATCH_SCORES: np.zeros((1, k), np.float32),
        PipelineIO.MATCH_MASK: np.zeros((1, k), bool),
        PipelineIO.MATCH_INDICES[0]: np.full((1, k), -1, np.int64),
        PipelineIO.MATCH_INDICES[1]: np.full((1, k), -1, np.int64),
        PipelineIO.NUM_KEYPOINTS: np.array([[int(p[3].sum()) for p in per_image]], np.int64),
    }
    m = len(index0)
    result[PipelineIO.MATCHED_KEYPOINTS[0]][0, :m] = per_image[0][0][0, index0]
    result[PipelineIO.MATCHED_KEYPOINTS[1]][0, :m] = per_image[1][0][0, index1]
    result[PipelineIO.MATCH_SCORES][0, :m] = scores0[index0]
    result[PipelineIO.MATCH_MASK][0, :m] = True
    result[PipelineIO.MATCH_INDICES[0]][0, :m] = index0
    result[PipelineIO.MATCH_INDICES[1]][0, :m] = index1
    return result


def run_pipeline(session, image0: np.ndarray, image1: np.ndarray) -> dict[str, np.ndarray]:
    names = [spec.name for spec in PIPELINE_OUTPUTS]
    return dict(zip(names, session.run(names, {PipelineIO.IMAGES[0]: image0,
                                               PipelineIO.IMAGES[1]: image1})))


def agreement(pipeline: dict[str, np.ndarray], reference: dict[str, np.ndarray],
              label: str = "") -> ParityFigures:
    """Compare by pair (slot0, slot1), so that ties in score may be ordered either way."""
    def by_pair(out):
        valid = out[PipelineIO.MATCH_MASK][0]
        i0 = out[PipelineIO.MATCH_INDICES[0]][0][valid]
        i1 = out[PipelineIO.MATCH_INDICES[1]][0][valid]
        order = np.lexsort((i1, i0))
        return (np.stack([i0, i1], 1)[order],
                out[PipelineIO.MATCHED_KEYPOINTS[0]][0][valid][order],
                out[PipelineIO.MATCHED_KEYPOINTS[1]][0][valid][order],
                out[PipelineIO.MATCH_SCORES][0][valid][order])

    (pa, pk0, pk1, ps), (ra, rk0, rk1, rs) = by_pair(pipeline), by_pair(reference)
    same = pa.shape == ra.shape and bool(np.array_equal(pa, ra))
    keypoints = same and bool(np.array_equal(pk0, rk0) and np.array_equal(pk1, rk1))
    scores = float(np.abs(ps - rs).max(initial=0.0)) if same else float("inf")
    counts = bool(np.array_equal(pipeline[PipelineIO.NUM_KEYPOINTS],
                                 reference[PipelineIO.NUM_KEYPOINTS]))
    return ParityFigures(label, {"score": Difference(scores, SCORE_TOLERANCE)},
                         {"same matches": same, "identical keypoints": keypoints,
                          "same keypoint counts": counts},
                         {"matches": len(pa)})


# --------------------------------------------------------------------------------------------
# CLI

_REPO_ROOT = Path(__file__).resolve().parents[1]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_options(parser)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"graph to write (default: {DEFAULT_OUT} in the current folder)")
    parser.add_argument("--superpoint-graph", type=Path,
                        default=_REPO_ROOT / "models" / "superpoint.onnx",
                        help="two-graph path for the proof (default: models/superpoint.onnx)")
    parser.add_argument("--lightglue-graph", type=Path,
                        default=_REPO_ROOT / "models" / "lightglue.onnx",
                        help="two-graph path for the proof (default: models/lightglue.onnx)")
    parser.add_argument("--parity-pair", type=Path, nargs=2, metavar=("FIXED", "MOVING"),
                        help="images for the proof (default: the CC0 fixture and its copy "
                             "rotated by 10 degrees)")


def run(args: argparse.Namespace) -> int:
    from .lightglue import _parity_images

    for path in (args.superpoint_weights, args.lightglue_weights, args.superpoint_graph,
                 args.lightglue_graph, *(args.parity_pair or [])):
        if not Path(path).is_file():
            print(f"error: file not found: {path}", file=sys.stderr)
            return 2
    path = export(args.superpoint_weights, args.lightglue_weights, args.out)
    print(f"wrote {path} ({path.stat().st_size:,} bytes, sha256 {sha256_file(path)})")
    pipeline = onnx_session(path)
    superpoint, lightglue = onnx_session(args.superpoint_graph), onnx_session(args.lightglue_graph)
    ok = True
    for size in ((1024, 1024), (640, 480)):
        images = _parity_images(args, size)
        image0, image1 = images[:1], images[1:]
        figures = agreement(run_pipeline(pipeline, image0, image1),
                            two_graph_reference(superpoint, lightglue, image0, image1),
                            f"{size[0]}x{size[1]}")
        print("  " + figures.line())
        ok &= figures.ok
    return 0 if ok else 1
