"""The dilated attention computation (LongNet, Ding et al. 2023, Sec. 2.2) as plain functions.

Layout everywhere: ``(batch, seq, heads, head_dim)`` = ``(b, n, h, d)``.

One pattern ``(w, r)`` with offset ``o`` (paper Eq. 2-4): split the positions into segments
``[t*w, (t+1)*w)``; inside segment t keep the rows ``t*w + o + j*r`` (``j >= 0``, inside the segment and the
sequence); the kept queries attend to the kept keys of the same segment; every other row gets output 0.  The
last segment may be short (``n % w != 0``), ``w > n`` is one segment, and ``w % r != 0`` simply keeps
``ceil((w - o) / r)`` rows.  Causal masking compares global positions (key <= query).

:func:`dilated_group_attention` computes one pattern and returns ``(out, lse)`` so that partial results (other
patterns, or other key blocks in ring / sequence-parallel variants) merge exactly with
:func:`~atlas.attention.lse.merge_by_lse`.  :func:`dilated_attention` combines the k patterns in one of two modes:

* ``head_split``: heads are split into k contiguous groups (sizes ``h // k``, the first ``h % k`` one larger);
  group i runs pattern i with offset ``i % r_i``; the output is divided by k (dilated-attention-pytorch v0.2).
* ``longnet``: every head runs every pattern, head j with offset ``j % r_i``; patterns are mixed by
  ``softmax_i(lse_i)``, i.e. one softmax over the multiset union of attended keys (paper Eq. 10).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .config import check_heads_for_groups
from .lse import attention_with_lse, merge_by_lse

__all__ = ["dilated_attention", "dilated_group_attention", "head_groups", "check_qkv"]


def head_groups(num_heads: int, num_groups: int) -> list[range]:
    """Contiguous head ranges for head_split mode: sizes ``h // k``, the first ``h % k`` groups get one more."""
    base, extra = divmod(num_heads, num_groups)
    ranges, start = [], 0
    for index in range(num_groups):
        size = base + (1 if index < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def check_qkv(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor]) -> None:
    """Shape checks at the boundary: q, k, v are (b, n, h, d) of one shape; the mask is (b, n) bool."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "query, key and value must all be (batch, seq, heads, head_dim) with one shape, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or key_padding_mask.shape != q.shape[:2]:
            raise ValueError(
                f"key_padding_mask must be a bool tensor of shape (batch, seq) = {tuple(q.shape[:2])} with True at "
                f"padded keys, got dtype {key_padding_mask.dtype} and shape {tuple(key_padding_mask.shape)}"
            )


def dilated_group_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    segment_length: int,
    dilation_rate: int,
    offset: int,
    *,
    is_causal: bool = False,
    key_padding_mask: Optional[Tensor] = None,
    query_start: int = 0,
    key_start: int = 0,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """One dilated pattern ``(w, r, o)`` over a window of queries and a window of keys, with its LSE.

    The query rows cover global positions ``[query_start, query_start + nq)`` and the key/value rows cover
    ``[key_start, key_start + nk)`` of one sequence; segment boundaries (multiples of ``w``), dilation residues
    and causality use those global positions.  A query attends only to the supplied keys that share its segment
    and are kept by the pattern, so calling this once per key block and merging with
    :func:`~atlas.attention.lse.merge_by_lse` gives the result over the union of the blocks (ring attention).
    With ``query_start = key_start = 0`` and the whole sequence it is the single-process pattern.

    Args:
        q: (b, nq, h, d).
        k, v: (b, nk, h, d).
        segment_length: w >= 1 (may exceed the sequence: positions that do not exist are simply absent).
        dilation_rate: r >= 1.
        offset: o in [0, r): the residue kept inside each segment.
        is_causal: keys at later global positions than the query are masked.
        key_padding_mask: (b, nk) bool, True = padded key (never attended).
        query_start, key_start: global positions of row 0 of q and of k/v.
        scale: score scale, default ``1 / sqrt(d)``.
        dropout_p: attention-probability dropout (0 in evaluation).

    Returns:
        out (b, nq, h, d) and lse (b, nq, h).  Rows the pattern does not keep, or whose kept keys are all
        masked or absent, get out = 0 and lse = -inf.
    """
    if not 0 <= offset < dilation_rate:
        raise ValueError(f"offset must be in [0, dilation_rate={dilation_rate}), got {offset}")
    b, nq, h, d = q.shape
    nk = k.shape[1]
    out = q.new_zeros(b, nq, h, d)
    lse = q.new_full((b, nq, h), float("-inf"))
    query_end, key_end = query_start + nq, key_start + nk
    # A segment longer than every position behaves like one that just covers them; clamp to bound the slots.
    w = min(segment_length, max(query_end, key_end))
    first = max(query_start // w, key_start // w)
    last = min((query_end - 1) // w, (key_end - 1) // w)
    slots = -(-(w - offset) // dilation_rate) if w > offset else 0
    if nq == 0 or nk == 0 or first > last or slots == 0:
        return out, lse

    device = q.device
    segments = torch.arange(first, last + 1, device=device)
    positions = segments[:, None] * w + offset + dilation_rate * torch.arange(slots, device=device)[None, :]
    query_valid = (positions >= query_start) & (positions < query_end)
    key_valid = (positions >= key_start) & (positions < key_end)
    query_rows = (positions - query_start).clamp(0, nq - 1)
    key_rows = (positions - key_start).clamp(0, nk - 1)

    def gather(x: Tensor, rows: Tensor) -> Tensor:  # (b, N, h, d) -> (b, T, h, m, d)
        picked = x.index_select(1, rows.reshape(-1)).view(b, *rows.shape, h, d)
        return picked.permute(0, 1, 3, 2, 4)

    allowed = None
    if not bool(key_valid.all()):
        allowed = key_valid[None, :, None, None, :]
    if is_causal:
        causal = positions[:, None, :] <= positions[:, :, None]  # (T, m_q, m_k)
        causal = causal[None, :, None]
        allowed = causal if allowed is None else allowed & causal
    if key_padding_mask is not None:
        keep = ~key_padding_mask.index_select(1, key_rows.reshape(-1)).view(b, *key_rows.shape)
        keep = keep[:, :, None, None, :]
        allowed = keep if allowed is None else allowed & keep

    part_out, part_lse = attention_with_lse(
        gather(q, query_rows), gather(k, key_rows), gather(v, key_rows),
        allowed=allowed, scale=scale, dropout_p=dropout_p,
    )
    # Back to (b, T*m, h, ...) and scatter the valid query rows into place.
    flat_valid = query_valid.reshape(-1).nonzero().squeeze(1)
    destination = query_rows.reshape(-1).index_select(0, flat_valid)
    part_out = part_out.permute(0, 1, 3, 2, 4).reshape(b, -1, h, d).index_select(1, flat_valid)
    part_lse = part_lse.permute(0, 1, 3, 2).reshape(b, -1, h).index_select(1, flat_valid)
    return out.index_copy(1, destination, part_out), lse.index_copy(1, destination, part_lse)


def _longnet_pattern(
    q: Tensor, k: Tensor, v: Tensor, segment_length: int, dilation_rate: int, **kwargs
) -> tuple[Tensor, Tensor]:
    """All heads run one pattern, head j with offset ``j % r``: one call per residue class of heads."""
    h = q.shape[2]
    residues = range(min(dilation_rate, h))
    order = torch.cat([torch.arange(o, h, dilation_rate) for o in residues]).to(q.device)
    outs, lses = [], []
    for o in residues:
        heads = torch.arange(o, h, dilation_rate, device=q.device)
        part = dilated_group_attention(
            q.index_select(2, heads), k.index_select(2, heads), v.index_select(2, heads),
            segment_length, dilation_rate, o, **kwargs,
        )
        outs.append(part[0])
        lses.append(part[1])
    inverse = torch.argsort(order)
    return torch.cat(outs, dim=2).index_select(2, inverse), torch.cat(lses, dim=2).index_select(2, inverse)


def dilated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    *,
    mode: str = "head_split",
    is_causal: bool = False,
    key_padding_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Multi-pattern dilated attention (the reference: readable, exact, differentiable).

    Args:
        q, k, v: (b, n, h, d).
        segment_lengths, dilation_rates: the k patterns (validated by the caller's config).
        mode: ``"head_split"`` or ``"longnet"`` (see the module docstring).
        is_causal: causal masking inside every pattern.
        key_padding_mask: (b, n) bool, True = padded key.
        scale: score scale, default ``1 / sqrt(d)``.
        dropout_p: attention-probability dropout.

    Returns:
        (b, n, h, d).
    """
    check_qkv(q, k, v, key_padding_mask)
    kwargs = dict(is_causal=is_causal, key_padding_mask=key_padding_mask, scale=scale, dropout_p=dropout_p)
    groups = list(zip(segment_lengths, dilation_rates))
    if mode == "longnet":
        parts = [_longnet_pattern(q, k, v, w, r, **kwargs) for w, r in groups]
        return merge_by_lse([p[0] for p in parts], [p[1] for p in parts])[0]
    if mode != "head_split":
        raise ValueError(f"mode must be 'head_split' or 'longnet', got {mode!r}")
    h = q.shape[2]
    check_heads_for_groups(h, len(groups), mode)
    outs = []
    for index, ((w, r), heads) in enumerate(zip(groups, head_groups(h, len(groups)))):
        part, _ = dilated_group_attention(
            q[:, :, heads.start:heads.stop], k[:, :, heads.start:heads.stop], v[:, :, heads.start:heads.stop],
            w, r, index % r, **kwargs,
        )
        outs.append(part)
    return torch.cat(outs, dim=2) / len(groups)
