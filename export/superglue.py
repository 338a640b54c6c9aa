"""SuperGlue (Sarlin et al. 2020, "SuperGlue: Learning Feature Matching with Graph Neural
Networks"), written from the paper, exported to ONNX and proven against PyTorch.

The module's parameter and buffer names are those of Magic Leap's released checkpoints
(``superglue_indoor.pth`` / ``superglue_outdoor.pth``), so that either loads unchanged with
``strict=True``. Layout facts that weight compatibility depends on:

* every learned projection is a ``Conv1d`` with kernel 1 on ``[batch, channels, keypoints]``;
* the keypoint encoder is ``kenc.encoder``: Conv1d 3->32->64->128->256->256 with BatchNorm1d and
  ReLU between layers and nothing after the last one;
* attention splits the 256 channels into heads as ``view(batch, head_dim, num_heads, n)``:
  channel ``c = d * num_heads + h`` belongs to head ``h``, dimension ``d`` (NOT the
  ``view(batch, num_heads, head_dim, n)`` split most other transformers use).

Keypoint padding (see ``ophreg_rt.contract``): each image comes with a boolean mask. A padded
slot is masked out as an attention key, carries no mass in the optimal-transport problem, and
is never matched; with all-True masks the computation is exactly the unmasked algorithm
(``SuperGlue.match(..., mask0=None, mask1=None)``, tested bit for bit).

Other differences from the reference implementation, all at the contract's boundary:
descriptors come in as ``[B, N, 256]``, image sizes as per-pair (width, height) inputs instead of
image tensors, and a matching score is 0 whenever the keypoint is unmatched (the reference also
reports the score of mutual pairs below the threshold). The exported graph runs the Sinkhorn
iterations as one ONNX ``Loop``.

``python -m export superglue --weights superglue_indoor.pth`` (or ``--random-init``) exports,
checks, records the graph in the manifest beside it and prints parity figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ophreg_rt.contract import (
    OPSET, SUPERGLUE_INPUTS, SUPERGLUE_OUTPUTS, MetaKey, ModelKind, SuperGlueIO,
)

from .attention import LOG_ZERO, KeyMask, attend, attention_scale, key_mask, mutual_matches
from .common import (
    attach_metadata, base_metadata, check_and_save, load_checkpoint, sha256_file, sha256_state_dict,
    update_manifest,
)
from .onnx_io import export_matcher
from .parity import (Difference, ParityFigures, onnx_session, run_graph, run_module,
                     synthetic_pair)
from .settings import SinkhornDomain, SuperGlueSettings

#: Keypoints are normalised by 0.7 * the longer image side around the image centre (reference).
_KEYPOINT_SCALE = 0.7


def _mlp(channels: list[int]) -> nn.Sequential:
    """Conv1d(k=1) layers with BatchNorm1d + ReLU between them and nothing after the last."""
    layers: list[nn.Module] = []
    for i in range(1, len(channels)):
        layers.append(nn.Conv1d(channels[i - 1], channels[i], kernel_size=1, bias=True))
        if i < len(channels) - 1:
            layers.append(nn.BatchNorm1d(channels[i]))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class KeypointEncoder(nn.Module):
    """MLP lifting (normalised x, normalised y, detector score) to the descriptor dimension."""

    def __init__(self, hidden: tuple[int, ...], feature_dim: int) -> None:
        super().__init__()
        self.encoder = _mlp([3, *hidden, feature_dim])
        # The reference starts the positional term at zero bias.
        nn.init.constant_(self.encoder[-1].bias, 0.0)

    def forward(self, keypoints: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """keypoints [B, N, 2] normalised, scores [B, N] -> [B, feature_dim, N]."""
        return self.encoder(torch.cat([keypoints.transpose(1, 2), scores.unsqueeze(1)], dim=1))


class MultiHeadAttention(nn.Module):
    def __init__(self, feature_dim: int, num_heads: int) -> None:
        super().__init__()
        if feature_dim % num_heads:
            raise ValueError(
                f"feature_dim {feature_dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = feature_dim // num_heads
        self.scale = attention_scale(self.head_dim)
        self.merge = nn.Conv1d(feature_dim, feature_dim, kernel_size=1)
        self.proj = nn.ModuleList(
            [nn.Conv1d(feature_dim, feature_dim, kernel_size=1) for _ in range(3)])

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, N] -> [B, head_dim, heads, N] (channel = d * heads + h) -> [B, heads, N, head_dim]
        return x.reshape(x.shape[0], self.head_dim, self.num_heads, -1).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor, source: torch.Tensor,
                keys: KeyMask | None) -> torch.Tensor:
        """x [B, C, N] attends to source [B, C, M] (its padded slots: ``keys``) -> [B, C, N]."""
        query = self._heads(self.proj[0](x)) * self.scale
        key = self._heads(self.proj[1](source))
        value = self._heads(self.proj[2](source))
        message = attend(query @ key.transpose(2, 3), value, keys)  # [B, heads, N, head_dim]
        message = message.permute(0, 3, 1, 2).reshape(x.shape[0], -1, x.shape[2])
        return self.merge(message)


class AttentionalPropagation(nn.Module):
    def __init__(self, feature_dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(feature_dim, num_heads)
        self.mlp = _mlp([2 * feature_dim, 2 * feature_dim, feature_dim])
        nn.init.constant_(self.mlp[-1].bias, 0.0)

    def forward(self, x: torch.Tensor, source: torch.Tensor,
                keys: KeyMask | None) -> torch.Tensor:
        """The residual update Delta x (paper eq. 3: MLP([x || message]))."""
        return self.mlp(torch.cat([x, self.attn(x, source, keys)], dim=1))


class AttentionalGNN(nn.Module):
    def __init__(self, feature_dim: int, num_heads: int, layer_pairs: int) -> None:
        super().__init__()
        self.kinds = ("self", "cross") * layer_pairs
        self.layers = nn.ModuleList(
            [AttentionalPropagation(feature_dim, num_heads) for _ in self.kinds])

    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor, mask0: torch.Tensor | None,
                mask1: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        keys0, keys1 = key_mask(mask0), key_mask(mask1)
        for layer, kind in zip(self.layers, self.kinds):
            if kind == "cross":
                src0, src1, kmask0, kmask1 = desc1, desc0, keys1, keys0
            else:
                src0, src1, kmask0, kmask1 = desc0, desc1, keys0, keys1
            # Both images are updated from the same previous state.
            delta0 = layer(desc0, src0, kmask0)
            delta1 = layer(desc1, src1, kmask1)
            desc0, desc1 = desc0 + delta0, desc1 + delta1
        return desc0, desc1


def normalize_keypoints(keypoints: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """keypoints [B, N, 2] (x, y) pixels, image_size [B, 2] (width, height) -> about [-0.7, 0.7]."""
    center = image_size / 2
    scale = image_size.amax(dim=-1, keepdim=True) * _KEYPOINT_SCALE
    return (keypoints - center[:, None, :]) / scale[:, None, :]


def _sinkhorn_potentials(couplings: torch.Tensor, log_mu: torch.Tensor, log_nu: torch.Tensor,
                         iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-space Sinkhorn: dual potentials u [B, M+1], v [B, N+1] after ``iterations`` steps."""

    def keep_going(step, u, v):
        return step < iterations

    def step_once(step, u, v):
        u = log_mu - torch.logsumexp(couplings + v[:, None, :], dim=2)
        v = log_nu - torch.logsumexp(couplings + u[:, :, None], dim=1)
        return step + 1, u, v

    state = (torch.zeros((), dtype=torch.int64), torch.zeros_like(log_mu), torch.zeros_like(log_nu))
    if torch.compiler.is_exporting():
        # One ONNX Loop instead of `iterations` unrolled copies: ~1,000 nodes instead of
        # ~1,800 and half the export time, same onnxruntime latency (measured). Eager
        # torch.while_loop compiles on first use (seconds), so eager runs the plain loop.
        _, u, v = torch.while_loop(keep_going, step_once, state)
    else:
        while keep_going(*state):
            state = step_once(*state)
        _, u, v = state
    return u, v


#: Iterations between two absorptions of the scaling factors into the kernel (see below).
SCALING_BLOCK = 10


def _scaling_blocks(iterations: int) -> list[int]:
    """Block lengths: one iteration alone first (it makes the largest move), then SCALING_BLOCK."""
    blocks = [min(iterations, 1)] if iterations else []
    left = iterations - sum(blocks)
    while left > 0:
        blocks.append(min(SCALING_BLOCK, left))
        left -= blocks[-1]
    return blocks


def _sinkhorn_scaling(couplings: torch.Tensor, log_mu: torch.Tensor, log_nu: torch.Tensor,
                      iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The iterations of ``_sinkhorn_potentials`` on exp(potentials), with absorption.

    Same u, v as the log-space iterations (returned in log). Within a block, the kernel
    K = exp(couplings + v0 - r) (v0: column potentials at the block's start, r: each row's
    maximum of couplings + v0, so every row of K holds a 1) is fixed and an iteration is two
    matrix-vector products: U' = mu / (K V'), V' = nu / (K^T U'), with U' = exp(u + r) and
    V' = exp(v - v0). Between blocks the factors are absorbed into v0 and K is recomputed, so
    they never stray far from 1 and cannot overflow float32 (the "stabilised scaling" of
    Schmitzer, SIAM J. Sci. Comput. 2019). A block costs one exp of the matrix; the log-space form
    costs two per iteration. The clamps only guard rows and columns with no mass (padded), whose
    mu or nu is 0 too.
    """
    mu, nu = log_mu.exp(), log_nu.exp()
    tiny = torch.finfo(couplings.dtype).tiny

    v = torch.zeros_like(log_nu)
    u = torch.zeros_like(log_mu)
    for block in _scaling_blocks(iterations):
        shifted = couplings + v[:, None, :]
        row_max = shifted.amax(dim=2, keepdim=True)
        kernel = (shifted - row_max).exp()

        def keep_going(step, scaled_u, scaled_v, block=block):
            return step < block

        def step_once(step, scaled_u, scaled_v, kernel=kernel):
            scaled_u = mu / (kernel @ scaled_v[:, :, None])[:, :, 0].clamp(min=tiny)
            scaled_v = nu / (scaled_u[:, None, :] @ kernel)[:, 0, :].clamp(min=tiny)
            return step + 1, scaled_u, scaled_v

        state = (torch.zeros((), dtype=torch.int64), torch.ones_like(mu), torch.ones_like(nu))
        if torch.compiler.is_exporting():
            _, scaled_u, scaled_v = torch.while_loop(keep_going, step_once, state)
        else:
            while keep_going(*state):
                state = step_once(*state)
            _, scaled_u, scaled_v = state
        u = scaled_u.clamp(min=tiny).log() - row_max[:, :, 0]
        v = v + scaled_v.clamp(min=tiny).log()
    return u, v


def log_optimal_transport(scores: torch.Tensor, bin_score: torch.Tensor, iterations: int,
                          mask0: torch.Tensor | None = None,
                          mask1: torch.Tensor | None = None,
                          domain: SinkhornDomain = SinkhornDomain.LOG) -> torch.Tensor:
    """Entropic optimal transport with a dustbin, in log space (paper section 3.2, eq. 7-8).

    ``scores`` [B, M, N]. Each of the m valid rows carries mass 1, the dustbin row n, each of the
    n valid columns 1, the dustbin column m; the problem is normalised by m + n (``norm``) for
    the iterations and the result is returned un-normalised, ``log P + log(m + n)``, so that a
    certain match is log 1 = 0. Padded rows and columns carry zero mass; every entry with no mass
    is LOG_ZERO in the result. Returns [B, M + 1, N + 1].
    """
    b, m, n = scores.shape
    alpha = bin_score.to(scores.dtype)
    if mask0 is None or mask1 is None:
        # The paper's problem, all slots valid.
        count0 = torch.full((b,), float(m), dtype=scores.dtype)
        count1 = torch.full((b,), float(n), dtype=scores.dtype)
        norm = -(count0 + count1).log()
        log_mu = torch.cat([norm[:, None].expand(b, m), (count1.log() + norm)[:, None]], dim=1)
        log_nu = torch.cat([norm[:, None].expand(b, n), (count0.log() + norm)[:, None]], dim=1)
    else:
        count0 = mask0.to(scores.dtype).sum(dim=1)
        count1 = mask1.to(scores.dtype).sum(dim=1)
        # clamp: with no valid slot at all, m + n = 0 and every mass is LOG_ZERO anyway.
        norm = -(count0 + count1).clamp(min=1.0).log()
        has0, has1 = count0 > 0, count1 > 0
        log_mu = torch.cat([
            torch.where(mask0, norm[:, None], LOG_ZERO),
            torch.where(has1, count1.clamp(min=1.0).log() + norm, LOG_ZERO)[:, None]], dim=1)
        log_nu = torch.cat([
            torch.where(mask1, norm[:, None], LOG_ZERO),
            torch.where(has0, count0.clamp(min=1.0).log() + norm, LOG_ZERO)[:, None]], dim=1)

    bins0 = alpha.expand(b, m, 1)
    bins1 = alpha.expand(b, 1, n)
    corner = alpha.expand(b, 1, 1)
    couplings = torch.cat([torch.cat([scores, bins0], dim=2),
                           torch.cat([bins1, corner], dim=2)], dim=1)
    if mask0 is not None and mask1 is not None:
        # Every entry of a row or column with no mass is LOG_ZERO too, not only its mass. The
        # first row update runs before the column potentials know which columns are empty
        # (they start at 0), so a padded column with an ordinary coupling would leak into
        # every row's normaliser, and the iterations would reach the unpadded fixed point
        # only asymptotically. With both, padded slots add exact zeros from the first step,
        # whatever their scores, and the potentials stay of ordinary size.
        rows = torch.cat([mask0, has1[:, None]], dim=1)
        cols = torch.cat([mask1, has0[:, None]], dim=1)
        carries_mass = rows[:, :, None] & cols[:, None, :]
        couplings = torch.where(carries_mass, couplings, LOG_ZERO)

    solve = (_sinkhorn_scaling if SinkhornDomain(domain) is SinkhornDomain.SCALING
             else _sinkhorn_potentials)
    u, v = solve(couplings, log_mu, log_nu, iterations)
    log_plan = couplings + u[:, :, None] + v[:, None, :] - norm[:, None, None]
    if mask0 is not None and mask1 is not None:
        log_plan = torch.where(carries_mass, log_plan, LOG_ZERO)
    return log_plan


class SuperGlue(nn.Module):
    """SuperGlue with the state-dict layout of Magic Leap's checkpoints.

    ``forward`` takes and returns the tensors of ``ophreg_rt.contract.SUPERGLUE_INPUTS`` /
    ``SUPERGLUE_OUTPUTS`` in that order. The settings (``sinkhorn_iterations``,
    ``match_threshold``, layer sizes) are fixed at construction and recorded at export.
    """

    def __init__(self, settings: SuperGlueSettings = SuperGlueSettings()) -> None:
        super().__init__()
        self.settings = settings
        dim = settings.descriptor_dim
        self.kenc = KeypointEncoder(tuple(settings.keypoint_encoder), dim)
        self.gnn = AttentionalGNN(dim, settings.num_heads, settings.gnn_layer_pairs)
        self.final_proj = nn.Conv1d(dim, dim, kernel_size=1, bias=True)
        self.bin_score = nn.Parameter(torch.tensor(1.0))

    def match(self, keypoints0: torch.Tensor, scores0: torch.Tensor, descriptors0: torch.Tensor,
              image_size0: torch.Tensor, keypoints1: torch.Tensor, scores1: torch.Tensor,
              descriptors1: torch.Tensor, image_size1: torch.Tensor,
              mask0: torch.Tensor | None = None, mask1: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, ...]:
        """The contract's outputs; ``mask0``/``mask1`` None runs the paper's unmasked algorithm."""
        if (mask0 is None) != (mask1 is None):
            raise ValueError("give both masks or neither")
        desc0 = descriptors0.transpose(1, 2)
        desc1 = descriptors1.transpose(1, 2)
        desc0 = desc0 + self.kenc(normalize_keypoints(keypoints0, image_size0), scores0)
        desc1 = desc1 + self.kenc(normalize_keypoints(keypoints1, image_size1), scores1)
        desc0, desc1 = self.gnn(desc0, desc1, mask0, mask1)
        mdesc0, mdesc1 = self.final_proj(desc0), self.final_proj(desc1)
        scores = mdesc0.transpose(1, 2) @ mdesc1 / math.sqrt(self.settings.descriptor_dim)
        log_assignment = log_optimal_transport(
            scores, self.bin_score, self.settings.sinkhorn_iterations, mask0, mask1,
            self.settings.sinkhorn_domain)
        matches0, matches1, mscores0, mscores1 = mutual_matches(
            log_assignment, self.settings.match_threshold, mask0, mask1)
        return matches0, matches1, mscores0, mscores1, log_assignment

    def forward(self, keypoints0, scores0, descriptors0, mask0, image_size0,
                keypoints1, scores1, descriptors1, mask1, image_size1):
        return self.match(keypoints0, scores0, descriptors0, image_size0,
                          keypoints1, scores1, descriptors1, image_size1, mask0, mask1)


def load_superglue(path: str | Path, settings: SuperGlueSettings = SuperGlueSettings()
                   ) -> SuperGlue:
    """A model holding the checkpoint at ``path`` (Magic Leap's format), in eval mode.

    Loading is strict: every parameter and buffer must be present with its shape, and nothing
    else. The one allowance: BatchNorm's ``num_batches_tracked`` counters (which eval mode never
    reads) are set to 0 when a checkpoint predates them, as PyTorch itself does for such files.
    """
    model = SuperGlue(settings)
    state = dict(load_checkpoint(path))
    for key, value in model.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    model.load_state_dict(state, strict=True)
    return model.eval()


def random_superglue(seed: int, settings: SuperGlueSettings = SuperGlueSettings(),
                     pytorch_default_only: bool = False) -> SuperGlue:
    """Randomly initialised weights of the architecture, reproducible from ``seed``, eval mode.

    Drawn under ``torch.manual_seed(seed)`` inside a forked RNG (the caller's random state is
    untouched): PyTorch's default initialisation of every layer, the reference's two zeroed
    biases (last layer of the keypoint encoder and of each propagation MLP), ``bin_score`` 1.0,
    BatchNorm running statistics as initialised (mean 0, variance 1). Then ``final_proj`` is
    redrawn as a random orthogonal matrix times sqrt(descriptor_dim) with zero bias, unless
    ``pytorch_default_only``.

    Why the one change: with PyTorch's default init (uniform, variance 1/(3 fan_in)) the final
    projection shrinks descriptors, and after the 1/sqrt(256) temperature all scores of a pair
    lie in a band about 0.1 wide (0.03 to 0.11 measured), so Sinkhorn's plan is nearly uniform and no mutual match reaches the
    0.2 threshold. Measured on the dev pair varia_R067_R118 (SuperPoint, 512x512, 215 / 226
    keypoints; also 640x480): 0 matches for seeds 0, 1 and 2, best matching score 0.0018.
    With the orthogonal sqrt(256) gain, which undoes the temperature as a trained projection
    does, the same random network gives about 200 matches, of which 130-150 fit one affine map
    (OpenCV RANSAC, 4 px), close to mutual nearest neighbours on the raw descriptors (170, of
    which 151 fit). The weights are still random: nothing is fitted to any data.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SuperGlue(settings)
        if not pytorch_default_only:
            with torch.no_grad():
                nn.init.orthogonal_(model.final_proj.weight,
                                    gain=math.sqrt(settings.descriptor_dim))
                nn.init.zeros_(model.final_proj.bias)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Export


def _sample_inputs(batch: int, n0: int, n1: int) -> tuple[torch.Tensor, ...]:
    """Tracing inputs; distinct sizes > 1 so no dynamic dimension is specialised."""
    pair = synthetic_pair(n0, n1, (640, 480), (512, 384), seed=0, batch=batch)
    return tuple(torch.from_numpy(pair[spec.name]) for spec in SUPERGLUE_INPUTS)


def to_onnx(model: SuperGlue) -> onnx.ModelProto:
    """The model as an ONNX graph (opset ``contract.OPSET``) with the contract's names and
    dynamic dimensions ``batch``, ``num_keypoints0``, ``num_keypoints1``."""
    return export_matcher(model, _sample_inputs(batch=2, n0=11, n1=7), SUPERGLUE_INPUTS,
                          SUPERGLUE_OUTPUTS)


def export_metadata(settings: SuperGlueSettings, weights_file: str,
                    weights_sha256: str) -> dict[str, object]:
    meta = base_metadata(ModelKind.SUPERGLUE, weights_file, weights_sha256)
    meta[MetaKey.SINKHORN_ITERATIONS] = settings.sinkhorn_iterations
    meta[MetaKey.SINKHORN_DOMAIN] = SinkhornDomain(settings.sinkhorn_domain).value
    meta[MetaKey.MATCH_THRESHOLD] = settings.match_threshold
    return meta


def export(model: SuperGlue, out: str | Path, weights_file: str, weights_sha256: str,
           manifest: bool = True) -> Path:
    """Export ``model`` to ``out`` (one self-contained .onnx), record it in the manifest."""
    proto = to_onnx(model)
    meta = export_metadata(model.settings, weights_file, weights_sha256)
    attach_metadata(proto, meta)
    path = check_and_save(proto, out)
    if manifest:
        update_manifest(path, ModelKind.SUPERGLUE, weights_file, weights_sha256,
                        {k: v for k, v in meta.items()
                         if k not in (MetaKey.WEIGHTS_FILE, MetaKey.WEIGHTS_SHA256)})
    return path


def random_weights_id(seed: int) -> str:
    return f"random-init:seed={seed}"


# --------------------------------------------------------------------------------------------
# Parity


def run_torch(model: SuperGlue, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_module(model, feeds, SUPERGLUE_INPUTS, SUPERGLUE_OUTPUTS)


def run_onnx(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_graph(session, feeds, SUPERGLUE_INPUTS, SUPERGLUE_OUTPUTS)


def parity(session, model: SuperGlue, feeds: dict[str, np.ndarray], label: str = "",
           tolerance: float = 1e-3) -> ParityFigures:
    """Compare the graph in ``session`` with ``model`` on ``feeds`` (contract inputs)."""
    ref = run_torch(model, feeds)
    got = run_onnx(session, feeds)
    diff = float(np.abs(ref[SuperGlueIO.LOG_ASSIGNMENT] - got[SuperGlueIO.LOG_ASSIGNMENT]).max())
    identical = all(np.array_equal(ref[name], got[name]) for name in SuperGlueIO.MATCHES)
    return ParityFigures(label, {"log_assignment": Difference(diff, tolerance)},
                         {"matches identical": identical},
                         {"matches": int((got[SuperGlueIO.MATCHES[0]] >= 0).sum())})


# Parity inputs of the CLI: two image sizes (one not square), two keypoint counts, with padding.
_CLI_CASES = (
    dict(n0=512, n1=400, size0=(640, 480), size1=(640, 480), valid0=480, valid1=400),
    dict(n0=256, n1=300, size0=(512, 512), size1=(512, 512), valid0=256, valid1=260),
)


# --------------------------------------------------------------------------------------------
# CLI: python -m export superglue

COMMAND = "superglue"
HELP = ("export SuperGlue (Magic Leap checkpoint format, or random weights) to ONNX and check it "
        "against PyTorch")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = SuperGlueSettings()
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, metavar="PATH",
                        help="checkpoint in Magic Leap's format (superglue_indoor.pth, ...)")
    source.add_argument("--random-init", action="store_true",
                        help="random weights of the architecture, to test the pipeline only "
                             "(never a trained matcher); recorded as weights_file "
                             "'random-init:seed=N' in the graph and the manifest")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init (default: 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output .onnx (default: models/superglue.onnx for --weights, "
                             "superglue_random-init_seedN.onnx in the current folder for "
                             "--random-init: random graphs never go to models/ by default)")
    parser.add_argument("--sinkhorn-iterations", type=int, default=defaults.sinkhorn_iterations,
                        help="Sinkhorn iterations baked into the graph "
                             "(default: %(default)s)")
    parser.add_argument("--match-threshold", type=float, default=defaults.match_threshold,
                        help="matching-score threshold baked into the graph (default: %(default)s)")
    parser.add_argument("--sinkhorn-domain", choices=[d.value for d in SinkhornDomain],
                        default=SinkhornDomain(defaults.sinkhorn_domain).value,
                        help="how the iterations are written in the graph (same fixed point; "
                             "see export.settings.SinkhornDomain) (default: %(default)s)")


def default_out(args: argparse.Namespace) -> Path:
    if args.weights is not None:
        return Path("models") / "superglue.onnx"
    return Path(f"superglue_random-init_seed{args.seed}.onnx")


def run(args: argparse.Namespace) -> int:
    if args.sinkhorn_iterations < 0:
        print(f"error: --sinkhorn-iterations must be >= 0, got {args.sinkhorn_iterations}",
              file=sys.stderr)
        return 2
    if args.weights is not None and not args.weights.is_file():
        print(f"error: {args.weights}: no such checkpoint", file=sys.stderr)
        return 2
    settings = dataclasses.replace(SuperGlueSettings(),
                                   sinkhorn_iterations=args.sinkhorn_iterations,
                                   match_threshold=args.match_threshold,
                                   sinkhorn_domain=SinkhornDomain(args.sinkhorn_domain))
    if args.weights is not None:
        model = load_superglue(args.weights, settings)
        weights_file, weights_sha256 = args.weights.name, sha256_file(args.weights)
    else:
        model = random_superglue(args.seed, settings)
        weights_file = random_weights_id(args.seed)
        weights_sha256 = sha256_state_dict(model.state_dict())
    out = args.out if args.out is not None else default_out(args)
    path = export(model, out, weights_file, weights_sha256)
    print(f"wrote {path} ({path.stat().st_size:,} bytes, sha256 {sha256_file(path)})")
    print(f"  weights: {weights_file} (sha256 {weights_sha256}), "
          f"sinkhorn_iterations={settings.sinkhorn_iterations}, "
          f"match_threshold={settings.match_threshold}, opset {OPSET}")
    session = onnx_session(path)
    ok = True
    for i, case in enumerate(_CLI_CASES):
        feeds = synthetic_pair(seed=i, **case)
        label = (f"synthetic {case['size0'][0]}x{case['size0'][1]}, "
                 f"{case['valid0']}/{case['n0']} vs {case['valid1']}/{case['n1']} keypoints")
        figures = parity(session, model, feeds, label)
        print("  " + figures.line())
        ok &= figures.ok
    return 0 if ok else 1
