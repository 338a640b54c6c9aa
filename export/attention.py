"""What SuperGlue and LightGlue share on the PyTorch side: attention over padded keypoint slots
and the mutual read-out of an assignment matrix.

Both matchers take fixed keypoint slots with a mask (``ophreg_rt.contract``). A padded slot must
add exactly nothing: it is never attended to as a key, and never matched. The functions here
are the one place that guarantee is written, so the two matchers cannot drift apart on it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

#: Stands in for log(0) wherever a quantity must be "minus infinity": the attention bias of
#: padded keys (see ``attend`` for its bound), the log-mass and the couplings of padded slots,
#: and the log-assignment of entries with no mass. It is finite so
#: that an image with no valid keypoint yields no NaN (softmax over all -inf is NaN), and far
#: enough below any real logit that exp() of the difference is exactly 0 in float32 (exp
#: underflows below about -104), so padded slots contribute exactly nothing.
LOG_ZERO = -1.0e4


def attention_scale(head_dim: int) -> float:
    """1/sqrt(head_dim), for the queries ([N, head_dim]) instead of the logits ([N, M]): fewer
    multiplies in PyTorch (onnxruntime fuses either into its MatMul). A power of two for
    head_dim 64, so the logits equal those of dividing the products, bit for bit."""
    return head_dim ** -0.5


def key_bias(mask: torch.Tensor) -> torch.Tensor:
    """[B, M] bool -> [B, M] float32: 0 for a keypoint, LOG_ZERO for a padded slot."""
    return torch.where(mask, 0.0, LOG_ZERO)


class KeyMask(NamedTuple):
    """An image's padded slots as attention keys, built once per forward (:func:`key_mask`)
    and shared by every attention layer that reads that image's keys."""

    bias: torch.Tensor  # [B, 1, 1, M], added to the logits
    any_key: torch.Tensor  # [B, 1, 1, 1]: 1.0, or 0.0 when every slot is padded


def key_mask(mask: torch.Tensor | None) -> KeyMask | None:
    if mask is None:
        return None
    return KeyMask(key_bias(mask)[:, None, None, :],
                   mask.to(torch.float32).amax(dim=-1)[:, None, None, None])


def attend(logits: torch.Tensor, value: torch.Tensor, keys: KeyMask | None) -> torch.Tensor:
    """softmax(logits) @ value over the keys that ``keys`` keeps: logits [B, H, N, M], value
    [B, H, M, d] -> [B, H, N, d]; a query with no key left gets a zero message.

    The mask is an added bias, not ``where(mask, logits, LOG_ZERO)``: onnxruntime's broadcast
    bool Where is slow. Profiled on LightGlue and a real pair (614 + 626 keypoints, 2 threads),
    the Wheres and the old ``* mask`` over the [B, H, N, M] logits took 55 of 346 ms, the Adds
    that replace them 16 ms; the graph runs 11-12 % faster, with identical outputs.

    A padded key's probability is exp(logit + LOG_ZERO - row max), exactly 0 in float32 (torch
    and onnxruntime both underflow below about -104) as long as its logit is less than
    1e4 - 104 above the row's largest unpadded logit. LOG_ZERO does not absorb the logit in
    rounding (the float32 spacing at 1e4 is about 1e-3), it buries it: on that pair LightGlue's
    logits stay within +-750, and padded to 700 / 680 slots no padded key's logit is more than
    10 above its row's largest real one. A larger magnitude would bury anything, but the
    mixed-fp16 GPU graph (benchmarks/gpu_check.py) runs Softmax in float16, where -1e4 is
    finite and anything below -65504 is -inf, NaN on a row with every key padded.

    A row with every key padded is uniform over them after the softmax; ``any_key`` zeroes its
    message on the [B, H, N, d] output, N*d multiplies instead of N*M on the probabilities. With every slot a keypoint the bias is
    +0 and the factor 1.0, both exact: the result is the unmasked computation bit for bit.
    """
    if keys is None:
        return logits.softmax(dim=-1) @ value
    return (logits + keys.bias).softmax(dim=-1) @ value * keys.any_key


def mutual_matches(log_assignment: torch.Tensor, threshold: float,
                   mask0: torch.Tensor | None = None, mask1: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual arg-max over the non-dustbin block, kept when exp(log-assignment) > threshold.

    Returns matches0 [B, M], matches1 [B, N] (int64, -1 unmatched) and their matching scores
    (exp of the log-assignment, 0 when unmatched).
    """
    inner = log_assignment[:, :-1, :-1]
    best0 = inner.max(dim=2)
    best1 = inner.max(dim=1)
    index0, index1 = best0.indices, best1.indices
    rows = torch.arange(inner.shape[1], device=inner.device)[None]
    cols = torch.arange(inner.shape[2], device=inner.device)[None]
    mutual0 = rows == index1.gather(1, index0)
    mutual1 = cols == index0.gather(1, index1)
    zero = torch.zeros((), dtype=inner.dtype)
    score0 = torch.where(mutual0, best0.values.exp(), zero)
    valid0 = mutual0 & (score0 > threshold)
    if mask0 is not None and mask1 is not None:
        valid0 = valid0 & mask0 & mask1.gather(1, index0)
    valid1 = mutual1 & valid0.gather(1, index1)
    score0 = torch.where(valid0, score0, zero)
    score1 = torch.where(valid1, score0.gather(1, index1), zero)
    minus_one = torch.full((), -1, dtype=index0.dtype)
    return (torch.where(valid0, index0, minus_one), torch.where(valid1, index1, minus_one),
            score0, score1)
