"""The easy API: create_sampler(...).generate(...) on the bundled demo and on a freshly trained model."""

import logging

import pytest
import torch

import atlas
from atlas.api import EasySampler, create_sampler
from atlas.checkpoint import save_checkpoint
from atlas.config.sampler import SamplerConfig

from atlas_testing import tiny_bundle

FAST = dict(gpu_memory="CPU", device="cpu", memory_check=False)


@pytest.fixture(scope="module")
def demo():
    return create_sampler(**FAST)


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    bundle = tiny_bundle()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in bundle.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return save_checkpoint(tmp_path / "tiny", bundle)


def test_three_lines_give_decoded_images_in_unit_range(demo):
    images = demo.generate(["a red circle"], num_samples=2, timesteps=4, seed=0)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert demo.last_result.prompts == ["a red circle"] * 2 and demo.last_result.seeds == [0, 1]


def test_top_level_names_are_the_easy_api():
    assert atlas.create_sampler is create_sampler and isinstance(atlas.list_profiles(print_table=False), list)
    assert atlas.detect_gpu_profile().name == "CPU"  # this machine has no GPU


def test_same_seed_is_bitwise_equal_and_batch_size_does_not_change_images(tiny_checkpoint):
    kwargs = dict(num_samples=4, timesteps=3, seed=7)
    one = create_sampler(tiny_checkpoint, batch_size=1, **FAST)
    four = create_sampler(tiny_checkpoint, batch_size=4, **FAST)
    a = four.generate(["a red circle"], **kwargs)
    assert torch.equal(a, four.generate(["a red circle"], **kwargs))
    # Per-image seeds: only float32 batched-kernel rounding differs, far below one 8-bit level.
    torch.testing.assert_close(one.generate(["a red circle"], **kwargs), a, rtol=0, atol=1e-5)


def test_same_seed_bitwise_across_batch_sizes_in_float64(tiny_checkpoint):
    from atlas.pipeline import Pipeline

    sampler = create_sampler(tiny_checkpoint, **FAST)
    bundle = sampler.bundle.double()
    images = [Pipeline(bundle, SamplerConfig(batch_size=b, precision="fp32")).generate(
        ["a red circle"], num_samples=4, steps=3, seed=7).images for b in (1, 4)]
    torch.testing.assert_close(images[0], images[1], rtol=0, atol=1e-12)


def test_unknown_option_raises_type_error_naming_valid_options():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['tile_sise'\]; valid options are .*tile_size"):
        create_sampler(tile_sise=512, **FAST)


@pytest.mark.parametrize("gpu_memory", ["auto", "6GB", "8GB", "12GB", "16GB", "24GB", "32GB", "CPU"])
def test_every_gpu_memory_choice_is_accepted(gpu_memory):
    sampler = create_sampler(gpu_memory=gpu_memory, device="cpu", memory_check=False)
    assert sampler.profile.name == ("CPU" if gpu_memory == "auto" else gpu_memory)
    # A GPU profile on a CPU device: its batch size, but auto precision (fp32) and no CUDA graphs here.
    assert sampler.sampler.precision == "fp32" and not sampler.config.enable_cuda_graphs


def test_bad_gpu_memory_and_batch_size_say_what_is_valid():
    with pytest.raises(ValueError, match=r"gpu_memory='10GB' is not a profile; valid values are \['auto', '6GB'"):
        create_sampler(gpu_memory="10GB", device="cpu")
    with pytest.raises(ValueError, match="batch_size='big' must be a positive integer, None or 'auto'"):
        create_sampler(batch_size="big", **FAST)
    with pytest.raises(ValueError, match="batch_size"):
        create_sampler(batch_size=0, **FAST)


def test_architecture_comes_from_the_checkpoint(tiny_checkpoint):
    sampler = create_sampler(tiny_checkpoint, **FAST)
    assert sampler.bundle.network.config.base_channels == 8 and sampler.resolution == 8
    assert sampler.generate(["a red circle"], timesteps=2, seed=0).shape == (1, 3, 8, 8)


def test_guidance_default_is_the_checkpoints_recommendation_then_7_5(demo, tiny_checkpoint):
    assert demo.conditioning.guidance_scale == 3.0  # the demo's metadata recommends 3
    assert create_sampler(tiny_checkpoint, **FAST).conditioning.guidance_scale == 7.5
    assert create_sampler(guidance_scale=5.0, **FAST).conditioning.guidance_scale == 5.0


def test_random_seed_is_recorded_and_reproduces(tiny_checkpoint):
    sampler = create_sampler(tiny_checkpoint, **FAST)
    images = sampler.generate(["a red circle"], timesteps=2)
    seed = sampler.last_result.seeds[0]
    assert torch.equal(sampler.generate(["a red circle"], timesteps=2, seed=seed), images)


def test_return_intermediates_gives_one_decoded_estimate_per_step(tiny_checkpoint):
    sampler = create_sampler(tiny_checkpoint, batch_size=1, **FAST)
    images, steps = sampler.generate(["a red circle", "a blue square"], timesteps=3, seed=0, return_intermediates=True)
    assert len(steps) == 3 and all(s.shape == images.shape for s in steps)
    assert all(0 <= s.min() and s.max() <= 1 for s in steps)


def test_above_native_resolution_generates_coarse_to_fine(tiny_checkpoint):
    sampler = create_sampler(tiny_checkpoint, **FAST)
    images = sampler.generate(["a red circle"], timesteps=3, seed=0, resolution=16)
    assert images.shape == (1, 3, 16, 16) and sampler.last_result.stats["levels"] == [16]
    assert sampler.sampler.level_plan(12)[-1].size == (12, 12)  # not native x 2^k: one step up to it
    assert [level.size[0] for level in sampler.sampler.level_plan(40)] == [16, 32, 40]
    with pytest.raises(ValueError, match=r"resolution=9 must be a multiple of 2 for this model .*; use 8"):
        sampler.generate(["a red circle"], timesteps=2, resolution=9)


def test_estimate_memory_usage_has_the_specification_keys_and_grows(demo):
    small = demo.estimate_memory_usage(batch_size=1, resolution=32)
    large = demo.sampler.estimate_memory_usage(batch_size=4, resolution=64)
    for key in ("model_params_mb", "activations_mb", "total_mb"):
        assert small[key] > 0
    assert small["model_params_mb"] == pytest.approx(sum(p.numel() * 4 for p in demo.bundle.parameters()) / 2**20)
    assert large["total_mb"] > small["total_mb"] and large["activations_mb"] > small["activations_mb"]


def test_memory_check_warns_before_work_naming_what_to_change(tiny_checkpoint, caplog):
    from dataclasses import replace

    sampler = create_sampler(tiny_checkpoint, gpu_memory="CPU", device="cpu", batch_size=4)
    sampler.sampler.capabilities = replace(sampler.sampler.capabilities, free_memory_bytes=1 << 10)
    with caplog.at_level(logging.WARNING, logger="atlas"):
        sampler.generate(["a red circle"], num_samples=4, timesteps=1, seed=0)
    assert any("exceeds the free memory" in r.message and "batch_size=" in r.message for r in caplog.records)


def test_oom_during_sampling_backs_off_and_keeps_every_image(tiny_checkpoint, caplog):
    reference = create_sampler(tiny_checkpoint, batch_size=4, **FAST)
    expected = reference.generate(["a red circle"], num_samples=4, timesteps=2, seed=3)

    sampler = create_sampler(tiny_checkpoint, batch_size=4, **FAST)

    def refuse_big_batches(module, args):
        if args[0].shape[0] > 4:  # CFG doubles: a batch of 4 images is 8 network rows
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    sampler.bundle.network.register_forward_pre_hook(refuse_big_batches)
    with caplog.at_level(logging.WARNING):
        images = sampler.generate(["a red circle"], num_samples=4, timesteps=2, seed=3)
    backoff = sampler.last_result.backoff
    assert backoff.backed_off and backoff.final_batch_size == 2 and not backoff.tiling_enabled
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)
    assert any("out of memory" in r.message.lower() for r in caplog.records)


def test_oom_ladder_ends_with_the_specification_message(tiny_checkpoint):
    sampler = create_sampler(tiny_checkpoint, batch_size=2, **FAST)
    sampler.bundle.network.register_forward_pre_hook(
        lambda module, args: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory (injected)")))
    with pytest.raises(torch.OutOfMemoryError) as raised:
        sampler.generate(["a red circle"], num_samples=2, timesteps=2, seed=0)
    message = str(raised.value)
    assert "Out of memory during sampling." in message and "Current settings:" in message
    assert "Suggestions:" in message and "1. " in message


def test_batch_size_auto_searches_once_and_caches(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sampler = create_sampler(tiny_checkpoint, batch_size="auto", **FAST)
    probes = []
    real = sampler.sampler.probe_batch

    def probe(batch, resolution, **kwargs):
        probes.append(batch)
        if batch > 5:
            raise torch.OutOfMemoryError("injected")
        return real(batch, resolution, **kwargs)

    monkeypatch.setattr(sampler.sampler, "probe_batch", probe)
    sampler.generate(["a red circle"], timesteps=1, seed=0)
    assert sampler.config.batch_size == 5 and probes
    cached = len(probes)
    again = create_sampler(tiny_checkpoint, batch_size="auto", **FAST)
    monkeypatch.setattr(again.sampler, "probe_batch", probe)
    again.generate(["a red circle"], timesteps=1, seed=0)
    assert again.config.batch_size == 5 and len(probes) == cached  # answered from the disk cache
    assert (tmp_path / "cache" / "atlas" / "batch_sizes.json").is_file()


def test_tiling_options_reach_the_denoiser_and_conditioning_passes_through(tiny_checkpoint):
    sampler = create_sampler(tiny_checkpoint, tile_size=4, tile_overlap=0.5, **FAST)
    seen = []
    sampler.bundle.network.register_forward_hook(lambda m, args, kwargs, out: seen.append(
        (tuple(args[0].shape), tuple(kwargs["context"].shape))), with_kwargs=True)
    sampler.generate(["a red circle"], timesteps=1, seed=0)
    assert seen and all(x[2:] == (4, 4) for x, _ in seen)
    assert all(c[0] == x[0] for x, c in seen)  # one context row per tile row
    assert sampler.last_result.stats["tiling"]["tile_size"] == 4


def test_save_names_files_by_prompt_and_seed(tiny_checkpoint, tmp_path):
    sampler = create_sampler(tiny_checkpoint, **FAST)
    images = sampler.generate(["a red circle"], num_samples=2, timesteps=1, seed=4)
    names = sorted(p.name for p in sampler.save(images, tmp_path / "out"))
    assert names == ["0000-a-red-circle-seed4.png", "0001-a-red-circle-seed5.png", "grid.png"]


def test_clear_cache_releases_graphs(tiny_checkpoint):
    sampler = create_sampler(tiny_checkpoint, enable_cuda_graphs=True, **FAST)
    sampler.generate(["a red circle"], timesteps=1, seed=0)
    stats = sampler.last_result.stats["cuda_graphs"]
    assert stats["captures"] == 0 and stats["eager_calls"] > 0  # CPU: eager, and it says why
    sampler.clear_cache()
    assert sampler.sampler.graphs.stats()["cached"] == 0


def test_prompts_to_an_unconditional_model_are_an_error_not_dropped(tmp_path):
    path = save_checkpoint(tmp_path / "u", tiny_bundle(conditional=False))
    sampler = create_sampler(path, **FAST)
    assert sampler.generate(None, num_samples=2, timesteps=1, seed=0).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        sampler.generate(["a red circle"], timesteps=1)


def test_easy_sampler_is_the_public_class(demo):
    assert isinstance(demo, EasySampler) and demo.sampler.estimate_memory_usage
