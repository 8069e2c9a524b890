"""The factory: exact kinds, both call styles, no mutation, and the pure "auto" rule."""

from __future__ import annotations

import logging

import pytest
import torch

from atlas.attention import (
    KINDS,
    AttentionEnvironment,
    BlockSparseDilatedAttention,
    DilatedAttention,
    DilatedAttentionConfig,
    DistributedDilatedAttention,
    DistributedMultiheadDilatedAttention,
    ImprovedDilatedAttention,
    ImprovedMultiheadDilatedAttention,
    MultiheadConfig,
    MultiheadDilatedAttention,
    RingDilatedAttention,
    RingMultiheadDilatedAttention,
    create_dilated_attention,
    create_multihead_dilated_attention,
    explain_selection,
    register_kind,
    select_kind,
)
from atlas.attention import factory as factory_module

PATTERN = dict(segment_lengths=[8, 16], dilation_rates=[1, 2])
CPU = AttentionEnvironment()


def test_kinds_are_exactly_the_guides():
    assert set(KINDS) == {"auto", "standard", "improved", "ring", "distributed", "block_sparse"}


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        create_dilated_attention("flash", **PATTERN)
    for kind in KINDS:
        assert repr(kind) in str(info.value)


@pytest.mark.parametrize(
    "kind,core,multihead",
    [
        ("standard", DilatedAttention, MultiheadDilatedAttention),
        ("improved", ImprovedDilatedAttention, ImprovedMultiheadDilatedAttention),
        ("ring", RingDilatedAttention, RingMultiheadDilatedAttention),
        ("distributed", DistributedDilatedAttention, DistributedMultiheadDilatedAttention),
        ("block_sparse", BlockSparseDilatedAttention, MultiheadDilatedAttention),
    ],
)
def test_each_kind_builds_its_classes(kind, core, multihead):
    options = dict(block_size=4) if kind == "block_sparse" else {}
    assert type(create_dilated_attention(kind, **PATTERN, **options)) is core
    module = create_multihead_dilated_attention(kind, embed_dim=16, num_heads=4, **PATTERN, **options)
    assert type(module) is multihead and type(module.attention) is core
    assert module(torch.randn(2, 20, 16)).shape == (2, 20, 16)


def test_config_objects_are_used_and_never_mutated():
    attention_config = DilatedAttentionConfig([8, 16], [1, 2], dropout=0.1, use_tf32=True)
    multihead_config = MultiheadConfig(embed_dim=16, num_heads=4, gamma_init=1.5)
    before = (repr(attention_config), repr(multihead_config))
    module = create_multihead_dilated_attention(
        "standard", multihead_config=multihead_config, attention_config=attention_config, embed_dim=32, dropout=0.0
    )
    assert (repr(attention_config), repr(multihead_config)) == before
    assert module.embed_dim == 32 and module.num_heads == 4 and module.multihead_config.gamma_init == 1.5
    assert module.attention.config.dropout == 0.0 and module.attention.config.use_tf32
    assert module.attention.segment_lengths == (8, 16)


def test_keyword_style_matches_the_guide():
    module = create_multihead_dilated_attention(
        "improved", embed_dim=48, num_heads=12, segment_lengths=[8, 16, 32], dilation_rates=[1, 2, 4],
        dropout=0.1, bias=False, layer_norm=False, layer_norm_eps=1e-6, gamma_init=0.5, dtype=torch.float64,
    )
    assert module.q_proj.bias is None and module.norm is None and module.q_proj.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="embed_dim and num_heads are required"):
        create_multihead_dilated_attention("standard", **PATTERN)
    with pytest.raises(ValueError, match="segment_lengths and dilation_rates are required"):
        create_dilated_attention("standard")


@pytest.mark.parametrize(
    "environment,kind",
    [
        (AttentionEnvironment(world_size=2), "distributed"),
        (AttentionEnvironment(world_size=4, device_type="cuda", sdpa_flash_available=True), "distributed"),
        (AttentionEnvironment(expected_seq_len=131_072), "ring"),
        (AttentionEnvironment(expected_seq_len=4096, ring_min_seq_len=4096), "ring"),
        (AttentionEnvironment(expected_seq_len=131_071), "standard"),
        (AttentionEnvironment(device_type="cuda", sdpa_flash_available=True), "improved"),
        (AttentionEnvironment(device_type="cuda", sdpa_mem_efficient_available=True), "improved"),
        (AttentionEnvironment(device_type="cuda"), "standard"),
        (AttentionEnvironment(device_type="cpu", sdpa_flash_available=True), "standard"),
        (CPU, "standard"),
    ],
)
def test_auto_rule_table(environment, kind):
    choice = select_kind(environment)
    assert choice.kind == kind and choice.reason and choice.environment is environment
    assert select_kind(environment) == choice


def test_auto_is_logged_inspectable_and_equals_the_chosen_kind(caplog):
    with caplog.at_level(logging.INFO, logger="atlas.attention.factory"):
        auto = create_multihead_dilated_attention("auto", embed_dim=16, num_heads=4, environment=CPU,
                                                  dtype=torch.float64, **PATTERN)
    assert "'auto' -> 'standard'" in caplog.text
    assert auto.kind_choice.kind == "standard"
    standard = create_multihead_dilated_attention("standard", embed_dim=16, num_heads=4, dtype=torch.float64,
                                                  **PATTERN)
    standard.load_state_dict(auto.state_dict())
    x = torch.randn(1, 20, 16, dtype=torch.float64)
    torch.testing.assert_close(auto(x), standard(x), atol=0, rtol=0)
    improved = create_dilated_attention(
        "auto", environment=AttentionEnvironment(device_type="cuda", sdpa_flash_available=True), **PATTERN
    )
    assert type(improved) is ImprovedDilatedAttention
    assert explain_selection(CPU).kind == "standard"


def test_auto_builds_ring_and_distributed_with_their_options(caplog):
    with caplog.at_level(logging.INFO, logger="atlas.attention.factory"):
        ring = create_dilated_attention("auto", environment=AttentionEnvironment(expected_seq_len=200_000),
                                        chunk_size=8, **PATTERN)
    assert "'auto' -> 'ring'" in caplog.text and "expected_seq_len=200000" in ring.kind_choice.reason
    assert type(ring) is RingDilatedAttention and ring.chunk_size == 8
    module = create_multihead_dilated_attention("auto", embed_dim=16, num_heads=4, process_group=None,
                                                environment=AttentionEnvironment(world_size=2), **PATTERN)
    assert type(module) is DistributedMultiheadDilatedAttention and module.kind_choice.kind == "distributed"
    # Without an initialised process group both run on one process and compute the standard function.
    q, k, v = (torch.randn(1, 20, 4, 8, dtype=torch.float64) for _ in range(3))
    expected = DilatedAttention(**PATTERN)(q, k, v, is_causal=True)
    torch.testing.assert_close(ring(q, k, v, is_causal=True), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(module.attention(q, k, v, is_causal=True), expected, atol=1e-12, rtol=0)


def test_register_kind_extends_the_factory(monkeypatch):
    monkeypatch.setitem(factory_module._REGISTRY, "ring", None)
    register_kind("ring", DilatedAttention)
    assert type(create_dilated_attention("ring", **PATTERN)) is DilatedAttention
    module = create_multihead_dilated_attention("ring", embed_dim=16, num_heads=4, **PATTERN)
    assert type(module) is MultiheadDilatedAttention
    with pytest.raises(ValueError, match="to register"):
        register_kind("auto", DilatedAttention)
