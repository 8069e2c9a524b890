"""Multi-head modules and configs: shapes, the guide's validation texts, MAGNETO init, sub-LayerNorm, dropout."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from atlas.attention import (
    DilatedAttention,
    DilatedAttentionConfig,
    ImprovedMultiheadDilatedAttention,
    MultiheadConfig,
    MultiheadDilatedAttention,
    dilated_attention,
)


def _module(cls=MultiheadDilatedAttention, **overrides):
    kwargs = dict(embed_dim=24, num_heads=6, segment_lengths=[8, 16], dilation_rates=[1, 2], dtype=torch.float64)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return cls(**kwargs)


def test_guide_error_texts():
    with pytest.raises(ValueError) as info:
        DilatedAttentionConfig([2048, 4096, 8192], [1, 2])
    assert str(info.value) == "segment_lengths and dilation_rates must have same length: got 3 and 2"
    with pytest.raises(ValueError) as info:
        MultiheadConfig(embed_dim=768, num_heads=13)
    assert str(info.value) == "embed_dim (768) must be divisible by num_heads (13). Got head_dim=59.08"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(segment_lengths=[0, 8], dilation_rates=[1, 2]), "positive integers"),
        (dict(segment_lengths=[8], dilation_rates=[-1]), "positive integers"),
        (dict(segment_lengths=[8], dilation_rates=[1], dropout=1.5), r"dropout must be a probability in \[0, 1\]"),
        (dict(segment_lengths=[8], dilation_rates=[1], mode="paper"), "mode must be one of"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DilatedAttentionConfig(**kwargs)


def test_head_split_needs_a_head_per_group():
    with pytest.raises(ValueError, match=r"num_heads \(2\) must be >= the number of .* groups \(3\)"):
        _module(embed_dim=8, num_heads=2, segment_lengths=[4, 8, 16], dilation_rates=[1, 2, 4])
    _module(embed_dim=8, num_heads=2, segment_lengths=[4, 8, 16], dilation_rates=[1, 2, 4], mode="longnet")


def test_configs_are_frozen_tuples():
    config = DilatedAttentionConfig([8, 16], [1, 2])
    assert config.segment_lengths == (8, 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dropout = 0.5


@pytest.mark.parametrize("cls", [MultiheadDilatedAttention, ImprovedMultiheadDilatedAttention])
def test_forward_equals_projections_around_the_core(cls):
    module = _module(cls).eval()
    x = torch.randn(2, 20, 24, dtype=torch.float64)
    out = module(x, is_causal=True)
    assert out.shape == (2, 20, 24)
    q, k, v = (p(x).view(2, 20, 6, 4) for p in (module.q_proj, module.k_proj, module.v_proj))
    merged = dilated_attention(q, k, v, [8, 16], [1, 2], is_causal=True).reshape(2, 20, 24)
    torch.testing.assert_close(out, module.out_proj(module.norm(merged)), atol=1e-12, rtol=0)
    result, weights = module(x, need_weights=True)
    assert weights is None and torch.equal(result, module(x))


def test_standard_and_improved_multihead_agree():
    standard, improved = _module(), _module(ImprovedMultiheadDilatedAttention)
    improved.load_state_dict(standard.state_dict())
    x = torch.randn(2, 30, 24, dtype=torch.float64)
    mask = torch.rand(2, 30) < 0.2
    torch.testing.assert_close(improved(x, key_padding_mask=mask), standard(x, key_padding_mask=mask),
                               atol=1e-12, rtol=0)


def test_magneto_init_and_sub_layer_norm():
    torch.manual_seed(0)
    module = MultiheadDilatedAttention(512, 8, [64], [1], gamma_init=2.0)
    xavier = math.sqrt(2.0 / (512 + 512))
    assert module.q_proj.weight.std().item() == pytest.approx(xavier, rel=0.02)
    assert module.k_proj.weight.std().item() == pytest.approx(xavier, rel=0.02)
    assert module.v_proj.weight.std().item() == pytest.approx(2.0 * xavier, rel=0.02)
    assert module.out_proj.weight.std().item() == pytest.approx(2.0 * xavier, rel=0.02)
    projections = (module.q_proj, module.k_proj, module.v_proj, module.out_proj)
    assert all(torch.equal(p.bias, torch.zeros(512)) for p in projections)
    assert isinstance(module.norm, torch.nn.LayerNorm) and module.norm.eps == 1e-5
    assert MultiheadDilatedAttention(16, 2, [8], [1], layer_norm=False, bias=False).norm is None


def test_dropout_is_deterministic_when_off_and_active_only_in_training():
    x = torch.randn(1, 16, 24, dtype=torch.float64)
    quiet = _module().train()
    assert torch.equal(quiet(x), quiet(x))
    noisy = _module(dropout=0.5).train()
    assert not torch.equal(noisy(x), noisy(x))
    noisy.eval()
    assert torch.equal(noisy(x), noisy(x))


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="equal lengths"):
        _module()(torch.randn(1, 8, 24, dtype=torch.float64), torch.randn(1, 4, 24, dtype=torch.float64))


def test_core_module_checks_heads_at_forward():
    core = DilatedAttention([4, 8, 16], [1, 2, 4])
    q = torch.randn(1, 16, 2, 4)
    with pytest.raises(ValueError, match="num_heads"):
        core(q, q, q)
