"""Attention that also returns its log-normaliser, and the exact merge of partial results by it.

For one query row with scores ``s_j = q.k_j * scale`` over an allowed key set J:

    lse = log sum_{j in J} exp(s_j),     out = sum_{j in J} exp(s_j - lse) v_j

Two partial results over disjoint (or multiset) key sets combine exactly as

    out = sum_i softmax_i(lse_i) out_i,  lse = logsumexp_i(lse_i)

which is the LongNet mixture (Ding et al. 2023, Eq. 10: weights proportional to each pattern's softmax
denominator) and the online-softmax step of ring attention.  Everything here is plain differentiable PyTorch:
gradients flow through the weights too (microsoft/torchscale detaches them).

Rows with no allowed key are defined as ``out = 0`` and ``lse = -inf``; neither the forward nor the backward
pass produces NaN for them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention_with_lse", "merge_by_lse"]


def _shift(values: Tensor, dim: int) -> Tensor:
    """Row maximum with -inf rows replaced by 0, detached (logsumexp does not depend on the shift)."""
    top = values.amax(dim=dim, keepdim=True).detach()
    return torch.where(torch.isfinite(top), top, torch.zeros_like(top))


def attention_with_lse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    allowed: Optional[Tensor] = None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Softmax attention returning ``(out, lse)``.

    Args:
        q: (..., Lq, d) queries.
        k, v: (..., Lk, d) keys and values (same leading dimensions as q, or broadcastable).
        allowed: optional bool mask broadcastable to (..., Lq, Lk); True = the query may attend to the key.
        scale: score scale; default ``1 / sqrt(d)``.
        dropout_p: dropout on the attention probabilities (applied after ``lse``; pass 0 in evaluation).

    Returns:
        out (..., Lq, d) and lse (..., Lq), in q's dtype; rows with no allowed key give 0 and -inf.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    shift = _shift(scores, dim=-1)
    weights = torch.exp(scores - shift)
    total = weights.sum(dim=-1, keepdim=True)
    covered = total > 0
    safe_total = torch.where(covered, total, torch.ones_like(total))
    probs = weights / safe_total
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    out = torch.matmul(probs, v)
    lse = torch.where(covered, shift + torch.log(safe_total), torch.full_like(total, float("-inf")))
    return out, lse.squeeze(-1)


def merge_by_lse(outs: Sequence[Tensor], lses: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Merge partial attention results: ``out = sum_i softmax_i(lse_i) out_i``.

    Args:
        outs: k tensors of one shape (..., d), e.g. (b, n, h, d).
        lses: k tensors of shape (...), e.g. (b, n, h); -inf where that part covers nothing.

    Returns:
        (out (..., d), lse (...)): a row covered by no part gets 0 and -inf.  Differentiable in all inputs.
    """
    if len(outs) != len(lses) or not outs:
        raise ValueError(f"merge_by_lse needs as many outputs as lses (>= 1), got {len(outs)} and {len(lses)}")
    stacked = torch.stack(list(lses), dim=0)
    shift = _shift(stacked, dim=0)
    weights = torch.exp(stacked - shift)
    total = weights.sum(dim=0, keepdim=True)
    covered = total > 0
    safe_total = torch.where(covered, total, torch.ones_like(total))
    alphas = weights / safe_total
    out = sum(alpha.unsqueeze(-1) * part for alpha, part in zip(alphas.unbind(0), outs))
    lse = torch.where(covered, shift + torch.log(safe_total), torch.full_like(total, float("-inf")))
    return out, lse.squeeze(0)
