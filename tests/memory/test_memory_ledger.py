"""The live-bytes ledger against closed forms: every expected byte count is written out by hand.

float32 is 4 bytes, float16 2; a view shares its base's storage; autograd keeps what a backward formula needs
(sin saves its input, exp its output, a scalar multiply nothing) until backward has run.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from atlas.memory.ledger import LiveBytesLedger, MeterUnavailable, measure_peak_bytes, profiler_peak_bytes

N = 1000  # elements; 4000 bytes in float32


def test_allocations_views_and_frees_follow_closed_forms():
    with LiveBytesLedger() as ledger:
        a = torch.empty(N)
        assert ledger.current_bytes("cpu") == 4 * N
        views = [a[10:], a.view(10, 100), a.view(10, 100).t(), a[::2], a.unsqueeze(0)]
        assert ledger.current_bytes("cpu") == 4 * N  # views share a's storage
        b = a.view(10, 100).t().contiguous()  # a copy: a new storage
        h = torch.empty(N, dtype=torch.float16)
        assert ledger.current_bytes("cpu") == 4 * N + 4 * N + 2 * N
        del a
        assert ledger.current_bytes("cpu") == 10 * N  # the views keep a's storage alive
        views.clear()
        assert ledger.current_bytes("cpu") == 6 * N
        del b, h
        assert ledger.current_bytes("cpu") == 0
    assert ledger.peak_bytes("cpu") == 10 * N


def test_in_place_ops_allocate_nothing_and_out_resizes_are_charged():
    with LiveBytesLedger() as ledger:
        a, b = torch.ones(N), torch.ones(N)
        a.add_(1).mul_(2)
        torch.add(a, b, out=a)
        assert ledger.current_bytes("cpu") == 8 * N
        out = torch.empty(0)
        torch.add(a, b, out=out)  # resizes out's storage from 0 to 4N bytes
        assert ledger.current_bytes("cpu") == 12 * N
        c = a + b
        assert ledger.peak_bytes("cpu") == 16 * N
        del c, out
        ledger.reset_peak()
        assert ledger.peak_bytes("cpu") == ledger.current_bytes("cpu") == 8 * N


def test_tensors_from_before_are_ignored_unless_tracked():
    outside = torch.empty(N)
    with LiveBytesLedger() as ledger:
        view = outside[1:]
        outside.add_(1)
        assert ledger.current_bytes("cpu") == 0
        assert ledger.track([outside, view], category="parameters") == 4 * N  # one storage, counted once
        fresh = outside * 2
        assert ledger.breakdown_at_peak("cpu") == {"parameters": 4 * N, "activations": 4 * N}
        del fresh
    assert ledger.current_bytes("cpu") == 4 * N


def test_autograd_saved_tensors_live_until_backward():
    with LiveBytesLedger() as ledger:
        x = torch.ones(N, requires_grad=True)
        a = x * 2  # mul by a Python scalar saves nothing
        b = a.sin()  # sin saves its input a
        del a
        assert ledger.current_bytes("cpu") == 12 * N  # x, a (saved), b
        loss = b.sum()
        del b
        assert ledger.current_bytes("cpu") == 8 * N + 4  # x, a, the 0-d loss
        ledger.mark("backward")
        loss.backward()
        assert ledger.current_bytes("cpu") == 8 * N + 4  # x, x.grad, loss: the saved a is gone
        assert ledger.serial(x.grad) is not None
        y = torch.ones(N, requires_grad=True)
        e = y.exp()  # exp saves its output: nothing beyond e
        assert ledger.current_bytes("cpu") == 16 * N + 4
        del e
    assert ledger.peak_phase("cpu") == "backward"


def test_categories_and_replayed_peaks():
    with LiveBytesLedger() as ledger:
        with ledger.category("attention"):
            scores = torch.empty(2 * N)
        ledger.mark("after")
        other = torch.empty(N)
        del scores
        more = torch.empty(N)
    assert ledger.peak_bytes("cpu") == 12 * N
    assert ledger.breakdown_at_peak("cpu") == {"attention": 8 * N, "activations": 4 * N}
    assert ledger.category_peaks("cpu") == {"attention": 8 * N, "activations": 8 * N}
    serial = ledger.serial(other)
    assert ledger.breakdown_at_peak("cpu", relabel={serial: "mine"}) == {"attention": 8 * N, "mine": 4 * N}
    assert ledger.peak_phase("cpu") == "after"
    del other, more


def _small_step(device: str) -> None:
    """Conv, GroupNorm, linear, an explicit attention and a backward pass: the same ops on every device."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1).to(device)
    norm = nn.GroupNorm(2, 8).to(device)
    lin = nn.Linear(8, 24).to(device)
    x = torch.randn(2, 3, 8, 8, device=device)
    h = nn.functional.silu(norm(conv(x))).flatten(2).transpose(1, 2)  # (2, 64, 8)
    q, k, v = lin(h).chunk(3, dim=-1)
    attended = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=-1) @ v
    attended.square().mean().backward()


def test_meta_counts_exactly_like_cpu():
    cpu = measure_peak_bytes(lambda: _small_step("cpu"), "cpu")
    meta = measure_peak_bytes(lambda: _small_step("meta"), "meta")
    assert cpu == meta > 0


def test_profiler_meter_agrees_with_closed_form_and_ledger():
    def fn() -> torch.Tensor:
        a = torch.empty(N)
        b = torch.empty(2 * N)
        del a
        c = torch.empty(N // 2)
        del c
        return b

    assert profiler_peak_bytes(fn) == 12 * N
    assert measure_peak_bytes(fn, "cpu") == 12 * N


def test_meters_refuse_instead_of_reporting_zero():
    with pytest.raises(MeterUnavailable, match="no peak-memory meter"):
        measure_peak_bytes(lambda: None, "mps")
    if not torch.cuda.is_available():
        with pytest.raises(MeterUnavailable, match="no usable CUDA"):
            measure_peak_bytes(lambda: None, "cuda")


def test_strided_tensors_only():
    with LiveBytesLedger(), pytest.raises(NotImplementedError, match="strided tensors only"):
        torch.eye(3).to_sparse()
