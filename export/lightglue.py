"""LightGlue (Lindenberger, Sarlin and Pollefeys 2023, "LightGlue: Local Feature Matching at
Light Speed", ICCV), written from the paper, loading the published SuperPoint checkpoint,
exported to ONNX and proven against PyTorch.

The architecture (paper, section 3): keypoints normalised by the image size; a learned
Fourier-feature *rotary* encoding of their positions applied to queries and keys of the
self-attention only (relative positional encoding); ``num_layers`` layers of one self-attention
block per image and one bidirectional cross-attention block (one similarity matrix softmaxed
both ways); then the assignment head: similarity of linearly projected descriptors
(``/ d**0.25`` on each side), a double softmax in log space, plus log-sigmoid matchability of
each point; matches are mutual arg-maxes of that score whose probability exceeds the filter
threshold (0.1).

Layout facts the v0.1 checkpoint (``superpoint_lightglue.pth``, 260 tensors) fixes, checked
by :func:`checkpoint_report` and by loading with ``strict=True``:

* keys ``posenc.Wr.weight`` [32, 2]: 32 frequencies for 2-d positions; each frequency's
  (cos, sin) rotates one pair of adjacent channels ``(2i, 2i+1)`` of a 64-d head;
* ``self_attn.N.Wqkv`` [768, 256]: channel ``c = (h * 64 + d) * 3 + j`` is head ``h``,
  dimension ``d`` of query (j=0), key (1) or value (2); ``out_proj`` [256, 256] reads
  head-major channels ``h * 64 + d``;
* ``cross_attn.N.to_qk`` (one projection for both queries and keys, so the similarity is
  symmetric and serves both directions), ``to_v``, ``to_out``, head-major;
* each block's update is ``x + ffn([x || message])`` with ``ffn`` = Linear(512, 512),
  LayerNorm(512), GELU, Linear(512, 256) (keys ``ffn.0``, ``ffn.1``, ``ffn.3``);
* ``log_assignment.N.{final_proj, matchability}`` per layer and ``token_confidence.N.token.0``
  for layers 0-7; SuperPoint's descriptors are already 256-d, so there is no input projection.

Tensors of the checkpoint the graph does not use (:data:`UNUSED_PREFIXES`): the assignment
heads of layers 0-7 and the eight token-confidence classifiers exist for the adaptive early
exit (depth) and point pruning (width) and for deep supervision in training; the graph always
runs all nine layers, so only ``log_assignment.8`` is read. ``log_assignment.N.r`` is a
scalar in each head that the paper's assignment does not contain; it is 1.0 in all nine heads
of this checkpoint, so it is loaded (strictly) and never read.

Why no early exit in the graph: the exit decision is data-dependent control flow (stop after
layer i when enough points are confident) and pruning changes the number of points per layer;
both need ONNX ``If``/``Loop`` with dynamic shapes, and the per-exit assignment heads would
have to be proven separately. Running all nine layers gives the paper's full-depth accuracy;
the early exit only trades accuracy for speed on easy pairs.

Keypoint padding follows ``ophreg_rt.contract`` as for SuperGlue: padded slots are excluded
from attention as keys, from both softmaxes of the assignment, and are never matched; with
all-True masks the result is exactly that of the unmasked computation.

``python -m export lightglue --weights superpoint_lightglue.pth`` exports to
``models/lightglue.onnx``, records it in the manifest and prints parity figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from ophreg_rt.contract import (
    LIGHTGLUE_INPUTS,
    LIGHTGLUE_OUTPUTS,
    OPSET,
    LightGlueIO,
    MetaKey,
    ModelKind,
)

from .attention import (
    LOG_ZERO,
    KeyMask,
    attend,
    attention_scale,
    key_bias,
    key_mask,
    mutual_matches,
)
from .common import (
    attach_metadata,
    base_metadata,
    check_and_save,
    load_checkpoint,
    sha256_file,
    update_manifest,
)
from .onnx_io import export_matcher, strip_trace_metadata
from .parity import Difference, ParityFigures, onnx_session, run_graph, run_module
from .settings import LightGlueSettings

COMMAND = ModelKind.LIGHTGLUE
HELP = "export LightGlue (SuperPoint checkpoint, v0.1 layout) to ONNX and prove it against PyTorch"

DEFAULT_OUT = Path("models") / "lightglue.onnx"

#: Checkpoint tensors the graph never reads (see the module docstring for why).
UNUSED_PREFIXES = tuple(
    [f"log_assignment.{i}." for i in range(8)] + [f"token_confidence.{i}." for i in range(8)]
    + ["log_assignment.8.r"])

#: onnxruntime vs PyTorch. Both run the same float32 weights and differ in summation order
#: through 18 residual blocks, which this network amplifies: against a float64 run of the same
#: module on SuperPoint keypoints of a real pair (512x512, 215 / 226 keypoints padded to
#: 300 / 280), PyTorch float32 is 4e-5 off in probability and onnxruntime 1e-4, so the two are
#: up to 1.4e-4 apart (measured; 4e-5 on 1024x1024 and 640x480 pairs). Log-assignment entries
#: with probability >= 1e-4 differ by <= 6e-4 (PyTorch float32 alone: 2e-4 from float64). In
#: the far tail (probability ~e^-44) the log values differ by up to 0.1 (onnxruntime 0.08 from
#: float64), meaningless for any match, so the tail is compared as probabilities only. A wrong
#: head split, rotation or normalisation moves probabilities by O(0.1) and matches with them.
PROBABILITY_TOLERANCE = 5e-4
LOG_ASSIGNMENT_TOLERANCE = 2e-3  # on entries with reference probability >= RELEVANT_PROBABILITY
RELEVANT_PROBABILITY = 1e-4


def _ffn(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.LayerNorm(2 * dim, elementwise_affine=True),
                         nn.GELU(), nn.Linear(2 * dim, dim))


class FourierRotaryEncoding(nn.Module):
    """Learned Fourier features of 2-d positions, as (cos, sin) per pair of head channels.

    ``Wr`` maps a normalised position to one angle per frequency; rotating query and key pairs
    by these angles makes their dot product depend on the positions' difference (through the
    learned frequencies), not on the absolute positions.
    """

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.Wr = nn.Linear(2, head_dim // 2, bias=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, N, 2] -> cos, sin, each [B, 1, N, head_dim] (pairs repeated)."""
        angles = self.Wr(positions)
        # Each frequency's value goes to both channels of its pair: (a0, a0, a1, a1, ...).
        angles = torch.stack([angles, angles], dim=-1).flatten(-2)[:, None]
        return angles.cos(), angles.sin()


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each channel pair (2i, 2i+1) of ``x`` [..., d] by its angle: (a, b) -> (a cos - b
    sin, b cos + a sin)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    first, second = pairs[..., 0], pairs[..., 1]
    swapped = torch.stack([-second, first], dim=-1).flatten(-2)
    return x * cos + swapped * sin


class SelfBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = attention_scale(self.head_dim)
        self.Wqkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.ffn = _ffn(dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                keys: KeyMask | None) -> torch.Tensor:
        """x [B, N, D]; cos, sin [B, 1, N, head_dim]; keys: x's padded slots, or None."""
        batch, n, _ = x.shape
        qkv = self.Wqkv(x).reshape(batch, n, self.num_heads, self.head_dim, 3).transpose(1, 2)
        query, key, value = qkv[..., 0], qkv[..., 1], qkv[..., 2]  # [B, H, N, head_dim]
        query = rotate_pairs(query, cos, sin) * self.scale
        key = rotate_pairs(key, cos, sin)
        context = attend(query @ key.transpose(-1, -2), value, keys)
        message = self.out_proj(context.transpose(1, 2).reshape(batch, n, -1))
        return x + self.ffn(torch.cat([x, message], dim=-1))


class CrossBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = attention_scale(self.head_dim)
        self.to_qk = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.ffn = _ffn(dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, keys0: KeyMask | None,
                keys1: KeyMask | None) -> tuple[torch.Tensor, torch.Tensor]:
        qk0, qk1 = self._heads(self.to_qk(x0)), self._heads(self.to_qk(x1))
        v0, v1 = self._heads(self.to_v(x0)), self._heads(self.to_v(x1))
        similarity = (qk0 * self.scale) @ qk1.transpose(-1, -2)  # [B, H, N0, N1]
        message0 = attend(similarity, v1, keys1)
        message1 = attend(similarity.transpose(-1, -2), v0, keys0)
        x0 = x0 + self.ffn(torch.cat([x0, self.to_out(self._merge(message0))], dim=-1))
        x1 = x1 + self.ffn(torch.cat([x1, self.to_out(self._merge(message1))], dim=-1))
        return x0, x1


class MatchAssignment(nn.Module):
    """The assignment head: log double softmax of projected similarities plus matchability."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.final_proj = nn.Linear(dim, dim)
        self.matchability = nn.Linear(dim, 1)
        # In the v0.1 checkpoint, not in the paper's head; 1.0 everywhere, never read.
        self.r = nn.Parameter(torch.ones(1))

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, mask0: torch.Tensor | None,
                mask1: torch.Tensor | None) -> torch.Tensor:
        """x0 [B, M, D], x1 [B, N, D] -> log-assignment [B, M + 1, N + 1]."""
        scale = x0.shape[-1] ** 0.25
        p0, p1 = self.final_proj(x0) / scale, self.final_proj(x1) / scale
        similarity = p0 @ p1.transpose(-1, -2)  # [B, M, N]
        z0, z1 = self.matchability(x0), self.matchability(x1)  # [B, M, 1], [B, N, 1]
        if mask0 is None or mask1 is None:
            log_rows = F.log_softmax(similarity, dim=2)
            log_cols = F.log_softmax(similarity, dim=1)
        else:
            # Added biases for the reason and within the bound of attention.attend: padded
            # entries add exact zeros to each log-sum-exp. They are not LOG_ZERO themselves;
            # the Where below writes that into every entry with a padded side.
            keep = mask0[:, :, None] & mask1[:, None, :]
            log_rows = F.log_softmax(similarity + key_bias(mask1)[:, None, :], dim=2)
            log_cols = F.log_softmax(similarity + key_bias(mask0)[:, :, None], dim=1)
        inner = log_rows + log_cols + log_sigmoid(z0) + log_sigmoid(z1).transpose(1, 2)
        unmatched0 = log_sigmoid(-z0)  # [B, M, 1]
        unmatched1 = log_sigmoid(-z1).transpose(1, 2)  # [B, 1, N]
        if mask0 is not None and mask1 is not None:
            inner = torch.where(keep, inner, LOG_ZERO)
            unmatched0 = torch.where(mask0[:, :, None], unmatched0, LOG_ZERO)
            unmatched1 = torch.where(mask1[:, None, :], unmatched1, LOG_ZERO)
        corner = torch.zeros_like(unmatched0[:, :1, :])
        return torch.cat([torch.cat([inner, unmatched0], dim=2),
                          torch.cat([unmatched1, corner], dim=2)], dim=1)


class TokenConfidence(nn.Module):
    """Per-point confidence used only by the adaptive early exit (kept for strict loading)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Sequential(nn.Linear(dim, 1), nn.Sigmoid())


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(x)) without underflow: F.logsigmoid exports as Log(Sigmoid(x)), which is
    -inf once sigmoid(x) underflows (x below about -88 in float32)."""
    return torch.clamp(x, max=0.0) - torch.log1p(torch.exp(-x.abs()))


def normalize_keypoints(keypoints: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """keypoints [B, N, 2] (x, y) px, image_size [B, 2] (width, height) -> [-1, 1] on the longer
    side, centred on the image centre."""
    centre = image_size / 2
    half_side = image_size.amax(dim=-1, keepdim=True) / 2
    return (keypoints - centre[:, None, :]) / half_side[:, None, :]


class LightGlue(nn.Module):
    """LightGlue with the v0.1 checkpoint's key names; ``forward`` follows the contract.

    ``forward`` takes and returns ``ophreg_rt.contract.LIGHTGLUE_INPUTS`` / ``..._OUTPUTS``.
    """

    def __init__(self, settings: LightGlueSettings = LightGlueSettings()) -> None:
        super().__init__()
        self.settings = settings
        dim, heads, layers = settings.descriptor_dim, settings.num_heads, settings.num_layers
        if dim % heads:
            raise ValueError(f"descriptor_dim {dim} is not a multiple of num_heads {heads}")
        self.posenc = FourierRotaryEncoding(dim // heads)
        self.self_attn = nn.ModuleList([SelfBlock(dim, heads) for _ in range(layers)])
        self.cross_attn = nn.ModuleList([CrossBlock(dim, heads) for _ in range(layers)])
        self.log_assignment = nn.ModuleList([MatchAssignment(dim) for _ in range(layers)])
        self.token_confidence = nn.ModuleList([TokenConfidence(dim) for _ in range(layers - 1)])

    def match(self, keypoints0: torch.Tensor, descriptors0: torch.Tensor,
              image_size0: torch.Tensor, keypoints1: torch.Tensor, descriptors1: torch.Tensor,
              image_size1: torch.Tensor, mask0: torch.Tensor | None = None,
              mask1: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The contract's outputs; ``mask0``/``mask1`` None: every slot is a keypoint."""
        if (mask0 is None) != (mask1 is None):
            raise ValueError("give both masks or neither")
        cos0, sin0 = self.posenc(normalize_keypoints(keypoints0, image_size0))
        cos1, sin1 = self.posenc(normalize_keypoints(keypoints1, image_size1))
        keys0, keys1 = key_mask(mask0), key_mask(mask1)
        x0, x1 = descriptors0, descriptors1
        for self_block, cross_block in zip(self.self_attn, self.cross_attn):
            x0 = self_block(x0, cos0, sin0, keys0)
            x1 = self_block(x1, cos1, sin1, keys1)
            x0, x1 = cross_block(x0, x1, keys0, keys1)
        log_assignment = self.log_assignment[-1](x0, x1, mask0, mask1)
        matches0, matches1, mscores0, mscores1 = mutual_matches(
            log_assignment, self.settings.filter_threshold, mask0, mask1)
        return matches0, matches1, mscores0, mscores1, log_assignment

    def forward(self, keypoints0, descriptors0, mask0, image_size0,
                keypoints1, descriptors1, mask1, image_size1):
        return self.match(keypoints0, descriptors0, image_size0, keypoints1, descriptors1,
                          image_size1, mask0, mask1)


@dataclasses.dataclass(frozen=True)
class CheckpointReport:
    """How a checkpoint's tensors meet the module's: what the graph reads and what it ignores."""

    missing: tuple[str, ...]  # in the module, not in the checkpoint
    unexpected: tuple[str, ...]  # in the checkpoint, not in the module
    wrong_shape: tuple[str, ...]  # "key: checkpoint shape vs module shape"
    used: tuple[str, ...]  # read by the exported graph
    unused: tuple[str, ...]  # loaded but never read (UNUSED_PREFIXES)

    @property
    def loads_strictly(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)


def checkpoint_report(state: dict[str, torch.Tensor],
                      settings: LightGlueSettings = LightGlueSettings()) -> CheckpointReport:
    expected = {k: tuple(v.shape) for k, v in LightGlue(settings).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    wrong = tuple(f"{k}: {found[k]} vs {expected[k]}" for k in sorted(expected.keys() & found.keys())
                  if found[k] != expected[k])
    unused = tuple(k for k in sorted(found) if k.startswith(UNUSED_PREFIXES))
    used = tuple(k for k in sorted(found) if not k.startswith(UNUSED_PREFIXES))
    return CheckpointReport(tuple(sorted(expected.keys() - found.keys())),
                            tuple(sorted(found.keys() - expected.keys())), wrong, used, unused)


def load_lightglue(path: str | Path, settings: LightGlueSettings = LightGlueSettings()
                   ) -> LightGlue:
    """The model holding the checkpoint at ``path`` (v0.1 key layout), eval mode, strict."""
    model = LightGlue(settings)
    model.load_state_dict(load_checkpoint(path), strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Export


def _sample_inputs(batch: int, n0: int, n1: int) -> tuple[torch.Tensor, ...]:
    """Tracing inputs of distinct sizes > 1, so that no dynamic dimension is specialised."""
    rng = np.random.default_rng(0)
    tensors = []
    for n, size in ((n0, (640.0, 480.0)), (n1, (512.0, 384.0))):
        keypoints = rng.uniform(0, 380, (batch, n, 2)).astype(np.float32)
        descriptors = rng.normal(size=(batch, n, 256)).astype(np.float32)
        descriptors /= np.linalg.norm(descriptors, axis=-1, keepdims=True)
        mask = np.ones((batch, n), dtype=bool)
        mask[0, -1] = False
        tensors += [keypoints, descriptors, mask, np.tile(np.array(size, np.float32), (batch, 1))]
    return tuple(torch.from_numpy(t) for t in tensors)


def to_onnx(model: LightGlue) -> onnx.ModelProto:
    """The model as an ONNX graph (opset ``contract.OPSET``) with the contract's names and
    dynamic dimensions ``batch``, ``num_keypoints0``, ``num_keypoints1``."""
    proto = export_matcher(model, _sample_inputs(batch=2, n0=11, n1=7), LIGHTGLUE_INPUTS,
                           LIGHTGLUE_OUTPUTS)
    strip_trace_metadata(proto)
    return proto


def export_metadata(settings: LightGlueSettings, weights_file: str,
                    weights_sha256: str) -> dict[str, object]:
    meta = base_metadata(ModelKind.LIGHTGLUE, weights_file, weights_sha256)
    meta[MetaKey.FILTER_THRESHOLD] = settings.filter_threshold
    meta[MetaKey.NUM_LAYERS] = settings.num_layers
    return meta


def export(model: LightGlue, out: str | Path, weights_file: str, weights_sha256: str,
           manifest: bool = True) -> Path:
    """Export ``model`` to ``out`` (one self-contained .onnx); record it in the manifest."""
    proto = to_onnx(model)
    meta = export_metadata(model.settings, weights_file, weights_sha256)
    attach_metadata(proto, meta)
    path = check_and_save(proto, out)
    if manifest:
        update_manifest(path, ModelKind.LIGHTGLUE, weights_file, weights_sha256, meta)
    return path


# --------------------------------------------------------------------------------------------
# Parity


def run_torch(model: LightGlue, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_module(model, feeds, LIGHTGLUE_INPUTS, LIGHTGLUE_OUTPUTS)


def run_onnx(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_graph(session, feeds, LIGHTGLUE_INPUTS, LIGHTGLUE_OUTPUTS)


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], label: str = ""
            ) -> ParityFigures:
    """Figures of two sets of LightGlue outputs (``ref`` the reference)."""
    la = LightGlueIO.LOG_ASSIGNMENT
    probability = float(np.abs(np.exp(ref[la]) - np.exp(got[la])).max())
    relevant = ref[la] >= np.log(RELEVANT_PROBABILITY)
    log_diff = float(np.abs(ref[la] - got[la])[relevant].max()) if relevant.any() else 0.0
    scores = max(float(np.abs(ref[name] - got[name]).max(initial=0.0))
                 for name in LightGlueIO.MATCHING_SCORES)
    identical = all(np.array_equal(ref[name], got[name]) for name in LightGlueIO.MATCHES)
    return ParityFigures(
        label,
        {"probability": Difference(probability, PROBABILITY_TOLERANCE),
         "matching score": Difference(scores, PROBABILITY_TOLERANCE),
         f"log_assignment where p >= {RELEVANT_PROBABILITY:g}":
             Difference(log_diff, LOG_ASSIGNMENT_TOLERANCE)},
        {"matches identical": identical},
        {"matches": int((got[LightGlueIO.MATCHES[0]] >= 0).sum())})


def parity(session, model: LightGlue, feeds: dict[str, np.ndarray], label: str = ""
           ) -> ParityFigures:
    """Compare the graph in ``session`` with ``model`` on ``feeds`` (contract inputs)."""
    return compare(run_torch(model, feeds), run_onnx(session, feeds), label)


def superpoint_feeds(outputs0, outputs1, size: tuple[int, int],
                     keep: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """LightGlue inputs from two SuperPoint outputs ``(keypoints, scores, descriptors, mask)``
    of batch 1; ``keep`` trims each image to its first n slots (the n best keypoints)."""
    feeds = {}
    for i, (keypoints, _, descriptors, mask) in enumerate((outputs0, outputs1)):
        n = keypoints.shape[1] if keep is None else keep[i]
        feeds[LightGlueIO.KEYPOINTS[i]] = np.ascontiguousarray(keypoints[:, :n])
        feeds[LightGlueIO.DESCRIPTORS[i]] = np.ascontiguousarray(descriptors[:, :n])
        feeds[LightGlueIO.MASK[i]] = np.ascontiguousarray(mask[:, :n])
        feeds[LightGlueIO.IMAGE_SIZE[i]] = np.array([size], dtype=np.float32)
    return feeds


# --------------------------------------------------------------------------------------------
# CLI: python -m export lightglue

_REPO_ROOT = Path(__file__).resolve().parents[1]
_DEFAULT_SUPERPOINT = _REPO_ROOT.parent / "shared" / "weights" / "superpoint_v1.pth"
_DEFAULT_PARITY_IMAGE = _REPO_ROOT / "tests" / "fixtures" / "skimage_retina.jpg"
#: (width, height) and slots kept per image: every slot at 1024², the 256 / 200 best at 640x480.
_CLI_CASES = (((1024, 1024), None), ((640, 480), (256, 200)))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = LightGlueSettings()
    parser.add_argument("--weights", type=Path, required=True,
                        help="LightGlue's SuperPoint checkpoint (superpoint_lightglue.pth, "
                             "v0.1 key layout)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"graph to write (default {DEFAULT_OUT}); manifest.json beside it "
                             "is updated")
    parser.add_argument("--filter-threshold", type=float, default=defaults.filter_threshold,
                        help="match probability threshold baked into the graph "
                             "(default: %(default)s)")
    parser.add_argument("--superpoint-weights", type=Path, default=_DEFAULT_SUPERPOINT,
                        help="SuperPoint checkpoint whose keypoints feed the parity check "
                             "(default: ../shared/weights/superpoint_v1.pth)")
    parser.add_argument("--parity-pair", type=Path, nargs=2, metavar=("FIXED", "MOVING"),
                        help="real pair for the parity check (default: the CC0 fixture and "
                             "its copy rotated by 10 degrees)")


def _parity_images(args: argparse.Namespace, size: tuple[int, int]) -> np.ndarray:
    import cv2

    from export.superpoint import load_grey

    if args.parity_pair:
        return np.stack([load_grey(p, size) for p in args.parity_pair])[:, None]
    fixed = load_grey(_DEFAULT_PARITY_IMAGE, size)
    turn = cv2.getRotationMatrix2D((size[0] / 2, size[1] / 2), 10.0, 1.0)
    moving = cv2.warpAffine(fixed, turn, size, flags=cv2.INTER_LINEAR)
    return np.stack([fixed, moving])[:, None]


def run(args: argparse.Namespace) -> int:
    from export.superpoint import load_superpoint

    inputs = [("weights", args.weights), ("SuperPoint weights", args.superpoint_weights)]
    inputs += [("parity image", p) for p in (args.parity_pair or [])]
    for label, path in inputs:
        if not Path(path).is_file():
            print(f"error: {label} file not found: {path}", file=sys.stderr)
            return 2
    if not 0.0 <= args.filter_threshold < 1.0:
        print(f"error: --filter-threshold must be in [0, 1), got {args.filter_threshold}",
              file=sys.stderr)
        return 2
    report = checkpoint_report(load_checkpoint(args.weights))
    if not report.loads_strictly:
        print(f"error: {args.weights} does not fit the v0.1 layout: missing {report.missing}, "
              f"unexpected {report.unexpected}, wrong shapes {report.wrong_shape}",
              file=sys.stderr)
        return 2
    settings = dataclasses.replace(LightGlueSettings(), filter_threshold=args.filter_threshold)
    model = load_lightglue(args.weights, settings)
    weights_sha256 = sha256_file(args.weights)
    path = export(model, args.out, args.weights.name, weights_sha256)
    print(f"wrote {path} ({path.stat().st_size:,} bytes, sha256 {sha256_file(path)})")
    print(f"  weights: {args.weights.name} (sha256 {weights_sha256}); {len(report.used)} "
          f"tensors used, {len(report.unused)} loaded but unused (early-exit heads and "
          f"token confidences, log_assignment.8.r); filter_threshold={settings.filter_threshold}, "
          f"{settings.num_layers} layers, no early exit, opset {OPSET}")
    detector = load_superpoint(args.superpoint_weights)
    session = onnx_session(path)
    ok = True
    for size, keep in _CLI_CASES:
        with torch.no_grad():
            outputs = [t.numpy() for t in detector(torch.from_numpy(_parity_images(args, size)))]
        per_image = [tuple(o[i:i + 1] for o in outputs) for i in range(2)]
        feeds = superpoint_feeds(*per_image, size, keep)
        counts = [int(feeds[LightGlueIO.MASK[i]].sum()) for i in range(2)]
        figures = parity(session, model, feeds, f"{size[0]}x{size[1]}, {counts[0]} / {counts[1]} "
                                                f"SuperPoint keypoints")
        print("  " + figures.line())
        ok &= figures.ok
    return 0 if ok else 1
