"""CUDA graphs for a diffusion network: capture once per input signature, replay at every sampler step.

A sampler calls the same network with the same shapes 20-50 times; at small batches the GPU waits on Python and
kernel launches.  `CUDAGraphModelWrapper` records the network's kernels once per *key* and replays them:

* key = shapes, dtypes and devices of every tensor argument, conditioning included by name (``context``,
  ``context_mask``, ``pooled``, ...; hashable non-tensor keywords by value), the autocast state of the input's
  device type (enabled, dtype), grad mode, inference mode and ``model.training``;
* LRU cache of at most ``max_cache_size`` graphs; an evicted graph is released at once;
* all graphs of a device share one memory pool (``torch.cuda.graph_pool_handle()``).  That is safe because
  replays are serialised on one stream and every output is cloned out before the next replay;
* each replay copies the arguments into the graph's static input buffers and returns a clone of its static
  output; conditioning reaches the network on every call (the public reference dropped it);
* warm-up runs on a side stream before capture, with the autocast weight cache off during warm-up and capture
  (a cached cast made outside the graph would be freed while the graph still reads it);
* a failed capture is logged once at WARNING and recorded in `stats()`; the fallback is **per key**: that input
  signature runs eagerly from then on (other signatures still use graphs), because failures are often
  shape-specific (e.g. out of memory at the largest batch).  Results are unchanged, only slower.
* calls the capturer cannot handle (CPU or MPS tensors with the default capturer, tensors on several devices,
  or autograd needing gradients) run the model eagerly -- exactly the model's own output -- and are counted in
  ``stats()["eager_reasons"]``.

Parameters are captured by address: an in-place update (``load_state_dict``, an optimizer step) is seen by
the graphs, and a re-allocation (``.to()``, assigning ``.data``) is detected by a fingerprint of parameter and
buffer addresses, which releases the graphs.  The wrapper is not thread-safe.
See https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs for the rules followed here.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Hashable, Mapping, Protocol

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

_SCALARS = (bool, int, float, str)


class GraphCaptureError(RuntimeError):
    """Capture itself (not the eager warm-up) failed; the wrapper runs that input signature eagerly."""


class CapturedGraph(Protocol):
    """A replayable capture: ``replay()`` reruns the recorded work, writing ``output`` in place."""

    output: Tensor

    def replay(self) -> None: ...


class GraphCapturer(Protocol):
    """Turns ``fn(*static_args, **static_kwargs)`` into a `CapturedGraph` that reads those same static tensors."""

    def supports(self, device: torch.device) -> bool: ...

    def capture(self, fn: Callable[..., Tensor], static_args: tuple[Tensor, ...],
                static_kwargs: Mapping[str, Any], warmup_iters: int) -> CapturedGraph: ...

    def release(self, graph: CapturedGraph) -> None: ...


class _TorchGraph:
    def __init__(self, graph: "torch.cuda.CUDAGraph", output: Tensor):
        self.graph = graph
        self.output = output

    def replay(self) -> None:
        self.graph.replay()


class TorchCUDAGraphCapturer:
    """The default capturer: `torch.cuda.CUDAGraph`, one shared memory pool per device."""

    def __init__(self) -> None:
        self._pools: dict[torch.device, Any] = {}

    def supports(self, device: torch.device) -> bool:
        return device.type == "cuda" and torch.cuda.is_available()

    def _pool(self, device: torch.device) -> Any:
        if device not in self._pools:
            with torch.cuda.device(device):
                self._pools[device] = torch.cuda.graph_pool_handle()
        return self._pools[device]

    def capture(self, fn: Callable[..., Tensor], static_args: tuple[Tensor, ...],
                static_kwargs: Mapping[str, Any], warmup_iters: int) -> CapturedGraph:
        device = static_args[0].device
        cache_enabled = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(False)
        try:
            with torch.cuda.device(device):
                current = torch.cuda.current_stream()
                side = torch.cuda.Stream()
                side.wait_stream(current)
                with torch.cuda.stream(side):  # lazy initialisation (cuBLAS handles, autotuning) happens here
                    for _ in range(warmup_iters):
                        fn(*static_args, **static_kwargs)
                current.wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.graph(graph, pool=self._pool(device)):
                        output = fn(*static_args, **static_kwargs)
                except Exception as error:  # anything raised while capturing: re-raised as a capture failure
                    raise GraphCaptureError(f"{type(error).__name__}: {error}") from error
        finally:
            torch.set_autocast_cache_enabled(cache_enabled)
        if not isinstance(output, Tensor):
            graph.reset()
            raise GraphCaptureError(f"the model returned {type(output).__name__}; only a single tensor output "
                                    "can be replayed")
        return _TorchGraph(graph, output)

    def release(self, graph: CapturedGraph) -> None:
        if isinstance(graph, _TorchGraph):
            graph.graph.reset()
        graph.output = None  # type: ignore[assignment]  # drop the pool memory the output holds


@dataclass
class _Entry:
    graph: CapturedGraph
    static_args: tuple[Tensor, ...]
    static_kwargs: dict[str, Any]


def _signature(value: Any, name: str) -> Hashable:
    if isinstance(value, Tensor):
        return (tuple(value.shape), value.dtype, value.device)
    if value is None or isinstance(value, _SCALARS):
        return ("value", value)
    raise TypeError(f"argument {name!r} is a {type(value).__name__}; the CUDA-graph wrapper passes tensors, None "
                    "and bool/int/float/str keywords; convert it to a tensor")


class CUDAGraphModelWrapper(nn.Module):
    """``model`` with the same call signature ``(x, c_noise, **cond)``, replayed from CUDA graphs (module doc).

    Args:
        model: the network, e.g. `HighResLatentScoreModel`; called as ``model(x, c_noise, **cond)``.
        warmup_iters: eager calls on a side stream before each capture (>= 1, as PyTorch requires).
        max_cache_size: graphs kept (>= 1); the least recently used one is released beyond that.
        capturer: a `GraphCapturer`; default `TorchCUDAGraphCapturer` (CUDA tensors only).
    """

    def __init__(self, model: nn.Module, warmup_iters: int = 2, max_cache_size: int = 16,
                 capturer: GraphCapturer | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module (its .training flag is part of the key); got "
                            f"{type(model).__name__}")
        if isinstance(model, CUDAGraphModelWrapper):
            raise ValueError("model is already a CUDAGraphModelWrapper; wrap the network once")
        if not isinstance(warmup_iters, int) or warmup_iters < 1:
            raise ValueError(f"warmup_iters={warmup_iters!r} must be an int >= 1; PyTorch needs eager warm-up "
                             "iterations before capture (2 is the default, 11 for DDP)")
        if not isinstance(max_cache_size, int) or max_cache_size < 1:
            raise ValueError(f"max_cache_size={max_cache_size!r} must be an int >= 1 (graphs kept at once; "
                             "default 16)")
        self.model = model
        self.warmup_iters = warmup_iters
        self.max_cache_size = max_cache_size
        self.capturer: GraphCapturer = capturer if capturer is not None else TorchCUDAGraphCapturer()
        self._graphs: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._failed: dict[Hashable, str] = {}
        self._counts: Counter[str] = Counter()
        self._eager_reasons: Counter[str] = Counter()
        self._fingerprint: tuple[int, ...] | None = None
        self._warned = False
        self._last_error: str | None = None

    # ------------------------------------------------------------------------------------------- calling
    def forward(self, x: Tensor, c_noise: Tensor, **cond: Any) -> Tensor:
        if not isinstance(x, Tensor) or not isinstance(c_noise, Tensor):
            raise TypeError(f"x and c_noise must be tensors; got {type(x).__name__} and {type(c_noise).__name__}")
        args = (x, c_noise)
        reason = self._eager_reason(args, cond)
        if reason is not None:
            self._eager_reasons[reason] += 1
            return self.model(x, c_noise, **cond)
        key = self._key(args, cond)
        self._check_fingerprint()
        entry = self._graphs.get(key)
        if entry is not None:
            self._counts["hits"] += 1
            self._graphs.move_to_end(key)
            return self._replay(entry, args, cond)
        if key in self._failed:
            self._counts["fallbacks"] += 1
            return self.model(x, c_noise, **cond)
        self._counts["misses"] += 1
        try:
            entry = self._capture(args, cond)
        except GraphCaptureError as error:
            self._record_failure(key, args, cond, error)
            self._counts["fallbacks"] += 1
            return self.model(x, c_noise, **cond)
        self._counts["captures"] += 1
        self._graphs[key] = entry
        while len(self._graphs) > self.max_cache_size:
            _, evicted = self._graphs.popitem(last=False)
            self.capturer.release(evicted.graph)
            self._counts["evictions"] += 1
        return self._replay(entry, args, cond)

    def _eager_reason(self, args: tuple[Tensor, Tensor], cond: Mapping[str, Any]) -> str | None:
        tensors = [*args, *(v for v in cond.values() if isinstance(v, Tensor))]
        devices = {t.device for t in tensors}
        if len(devices) > 1:
            return "mixed_devices"
        device = args[0].device
        if not self.capturer.supports(device):
            return f"unsupported_device:{device.type}"
        if torch.is_grad_enabled() and (any(t.requires_grad for t in tensors)
                                        or any(p.requires_grad for p in self.model.parameters())):
            return "autograd"  # a replayed output carries no gradient to the parameters
        return None

    def _key(self, args: tuple[Tensor, Tensor], cond: Mapping[str, Any]) -> Hashable:
        device_type = args[0].device.type
        return (tuple(_signature(a, n) for a, n in zip(args, ("x", "c_noise"))),
                tuple((name, _signature(cond[name], name)) for name in sorted(cond)),
                (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)),
                torch.is_grad_enabled(), torch.is_inference_mode_enabled(), self.model.training)

    def _check_fingerprint(self) -> None:
        fingerprint = tuple(t.data_ptr() for t in chain(self.model.parameters(), self.model.buffers()))
        if fingerprint != self._fingerprint:
            if self._graphs:
                log.info("the model's parameters or buffers were re-allocated since capture; releasing %d CUDA "
                         "graph(s)", len(self._graphs))
                self._counts["invalidations"] += 1
            self._release_graphs()
            self._failed.clear()
            self._fingerprint = fingerprint

    def _capture(self, args: tuple[Tensor, Tensor], cond: Mapping[str, Any]) -> _Entry:
        static_args = tuple(a.clone() for a in args)
        static_kwargs = {k: v.clone() if isinstance(v, Tensor) else v for k, v in cond.items()}
        graph = self.capturer.capture(self.model, static_args, static_kwargs, self.warmup_iters)
        return _Entry(graph, static_args, static_kwargs)

    @staticmethod
    def _replay(entry: _Entry, args: tuple[Tensor, Tensor], cond: Mapping[str, Any]) -> Tensor:
        for static, value in zip(entry.static_args, args):
            static.copy_(value)
        for name, static in entry.static_kwargs.items():
            if isinstance(static, Tensor):
                static.copy_(cond[name])
        entry.graph.replay()
        return entry.graph.output.clone()

    def _record_failure(self, key: Hashable, args: tuple[Tensor, Tensor], cond: Mapping[str, Any],
                        error: GraphCaptureError) -> None:
        shapes = ", ".join(f"{n}={tuple(v.shape)}" for n, v in (("x", args[0]), *cond.items())
                           if isinstance(v, Tensor))
        self._failed[key] = str(error)
        self._last_error = f"{shapes}: {error}"
        self._counts["capture_failures"] += 1
        if not self._warned:
            self._warned = True
            log.warning("CUDA graph capture failed for %s (%s); this input signature runs eagerly from now on "
                        "(same results, no graph speed-up). Later failures are only counted in stats().",
                        shapes, error)
        else:
            log.debug("CUDA graph capture failed for %s (%s); running it eagerly", shapes, error)

    # ---------------------------------------------------------------------------------------- management
    def stats(self) -> dict[str, Any]:
        """Counters since construction.

        hits (replays), misses (lookups without a graph: captures + capture_failures), captures, evictions,
        fallbacks (calls run eagerly because their key failed to capture), capture_failures, invalidations
        (releases after the parameters moved), eager_calls and eager_reasons (calls the capturer cannot handle,
        by reason), cached (graphs held now), max_cache_size, last_capture_error.
        """
        names = ("hits", "misses", "captures", "evictions", "fallbacks", "capture_failures", "invalidations")
        stats: dict[str, Any] = {name: self._counts[name] for name in names}
        stats.update(eager_calls=sum(self._eager_reasons.values()), eager_reasons=dict(self._eager_reasons),
                     cached=len(self._graphs), max_cache_size=self.max_cache_size,
                     last_capture_error=self._last_error)
        return stats

    def _release_graphs(self) -> int:
        released = len(self._graphs)
        while self._graphs:
            _, entry = self._graphs.popitem(last=False)
            self.capturer.release(entry.graph)
        return released

    def release(self) -> int:
        """Free every captured graph (and forget failed keys so they are retried); returns how many were freed.

        The pool's memory goes back to PyTorch's caching allocator; `torch.cuda.empty_cache()` returns it to
        the driver if needed.
        """
        self._failed.clear()
        return self._release_graphs()

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half(): the captured addresses become stale
        self.release()
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"warmup_iters={self.warmup_iters}, max_cache_size={self.max_cache_size}, "
                f"capturer={type(self.capturer).__name__}")


def enable_cuda_graphs(model: nn.Module, **kwargs: Any) -> CUDAGraphModelWrapper:
    """Wrap ``model`` in a `CUDAGraphModelWrapper` (``kwargs``: warmup_iters, max_cache_size, capturer).

    An existing wrapper is returned as it is when no options are given.
    """
    if isinstance(model, CUDAGraphModelWrapper):
        if kwargs:
            raise ValueError(f"model already has CUDA graphs enabled; call disable_cuda_graphs(model) first to "
                             f"change {sorted(kwargs)}")
        return model
    return CUDAGraphModelWrapper(model, **kwargs)


def disable_cuda_graphs(model: nn.Module) -> nn.Module:
    """The inverse of `enable_cuda_graphs`: release the graphs and return the wrapped network (else ``model``)."""
    if isinstance(model, CUDAGraphModelWrapper):
        model.release()
        return model.model
    return model
