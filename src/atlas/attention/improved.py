"""The fast path for the same function as :func:`~atlas.attention.core.dilated_attention`.

Differences from the reference, none of which change the result:

* Rows are selected with strided views ``x.view(b, T, w, h, d)[:, :, o::r]`` instead of index gathers (valid for
  any ``w % r``); full segments go through one batched kernel call per (pattern, head set) and the short tail
  segment through one more.
* Each pattern writes straight into its slice of the output; nothing is scattered back.
* Kernels: ``head_split`` needs no log-normaliser and uses ``F.scaled_dot_product_attention`` (a fused kernel on
  CPU and CUDA).  ``longnet`` needs the LSE: with gradients it uses the exact differentiable
  :func:`~atlas.attention.lse.attention_with_lse`; without gradients on CPU it uses the fused CPU flash kernel,
  which returns the LSE too (``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu``; its LSE has no
  autograd, hence the restriction).
* Optional scratch pooling of the gathered q/k/v blocks when gradients are off (:mod:`.pool`).

Layout (b, n, h, d); LongNet, Ding et al. 2023.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import check_heads_for_groups
from .core import check_qkv, head_groups
from .lse import attention_with_lse, merge_by_lse
from .pool import ScratchPool

__all__ = ["improved_dilated_attention"]

# kernel(q, k, v, allowed, is_causal, scale, dropout_p) -> (out, lse or None); q/k/v (B, g, m, d)
Kernel = Callable[..., tuple[Tensor, Optional[Tensor]]]


def _sdpa_kernel(q, k, v, allowed, is_causal, scale, dropout_p):
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, dropout_p=dropout_p, is_causal=is_causal and allowed is None, scale=scale
    )
    return out, None


def _lse_kernel(q, k, v, allowed, is_causal, scale, dropout_p):
    if is_causal and allowed is None:
        m = q.shape[-2]
        allowed = torch.ones(m, m, dtype=torch.bool, device=q.device).tril()
    return attention_with_lse(q, k, v, allowed=allowed, scale=scale, dropout_p=dropout_p)


def _cpu_flash_kernel(q, k, v, allowed, is_causal, scale, dropout_p):
    bias = None
    if allowed is not None:
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, is_causal and allowed is None, attn_mask=bias, scale=scale
    )
    return out, lse


def _has_cpu_flash() -> bool:
    return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def _pattern_into(
    out: Tensor,
    lse: Optional[Tensor],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    w: int,
    r: int,
    o: int,
    heads: slice,
    *,
    weight: float,
    kernel: Kernel,
    is_causal: bool,
    key_padding_mask: Optional[Tensor],
    scale: Optional[float],
    dropout_p: float,
    pool: Optional[ScratchPool],
) -> None:
    """Compute pattern (w, r, offset o) for ``heads`` and write ``weight * result`` into out (and lse)."""
    b, n, h, d = q.shape
    w = min(w, n)
    full = (n // w) * w
    blocks = [(0, n // w, w)] + ([(full, 1, n - full)] if n > full else [])
    for start, count, length in blocks:
        if length <= o:
            continue
        stop = start + count * length

        def rows(x: Tensor) -> Tensor:  # (b, n, h, ...) -> (b, T, m, g, ...)
            return x[:, start:stop].view(b, count, length, *x.shape[2:])[:, :, o::r, heads]

        def kernel_input(x: Tensor, stack) -> Tensor:  # (b*T, g, m, d), contiguous
            picked = rows(x).transpose(2, 3)
            if pool is None:
                return picked.reshape(b * count, *picked.shape[2:])
            buffer = stack.enter_context(pool.borrow((b * count, *picked.shape[2:]), x.dtype, x.device))
            buffer.view(picked.shape).copy_(picked)
            return buffer

        allowed = has_key = None
        if key_padding_mask is not None:
            keep = ~key_padding_mask[:, start:stop].view(b, count, length)[:, :, o::r]
            keep = keep.reshape(b * count, 1, 1, -1)
            m = keep.shape[-1]
            allowed = keep.expand(-1, 1, m, m)
            if is_causal:
                allowed = allowed & torch.ones(m, m, dtype=torch.bool, device=q.device).tril()
            has_key = allowed.any(dim=-1, keepdim=True)  # (b*T, 1, m, 1)
            # A row with no visible key is computed against all keys and then zeroed: no NaN in either pass.
            allowed = allowed | ~has_key

        with ExitStack() as stack:
            result, result_lse = kernel(
                kernel_input(q, stack), kernel_input(k, stack), kernel_input(v, stack),
                allowed, is_causal, scale, dropout_p,
            )
        if has_key is not None:
            result = torch.where(has_key, result, torch.zeros_like(result))
            if result_lse is not None:
                result_lse = torch.where(has_key.squeeze(-1), result_lse, torch.full_like(result_lse, -float("inf")))
        g, m = result.shape[1], result.shape[2]
        rows(out).copy_(result.view(b, count, g, m, d).transpose(2, 3) * weight)
        if lse is not None:
            rows(lse).copy_(result_lse.view(b, count, g, m).transpose(2, 3))


def improved_dilated_attention(
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
    pool: Optional[ScratchPool] = None,
) -> Tensor:
    """Same arguments, shapes and result as :func:`~atlas.attention.core.dilated_attention`, faster.

    ``pool``: borrow the gathered q/k/v blocks from this scratch pool; used only when no input requires
    gradients under grad mode (autograd would keep the scratch alive for backward).
    """
    check_qkv(q, k, v, key_padding_mask)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    pool = None if needs_grad else pool
    common = dict(is_causal=is_causal, key_padding_mask=key_padding_mask, scale=scale, dropout_p=dropout_p,
                  pool=pool)
    b, n, h, d = q.shape
    groups = list(zip(segment_lengths, dilation_rates))
    if mode == "head_split":
        check_heads_for_groups(h, len(groups), mode)
        out = q.new_zeros(b, n, h, d)
        for index, ((w, r), span) in enumerate(zip(groups, head_groups(h, len(groups)))):
            _pattern_into(out, None, q, k, v, w, r, index % r, slice(span.start, span.stop),
                          weight=1.0 / len(groups), kernel=_sdpa_kernel, **common)
        return out
    if mode != "longnet":
        raise ValueError(f"mode must be 'head_split' or 'longnet', got {mode!r}")
    fused = not needs_grad and q.device.type == "cpu" and dropout_p == 0.0 and _has_cpu_flash()
    kernel = _cpu_flash_kernel if fused else _lse_kernel
    outs, lses = [], []
    for w, r in groups:
        out = q.new_zeros(b, n, h, d)
        lse = q.new_full((b, n, h), float("-inf"))
        for o in range(min(r, h)):
            _pattern_into(out, lse, q, k, v, w, r, o, slice(o, None, r), weight=1.0, kernel=kernel, **common)
        outs.append(out)
        lses.append(lse)
    return merge_by_lse(outs, lses)[0]
