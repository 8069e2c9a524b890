import math

import pytest
import torch
import torch.nn.functional as F

from atlas.models import HighResLatentScoreModel, HighResModelConfig
from atlas.models.blocks import AttentionBlock

from atlas_testing import tiny_model_config


def _inputs(cfg, batch=2, side=None, tokens=5, dtype=torch.float32):
    side = side or cfg.resolution
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.in_channels, side, side, generator=g, dtype=dtype)
    level = torch.randn(batch, generator=g, dtype=dtype)
    context = torch.randn(batch, tokens, cfg.context_dim, generator=g, dtype=dtype)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    pooled = torch.randn(batch, cfg.pooled_dim, generator=g, dtype=dtype)
    return x, level, context, mask, pooled


def _randomise(model):
    # Zero-initialised output layers make a fresh model ignore its inputs; perturb every parameter.
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("field,value,match", [
    ("resolution", 30, r"resolution=30.*multiple of 2\*\*\(len\(channel_mult\)-1\) = 4.*use 32"),
    ("base_channels", 0, r"base_channels=0.*positive integer"),
    ("attention_levels", (5,), r"level 5 does not exist"),
    ("norm_groups", 5, r"norm_groups=5.*must divide"),
    ("num_heads", 3, r"num_heads=3.*must divide"),
    ("dropout", 1.5, r"dropout=1.5.*\[0, 1\)"),
    ("channel_mult", (), r"channel_mult"),
])
def test_config_errors_name_field_value_and_fix(field, value, match):
    fields = dict(resolution=32, base_channels=32, channel_mult=(1, 2, 2), norm_groups=8, num_heads=4)
    fields[field] = value
    with pytest.raises(ValueError, match=match):
        HighResModelConfig(**fields)


def test_context_dim_mismatch_with_text_encoder_is_an_error():
    cfg = tiny_model_config(context_dim=16)
    cfg.check_context_dim(16)
    with pytest.raises(ValueError, match=r"context_dim=16 does not match the text encoder's output width 32"):
        cfg.check_context_dim(32)


def test_config_round_trips_through_dict():
    cfg = tiny_model_config(gradient_checkpointing=True)
    assert HighResModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown HighResModelConfig fields"):
        HighResModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_forward_shapes_for_pixel_and_latent_inputs():
    for in_ch, out_ch in [(3, None), (4, 4), (1, 2)]:
        cfg = tiny_model_config(in_channels=in_ch, out_channels=out_ch)
        model = HighResLatentScoreModel(cfg)
        x, level, context, mask, pooled = _inputs(cfg, side=16)
        assert model(x, level, context, mask, pooled).shape == (2, cfg.out_channels, 16, 16)


def test_conditioning_is_never_silently_dropped_or_ignored():
    cfg = tiny_model_config()
    model = _randomise(HighResLatentScoreModel(cfg))
    x, level, context, mask, pooled = _inputs(cfg)
    with pytest.raises(ValueError, match="text-conditioned but no context"):
        model(x, level, None, None, pooled)
    with pytest.raises(ValueError, match=r"context must have shape \(2, T, 16\)"):
        model(x, level, torch.randn(2, 5, 7), mask, pooled)
    with pytest.raises(ValueError, match=r"context must have shape \(2, T, 16\)"):
        model(x, level, context[:1], mask[:1], pooled)
    with pytest.raises(ValueError, match="no valid token"):
        model(x, level, context, torch.zeros_like(mask), pooled)
    with pytest.raises(ValueError, match="pooled must have shape"):
        model(x, level, context, mask, None)
    base = model(x, level, context, mask, pooled)
    assert not torch.allclose(base, model(x, level, context + 1, mask, pooled))
    assert not torch.allclose(base, model(x, level, context, mask, pooled + 1))
    unconditional = HighResLatentScoreModel(tiny_model_config(context_dim=None, pooled_dim=None))
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(x, level, context)


def test_padded_tokens_have_no_influence():
    cfg = tiny_model_config()
    model = _randomise(HighResLatentScoreModel(cfg)).double()
    x, level, context, mask, pooled = _inputs(cfg, dtype=torch.float64)
    mask[:, 3:] = False
    changed = context.clone()
    changed[:, 3:] = 100.0
    torch.testing.assert_close(model(x, level, context, mask, pooled), model(x, level, changed, mask, pooled),
                               rtol=0, atol=1e-12)


def test_spatial_size_must_divide():
    cfg = tiny_model_config()
    model = HighResLatentScoreModel(cfg)
    x, level, context, mask, pooled = _inputs(cfg, side=9)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(x, level, context, mask, pooled)


def test_attention_block_equals_naive_attention_with_mask():
    torch.manual_seed(0)
    block = AttentionBlock(8, num_heads=2, groups=4, context_dim=6).double()
    _randomise(block)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    context = torch.randn(2, 4, 6, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])

    def naive(q, k, v, key_mask=None):
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1) @ v

    b, c, h, w = x.shape
    heads = lambda t: t.view(b, t.shape[1], 2, c // 2).transpose(1, 2)  # noqa: E731
    tokens = block.norm(x).flatten(2).transpose(1, 2)
    q, k, v = block.qkv(tokens).chunk(3, -1)
    out = x.flatten(2).transpose(1, 2) + block.proj(naive(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(b, h * w, c))
    q = heads(block.to_q(block.cross_norm(out)))
    k, v = (heads(t) for t in block.to_kv(context).chunk(2, -1))
    out = out + block.cross_proj(naive(q, k, v, mask).transpose(1, 2).reshape(b, h * w, c))
    expected = out.transpose(1, 2).reshape(b, c, h, w)
    torch.testing.assert_close(block(x, context, mask), expected, rtol=0, atol=1e-10)


def test_gradient_checkpointing_gives_identical_gradients():
    cfg = tiny_model_config()
    plain = _randomise(HighResLatentScoreModel(cfg)).double()
    ckpt = HighResLatentScoreModel(tiny_model_config(gradient_checkpointing=True)).double()
    ckpt.load_state_dict(plain.state_dict())
    x, level, context, mask, pooled = _inputs(cfg, dtype=torch.float64)
    grads = []
    for model in (plain, ckpt):
        model.train()
        model.zero_grad()
        F.mse_loss(model(x, level, context, mask, pooled), torch.zeros_like(x)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
