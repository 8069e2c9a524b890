"""Dilated self-attention inside HighResLatentScoreModel: wiring, equivalences, config round trip, validation."""

import json

import pytest
import torch
import torch.nn.functional as F

from atlas.attention import ImprovedDilatedAttention, dilated_attention
from atlas.models import HighResLatentScoreModel, HighResModelConfig
from atlas.models.blocks import AttentionBlock

from atlas_testing import tiny_model_config

# tiny_model_config: resolution 8, channel_mult (1, 2) -> level 0 has 8*8 = 64 tokens, level 1 has 4*4 = 16.
SPARSE = dict(dilated_segment_lengths=(8, 16), dilated_dilation_rates=(1, 2))


def _config(**overrides) -> HighResModelConfig:
    return tiny_model_config(attention_levels=(0, 1), **overrides)


def _inputs(cfg, side=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, side, side, generator=g, dtype=dtype)
    level = torch.randn(2, generator=g, dtype=dtype)
    context = torch.randn(2, 5, cfg.context_dim, generator=g, dtype=dtype)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    pooled = torch.randn(2, cfg.pooled_dim, generator=g, dtype=dtype)
    return x, level, context, mask, pooled


def _randomised(cfg, dtype=torch.float32) -> HighResLatentScoreModel:
    # Zero-initialised output layers make a fresh model ignore its inputs; perturb every parameter.
    torch.manual_seed(0)
    model = HighResLatentScoreModel(cfg).to(dtype)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _attention_blocks(model):
    return [m for m in model.modules() if isinstance(m, AttentionBlock)]


def test_default_model_has_no_dilated_attention():
    cfg = tiny_model_config()
    assert (cfg.dilated_levels, cfg.dilated_segment_lengths, cfg.dilated_dilation_rates) == ((), (), ())
    assert all(block.dilated is None for block in _attention_blocks(HighResLatentScoreModel(cfg)))


def test_only_the_chosen_levels_are_dilated():
    model = HighResLatentScoreModel(_config(dilated_levels=(0,), **SPARSE))
    widths = {block.qkv.in_features: block.dilated is not None for block in _attention_blocks(model)}
    assert widths == {8: True, 16: False}  # level 0 is 8 channels wide, level 1 is 16


@pytest.mark.parametrize("mode", ["head_split", "longnet"])
def test_dilated_model_runs_forward_and_backward(mode):
    cfg = _config(dilated_levels=(0, 1), dilated_mode=mode, gradient_checkpointing=True, **SPARSE)
    model = _randomised(cfg).train()
    x, level, context, mask, pooled = _inputs(cfg, side=16)  # not the native size: 256 and 64 tokens
    out = model(x, level, context, mask, pooled)
    assert out.shape == x.shape
    F.mse_loss(out, torch.zeros_like(out)).backward()
    for block in _attention_blocks(model):
        assert block.qkv.weight.grad is not None and block.qkv.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("mode", ["head_split", "longnet"])
def test_one_segment_without_dilation_equals_full_attention(mode, dtype, tolerance):
    # w = 64 covers every level's tokens (64 at level 0; 16 at level 1, where w > n), r = 1 keeps every row.
    full = _randomised(_config(), dtype)
    dilated = HighResLatentScoreModel(_config(dilated_levels=(0, 1), dilated_segment_lengths=(64,),
                                              dilated_dilation_rates=(1,), dilated_mode=mode)).to(dtype)
    dilated.load_state_dict(full.state_dict())  # same parameters: the dilated core has none
    assert all(block.dilated is not None for block in _attention_blocks(dilated))
    inputs = _inputs(full.config, dtype=dtype)
    reference = full(*inputs)
    torch.testing.assert_close(dilated(*inputs), reference, rtol=0, atol=tolerance * reference.abs().max().item())


@pytest.mark.parametrize("mode", ["head_split", "longnet"])
def test_attention_block_self_attention_is_the_reference_dilated_attention(mode):
    # A sparse pattern, checked against atlas.attention's reference function: catches layout mix-ups
    # (heads vs positions) that the one-segment equivalence cannot see.
    segments, rates = SPARSE["dilated_segment_lengths"], SPARSE["dilated_dilation_rates"]
    block = AttentionBlock(8, num_heads=2, groups=4, context_dim=None,
                           dilated=ImprovedDilatedAttention(segments, rates, mode=mode)).double()
    torch.nn.init.normal_(block.proj.weight)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)  # 36 tokens: short tail segments for w = 8 and 16
    b, c, h, w = x.shape
    tokens = block.norm(x).flatten(2).transpose(1, 2)
    q, k, v = (t.reshape(b, h * w, 2, c // 2) for t in block.qkv(tokens).chunk(3, -1))
    attended = dilated_attention(q, k, v, segments, rates, mode=mode).reshape(b, h * w, c)
    expected = (x.flatten(2).transpose(1, 2) + block.proj(attended)).transpose(1, 2).reshape(b, c, h, w)
    torch.testing.assert_close(block(x, None, None), expected, rtol=0, atol=1e-12)


def test_pattern_and_mode_change_the_output():
    inputs = _inputs(_config())
    full = _randomised(_config())
    outputs = {"full": full(*inputs)}
    for name, fields in {"head_split": dict(dilated_mode="head_split"), "longnet": dict(dilated_mode="longnet"),
                         "rates 1, 4": dict(dilated_mode="head_split", dilated_dilation_rates=(1, 4))}.items():
        model = HighResLatentScoreModel(_config(dilated_levels=(0, 1), **{**SPARSE, **fields}))
        model.load_state_dict(full.state_dict())
        outputs[name] = model(*inputs)
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(outputs[a], outputs[b], atol=1e-4), (a, b)


def test_config_round_trips_through_json():
    cfg = _config(dilated_levels=[1, 0], dilated_segment_lengths=[8, 16], dilated_dilation_rates=[1, 2],
                  dilated_mode="longnet")
    assert cfg.dilated_levels == (0, 1) and cfg.dilated_segment_lengths == (8, 16)
    restored = HighResModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg
    model, again = HighResLatentScoreModel(cfg), HighResLatentScoreModel(restored)
    again.load_state_dict(model.state_dict())
    inputs = _inputs(cfg)
    torch.testing.assert_close(again(*inputs), model(*inputs), rtol=0, atol=0)


def test_config_written_before_dilated_attention_still_loads():
    old = {k: v for k, v in _config().to_dict().items() if not k.startswith("dilated_")}
    assert HighResModelConfig.from_dict(old) == _config()


@pytest.mark.parametrize("fields,match", [
    (dict(dilated_levels=(0,), attention_levels=(1,), **SPARSE),
     r"dilated_levels=\(0,\): level 0 has no self-attention \(attention_levels=\(1,\)\); add 0 to attention_levels"),
    (dict(dilated_levels=(1,), dilated_segment_lengths=(8, 16), dilated_dilation_rates=(1,)),
     r"segment_lengths and dilation_rates must have same length: got 2 and 1"),
    (dict(dilated_levels=(1,), dilated_segment_lengths=(0,), dilated_dilation_rates=(1,)),
     r"segment_lengths must contain positive integers only"),
    (dict(dilated_levels=(1,)), r"segment_lengths must not be empty"),
    (dict(**SPARSE), r"dilated_segment_lengths=\(8, 16\): has no effect because dilated_levels is empty"),
    (dict(dilated_mode="longnet"), r"dilated_mode='longnet': has no effect because dilated_levels is empty"),
    (dict(dilated_levels=(1,), dilated_mode="paper", **SPARSE), r"dilated_mode='paper': must be one of"),
    (dict(dilated_levels=(1,), dilated_segment_lengths=(4, 8, 16), dilated_dilation_rates=(1, 2, 4)),
     r"num_heads=2: must be >= the 3 dilated patterns in dilated_mode='head_split'.*dilated_mode='longnet'"),
])
def test_config_errors_name_field_value_and_fix(fields, match):
    fields = {"attention_levels": (0, 1), **fields}
    with pytest.raises(ValueError, match=match):
        tiny_model_config(**fields)


def test_longnet_mode_allows_more_patterns_than_heads():
    cfg = _config(dilated_levels=(1,), dilated_segment_lengths=(4, 8, 16), dilated_dilation_rates=(1, 2, 4),
                  dilated_mode="longnet")
    assert HighResLatentScoreModel(cfg)(*_inputs(cfg)).shape == (2, 3, 8, 8)
