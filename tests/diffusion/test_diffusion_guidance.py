"""Conditioning container and classifier-free guidance: one batched call, exact limits, loud mismatches."""

from __future__ import annotations

import pytest
import torch
from diffusion_oracles import generators

from atlas.diffusion import (
    Conditioning,
    Denoiser,
    classifier_free_guidance,
    conditional_denoiser,
    initial_noise,
    karras_sigmas,
    sample,
)

F64 = torch.float64


class ConditionedNet:
    """A toy conditional network that counts its calls and uses every field (respecting the token mask)."""

    def __init__(self):
        self.calls = 0
        self.batch_sizes = []

    def __call__(self, x, c_noise, context=None, context_mask=None, pooled=None):
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        mask = torch.ones(context.shape[:2], dtype=torch.bool) if context_mask is None else context_mask
        weights = mask.to(context.dtype)[..., None]
        tokens = (context * weights).sum(1) / weights.sum(1)  # (B, D) masked mean
        shift = tokens.mean(1, keepdim=True) + pooled.mean(1, keepdim=True)  # (B, 1)
        return torch.tanh(x) * (1 + c_noise[:, None]) + shift


def make_cond(batch: int, tokens: int, seed: int, dim: int = 4, pooled_dim: int = 3) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(torch.randn(batch, tokens, dim, generator=g, dtype=F64), None,
                        torch.randn(batch, pooled_dim, generator=g, dtype=F64))


def setup(batch: int = 3):
    net = ConditionedNet()
    denoiser = Denoiser(net, "edm")
    x = torch.randn(batch, 5, generator=torch.Generator().manual_seed(9), dtype=F64)
    sigma = torch.full((batch,), 1.3, dtype=F64)
    return net, denoiser, x, sigma


def test_scale_one_and_zero_are_conditional_and_unconditional():
    net, denoiser, x, sigma = setup()
    cond, uncond = make_cond(3, 7, 1), make_cond(3, 2, 2)
    conditional = denoiser(x, sigma, **cond.as_kwargs())
    unconditional = denoiser(x, sigma, **uncond.as_kwargs())
    net.calls = 0
    torch.testing.assert_close(classifier_free_guidance(denoiser, cond, uncond, 1.0)(x, sigma), conditional)
    torch.testing.assert_close(classifier_free_guidance(denoiser, cond, uncond, 0.0)(x, sigma), unconditional)
    assert net.calls == 2
    guided = classifier_free_guidance(denoiser, cond, uncond, 7.5)(x, sigma)
    assert net.calls == 3 and net.batch_sizes[-1] == 6
    torch.testing.assert_close(guided, unconditional + 7.5 * (conditional - unconditional))


def test_negative_prompt_is_the_uncond_side():
    _, denoiser, x, sigma = setup()
    cond, negative, empty = make_cond(3, 4, 1), make_cond(3, 4, 3), make_cond(3, 4, 4)
    guided = classifier_free_guidance(denoiser, cond, negative, 4.0)(x, sigma)
    d_neg = denoiser(x, sigma, **negative.as_kwargs())
    expected = d_neg + 4.0 * (denoiser(x, sigma, **cond.as_kwargs()) - d_neg)
    torch.testing.assert_close(guided, expected)
    assert not torch.allclose(guided, classifier_free_guidance(denoiser, cond, empty, 4.0)(x, sigma))


def test_one_model_call_per_denoise_call_over_a_sampling_run():
    net, denoiser, _, _ = setup()
    guided = classifier_free_guidance(denoiser, make_cond(2, 4, 1), make_cond(2, 4, 2), 3.0)
    nfe = []
    sigmas = karras_sigmas(6, dtype=F64)
    x = initial_noise((2, 5), sigmas[0], generators([1, 2]), dtype=F64)
    sample("heun", lambda x, s: nfe.append(1) or guided(x, s), x, sigmas)
    assert len(nfe) == 2 * 6 - 1 and net.calls == len(nfe) and set(net.batch_sizes) == {4}


def test_mismatches_raise_instead_of_falling_back():
    _, denoiser, x, sigma = setup(batch=3)
    with pytest.raises(ValueError, match="cond conditioning has batch size 2 but x has 3"):
        classifier_free_guidance(denoiser, make_cond(2, 4, 1), make_cond(2, 4, 2), 3.0)(x, sigma)
    with pytest.raises(ValueError, match="cond has batch size 3 but uncond has 2"):
        classifier_free_guidance(denoiser, make_cond(3, 4, 1), make_cond(2, 4, 2), 3.0)
    with pytest.raises(ValueError, match="context feature dims differ: 4 vs 6"):
        classifier_free_guidance(denoiser, make_cond(3, 4, 1), make_cond(3, 4, 2, dim=6), 3.0)
    with pytest.raises(ValueError, match="pooled feature dims differ"):
        classifier_free_guidance(denoiser, make_cond(3, 4, 1), make_cond(3, 4, 2, pooled_dim=5), 3.0)
    with pytest.raises(ValueError, match="different fields"):
        classifier_free_guidance(denoiser, make_cond(3, 4, 1), Conditioning(pooled=torch.zeros(3, 3)), 3.0)
    with pytest.raises(TypeError, match="Conditioning objects"):
        classifier_free_guidance(denoiser, make_cond(3, 4, 1), None, 3.0)
    with pytest.raises(ValueError, match="batch size 2 but x has 3"):
        conditional_denoiser(denoiser, make_cond(2, 4, 1))(x, sigma)


def test_conditional_denoiser_without_conditioning():
    calls = []
    denoise = conditional_denoiser(lambda x, sigma, **kw: calls.append(kw) or x, None)
    denoise(torch.zeros(2, 3), torch.ones(2))
    assert calls == [{}]


def test_conditioning_cat_pads_tokens_and_masks():
    a, b = make_cond(2, 3, 1), make_cond(1, 5, 2)
    both = a.cat(b)
    assert both.context.shape == (3, 5, 4) and both.batch_size == 3
    assert both.context_mask.tolist() == [[True] * 3 + [False] * 2] * 2 + [[True] * 5]
    torch.testing.assert_close(both.context[:2, :3], a.context)
    assert both.context[:2, 3:].abs().max().item() == 0.0
    assert set(make_cond(2, 3, 1).cat(make_cond(2, 3, 2)).as_kwargs()) == {"context", "pooled"}
    # A network that respects the mask gives the same output for padded and unpadded conditioning.
    net, x = ConditionedNet(), torch.zeros(2, 5, dtype=F64)
    c_noise = torch.zeros(2, dtype=F64)
    torch.testing.assert_close(net(x, c_noise, **both.index(slice(0, 2)).as_kwargs()), net(x, c_noise, **a.as_kwargs()))


def test_conditioning_validation_and_helpers():
    with pytest.raises(ValueError, match="disagree on the batch size"):
        Conditioning(torch.zeros(2, 3, 4), None, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        Conditioning(torch.zeros(2, 3, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="without context"):
        Conditioning(context_mask=torch.ones(2, 3, dtype=torch.bool))
    cond = make_cond(2, 3, 1)
    repeated = cond.repeat_interleave(3)
    assert repeated.batch_size == 6
    torch.testing.assert_close(repeated.index(4).context, cond.index(1).context)
    assert cond.index(-1).batch_size == 1
    half = Conditioning(cond.context, torch.ones(2, 3, dtype=torch.bool)).to(dtype=torch.float32)
    assert half.context.dtype == torch.float32 and half.context_mask.dtype == torch.bool
    assert Conditioning().batch_size is None and Conditioning().as_kwargs() == {}
