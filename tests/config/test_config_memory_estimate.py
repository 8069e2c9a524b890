"""`estimate_memory` against exact counts, closed forms and independent measurements.

The measured peaks are independent of the estimate: they run atlas's real code (``Denoiser``,
``classifier_free_guidance``, ``sample_heun``; ``diffusion_loss`` and ``torch.optim.AdamW``) on real CPU tensors
with PyTorch's real kernels (fused CPU flash attention, oneDNN convolutions), and read the peak from
``torch.profiler``'s CPU-allocator events, which see every allocation including kernels' internal buffers
and know nothing of the ledger, the meta device or the estimator's attention models. Persistent tensors
allocated before the measured call (parameters; optimizer state after a warm-up step) are added by counting
their bytes.
"""

from __future__ import annotations

import math

import pytest
import torch

from atlas.diffusion import Conditioning, Denoiser, classifier_free_guidance, diffusion_loss, sample_heun
from atlas.config.memory_estimate import MemoryEstimate, estimate_memory
from atlas.memory.ledger import profiler_peak_bytes
from atlas.memory.tiling import TilingConfig
from atlas.models import HighResLatentScoreModel, HighResModelConfig

MIB = 2.0 ** 20

CONFIGS = {  # (config, batch, resolution, text tokens)
    "latent-text-cfg": (dict(in_channels=4, resolution=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                             attention_levels=(0, 1), num_heads=2, context_dim=16, pooled_dim=16, norm_groups=4),
                        2, 16, 8),
    "pixel-unconditional": (dict(in_channels=3, resolution=32, base_channels=16, channel_mult=(1, 2, 2),
                                 num_res_blocks=1, attention_levels=(1, 2), num_heads=2, norm_groups=4), 3, 32, None),
    "dilated-text": (dict(in_channels=3, resolution=32, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                          attention_levels=(0, 1), num_heads=4, context_dim=16, norm_groups=4, dilated_levels=(0,),
                          dilated_segment_lengths=(128, 1024), dilated_dilation_rates=(1, 4)), 2, 32, 6),
}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _conditioning(cfg: HighResModelConfig, batch: int, tokens: int | None) -> Conditioning | None:
    if cfg.context_dim is None:
        return None
    return Conditioning(context=torch.randn(batch, tokens, cfg.context_dim),
                        context_mask=torch.ones(batch, tokens, dtype=torch.bool),
                        pooled=torch.randn(batch, cfg.pooled_dim) if cfg.pooled_dim else None)


def measured_inference_mb(cfg: HighResModelConfig, batch: int, resolution: int, tokens: int | None) -> float:
    """Parameters plus the profiler peak of one Heun step (two denoiser calls, with CFG when conditional)."""
    torch.manual_seed(0)
    network = HighResLatentScoreModel(cfg).eval()
    denoiser = Denoiser(network)

    def step() -> None:
        x = torch.randn(batch, cfg.in_channels, resolution, resolution)
        cond, uncond = _conditioning(cfg, batch, tokens), _conditioning(cfg, batch, tokens)
        denoise = classifier_free_guidance(denoiser, cond, uncond, 7.5) if cond else (lambda x, s: denoiser(x, s))
        with torch.no_grad():
            sample_heun(denoise, x, torch.tensor([10.0, 2.0, 0.0]))

    return (_nbytes(network.parameters()) + profiler_peak_bytes(step)) / MIB


def measured_training_mb(cfg: HighResModelConfig, batch: int, resolution: int, tokens: int | None,
                         autocast: torch.dtype | None = None):
    """Parameters, AdamW state and the profiler peak of a steady-state step; also grad and state bytes."""
    torch.manual_seed(0)
    network = HighResLatentScoreModel(cfg).train()
    denoiser = Denoiser(network)
    optimizer = torch.optim.AdamW(network.parameters())
    counted = {}

    def step() -> None:
        x0 = torch.randn(batch, cfg.in_channels, resolution, resolution)
        noise, sigma = torch.randn_like(x0), torch.rand(batch) + 0.5
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = diffusion_loss(denoiser, x0, sigma, noise, _conditioning(cfg, batch, tokens)).mean()
        loss.backward()
        counted["gradients"] = _nbytes([p.grad for p in network.parameters()])
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # allocates the optimizer state: the measured step is the steady state
    state = [t for s in optimizer.state.values() for t in s.values() if t.dim() > 0]
    persistent = _nbytes(network.parameters()) + _nbytes(state)
    return (persistent + profiler_peak_bytes(step)) / MIB, counted["gradients"], _nbytes(state)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_inference_within_30_percent_of_measured_peak(name):
    fields, batch, resolution, tokens = CONFIGS[name]
    cfg = HighResModelConfig(**fields)
    estimate = estimate_memory(cfg, batch_size=batch, resolution=resolution, text_tokens=tokens, device="cpu")
    measured = measured_inference_mb(cfg, batch, resolution, tokens)
    assert 0.7 <= estimate.total_mb / measured <= 1.3, (estimate.total_mb, measured)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_within_30_percent_and_exact_state(name):
    fields, batch, resolution, tokens = CONFIGS[name]
    cfg = HighResModelConfig(**fields)
    estimate = estimate_memory(cfg, batch_size=batch, resolution=resolution, text_tokens=tokens, device="cpu",
                               mode="training", ema=False)
    measured, grad_bytes, state_bytes = measured_training_mb(cfg, batch, resolution, tokens)
    assert 0.7 <= estimate.total_mb / measured <= 1.3, (estimate.total_mb, measured)
    params = HighResLatentScoreModel(cfg).parameters()
    assert estimate.model_params_mb * MIB == _nbytes(params) == grad_bytes == estimate.gradients_mb * MIB
    assert estimate.optimizer_mb * MIB == state_bytes  # AdamW: exp_avg and exp_avg_sq per parameter


def test_mixed_precision_training_within_30_percent_of_real_cpu_autocast():
    fields, batch, resolution, tokens = CONFIGS["latent-text-cfg"]
    cfg = HighResModelConfig(**fields)
    estimate = estimate_memory(cfg, batch_size=batch, resolution=resolution, text_tokens=tokens, device="cpu",
                               mode="training", ema=False, dtype=torch.bfloat16)
    measured, _, _ = measured_training_mb(cfg, batch, resolution, tokens, autocast=torch.bfloat16)
    assert 0.7 <= estimate.total_mb / measured <= 1.3, (estimate.total_mb, measured)
    assert estimate.model_params_mb == estimate.gradients_mb == estimate.optimizer_mb / 2  # all fp32


def test_gradient_checkpointing_and_dropout_are_traced():
    fields, batch, resolution, tokens = CONFIGS["latent-text-cfg"]
    plain = HighResModelConfig(**{**fields, "dropout": 0.1})
    checkpointed = HighResModelConfig(**{**fields, "dropout": 0.1, "gradient_checkpointing": True})
    kwargs = dict(batch_size=batch, resolution=resolution, text_tokens=tokens, device="cpu", mode="training",
                  ema=False)
    estimate = estimate_memory(checkpointed, **kwargs)
    assert estimate.activations_mb < estimate_memory(plain, **kwargs).activations_mb
    measured, _, _ = measured_training_mb(checkpointed, batch, resolution, tokens)
    assert 0.7 <= estimate.total_mb / measured <= 1.3, (estimate.total_mb, measured)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_parameters_are_counted_exactly(dtype):
    cfg = HighResModelConfig(**CONFIGS["latent-text-cfg"][0])
    estimate = estimate_memory(cfg, batch_size=1, resolution=16, text_tokens=8, dtype=dtype)
    network = HighResLatentScoreModel(cfg).to(dtype)
    assert estimate.model_params_mb * MIB == _nbytes(network.parameters())
    assert estimate.terms["parameter_count"] == sum(p.numel() for p in network.parameters())
    assert estimate.gradients_mb == estimate.optimizer_mb == 0


@pytest.mark.parametrize("mode", ["inference", "training"])
@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_monotone_in_batch_and_resolution(mode, attention):
    cfg = HighResModelConfig(**CONFIGS["latent-text-cfg"][0])

    def total(batch: int, resolution: int) -> float:
        return estimate_memory(cfg, batch_size=batch, resolution=resolution, text_tokens=8, mode=mode,
                               attention=attention, dtype=torch.float16).total_mb

    by_batch = [total(b, 16) for b in (1, 2, 5)]
    by_resolution = [total(2, r) for r in (8, 16, 40)]
    assert by_batch == sorted(set(by_batch)) and by_resolution == sorted(set(by_resolution))


def _attention_heavy(**overrides) -> HighResModelConfig:
    fields = dict(in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0,),
                  num_heads=2, norm_groups=4)
    fields.update(overrides)
    return HighResModelConfig(**fields)


def test_naive_attention_holds_scores_and_probabilities():
    cfg = _attention_heavy()  # 64 x 64 pixels: N = 4096 tokens at level 0, 2 heads
    scores = 1 * 2 * 4096 ** 2 * 4  # one fp32 (B, heads, N, N) matrix: 128 MiB
    naive = estimate_memory(cfg, batch_size=1, resolution=64, attention="naive", device="cpu")
    math_backend = estimate_memory(cfg, batch_size=1, resolution=64, attention="sdpa_math", device="cpu")
    for estimate in (naive, math_backend):
        # softmax's output is allocated while its input is alive: two matrices, give or take the other
        # activations live at that moment (attention_mb is the rise of the peak over an ideal kernel's)
        assert abs(estimate.attention_mb * MIB - 2 * scores) <= estimate.activations_mb * MIB
        assert estimate.total_mb * MIB >= 2 * scores
    cuda = estimate_memory(cfg, batch_size=1, resolution=64, device="cuda")
    assert cuda.attention_mb < 1 and cuda.terms["attention_calls"] == {"cuda_efficient": 3}  # fp32: no flash
    half = estimate_memory(cfg, batch_size=1, resolution=64, dtype=torch.float16, device="cuda")
    assert half.terms["attention_calls"] == {"cuda_flash": 3}


def test_full_attention_over_65536_tokens_is_128_gib_per_matrix():
    # The reference preset's trap (notes §0.8): full attention at 256 x 256 tokens, 8 heads, fp32.
    cfg = _attention_heavy(num_heads=8, base_channels=16)
    naive = estimate_memory(cfg, batch_size=1, resolution=256, attention="naive")
    assert naive.total_mb * MIB >= 2 * 8 * 65536 ** 2 * 4  # scores and probabilities: 2 x 128 GiB
    fused = estimate_memory(cfg, batch_size=1, resolution=256, attention="sdpa")
    assert fused.total_mb < 1024 < naive.total_mb / 256


def test_dilated_attention_pays_per_segment_scores():
    dense = _attention_heavy(num_heads=4)
    dilated = _attention_heavy(num_heads=4, dilated_levels=(0,), dilated_segment_lengths=(256,),
                               dilated_dilation_rates=(1,))
    full = estimate_memory(dense, batch_size=1, resolution=64, attention="naive", device="cpu").attention_mb
    segmented = estimate_memory(dilated, batch_size=1, resolution=64, attention="naive", device="cpu").attention_mb
    # 16 segments of 256 tokens: scores (16, 4, 256, 256) instead of (1, 4, 4096, 4096), 16 times smaller
    assert segmented * MIB >= 2 * 16 * 4 * 256 ** 2 * 4 and segmented < full / 10


def test_guidance_doubles_the_network_batch():
    cfg = HighResModelConfig(**CONFIGS["latent-text-cfg"][0])
    guided = estimate_memory(cfg, batch_size=2, resolution=16, text_tokens=8)
    doubled = estimate_memory(cfg, batch_size=4, resolution=16, text_tokens=8, guidance=False)
    assert guided.inputs["guidance"] and guided.terms["network_batch"] == 4
    assert guided.terms["traced_peak_mb"] == doubled.terms["traced_peak_mb"]
    assert guided.total_mb < doubled.total_mb  # the sampler state is per image, not per network row


def test_tiles_bound_the_traced_input_and_add_accumulators():
    cfg = HighResModelConfig(in_channels=4, resolution=32, base_channels=16, channel_mult=(1, 2),
                             num_res_blocks=1, attention_levels=(1,), num_heads=2, norm_groups=4)
    whole = estimate_memory(cfg, batch_size=2, resolution=256, latent_factor=8)
    tile = TilingConfig(tile_size=128, tile_stride=64)  # 16 latent pixels, stride 8: 3 x 3 tiles
    tiled = estimate_memory(cfg, batch_size=2, resolution=256, latent_factor=8, tile=tile)
    assert tiled.terms["tiles"] == (math.ceil((32 - 16) / 8) + 1) ** 2 == 9
    assert tiled.terms["traced_side"] == (16, 16) and tiled.terms["traced_batch"] == 2
    full, tile_px = 32 * 32, 16 * 16
    expected = 2 * 4 * full * 4 + 2 * 4 * full * (4 + 4) + 9 * tile_px * 4 + 2 * 2 * 4 * tile_px * 4
    assert tiled.terms["tile_buffers_mb"] * MIB == expected
    assert tiled.terms["traced_peak_mb"] < whole.terms["traced_peak_mb"]
    batched = estimate_memory(cfg, batch_size=2, resolution=256, latent_factor=8,
                              tile=TilingConfig(tile_size=128, tile_stride=64, sequential=False))
    assert batched.terms["traced_batch"] == 18
    cover = estimate_memory(cfg, batch_size=2, resolution=256, latent_factor=8, tile=TilingConfig(tile_size=512))
    assert cover.total_mb == whole.total_mb and cover.terms["tiles"] == 1


def test_kernel_buffers_and_text_context_are_added():
    cfg = HighResModelConfig(**CONFIGS["latent-text-cfg"][0])
    base = estimate_memory(cfg, batch_size=1, resolution=16, text_tokens=8)
    more = estimate_memory(cfg, batch_size=1, resolution=16, text_tokens=8, kernel_buffers_bytes=3 * 2 ** 20)
    assert more.total_mb - base.total_mb == 3.0 == more.kernel_buffers_mb
    longer = estimate_memory(cfg, batch_size=1, resolution=16, text_tokens=64)
    assert longer.total_mb > base.total_mb


def test_training_adds_ema_and_optimizer_choices():
    cfg = HighResModelConfig(**CONFIGS["pixel-unconditional"][0])
    kwargs = dict(batch_size=1, resolution=32, mode="training", device="cpu")
    with_ema, without = estimate_memory(cfg, **kwargs), estimate_memory(cfg, ema=False, **kwargs)
    assert with_ema.total_mb - without.total_mb == with_ema.model_params_mb == with_ema.terms["ema_mb"]
    assert estimate_memory(cfg, optimizer="sgd", ema=False, **kwargs).optimizer_mb == 0


def test_as_dict_and_record():
    cfg = HighResModelConfig(**CONFIGS["pixel-unconditional"][0])
    estimate = estimate_memory(cfg, batch_size=1, resolution=32)
    record = estimate.as_dict()
    assert isinstance(estimate, MemoryEstimate)
    assert {"model_params_mb", "activations_mb", "total_mb", "inputs", "terms"} <= set(record)
    assert record["inputs"]["guidance"] is False and record["terms"]["peak_phase"] == "forward"


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size=0"),
    (dict(resolution=30), "divisible by the network's downsample factor 4"),
    (dict(resolution=32, latent_factor=3), "divisible by latent_factor=3"),
    (dict(attention="flash3"), "attention='flash3' is not supported"),
    (dict(optimizer="adamw"), "apply to mode='training' only"),
    (dict(guidance=True), "guidance=True needs a text-conditioned model"),
    (dict(mode="training", tile=TilingConfig(tile_size=16)), "tile applies to mode='inference' only"),
    (dict(text_tokens=8), "unconditional model"),
    (dict(kernel_buffers_bytes=-1), "kernel_buffers_bytes=-1"),
])
def test_invalid_arguments_raise_with_the_value(kwargs, match):
    cfg = HighResModelConfig(**CONFIGS["pixel-unconditional"][0])
    with pytest.raises(ValueError, match=match):
        estimate_memory(cfg, **{"batch_size": 1, "resolution": 32, **kwargs})


def test_text_model_needs_its_token_count():
    cfg = HighResModelConfig(**CONFIGS["latent-text-cfg"][0])
    with pytest.raises(ValueError, match="pass the text encoder's max_length"):
        estimate_memory(cfg, batch_size=1, resolution=16)
