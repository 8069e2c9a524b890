"""Every field of the generation configs changes behaviour (no dead knobs), found by introspection.

For each field of SamplerConfig, ConditioningConfig and KernelConfig a probe runs something with the default and
with a changed value and returns an observable; the test asserts the observables differ. A field without a
probe fails the test, so a new field cannot be added without showing what it does.
"""

import logging
from dataclasses import fields

import pytest
import torch

from atlas.config import KernelConfig
from atlas.config.sampler import ConditioningConfig, SamplerConfig
from atlas.models import HighResModelConfig
from atlas.pipeline import Pipeline
from atlas.runtime.hardware import detect_capabilities
from atlas.training.run import build_bundle
from atlas.training.config import TrainingConfig
from atlas.transport import pair_minibatch

from atlas_testing import tiny_bundle

PROMPTS = ["a red circle", "a blue square"]


def _bundle(dtype=torch.float64):
    bundle = tiny_bundle().to(dtype)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in bundle.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return bundle.eval()


def _run(config: SamplerConfig, dtype=torch.float64, **generate):
    """Images, per-call network batch sizes and stats of one generation with ``config``."""
    bundle = _bundle(dtype)
    batches = []
    handle = bundle.network.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    pipeline = Pipeline(bundle, config)
    result = pipeline.generate(PROMPTS, **{"num_samples": 2, "seed": 0, "guidance_scale": 2.0, "steps": 3,
                                           **generate})
    handle.remove()
    return result.images, batches, result.stats, pipeline


def _images(config, **generate):
    return _run(config, **generate)[0]


def _differs(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape \
            or not torch.equal(a, b)
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return any(_differs(x, y) for x, y in zip(a, b))
    return a != b


def _oom_once(config):
    bundle = _bundle()
    state = {"raised": False}

    def hook(module, args):
        if args[0].shape[0] > 2 and not state["raised"]:
            state["raised"] = True
            raise torch.OutOfMemoryError("injected: out of memory")

    bundle.network.register_forward_pre_hook(hook)
    try:
        Pipeline(bundle, config).generate(PROMPTS, num_samples=2, steps=2, seed=0)
    except torch.OutOfMemoryError:
        return "raised"
    return "recovered"


def _memory_warnings(config):
    from atlas.api import EasySampler
    from atlas.config.profiles import PROFILES

    caps = detect_capabilities("cpu")
    tiny_free = type(caps)(**{**caps.__dict__, "free_memory_bytes": 1024})
    bundle = _bundle()
    pipeline = Pipeline(bundle, config, capabilities=tiny_free)
    easy = EasySampler(bundle, pipeline, PROFILES["CPU"], ConditioningConfig(guidance_scale=2.0), 8, None)
    with pytest.MonkeyPatch.context() as patch:
        warned = []
        patch.setattr(pipeline, "check_memory", lambda *a, **k: warned.append(a) or [])
        easy.generate(PROMPTS, timesteps=2, seed=0)
    return len(warned)


def _verbose(config):
    from atlas.api import create_sampler

    logger = logging.getLogger("atlas")
    before = logger.level
    try:
        create_sampler(gpu_memory="CPU", device="cpu", memory_check=False, verbose_logging=config.verbose_logging)
        return logger.level
    finally:
        logger.setLevel(before)


SAMPLER_PROBES = {
    "sampler": (dict(sampler="heun"), _images),
    "schedule": (dict(schedule="exponential"), _images),
    "timesteps": (dict(timesteps=4), lambda c: _run(c, steps=None)[0]),
    "batch_size": (dict(batch_size=1), lambda c: _run(c)[1]),
    "precision": (dict(precision="bf16"), lambda c: _run(c, dtype=torch.float32)[0]),  # autocast acts on fp32
    "enable_cuda_graphs": (dict(enable_cuda_graphs=True), lambda c: "cuda_graphs" in _run(c)[2]),
    "cuda_graph_warmup_iters": (dict(enable_cuda_graphs=True, cuda_graph_warmup_iters=5),
                                lambda c: Pipeline(_bundle(), c).graphs and Pipeline(_bundle(), c).graphs.warmup_iters),
    "cuda_graph_cache_size": (dict(enable_cuda_graphs=True, cuda_graph_cache_size=3),
                              lambda c: Pipeline(_bundle(), c).graphs and Pipeline(_bundle(), c).graphs.stats()[
                                  "max_cache_size"]),
    "tile_size": (dict(tile_size=4), lambda c: _run(c)[1]),
    "tile_stride": (dict(tile_size=4, tile_stride=2), lambda c: _run(c)[1]),
    "tile_overlap": (dict(tile_size=4, tile_overlap=0.5), lambda c: _run(c)[1]),
    "tile_blending": (dict(tile_size=4, tile_overlap=0.5, tile_blending="none"), _images),
    "ultrahighres_sequential_tiles": (dict(tile_size=4, ultrahighres_sequential_tiles=False), lambda c: _run(c)[1]),
    "hierarchical": (dict(hierarchical=False), lambda c: _run(c, resolution=16)[2]["levels"]),
    "oom_backoff": (dict(oom_backoff=False), _oom_once),
    "memory_check": (dict(memory_check=False), _memory_warnings),
    "verbose_logging": (dict(verbose_logging=True), _verbose),
}
# Fields whose probe needs a baseline other than the default config (e.g. tiling on for the tile settings).
BASELINES = {"cuda_graph_warmup_iters": dict(enable_cuda_graphs=True),
             "cuda_graph_cache_size": dict(enable_cuda_graphs=True), "tile_stride": dict(tile_size=4),
             "tile_overlap": dict(tile_size=4), "tile_blending": dict(tile_size=4, tile_overlap=0.5),
             "ultrahighres_sequential_tiles": dict(tile_size=4)}


def test_every_sampler_config_field_has_a_probe():
    assert set(SAMPLER_PROBES) == {f.name for f in fields(SamplerConfig)}


@pytest.mark.parametrize("name", sorted(SAMPLER_PROBES))
def test_sampler_config_field_changes_behaviour(name):
    changed, probe = SAMPLER_PROBES[name]
    baseline = SamplerConfig(precision="fp32", **BASELINES.get(name, {}))
    assert _differs(probe(baseline), probe(baseline.updated(**changed))), name


def _conditioning_probe(config: ConditioningConfig):
    if config.guidance_scale != ConditioningConfig().guidance_scale or config.negative_prompt:
        bundle = _bundle()
        negatives = config.negative_prompt or None
        return Pipeline(bundle, SamplerConfig(precision="fp32")).generate(
            PROMPTS, negative_prompts=negatives, guidance_scale=config.guidance_scale, steps=2, seed=0).images
    from atlas.config.presets import load_preset
    from atlas.data import load_dataset
    from atlas.examples.training_pipeline import resolve_preset

    preset = load_preset("gpu:8gb")
    preset["conditioning"] = config
    preset["model"] = HighResModelConfig(**{**preset["model"].to_dict(), "context_dim": config.context_dim,
                                            "pooled_dim": config.context_dim})
    _, dataset, _, text = resolve_preset(preset)
    bundle = build_bundle(load_dataset("shapes", resolution=16, size=4), TrainingConfig(resolution=16),
                          dict(base_channels=8, channel_mult=(1, 2), attention_levels=(1,), norm_groups=4,
                               num_heads=2), text)
    return dataset.captions, bundle.text_encoder.config.dim, bundle.text_encoder.config.num_layers


CONDITIONING_CHANGES = {"guidance_scale": 4.0, "negative_prompt": "a green square", "text_encoder": "none",
                        "text_dim": 32, "text_layers": 1}


def test_every_conditioning_field_changes_behaviour():
    assert set(CONDITIONING_CHANGES) == {f.name for f in fields(ConditioningConfig)}
    for name, value in CONDITIONING_CHANGES.items():
        baseline = ConditioningConfig()
        if name in ("guidance_scale", "negative_prompt"):
            baseline = ConditioningConfig(guidance_scale=2.0)
        changed = ConditioningConfig(**{**baseline.to_dict(), name: value})
        assert _differs(_conditioning_probe(baseline), _conditioning_probe(changed)), name


def _pairing(config: KernelConfig):
    g = torch.Generator().manual_seed(0)
    data, noise = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(64, 3, generator=g,
                                                                                     dtype=torch.float64)
    choice = config.choose(64, 3)
    pairing = pair_minibatch(data, noise, "sb", eps=config.epsilon, relative_eps=config.relative_epsilon,
                             kernel_factory=config.kernel_factory(seed=1), generator=torch.Generator().manual_seed(2))
    factory = config.kernel_factory(seed=1)
    operator = None if factory is None else factory(data, noise, 1.0)
    kernel = None if operator is None else operator.pairwise()
    return choice.kind, choice.params.get("num_features"), choice.params.get("num_landmarks"), \
        choice.params.get("orthogonal"), pairing.noise, kernel


# eps = 5 x the median squared distance keeps the low-rank plans non-negative (they raise otherwise).
KERNEL_CHANGES = {"solver_type": dict(solver_type="nystrom", epsilon=5.0), "epsilon": dict(epsilon=0.5),
                  "relative_epsilon": dict(relative_epsilon=False, epsilon=0.5),
                  "rff_features": dict(solver_type="rff", rff_features=64, epsilon=5.0),
                  "nystrom_landmarks": dict(solver_type="nystrom", nystrom_landmarks=8, epsilon=5.0),
                  "orthogonal_features": dict(solver_type="rff", epsilon=5.0, orthogonal_features=False),
                  "memory_budget_mb": dict(memory_budget_mb=0.05, epsilon=5.0),  # dense no longer fits
                  "seed": dict(solver_type="nystrom", seed=9, nystrom_landmarks=8, epsilon=5.0)}
KERNEL_BASELINES = {"solver_type": dict(epsilon=5.0), "memory_budget_mb": dict(epsilon=5.0),
                    "rff_features": dict(solver_type="rff", epsilon=5.0),
                    "nystrom_landmarks": dict(solver_type="nystrom", epsilon=5.0),
                    "orthogonal_features": dict(solver_type="rff", epsilon=5.0),
                    "relative_epsilon": dict(epsilon=0.5),
                    "seed": dict(solver_type="nystrom", nystrom_landmarks=8, epsilon=5.0)}


@pytest.mark.parametrize("name", sorted(KERNEL_CHANGES))
def test_every_kernel_config_field_changes_behaviour(name):
    assert set(KERNEL_CHANGES) == {f.name for f in fields(KernelConfig)}
    baseline = KernelConfig(**KERNEL_BASELINES.get(name, {}))
    changed = KernelConfig(**{**baseline.to_dict(), **KERNEL_CHANGES[name]})
    assert _differs(_pairing(baseline), _pairing(changed)), name
