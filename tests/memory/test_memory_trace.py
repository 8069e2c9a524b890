"""`atlas.memory.trace` on plain torch modules (not atlas's UNet), against closed-form byte counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atlas.memory.trace import make_optimizer, optimizer_state, tensor_bytes, trace_step

FP32 = 4


def _meta_linear(fan_in: int = 64, fan_out: int = 128) -> nn.Linear:
    with torch.device("meta"):
        return nn.Linear(fan_in, fan_out, bias=False)


class _SelfAttention(nn.Module):
    """Calls SDPA on its inputs directly: no parameters, so the peak is inputs, scores and output alone."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_inference_peak_is_weights_inputs_and_output():
    linear = _meta_linear()
    traced = trace_step(linear, lambda: (torch.empty(4, 64, device="meta"),), linear, device="cpu")
    weight, x, y = 64 * 128 * FP32, 4 * 64 * FP32, 4 * 128 * FP32
    assert traced.peak_bytes == weight + x + y
    assert traced.ledger.peak_phase("meta") == "forward" and traced.relabel == {} and traced.attention_calls == {}


def test_naive_attention_adds_scores_and_probabilities_over_an_ideal_kernel():
    batch, heads, tokens, dim = 1, 2, 256, 8
    module = _SelfAttention()

    def inputs():
        return tuple(torch.empty(batch, heads, tokens, dim, device="meta") for _ in range(3))

    naive = trace_step(module, inputs, module, attention="naive", device="cpu")
    ideal = trace_step(module, inputs, module, attention="ideal", device="cpu")
    qkv_out = 4 * batch * heads * tokens * dim * FP32
    assert ideal.peak_bytes == qkv_out  # an ideal kernel allocates only its output (no log-sum-exp kept)
    # softmax(QK^T) @ V with the scores still referenced: two (B, H, N, N) fp32 matrices live at once
    assert naive.peak_bytes - ideal.peak_bytes == 2 * batch * heads * tokens ** 2 * FP32
    assert naive.attention_calls == {"naive": 1} and ideal.attention_calls == {"ideal": 1}
    fused = trace_step(module, inputs, module, attention="sdpa", device="cpu", threads=1)
    assert fused.attention_calls == {"cpu_flash": 1}


def test_training_labels_gradients_and_keeps_adamw_state():
    linear = _meta_linear()
    optimizer = make_optimizer("adamw", linear, foreach=False)
    assert tensor_bytes(optimizer_state(optimizer)) == 2 * 64 * 128 * FP32  # exp_avg and exp_avg_sq
    traced = trace_step(linear, lambda: (torch.empty(4, 64, device="meta"),), lambda x: linear(x).square().mean(),
                        device="cpu", training=True, optimizer=optimizer)
    parts = traced.ledger.category_peaks("meta", traced.relabel)
    assert parts["gradients"] == parts["parameters"] == 64 * 128 * FP32
    assert parts["optimizer"] == 2 * 64 * 128 * FP32
    assert linear.weight.grad is None  # the step ends with zero_grad(set_to_none=True)


def test_arguments_are_checked_at_the_boundary():
    real = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="meta device"):
        trace_step(real, lambda: (torch.empty(1, 4),), real)
    linear = _meta_linear()
    with pytest.raises(ValueError, match="attention='flash3' is not supported"):
        trace_step(linear, lambda: (torch.empty(1, 64, device="meta"),), linear, attention="flash3")
    with pytest.raises(ValueError, match="training=False"):
        trace_step(linear, lambda: (torch.empty(1, 64, device="meta"),), linear,
                   optimizer=make_optimizer("sgd", linear, foreach=False))
    with pytest.raises(ValueError, match="optimizer='lion'"):
        make_optimizer("lion", linear, foreach=False)
