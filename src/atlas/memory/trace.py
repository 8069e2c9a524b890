"""One eager step of any ``nn.Module`` traced on the ``meta`` device: its exact allocation timeline, for free.

:func:`trace_step` runs a step (a forward under ``no_grad``; or forward, backward, gradient clipping and an
optimizer step) on a module whose parameters live on ``meta``, under the live-bytes ledger (:mod:`.ledger`).
Meta storages have their true sizes but no memory, so the ledger sees the eager run's allocation pattern at
any batch and resolution in about a second, even for a 766M-parameter UNet at 1024 px. Model-specific
estimators (``atlas.config.memory_estimate``) build the module and its inputs and add what a trace cannot
see (a sampler's state, tile accumulators, an EMA copy).

Attention. On meta, ``F.scaled_dot_product_attention`` always runs PyTorch's math backend (N x N scores),
while CPU and CUDA run fused kernels; so the trace routes every SDPA call (dilated attention's per-segment
calls too) to a model of the chosen kernel: ``"sdpa"`` (PyTorch's pick on ``device``: CPU flash; CUDA flash
for fp16/bf16 without a mask, else memory-efficient), ``"sdpa_flash"``, ``"sdpa_efficient"``, ``"sdpa_math"``
(the math backend itself: fp32 scores for half inputs) or ``"naive"`` (softmax(QK^T/sqrt(d))V in the input
dtype). A fused kernel allocates its output and log-sum-exp and holds its workspace while it runs (CPU:
per-thread blocks; CUDA backward: delta and the fp32 dq accumulator), all through the ledger. ``"ideal"`` is
a kernel without internals: the difference of two traces' peaks is what the chosen kernel costs.

Mixed precision. Autocast ignores meta tensors, so with ``autocast_dtype`` fp16/bf16 the trace emulates its
cast policy (CUDA's or CPU's op lists, for the ops a diffusion UNet uses) and its weight-cast cache, whose
entries live for one autocast region (the forward, then each checkpointed recomputation). Not modelled:
allocator rounding and fragmentation, cuDNN / oneDNN convolution workspaces.
"""

from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import set_checkpoint_early_stop
from torch.utils._pytree import tree_leaves, tree_map

from .ledger import LiveBytesLedger

__all__ = ["ATTENTION_KERNELS", "OPTIMIZERS", "TRACE_DEVICES", "MetaTraceMode", "StepTrace", "make_optimizer",
           "optimizer_state", "tensor_bytes", "trace_step"]

ATTENTION_KERNELS = ("sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_math", "naive")
OPTIMIZERS = ("adamw", "adam", "sgd", "none")
TRACE_DEVICES = ("cuda", "cpu")  # whose kernels and autocast policy are modelled
_AUTOCAST_DTYPES = (None, torch.float16, torch.bfloat16)
_LOWER = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
          "matmul", "__matmul__", "bmm", "mm", "addmm", "baddbmm", "addbmm", "scaled_dot_product_attention"}
_FP32 = {"cuda": {"group_norm", "layer_norm", "softmax", "log_softmax", "exp", "log", "pow", "sum", "cumsum",
                  "norm", "rsqrt", "mse_loss", "l1_loss", "logsumexp"},
         "cpu": {"mse_loss", "l1_loss"}}
_PROMOTE = {"cat", "stack"}


def tensor_bytes(tensors: Sequence[Tensor]) -> int:
    """Bytes of the tensors' elements (numel x element size; meta tensors included)."""
    return sum(t.numel() * t.element_size() for t in tensors)


# -- attention kernel models -------------------------------------------------------------------------------
def _kernel_name(attention: str, device: str, q: Tensor, mask: Optional[Tensor]) -> str:
    """The fused kernel PyTorch runs: CPU flash; CUDA flash for half inputs without a mask, else mem-efficient."""
    if attention == "sdpa" and device == "cpu":
        return "cpu_flash"
    if attention in ("sdpa", "sdpa_flash") and q.dtype in (torch.float16, torch.bfloat16) and mask is None \
            and q.shape[-1] <= 256:
        return "cuda_flash"
    return "cuda_efficient"


def _workspace_bytes(kernel: str, q: Tensor, k: Tensor, backward: bool, threads: int) -> int:
    """Bytes a fused kernel holds internally while it runs, from PyTorch's kernel sources."""
    (b, h, n, d), m, elem = q.shape, k.shape[-2], q.element_size()
    acc, reduced = max(4, elem), (elem if elem < 4 else 0)  # fp32 accumulation and half copies for halves
    if kernel == "cpu_flash":  # aten/src/ATen/native/cpu/FlashAttentionKernel.cpp: per-thread blocks
        q_split, kv_split = min(256 if n >= 768 else 64 if n >= 192 else 32, n), min(512, m)
        if backward:  # attn and grad_attn blocks
            return threads * 2 * q_split * kv_split * (acc + reduced)
        return threads * ((q_split * kv_split + 2 * q_split + q_split * d) * acc + q_split * kv_split * reduced)
    if not backward:
        return 0
    if kernel == "cuda_flash":  # flash-attn 2 mha_bwd: softmax_d and, when K spans blocks, the fp32 dq_accum
        n_rounded, d_rounded = -(-n // 128) * 128, (-(-d // 32) * 32 if d <= 192 else 256)
        return b * h * n_rounded * 4 + (b * n_rounded * h * d_rounded * 4 if m > 128 else 0)
    if kernel == "cuda_efficient":  # mem-efficient backward: delta, and an fp32 grad_q accumulator for halves
        return b * h * n * 4 + (b * n * h * d * 4 if reduced else 0)
    return 0  # "ideal"


def _lse_numel(kernel: str, q: Tensor, needs_grad: bool) -> int:
    """Log-sum-exp elements a kernel returns: flash always (B, H, N); mem-efficient for backward, N rounded to 32."""
    b, h, n, _ = q.shape
    if kernel in ("cpu_flash", "cuda_flash"):
        return b * h * n
    return b * h * (-(-n // 32) * 32) if kernel == "cuda_efficient" and needs_grad else 0


class _FusedAttention(torch.autograd.Function):
    """A fused attention kernel's allocations on meta: output, log-sum-exp, workspace; grads in backward."""

    @staticmethod
    def forward(ctx, q, k, v, mask, kernel, threads, needs_grad):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(_lse_numel(kernel, q, needs_grad), dtype=torch.float32)
        workspace = q.new_empty(_workspace_bytes(kernel, q, k, False, threads), dtype=torch.uint8)
        del workspace
        ctx.kernel, ctx.threads = kernel, threads
        ctx.save_for_backward(q, k, v, out, lse, mask)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, _, _, _ = ctx.saved_tensors
        workspace = q.new_empty(_workspace_bytes(ctx.kernel, q, k, True, ctx.threads), dtype=torch.uint8)
        grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        del workspace
        return (*grads, None, None, None, None)


def _naive_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], scale: Optional[float]) -> Tensor:
    scores = (q * (scale or q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(dim=-1) @ v


class MetaTraceMode(TorchFunctionMode):
    """During a meta trace: route SDPA to a model of ``attention`` and, for mixed precision, emulate autocast.

    Args:
        attention: one of :data:`ATTENTION_KERNELS`, or ``"ideal"`` (a fused kernel without internals).
        device: whose kernels and autocast op lists to model, one of :data:`TRACE_DEVICES`.
        threads: CPU threads (each CPU flash-attention thread holds its own blocks); 1 on CUDA.
        autocast_dtype: None (no autocast), torch.float16 or torch.bfloat16.
    ``kernels`` counts the attention calls per modelled kernel.
    """

    def __init__(self, attention: str, device: str, threads: int = 1, autocast_dtype: Optional[torch.dtype] = None):
        super().__init__()
        for name, value, choices in (("attention", attention, ATTENTION_KERNELS + ("ideal",)),
                                     ("device", device, TRACE_DEVICES), ("autocast_dtype", autocast_dtype,
                                                                         _AUTOCAST_DTYPES)):
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not supported; choose one of {list(choices)}")
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads={threads!r} must be a positive int (torch.get_num_threads() on CPU)")
        self.attention, self.device, self.threads = attention, device, threads
        self.autocast_dtype = autocast_dtype
        self.cast_cache: dict[int, tuple[Tensor, Tensor]] = {}
        self.kernels: Counter[str] = Counter()

    def _cast(self, value: Any, dtype: torch.dtype) -> Any:
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dtype in (dtype, torch.float64):
            return value
        if value.is_leaf and value.requires_grad:  # autocast caches casts of parameters for the region
            cached = self.cast_cache.get(id(value))
            if cached is None:
                cached = self.cast_cache[id(value)] = (value, value.to(dtype))
            return cached[1]
        return value.to(dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self.autocast_dtype is not None:
            target = None
            if name in _LOWER:
                target = self.autocast_dtype
            elif name in _FP32[self.device]:
                target = torch.float32
            elif name in _PROMOTE and torch.float32 in {t.dtype for t in tree_leaves(args) if isinstance(t, Tensor)}:
                target = torch.float32
            if target is not None:
                args, kwargs = tree_map(lambda t: self._cast(t, target), (args, kwargs))
        if name == "scaled_dot_product_attention":
            return self._attention(*args, **kwargs)
        first = args[0] if args else kwargs.get("input")
        if name in ("layer_norm", "group_norm") and isinstance(first, Tensor) and not first.is_contiguous():
            staged = first.contiguous()  # the kernel's internal expect_contiguous() copy, live while it runs
            out = func(*args, **kwargs)
            del staged
            return out
        return func(*args, **kwargs)

    def _attention(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        if attn_mask is not None and attn_mask.device != q.device:
            attn_mask = attn_mask.to(q.device)
        kernel = self.attention
        if kernel == "naive":
            self.kernels[kernel] += 1
            return _naive_attention(q, k, v, attn_mask, scale)
        if kernel == "sdpa_math":  # meta runs PyTorch's math backend
            self.kernels[kernel] += 1
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                                  is_causal=is_causal, scale=scale)
        kernel = kernel if kernel == "ideal" else _kernel_name(kernel, self.device, q, attn_mask)
        self.kernels[kernel] += 1
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # SDPA turns it into an additive float mask
            attn_mask = torch.where(attn_mask, torch.zeros((), dtype=q.dtype, device=q.device), -math.inf)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        return _FusedAttention.apply(q, k, v, attn_mask, kernel, self.threads, needs_grad)


# -- optimizer state ---------------------------------------------------------------------------------------
def optimizer_state(optimizer: Optional[torch.optim.Optimizer]) -> list[Tensor]:
    """The optimizer's state tensors on the meta device (AdamW's step counters live on the host)."""
    if optimizer is None:
        return []
    return [t for state in optimizer.state.values() for t in state.values()
            if isinstance(t, Tensor) and t.device.type == "meta"]


def make_optimizer(name: Optional[str], module: nn.Module, foreach: bool) -> Optional[torch.optim.Optimizer]:
    """``name`` (one of :data:`OPTIMIZERS`; None or "none": no optimizer) over ``module``'s trainable meta
    parameters, with its state allocated by one step on meta gradients: the steady state of training.
    ``foreach``: the multi-tensor implementation (CUDA's default), whose temporaries the trace then sees."""
    if name not in OPTIMIZERS + (None,):
        raise ValueError(f"optimizer={name!r} is not supported; choose one of {list(OPTIMIZERS)}")
    params = [p for p in module.parameters() if p.requires_grad]
    if name in (None, "none"):
        return None
    if name == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=1e-3)
    else:
        optimizer = (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, foreach=foreach)
    for p in params:
        p.grad = torch.empty_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


# -- the traced step ---------------------------------------------------------------------------------------
@contextmanager
def _mode_in_module_calls(mode: MetaTraceMode) -> Iterator[None]:
    """Activate ``mode`` around every outermost module call in the block: checkpointing's recomputations.

    The trace disables checkpointing's early stop so that each recomputation returns through the hook that
    leaves the mode; early stop only skips a block's last ops (measured: the same peak on CPU).
    """
    depth = [0]

    def enter(module, args):
        depth[0] += 1
        if depth[0] == 1:
            mode.__enter__()

    def leave(module, args, output):
        depth[0] -= 1
        if depth[0] == 0:
            mode.__exit__(None, None, None)
            mode.cast_cache.clear()  # each recomputation is its own autocast region

    handles = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class StepTrace:
    """The ledger of one traced step (read it on ``"meta"``), ``relabel`` = {storage serial: "gradients"}
    for the parameters' gradients (pass it to ``ledger.breakdown_at_peak`` / ``category_peaks``), and the
    attention calls per modelled kernel."""

    ledger: LiveBytesLedger
    relabel: dict[int, str]
    attention_calls: dict[str, int]

    @property
    def peak_bytes(self) -> int:
        """The most bytes live at once on the meta device during the step."""
        return self.ledger.peak_bytes("meta")


def trace_step(module: nn.Module, make_inputs: Callable[[], Sequence[Any]], step: Callable[..., Any], *,
               attention: str = "sdpa", device: str = "cuda", threads: Optional[int] = None,
               autocast_dtype: Optional[torch.dtype] = None, training: bool = False,
               optimizer: Optional[torch.optim.Optimizer] = None, clip_gradients: bool = True) -> StepTrace:
    """Run ``step(*make_inputs())`` once on meta under a :class:`LiveBytesLedger` and return its timeline.

    Args:
        module: the network, parameters and buffers already on the ``meta`` device (counted as "parameters").
        make_inputs: allocates the step's inputs (meta tensors; counted as "inputs", alive for the whole step).
        step: calls ``module``; inference: its output, training: a scalar loss to back-propagate.
        attention, device, threads, autocast_dtype: the :class:`MetaTraceMode` (threads default: this
            process's ``torch.get_num_threads()`` on CPU, 1 on CUDA).
        training: False: ``step`` under ``no_grad``. True: ``step`` with grad, backward (gradient checkpointing's
            recomputations under the same mode), gradient clipping (if ``clip_gradients``, as the Trainer
            always does) and ``optimizer.step()``; then the gradients are set to None.
        optimizer: from :func:`make_optimizer` (state already allocated: counted as "optimizer").
    Phases (``ledger.peak_phase``): "inputs", "forward", then "backward" and "optimizer" when training; the
    clipping and optimizer step's temporaries are in the category "optimizer_step".
    """
    if any(t.device.type != "meta" for t in (*module.parameters(), *module.buffers())):
        raise ValueError("trace_step needs the module on the meta device (build it under "
                         "`with torch.device('meta'):` or call module.to('meta')); a real module would run for real")
    if optimizer is not None and not training:
        raise ValueError("optimizer is given but training=False; pass training=True or optimizer=None")
    if threads is None:
        threads = torch.get_num_threads() if device == "cpu" else 1
    mode = MetaTraceMode(attention, device, threads, autocast_dtype)
    params = [p for p in module.parameters() if p.requires_grad]
    with LiveBytesLedger() as ledger:
        ledger.track([*module.parameters(), *module.buffers()], "parameters")
        ledger.track(optimizer_state(optimizer), "optimizer")
        ledger.mark("inputs")
        inputs = tuple(make_inputs())
        ledger.mark("forward")
        with torch.set_grad_enabled(training), set_checkpoint_early_stop(False), mode:
            result = step(*inputs)
        if not training:
            return StepTrace(ledger, {}, dict(mode.kernels))
        mode.cast_cache.clear()  # autocast drops its weight casts when the forward's region ends
        ledger.mark("backward")
        with _mode_in_module_calls(mode):  # gradient checkpointing re-runs block forwards inside backward
            result.backward()
        del result
        gradients = {ledger.serial(p.grad): "gradients" for p in params if p.grad is not None}
        ledger.mark("optimizer")
        with ledger.category("optimizer_step"):
            if clip_gradients:
                nn.utils.clip_grad_norm_(params, 1.0, foreach=False)
            if optimizer is not None:
                optimizer.step()
        module.zero_grad(set_to_none=True)
    return StepTrace(ledger, gradients, dict(mode.kernels))
