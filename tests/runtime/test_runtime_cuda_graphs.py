"""CUDA-graph wrapper: cache, keys, fallback and conditioning on CPU with a fake capturer; replay on CUDA.

Regression tests for the public reference (atlas-reference.md §2.9): its wrapper called ``forward(x, t)`` and
dropped the conditioning, keyed graphs without the autocast state, gave every graph a private pool, disabled
graphs for good after one failure, defaulted to 32 graphs while documenting 16, and had no tests.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from torch import nn

from atlas.models import HighResLatentScoreModel
from atlas.runtime import CUDAGraphModelWrapper, GraphCaptureError, disable_cuda_graphs, enable_cuda_graphs

from atlas_testing import tiny_model_config


class FakeGraph:
    """Replays like a CUDA graph: recomputes from the *static* tensors and writes the static output in place."""

    def __init__(self, fn, args, kwargs, output):
        self.fn, self.args, self.kwargs, self.output = fn, args, kwargs, output
        self.replays = 0

    def replay(self):
        self.replays += 1
        self.output.copy_(self.fn(*self.args, **self.kwargs))


class FakeCapturer:
    def __init__(self, fail_when=None):
        self.captured, self.released, self.warmups, self.attempts = [], [], [], 0
        self.fail_when = fail_when

    def supports(self, device):
        return True

    def capture(self, fn, static_args, static_kwargs, warmup_iters):
        self.attempts += 1
        self.warmups.append(warmup_iters)
        for _ in range(warmup_iters):
            fn(*static_args, **static_kwargs)
        if self.fail_when is not None and self.fail_when(static_args[0]):
            raise GraphCaptureError("fake capture failure")
        graph = FakeGraph(fn, static_args, static_kwargs, fn(*static_args, **static_kwargs))
        self.captured.append(graph)
        return graph

    def release(self, graph):
        self.released.append(graph)


class Probe(nn.Module):
    """Records what reaches it; its output depends on x, c_noise and every conditioning tensor."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(1.5), requires_grad=False)
        self.calls = []

    def forward(self, x, c_noise, **cond):
        self.calls.append({name: None if v is None else (v.clone() if torch.is_tensor(v) else v)
                           for name, v in cond.items()})
        out = self.weight * x + c_noise[:, None, None, None]
        if cond.get("context") is not None:
            out = out + cond["context"].sum(dim=(1, 2))[:, None, None, None]
        if cond.get("context_mask") is not None:
            out = out + cond["context_mask"].sum(dim=1).to(x.dtype)[:, None, None, None]
        if cond.get("pooled") is not None:
            out = out + cond["pooled"].sum(dim=1)[:, None, None, None]
        if "scale" in cond:
            out = out * cond["scale"]
        return out


def inputs(batch=2, tokens=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype)
    c_noise = torch.randn(batch, generator=g, dtype=dtype)
    mask = torch.rand(batch, tokens, generator=g) > 0.3
    mask[:, 0] = True
    cond = dict(context=torch.randn(batch, tokens, 16, generator=g, dtype=dtype), context_mask=mask,
                pooled=torch.randn(batch, 16, generator=g, dtype=dtype))
    return x, c_noise, cond


def wrapped(**kwargs):
    probe, capturer = Probe(), FakeCapturer(kwargs.pop("fail_when", None))
    return probe, capturer, CUDAGraphModelWrapper(probe, capturer=capturer, **kwargs)


def test_conditioning_passes_through_on_capture_and_on_replay():
    probe, capturer, wrapper = wrapped()
    for seed in (0, 1):  # seed 1 is a replay of the graph captured for seed 0, with new values
        x, c_noise, cond = inputs(seed=seed)
        out = wrapper(x, c_noise, **cond)
        assert set(probe.calls[-1]) == {"context", "context_mask", "pooled"}
        for name, value in cond.items():
            assert torch.equal(probe.calls[-1][name], value)
        assert torch.equal(out, Probe()(x, c_noise, **cond))
    assert wrapper.stats()["hits"] == 1 and len(capturer.captured) == 1


def test_replay_output_is_a_fresh_tensor():
    _, capturer, wrapper = wrapped()
    x, c_noise, cond = inputs()
    first = wrapper(x, c_noise, **cond)
    assert first.data_ptr() != capturer.captured[0].output.data_ptr()
    first.add_(100.0)
    assert torch.equal(wrapper(x, c_noise, **cond), Probe()(x, c_noise, **cond))


def test_hit_and_miss_counters():
    _, capturer, wrapper = wrapped()
    for batch in (1, 1, 2, 1, 2, 3):
        x, c_noise, cond = inputs(batch=batch)
        wrapper(x, c_noise, **cond)
    stats = wrapper.stats()
    assert (stats["hits"], stats["misses"], stats["captures"], stats["cached"]) == (3, 3, 3, 3)
    assert (stats["evictions"], stats["fallbacks"], stats["eager_calls"]) == (0, 0, 0)
    assert capturer.warmups == [2, 2, 2]


def test_lru_eviction_order_and_size_limit():
    _, capturer, wrapper = wrapped(max_cache_size=2)
    graph = {}
    for batch in (1, 2, 1, 3):  # 1 is used again before 3 arrives, so 2 is the least recently used
        x, c_noise, cond = inputs(batch=batch)
        wrapper(x, c_noise, **cond)
        graph.setdefault(batch, capturer.captured[-1])
    assert capturer.released == [graph[2]]
    x, c_noise, cond = inputs(batch=2)
    wrapper(x, c_noise, **cond)  # recaptured; now 1 is the least recently used
    assert capturer.released == [graph[2], graph[1]]
    stats = wrapper.stats()
    assert (stats["cached"], stats["evictions"], stats["captures"], stats["hits"]) == (2, 2, 4, 1)


def test_release_frees_every_graph_and_recaptures_afterwards():
    _, capturer, wrapper = wrapped()
    for batch in (1, 2, 3):
        wrapper(*inputs(batch=batch)[:2], **inputs(batch=batch)[2])
    assert wrapper.release() == 3
    assert capturer.released == capturer.captured and wrapper.stats()["cached"] == 0
    x, c_noise, cond = inputs(batch=1)
    wrapper(x, c_noise, **cond)
    assert wrapper.stats()["misses"] == 4 and len(capturer.captured) == 4


@pytest.mark.parametrize("change", [
    "batch", "dtype", "autocast", "context_length", "pooled_absent", "mask_absent", "training", "grad_mode",
    "scalar_value",
])
def test_every_part_of_the_key_gives_its_own_graph(change):
    probe, capturer, wrapper = wrapped()
    probe.eval()
    x, c_noise, cond = inputs()
    with torch.no_grad():
        wrapper(x, c_noise, scale=2.0, **cond)
        wrapper(x, c_noise, scale=2.0, **cond)  # same key: a hit
    assert wrapper.stats()["hits"] == 1
    kwargs, autocast, grad = dict(scale=2.0), contextlib.nullcontext(), torch.no_grad()
    if change == "batch":
        x, c_noise, cond = inputs(batch=3)
    elif change == "dtype":
        x, c_noise, cond = inputs(dtype=torch.float64)
    elif change == "autocast":  # the reference ignored autocast: an fp32 graph would have been replayed
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    elif change == "context_length":
        x, c_noise, cond = inputs(tokens=5)
    elif change == "pooled_absent":
        cond["pooled"] = None
    elif change == "mask_absent":
        del cond["context_mask"]
    elif change == "training":
        probe.train()
    elif change == "grad_mode":
        grad = torch.enable_grad()  # nothing requires grad, so this is captured, under its own key
    elif change == "scalar_value":
        kwargs = dict(scale=3.0)
    with autocast, grad:
        out = wrapper(x, c_noise, **kwargs, **cond)
        expected = probe(x, c_noise, **kwargs, **cond)
    assert wrapper.stats()["misses"] == 2 and len(capturer.captured) == 2
    assert torch.equal(out, expected)


def test_failed_capture_falls_back_per_key_and_warns_once(caplog):
    _, capturer, wrapper = wrapped(fail_when=lambda x: x.shape[0] >= 3)
    with caplog.at_level(logging.DEBUG, logger="atlas.runtime.cuda_graphs"):
        for batch in (1, 3, 3, 4, 1):
            x, c_noise, cond = inputs(batch=batch)
            assert torch.equal(wrapper(x, c_noise, **cond), Probe()(x, c_noise, **cond))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fake capture failure" in warnings[0].getMessage()
    stats = wrapper.stats()
    # batch 3 is attempted once (not retried), batch 4 fails too; batch 1 keeps its graph (no global switch-off)
    assert capturer.attempts == 3
    assert (stats["capture_failures"], stats["fallbacks"], stats["hits"], stats["cached"]) == (2, 3, 1, 1)
    assert "fake capture failure" in stats["last_capture_error"]


def test_errors_in_the_eager_warm_up_propagate():
    class Strict(Probe):
        def forward(self, x, c_noise, **cond):
            if x.shape[0] == 5:
                raise ValueError("batch 5 is invalid for this model")
            return super().forward(x, c_noise, **cond)

    wrapper = CUDAGraphModelWrapper(Strict(), capturer=FakeCapturer())
    x, c_noise, cond = inputs(batch=5)
    with pytest.raises(ValueError, match="batch 5 is invalid"):
        wrapper(x, c_noise, **cond)
    assert wrapper.stats()["fallbacks"] == 0


def test_default_capturer_on_cpu_is_the_model_bit_for_bit():
    torch.manual_seed(0)
    model = HighResLatentScoreModel(tiny_model_config()).eval()
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised output layers would make every output equal
            p.add_(0.05 * torch.randn_like(p))
    wrapper = enable_cuda_graphs(model)
    with torch.no_grad():
        for batch in (1, 2):
            x, c_noise, cond = inputs(batch=batch, tokens=5)
            assert torch.equal(wrapper(x, c_noise, **cond), model(x, c_noise, **cond))
    stats = wrapper.stats()
    assert stats["eager_reasons"] == {"unsupported_device:cpu": 2} and stats["eager_calls"] == 2
    assert stats["captures"] == 0 and stats["misses"] == 0


def test_fake_capture_of_the_real_model_matches_eager():
    torch.manual_seed(1)
    model = HighResLatentScoreModel(tiny_model_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    wrapper = CUDAGraphModelWrapper(model, capturer=FakeCapturer())
    with torch.no_grad():
        for seed in (0, 1):
            x, c_noise, cond = inputs(seed=seed, tokens=5)
            assert torch.equal(wrapper(x, c_noise, **cond), model(x, c_noise, **cond))
    assert wrapper.stats()["hits"] == 1


def test_autograd_and_mixed_devices_run_eagerly():
    probe, capturer, wrapper = wrapped()
    probe.weight.requires_grad_(True)
    x, c_noise, cond = inputs()
    out = wrapper(x, c_noise, **cond)
    out.sum().backward()
    assert probe.weight.grad is not None and capturer.attempts == 0
    wrapper(x, c_noise, extra=torch.empty(1, device="meta"), **{k: v for k, v in cond.items()})
    assert wrapper.stats()["eager_reasons"] == {"autograd": 1, "mixed_devices": 1}


def test_reallocated_parameters_invalidate_the_graphs():
    probe, capturer, wrapper = wrapped()
    x, c_noise, cond = inputs()
    wrapper(x, c_noise, **cond)
    probe.weight.data = torch.tensor(2.5)  # new storage: a real graph would still read the old address
    assert torch.equal(wrapper(x, c_noise, **cond), probe(x, c_noise, **cond))
    assert capturer.released == capturer.captured[:1] and wrapper.stats()["invalidations"] == 1
    wrapper.to(torch.float64)  # moving through the wrapper releases its graphs at once
    assert wrapper.stats()["cached"] == 0 and len(capturer.released) == 2


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="warmup_iters=0"):
        CUDAGraphModelWrapper(Probe(), warmup_iters=0)
    with pytest.raises(ValueError, match="max_cache_size=0"):
        CUDAGraphModelWrapper(Probe(), max_cache_size=0)
    with pytest.raises(TypeError, match="nn.Module"):
        CUDAGraphModelWrapper(lambda x, c: x)
    _, _, wrapper = wrapped()
    with pytest.raises(TypeError, match="'scale' is a list"):
        wrapper(*inputs()[:2], scale=[1.0])


def test_enable_and_disable_are_inverse_switches():
    probe = Probe()
    wrapper = enable_cuda_graphs(probe, max_cache_size=4, capturer=FakeCapturer())
    assert wrapper.max_cache_size == 4 and wrapper.warmup_iters == 2
    assert CUDAGraphModelWrapper(probe).max_cache_size == 16  # the documented default (reference used 32)
    assert enable_cuda_graphs(wrapper) is wrapper
    with pytest.raises(ValueError, match="already has CUDA graphs enabled"):
        enable_cuda_graphs(wrapper, max_cache_size=8)
    wrapper(*inputs()[:2], **inputs()[2])
    assert disable_cuda_graphs(wrapper) is probe and wrapper.stats()["cached"] == 0
    assert disable_cuda_graphs(probe) is probe
    wrapper.eval()
    assert not probe.training


# --------------------------------------------------------------------------------------------- CUDA only

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_replay_equals_eager_with_conditioning(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    pools = []
    real_graph = torch.cuda.graph

    def recording_graph(graph, pool=None, **kwargs):
        pools.append(pool)
        return real_graph(graph, pool=pool, **kwargs)

    monkeypatch.setattr(torch.cuda, "graph", recording_graph)
    torch.manual_seed(0)
    model = HighResLatentScoreModel(tiny_model_config()).cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    wrapper = CUDAGraphModelWrapper(model)
    outputs = []
    with torch.no_grad():
        for batch, seed in ((2, 0), (2, 1), (3, 2)):
            x, c_noise, cond = inputs(batch=batch, tokens=5, seed=seed)
            x, c_noise = x.cuda(), c_noise.cuda()
            cond = {k: v.cuda() for k, v in cond.items()}
            out = wrapper(x, c_noise, **cond)
            expected = model(x, c_noise, **cond)
            assert (out - expected).abs().max().item() <= 1e-5
            outputs.append(out)
        with torch.autocast("cuda", dtype=torch.float16):
            out = wrapper(x, c_noise, **cond)
            expected = model(x, c_noise, **cond)
        assert (out.float() - expected.float()).abs().max().item() <= 1e-2
    stats = wrapper.stats()
    assert (stats["captures"], stats["hits"], stats["fallbacks"]) == (3, 1, 0), stats
    assert not torch.allclose(outputs[0], outputs[1])  # the replay used the new inputs
    assert len(pools) == 3 and all(p is pools[0] for p in pools)  # one shared memory pool
    assert wrapper.release() == 3
