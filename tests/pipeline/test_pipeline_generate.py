import pytest
import torch

from atlas.diffusion import SAMPLERS
from atlas.pipeline import generate

from atlas_testing import tiny_bundle


def _trained_like(bundle):
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in bundle.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return bundle.eval()


def test_images_are_in_unit_range_and_ordered_prompt_major():
    bundle = _trained_like(tiny_bundle())
    result = generate(bundle, ["a red circle", "a green square"], num_samples=3, steps=3, seed=10)
    assert result.images.shape == (6, 3, 8, 8)
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert result.prompts == ["a red circle"] * 3 + ["a green square"] * 3
    assert result.seeds == list(range(10, 16))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_same_seed_is_bitwise_equal_and_batching_does_not_change_images(sampler):
    # float64 isolates the logic (per-image generators, chunking) from float32 batched-kernel rounding.
    bundle = _trained_like(tiny_bundle()).double()
    kwargs = dict(num_samples=4, steps=4, sampler=sampler, seed=3, guidance_scale=2.5)
    a = generate(bundle, ["a red circle"], **kwargs).images
    b = generate(bundle, ["a red circle"], **kwargs).images
    assert torch.equal(a, b)
    one_at_a_time = generate(bundle, ["a red circle"], batch_size=1, **kwargs).images
    torch.testing.assert_close(one_at_a_time, a, rtol=0, atol=1e-10)
    # Image 2 alone (seed 3 + 2) equals image 2 of the batch.
    alone = generate(bundle, ["a red circle"], num_samples=1, steps=4, sampler=sampler, seed=5,
                     guidance_scale=2.5).images
    torch.testing.assert_close(alone[0], a[2], rtol=0, atol=1e-10)


def test_float32_batching_changes_images_only_by_rounding():
    bundle = _trained_like(tiny_bundle())
    kwargs = dict(num_samples=4, steps=4, seed=3, guidance_scale=2.5)
    batched = generate(bundle, ["a red circle"], **kwargs).images
    single = generate(bundle, ["a red circle"], batch_size=1, **kwargs).images
    torch.testing.assert_close(single, batched, rtol=0, atol=1e-5)  # far below one 8-bit level (0.004)


def test_guidance_calls_the_network_once_per_step():
    bundle = _trained_like(tiny_bundle())
    calls = []
    handle = bundle.network.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    generate(bundle, ["a red circle", "a green square"], steps=5, sampler="dpmpp_2m", guidance_scale=4.0)
    handle.remove()
    assert calls == [4] * 5  # cond and uncond of 2 prompts in ONE forward per step


def test_negative_prompt_replaces_the_unconditional_side():
    bundle = _trained_like(tiny_bundle())
    plain = generate(bundle, ["a red circle"], steps=3, guidance_scale=3.0).images
    negative = generate(bundle, ["a red circle"], negative_prompts=["a green square"], steps=3,
                        guidance_scale=3.0).images
    assert not torch.allclose(plain, negative)
    with pytest.raises(ValueError, match="2 negative prompts for 1 prompts"):
        generate(bundle, ["a red circle"], negative_prompts=["a", "b"], steps=2)


def test_prompts_are_never_silently_dropped():
    unconditional = _trained_like(tiny_bundle(conditional=False))
    with pytest.raises(ValueError, match="unconditional.*prompts were given"):
        generate(unconditional, ["a red circle"], steps=2)
    assert generate(unconditional, None, num_samples=2, steps=2).images.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="never saw in training"):
        generate(_trained_like(tiny_bundle()), ["a purple circle"], steps=2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_samples=0), "num_samples=0"), (dict(steps=0), "steps=0"), (dict(sampler="plms"), "sampler='plms'"),
    (dict(guidance_scale=-1), "guidance_scale=-1"), (dict(batch_size=0), "batch_size=0"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(tiny_bundle(), ["a red circle"], **kwargs)


@pytest.mark.parametrize("schedule", ["karras", "exponential", "flow", "vp_linear", "vp_cosine"])
def test_every_schedule_generates(schedule):
    images = generate(_trained_like(tiny_bundle()), ["a red circle"], steps=3, schedule=schedule).images
    assert images.shape == (1, 3, 8, 8) and torch.isfinite(images).all()


def test_flow_grid_starts_at_the_models_sigma_max():
    bundle = _trained_like(tiny_bundle())
    seen = []
    generate(bundle, ["a red circle"], steps=4, schedule="flow", sampler="flow_heun", callback=seen.append)
    sigma_max = bundle.diffusion.sigma_max
    t_max = sigma_max / (1 + sigma_max)
    assert [round(float(i.sigma), 4) for i in seen] == [round(t / (1 - t), 4) for t in (t_max, 0.75 * t_max,
                                                                                          0.5 * t_max, 0.25 * t_max)]
