"""SuperPoint (DeTone et al. 2018) as one ONNX graph: network, NMS, selection and descriptors.

The graph takes a grey image and returns a fixed ``max_keypoints`` slots per image, padded as
``ophreg_rt.contract`` says. The published detector selects keypoints with data-dependent
shapes (``nonzero`` of the thresholded map, ``topk`` only when there are too many); the graph
instead ranks the masked, flattened score map with one fixed-k TopK, which gives the same set
with static shapes, so batches and images with fewer keypoints than slots work.
:func:`reference_detect` is the classic formulation, kept to prove that equivalence.

``python -m export superpoint --weights superpoint_v1.pth`` exports, checks, records the graph
in ``models/manifest.json`` and prints parity figures against this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from ophreg_rt.contract import (
    CELL,
    DESCRIPTOR_DIM,
    OPSET,
    SUPERPOINT_INPUTS,
    SUPERPOINT_OUTPUTS,
    MetaKey,
    ModelKind,
)

from .common import (
    attach_metadata,
    base_metadata,
    check_and_save,
    load_checkpoint,
    name_dimensions,
    sha256_file,
    update_manifest,
)
from .parity import Difference, ParityFigures, onnx_session
from .settings import SuperPointSettings

COMMAND = ModelKind.SUPERPOINT
HELP = ("export SuperPoint (detector + descriptor, fixed keypoint slots) and prove it "
        "against PyTorch")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("models") / "superpoint.onnx"
DEFAULT_PARITY_IMAGE = REPO_ROOT / "tests" / "fixtures" / "skimage_retina.jpg"
#: (width, height): the method's square size and a smaller non-square one, so that the parity
#: run proves the height and width axes really are dynamic and independent.
DEFAULT_PARITY_SIZES = ((1024, 1024), (640, 480))

#: Scores are softmax probabilities and descriptors unit vectors; onnxruntime and PyTorch differ
#: only in float32 summation order (observed ~1e-6), so 1e-4 is loose for a correct graph and
#: tight for a wrong one (a misplaced sample or a wrong normalisation moves values by >1e-2).
SCORE_TOLERANCE = 1e-4
DESCRIPTOR_TOLERANCE = 1e-4

# Scores of rejected pixels in the ranked map: below every probability, so they rank last.
_REJECTED = -1.0

_INPUT_NAMES = [spec.name for spec in SUPERPOINT_INPUTS]
_OUTPUT_NAMES = [spec.name for spec in SUPERPOINT_OUTPUTS]


def _validate(settings: SuperPointSettings) -> None:
    if settings.nms_radius < 0:
        raise ValueError(f"nms_radius must be >= 0, got {settings.nms_radius}")
    if settings.remove_borders < 0:
        raise ValueError(f"remove_borders must be >= 0, got {settings.remove_borders}")
    if settings.max_keypoints < 1:
        # The graph has a fixed slot count; "all keypoints" (-1 in the reference) cannot be static.
        raise ValueError(f"max_keypoints must be >= 1, got {settings.max_keypoints}")
    if not 0.0 <= settings.keypoint_threshold < 1.0:
        # Rejected pixels are ranked with a negative score and the mask is `score > threshold`,
        # which is only exact for a non-negative threshold (scores are probabilities anyway).
        raise ValueError(f"keypoint_threshold must be in [0, 1), got {settings.keypoint_threshold}")


def l2_normalize(x: torch.Tensor, dim: int, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, p=2, dim=dim)`` (same eps), written as a sum of squares.

    F.normalize exports as opset-18 ReduceL2, which onnx's version converter cannot bring down
    to the contract's opset 17; ReduceSum has had the same form since opset 13.
    """
    return x / torch.sqrt((x * x).sum(dim=dim, keepdim=True)).clamp_min(eps)


def simple_nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Non-maximum suppression of a ``[B, H, W]`` score map; suppressed pixels become 0.

    The max-pool formulation of Magic Leap's reference: keep local maxima of a
    ``(2r+1)``-square window, then twice suppress everything within ``r`` of a kept point and
    re-detect maxima among the remaining pixels, so that a point hidden only by a suppressed
    neighbour comes back. Static shapes throughout, so it exports as MaxPool/Equal/Where.
    """
    if radius == 0:
        return scores

    def window_max(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=2 * radius + 1, stride=1, padding=radius)

    scores = scores[:, None]
    zeros = torch.zeros_like(scores)
    keep = scores == window_max(scores)
    for _ in range(2):
        near_kept = window_max(keep.float()) > 0
        remaining = torch.where(near_kept, zeros, scores)
        revived = (remaining == window_max(remaining)) & ~near_kept
        keep = keep | revived
    return torch.where(keep, scores, zeros)[:, 0]


def sample_descriptors(descriptor_map: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """Bilinear descriptors at pixel ``keypoints`` ``[B, N, 2]`` (x, y) -> ``[B, N, 256]``.

    Magic Leap's mapping, kept for fidelity to the published detector:
    ``(kp - s/2 + 0.5) / (size*s - s/2 - 0.5) * 2 - 1`` with ``align_corners=True``, i.e.
    pixel 3.5 falls on the first cell and the last pixel (``8*size - 1``) on the last cell,
    linearly in between. (It stretches slightly against exact cell centres ``8j + 3.5``: by
    up to 3.5 px at the far edge.) Written per axis so that the map's symbolic height and
    width stay in the graph. Points far outside the image sample zeros (zero vectors).
    """
    batch, channels, height, width = descriptor_map.shape
    s = CELL
    gx = (keypoints[..., 0] - s / 2 + 0.5) / (width * s - s / 2 - 0.5) * 2 - 1
    gy = (keypoints[..., 1] - s / 2 + 0.5) / (height * s - s / 2 - 0.5) * 2 - 1
    grid = torch.stack([gx, gy], dim=-1)[:, None]  # [B, 1, N, 2]
    sampled = F.grid_sample(descriptor_map, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True)  # [B, C, 1, N]
    sampled = l2_normalize(sampled.reshape(batch, channels, -1), dim=1)
    return sampled.transpose(1, 2)


class SuperPoint(nn.Module):
    """SuperPoint with the detector's post-processing in the forward pass.

    Layer names are those of Magic Leap's ``superpoint_v1.pth`` so the state dict loads strictly.
    """

    def __init__(self, settings: SuperPointSettings = SuperPointSettings()) -> None:
        super().__init__()
        _validate(settings)
        self.settings = settings
        c1, c2, c3, c4, c5 = 64, 64, 128, 128, 256
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv1a = nn.Conv2d(1, c1, 3, padding=1)
        self.conv1b = nn.Conv2d(c1, c1, 3, padding=1)
        self.conv2a = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv2b = nn.Conv2d(c2, c2, 3, padding=1)
        self.conv3a = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv3b = nn.Conv2d(c3, c3, 3, padding=1)
        self.conv4a = nn.Conv2d(c3, c4, 3, padding=1)
        self.conv4b = nn.Conv2d(c4, c4, 3, padding=1)
        # Detector head: 64 cell positions + 1 "no keypoint" dustbin.
        self.convPa = nn.Conv2d(c4, c5, 3, padding=1)
        self.convPb = nn.Conv2d(c5, CELL * CELL + 1, 1)
        # Descriptor head.
        self.convDa = nn.Conv2d(c4, c5, 3, padding=1)
        self.convDb = nn.Conv2d(c5, DESCRIPTOR_DIM, 1)

    def backbone(self, image: torch.Tensor) -> torch.Tensor:
        """The shared encoder: ``[B, 1, H, W]`` -> ``[B, 128, H/8, W/8]``."""
        x = image
        for a, b, pool in ((self.conv1a, self.conv1b, True), (self.conv2a, self.conv2b, True),
                           (self.conv3a, self.conv3b, True), (self.conv4a, self.conv4b, False)):
            x = self.relu(b(self.relu(a(x))))
            if pool:
                x = self.pool(x)
        return x

    def keypoint_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Full-resolution keypoint probabilities ``[B, H, W]`` (before NMS and selection)."""
        logits = self.convPb(self.relu(self.convPa(features)))
        probabilities = F.softmax(logits, dim=1)[:, :-1]
        # Channel c = dy * 8 + dx of cell (i, j) is pixel (8i + dy, 8j + dx): depth-to-space.
        return F.pixel_shuffle(probabilities, CELL)[:, 0]

    def descriptor_map(self, features: torch.Tensor) -> torch.Tensor:
        """The L2-normalised descriptor of every cell, ``[B, 256, H/8, W/8]``."""
        return l2_normalize(self.convDb(self.relu(self.convDa(features))), dim=1)

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoint probabilities ``[B, H, W]`` and the descriptor map, as published."""
        features = self.backbone(image)
        return self.keypoint_scores(features), self.descriptor_map(features)

    def descriptors_at(self, features: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """``sample_descriptors(self.descriptor_map(features), keypoints)``, computed only at
        the cells the samples read.

        Bilinear sampling reads four cells per keypoint, so with K keypoints the descriptor head
        runs on at most 4K cells instead of every cell: at 1024x1024 and 1024 keypoints
        4096 of 16384, which takes the head from ~60 ms to ~15 ms an image on 2 cores
        (benchmarks/latency.py, roofline). The head's 3x3 convolution becomes a product of
        gathered 3x3 neighbourhoods with the same weights, the 1x1 one a plain product; the
        cell coordinates and weights are grid_sample's (align_corners=True, zero padding), so
        the result equals the dense path up to float32 rounding.
        """
        batch, channels, height, width = features.shape
        s = CELL
        # Magic Leap's pixel-to-cell mapping (see sample_descriptors), then grid_sample's own
        # unnormalisation, written the same way so that the two paths agree to the last bits.
        gx = (keypoints[..., 0] - s / 2 + 0.5) / (width * s - s / 2 - 0.5) * 2 - 1
        gy = (keypoints[..., 1] - s / 2 + 0.5) / (height * s - s / 2 - 0.5) * 2 - 1
        cx = (gx + 1) / 2 * (width - 1)
        cy = (gy + 1) / 2 * (height - 1)
        x0, y0 = torch.floor(cx), torch.floor(cy)
        fx, fy = cx - x0, cy - y0
        # The four cells each sample reads, [B, K, 4], in the order (y0,x0) (y0,x1) (y1,x0) (y1,x1).
        corner_x = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)
        corner_y = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
        weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)
        inside = ((corner_x >= 0) & (corner_x <= width - 1)
                  & (corner_y >= 0) & (corner_y <= height - 1))
        # Cells outside the map read zeros (grid_sample's padding): weight 0, any valid index.
        weights = torch.where(inside, weights, torch.zeros_like(weights))
        corner_x = corner_x.clamp(0, width - 1).long()
        corner_y = corner_y.clamp(0, height - 1).long()

        # Rows of the zero-padded map, one per (image, padded row, padded column): a cell's 3x3
        # neighbourhood is 9 rows of it, in the (dy, dx, channel) order of `head_weight` below.
        # Concatenated rather than F.pad: onnx cannot convert opset-18 Pad down to the contract's 17.
        column = torch.zeros_like(features[..., :1])
        padded = torch.cat([column, features, column], dim=3)
        row = torch.zeros_like(padded[..., :1, :])
        padded = torch.cat([row, padded, row], dim=2)
        rows_per_image = (height + 2) * (width + 2)
        table = padded.permute(0, 2, 3, 1).reshape(-1, channels)
        offsets = torch.arange(3, device=features.device)
        window = (offsets[:, None] * (width + 2) + offsets[None, :]).reshape(-1)  # [9]
        image_start = torch.arange(batch, device=features.device) * rows_per_image
        top_left = image_start[:, None, None] + corner_y * (width + 2) + corner_x  # [B, K, 4]
        gathered = table[(top_left[..., None] + window).reshape(-1)]
        patches = gathered.reshape(-1, 9 * channels)

        head_weight = self.convDa.weight.permute(2, 3, 1, 0).reshape(9 * channels, -1)
        hidden = self.relu(patches @ head_weight + self.convDa.bias)
        cells = hidden @ self.convDb.weight[:, :, 0, 0].t() + self.convDb.bias
        cells = l2_normalize(cells, dim=1).reshape(batch, -1, 4, DESCRIPTOR_DIM)
        sampled = (cells * weights[..., None]).sum(dim=2)
        return l2_normalize(sampled, dim=2)

    def forward(self, image: torch.Tensor):
        """``image`` float32 ``[B, 1, H, W]`` in [0, 1], H and W multiples of 8.

        Returns ``keypoints [B, K, 2]`` (x, y) px, ``scores [B, K]``, ``descriptors [B, K, 256]``
        and ``mask [B, K]`` with ``K = settings.max_keypoints``, best score first; padded slots
        hold (-1, -1), 0, zeros and False.
        """
        settings = self.settings
        k = settings.max_keypoints
        border = settings.remove_borders
        features = self.backbone(image)
        scores = simple_nms(self.keypoint_scores(features), settings.nms_radius)
        batch, height, width = scores.shape

        rows = torch.arange(height, device=scores.device)
        cols = torch.arange(width, device=scores.device)
        inside = (((rows >= border) & (rows < height - border))[:, None]
                  & ((cols >= border) & (cols < width - border))[None, :])
        accepted = (scores > settings.keypoint_threshold) & inside
        ranked = torch.where(accepted, scores, torch.full_like(scores, _REJECTED))
        ranked = ranked.reshape(batch, -1)
        # K rejected entries appended so TopK always has at least K candidates, whatever the
        # image size (a 16x16 image has 256 pixels); their slots are masked out below.
        ranked = torch.cat([ranked, ranked.new_full((batch, k), _REJECTED)], dim=1)
        top_scores, flat_index = torch.topk(ranked, k, dim=1, largest=True, sorted=True)
        mask = top_scores > settings.keypoint_threshold

        # (x, y) of each flat index by lookup rather than division: exact integers in float32,
        # where the exporter would turn an integer floor-division into a float one. The K
        # appended candidates look up (-1, -1), the padding value.
        grid_y, grid_x = torch.meshgrid(rows.float(), cols.float(), indexing="ij")
        coordinates = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)
        coordinates = torch.cat([coordinates, coordinates.new_full((k, 2), -1.0)], dim=0)
        keypoints = coordinates[flat_index]  # [B, K, 2]
        descriptors = self.descriptors_at(features, keypoints)

        keypoints = torch.where(mask[..., None], keypoints, torch.full_like(keypoints, -1.0))
        top_scores = torch.where(mask, top_scores, torch.zeros_like(top_scores))
        descriptors = torch.where(mask[..., None], descriptors, torch.zeros_like(descriptors))
        return keypoints, top_scores, descriptors, mask


def load_superpoint(path: str | Path,
                    settings: SuperPointSettings = SuperPointSettings()) -> SuperPoint:
    """Build :class:`SuperPoint` with the published checkpoint; every key must match."""
    model = SuperPoint(settings)
    model.load_state_dict(load_checkpoint(path), strict=True)
    return model.eval()


@torch.no_grad()
def reference_detect(model: SuperPoint, image: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """The published, dynamic-shape detector, one image at a time (for tests, not for export).

    Per image: ``nonzero`` of the thresholded NMS map, border filter, top-k only when there are
    more than ``max_keypoints``, descriptors sampled at the survivors. Returns, per image,
    ``keypoints [N, 2]`` (x, y), ``scores [N]`` and ``descriptors [N, 256]`` in the reference's
    order (row-major, or by score after a top-k), N <= max_keypoints.
    """
    settings = model.settings
    scores_maps, descriptor_maps = model.dense(image)
    scores_maps = simple_nms(scores_maps, settings.nms_radius)
    results = []
    for scores_map, descriptor_map in zip(scores_maps, descriptor_maps):
        height, width = scores_map.shape
        yx = torch.nonzero(scores_map > settings.keypoint_threshold)
        scores = scores_map[yx[:, 0], yx[:, 1]]
        b = settings.remove_borders
        keep = ((yx[:, 0] >= b) & (yx[:, 0] < height - b)
                & (yx[:, 1] >= b) & (yx[:, 1] < width - b))
        yx, scores = yx[keep], scores[keep]
        if len(scores) > settings.max_keypoints:
            scores, order = torch.topk(scores, settings.max_keypoints, dim=0)
            yx = yx[order]
        keypoints = yx.flip(1).float()

        s = CELL
        _, map_h, map_w = descriptor_map.shape
        grid = keypoints - s / 2 + 0.5
        grid = grid / torch.tensor([map_w * s - s / 2 - 0.5, map_h * s - s / 2 - 0.5])
        grid = grid * 2 - 1
        sampled = F.grid_sample(descriptor_map[None], grid.view(1, 1, -1, 2),
                                mode="bilinear", align_corners=True)
        descriptors = F.normalize(sampled.reshape(DESCRIPTOR_DIM, -1), p=2, dim=0).t()
        results.append({"keypoints": keypoints, "scores": scores, "descriptors": descriptors})
    return results


def export_metadata(settings: SuperPointSettings, weights_path: str | Path,
                    weights_sha256: str | None = None) -> dict[str, object]:
    """Every ``ophreg.*`` key the contract requires of a SuperPoint graph."""
    weights_path = Path(weights_path)
    metadata = base_metadata(ModelKind.SUPERPOINT, weights_path.name,
                             weights_sha256 or sha256_file(weights_path))
    metadata.update({
        MetaKey.NMS_RADIUS: settings.nms_radius,
        MetaKey.KEYPOINT_THRESHOLD: settings.keypoint_threshold,
        MetaKey.REMOVE_BORDERS: settings.remove_borders,
        MetaKey.MAX_KEYPOINTS: settings.max_keypoints,
    })
    return metadata


def to_onnx(model: SuperPoint) -> onnx.ModelProto:
    """Trace ``model`` with the dynamo exporter: dynamic batch, height = 8*n, width = 8*m."""
    from torch.export import Dim

    # Batch 2 and distinct multiples of 8: an example dimension of 1, or two equal ones,
    # would let the tracer specialise on it.
    example = torch.rand(2, 1, CELL * 9, CELL * 11)
    dynamic_shapes = {"image": {0: Dim("batch", min=1),
                                2: CELL * Dim("cells_h", min=1),
                                3: CELL * Dim("cells_w", min=1)}}
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET,
                                input_names=_INPUT_NAMES, output_names=_OUTPUT_NAMES,
                                dynamic_shapes=dynamic_shapes, optimize=True,
                                verify=False, report=False, verbose=False)
    proto = program.model_proto
    # The dynamo exporter builds opset 18 and converts down; when a conversion fails it only
    # logs and keeps 18, so check.
    opsets = {(o.domain, o.version) for o in proto.opset_import}
    if opsets != {("", OPSET)}:
        raise RuntimeError(
            f"exported graph has opsets {sorted(opsets)}, expected only ('', {OPSET})")
    name_dimensions(proto, SUPERPOINT_INPUTS + SUPERPOINT_OUTPUTS)
    return proto


def export(weights: str | Path, out: str | Path,
           settings: SuperPointSettings = SuperPointSettings()) -> tuple[Path, dict[str, object]]:
    """Export the graph for ``weights`` to ``out`` (one self-contained file), checked.

    Returns the path written and the metadata stored in it. Does not touch the manifest.
    """
    model = load_superpoint(weights, settings)
    proto = to_onnx(model)
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer):
        raise RuntimeError("exported graph refers to external weight data; expected one file")
    metadata = export_metadata(settings, weights)
    attach_metadata(proto, metadata)
    return check_and_save(proto, out), metadata


# ----------------------------------------------------------------------------------------------
# Parity


def load_grey(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Grey image resized to ``size`` (width, height) with area interpolation, float32 in [0, 1]."""
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise FileNotFoundError(f"cannot read image {path}")
    grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return grey.astype(np.float32) / 255.0


def canonical_order(keypoints: np.ndarray) -> np.ndarray:
    """Indices sorting (x, y) keypoints by y then x: an order that ignores ties in score."""
    return np.lexsort((keypoints[:, 0], keypoints[:, 1]))


def padding_exact(keypoints, scores, descriptors, mask) -> bool:
    """True when the slots of one image follow the contract's padding convention."""
    n = int(mask.sum())
    return bool(mask[:n].all() and not mask[n:].any()
                and (keypoints[n:] == -1).all() and (scores[n:] == 0).all()
                and (descriptors[n:] == 0).all())


def compare_sets(a: Sequence[np.ndarray], b: Sequence[np.ndarray], size: tuple[int, int]
                 ) -> ParityFigures:
    """Compare two (keypoints, scores, descriptors, mask) results of one image: ``a`` the
    graph's, ``b`` the reference's."""
    valid = []
    for keypoints, scores, descriptors, mask in (a, b):
        valid.append((keypoints[mask], scores[mask], descriptors[mask]))
    (ka, sa, da), (kb, sb, db) = valid
    oa, ob = canonical_order(ka), canonical_order(kb)
    same = ka.shape == kb.shape and bool(np.array_equal(ka[oa], kb[ob]))
    if same and len(ka):
        score_diff = float(np.abs(sa[oa] - sb[ob]).max())
        descriptor_diff = float(np.abs(da[oa] - db[ob]).max())
    else:
        score_diff = descriptor_diff = 0.0 if same else float("inf")
    return ParityFigures(
        f"{size[0]}x{size[1]}",
        {"score": Difference(score_diff, SCORE_TOLERANCE),
         "descriptor": Difference(descriptor_diff, DESCRIPTOR_TOLERANCE)},
        {"same keypoints": same, "padding exact": padding_exact(*a) and padding_exact(*b)},
        {"keypoints (onnx)": len(ka), "keypoints (torch)": len(kb)})


def parity(session, model: SuperPoint, images: np.ndarray) -> list[ParityFigures]:
    """Run the ONNX graph and the torch module on ``images`` ``[B, 1, H, W]``; figures per image."""
    onnx_out = session.run(_OUTPUT_NAMES, {_INPUT_NAMES[0]: images})
    with torch.no_grad():
        torch_out = [t.numpy() for t in model(torch.from_numpy(images))]
    size = (images.shape[3], images.shape[2])
    return [compare_sets([o[i] for o in onnx_out], [t[i] for t in torch_out], size)
            for i in range(images.shape[0])]


# ----------------------------------------------------------------------------------------------
# CLI


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width <= 0 or height <= 0 or width % CELL or height % CELL:
        raise argparse.ArgumentTypeError(
            f"{text}: width and height must be positive multiples of {CELL}")
    return width, height


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = SuperPointSettings()
    parser.add_argument("--weights", type=Path, required=True,
                        help="Magic Leap's superpoint_v1.pth (PyTorch state dict)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"graph to write (default {DEFAULT_OUT}); "
                        "manifest.json beside it is updated")
    parser.add_argument("--max-keypoints", type=int, default=defaults.max_keypoints,
                        help=f"keypoint slots per image (default {defaults.max_keypoints})")
    parser.add_argument("--parity-image", type=Path, default=DEFAULT_PARITY_IMAGE,
                        help="image for the onnxruntime-vs-PyTorch check "
                        "(default: the CC0 fixture)")
    parser.add_argument("--parity-sizes", type=_size, nargs="+", default=list(DEFAULT_PARITY_SIZES),
                        metavar="WxH", help="sizes the parity image is resized to (default "
                        + " ".join(f"{w}x{h}" for w, h in DEFAULT_PARITY_SIZES) + ")")


def run(args: argparse.Namespace) -> int:
    import sys

    for label, path in (("weights", args.weights), ("parity image", args.parity_image)):
        if not Path(path).is_file():
            print(f"error: {label} file not found: {path}", file=sys.stderr)
            return 2
    settings = dataclasses.replace(SuperPointSettings(), max_keypoints=args.max_keypoints)
    try:
        _validate(settings)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    out, metadata = export(args.weights, args.out, settings)
    weights_sha256 = str(metadata[MetaKey.WEIGHTS_SHA256])
    manifest = update_manifest(out, ModelKind.SUPERPOINT, Path(args.weights).name, weights_sha256,
                               metadata)
    print(f"wrote {out} ({out.stat().st_size:,} bytes, sha256 {sha256_file(out)}) "
          f"in {time.perf_counter() - started:.1f} s")
    print(f"updated {manifest}")
    print("metadata: " + ", ".join(f"{k}={v}" for k, v in metadata.items()))

    model = load_superpoint(args.weights, settings)
    session = onnx_session(out)
    print(f"parity, onnxruntime {session.get_providers()[0]} vs torch, {args.parity_image.name} "
          f"(tolerances: scores {SCORE_TOLERANCE:g}, descriptors {DESCRIPTOR_TOLERANCE:g}, "
          f"identical keypoint sets)")
    failed = 0
    for size in args.parity_sizes:
        image = load_grey(args.parity_image, size)[None, None]
        for figures in parity(session, model, image):
            print("  " + figures.line())
            failed += not figures.ok
    if failed:
        print(f"parity FAILED on {failed} image(s)")
        return 1
    print("parity ok")
    return 0
