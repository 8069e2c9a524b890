import json
import warnings

import pytest
import torch

from atlas.checkpoint import load_model
from atlas.training import EMA, Trainer, TrainingConfig, batch_indices, learning_rate, train
from atlas.training.trainer import step_seed

from atlas_testing import tiny_bundle

TINY_MODEL = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2,
                  norm_groups=4)
TINY_TEXT = dict(dim=16, num_layers=1, num_heads=2)


class _FixedDataset(torch.utils.data.Dataset):
    def __init__(self, n=8, side=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, side, side, generator=g) * 2 - 1
        words = ["a red circle", "a green square", "a blue circle on a red background", ""]
        self.texts = [words[i % len(words)] for i in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.texts[i]


def test_gradient_accumulation_equals_the_full_batch_gradient():
    grads = []
    data = _FixedDataset(8)
    g = torch.Generator().manual_seed(5)
    sigma = torch.exp(torch.randn(8, generator=g, dtype=torch.float64))
    noise = torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64)
    for accum in (1, 4):
        bundle = tiny_bundle(seed=0, dtype=torch.float64)
        with torch.no_grad():
            for p in bundle.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
        trainer = Trainer(bundle, data, TrainingConfig(batch_size=8, grad_accum=accum), "unused", progress=False)
        trainer.accumulate_gradients(data.images.double(), data.texts, sigma, noise)
        grads.append([p.grad.clone() for p in bundle.parameters()])
    for full, accumulated in zip(*grads):
        torch.testing.assert_close(accumulated, full, rtol=0, atol=1e-10)


def test_ema_matches_the_closed_form_recurrence():
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2).double()
    thetas = [module.weight.detach().clone()]
    for warmup in (False, True):
        with torch.no_grad():
            module.weight.copy_(thetas[0])
        ema = EMA(module, decay=0.9, warmup=warmup)
        history = [thetas[0]]
        for t in range(1, 8):
            with torch.no_grad():
                module.weight.add_(torch.randn_like(module.weight))
            history.append(module.weight.detach().clone())
            ema.update(module)
        # Closed form: ema_T = prod(d) theta_0 + sum_t (1 - d_t) prod_{s>t} d_s theta_t.
        d = [None] + [min(0.9, (1 + t) / (10 + t)) if warmup else 0.9 for t in range(1, 8)]
        expected = torch.zeros_like(history[0])
        for t in range(0, 8):
            weight = 1.0 if t == 0 else 1 - d[t]
            for s in range(max(t + 1, 1), 8):
                weight *= d[s]
            expected += weight * history[t]
        torch.testing.assert_close(ema.shadow["weight"], expected, rtol=0, atol=1e-12)


def test_learning_rate_warmup_and_cosine():
    cfg = TrainingConfig(lr=1e-3, warmup_steps=10, steps=110, lr_schedule="cosine")
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 60) == pytest.approx(5e-4)
    assert learning_rate(cfg, 110) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(TrainingConfig(lr=1e-3, warmup_steps=0), 500) == 1e-3


def test_batch_indices_are_epoch_permutations_and_deterministic():
    epoch = [i for step in range(5) for i in batch_indices(20, seed=3, step=step, batch_size=4)]
    assert sorted(epoch) == list(range(20))
    assert batch_indices(20, 3, 7, 4) == batch_indices(20, 3, 7, 4)
    assert batch_indices(20, 3, 0, 4) != batch_indices(20, 4, 0, 4)
    assert step_seed(0, 1, 2) != step_seed(0, 2, 1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=6, grad_accum=4), "divisible by grad_accum"),
    (dict(lr=0), "lr=0"),
    (dict(precision="fp16"), "needs a CUDA device"),
    (dict(precision="int8"), "precision"),
    (dict(cond_dropout=1.5), "cond_dropout"),
    (dict(min_snr_gamma=5.0), "min_snr_gamma applies to eps"),
    (dict(ema_decay=1.0), "ema_decay"),
])
def test_training_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainingConfig(**kwargs)


def _run(out, steps, resume=False, **overrides):
    config = TrainingConfig(dataset="shapes", dataset_size=16, resolution=16, steps=steps, batch_size=4,
                            checkpoint_every=3, log_every=1, warmup_steps=2, **overrides)
    return train(config, out, model_overrides=TINY_MODEL, text_overrides=TINY_TEXT, resume=resume, progress=False)


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    straight = load_model(_run(tmp_path / "a", steps=6))
    _run(tmp_path / "b", steps=3)
    (tmp_path / "b" / "model").rename(tmp_path / "b" / "model-at-3")
    resumed = load_model(_run(tmp_path / "b", steps=6, resume=True))
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_changed_settings_and_missing_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        _run(tmp_path / "none", steps=2, resume=True)
    _run(tmp_path / "c", steps=3)
    with pytest.raises(ValueError, match="training settings differ.*lr"):
        _run(tmp_path / "c", steps=6, resume=True, lr=1e-3)


def test_compile_failure_falls_back_to_eager_with_a_warning(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise RuntimeError("inductor exploded")

    data = _FixedDataset(8)
    trainer = Trainer(tiny_bundle(), data, TrainingConfig(batch_size=4, compile=True, steps=2, checkpoint_every=1),
                      tmp_path, progress=False, compile_fn=lambda module: Broken())
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*inductor exploded.*eager"):
        exported = trainer.run()
    assert trainer.step == 2
    keys = list(load_model(exported).state_dict())
    assert keys and not any("_orig_mod" in k for k in keys)


def test_compiled_network_is_used_and_saved_without_prefix(tmp_path):
    calls = []

    def fake_compile(module):
        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self._orig_mod = module

            def forward(self, *args, **kwargs):
                calls.append(1)
                return self._orig_mod(*args, **kwargs)
        return Wrapper()

    trainer = Trainer(tiny_bundle(), _FixedDataset(8), TrainingConfig(batch_size=4, compile=True, steps=3,
                      checkpoint_every=0), tmp_path, progress=False, compile_fn=fake_compile)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exported = trainer.run()
    assert len(calls) == 3
    assert not any("_orig_mod" in k for k in load_model(exported).state_dict())


def test_bf16_autocast_trains_on_cpu(tmp_path):
    trainer = Trainer(tiny_bundle(), _FixedDataset(8), TrainingConfig(batch_size=4, precision="bf16", steps=2,
                      checkpoint_every=0), tmp_path, progress=False)
    stats = trainer.train_step()
    assert torch.isfinite(torch.tensor(stats["loss"]))


@pytest.mark.slow
def test_a_tiny_model_overfits_32_images():
    torch.manual_seed(0)
    data = _FixedDataset(32, side=8, seed=1)
    bundle = tiny_bundle(seed=0)
    trainer = Trainer(bundle, data, TrainingConfig(batch_size=32, lr=3e-3, warmup_steps=10, grad_clip=None,
                                                   ema_decay=0.0), "unused", progress=False)
    g = torch.Generator().manual_seed(2)
    sigma = torch.exp(torch.empty(32).uniform_(-1.5, 0.5, generator=g))  # sigma in [0.22, 1.65]
    noise = torch.randn(32, 3, 8, 8, generator=g)
    losses = []
    for step in range(300):
        trainer.optimizer.zero_grad()
        losses.append(trainer.accumulate_gradients(data.images, data.texts, sigma, noise))
        trainer.optimizer.step()
        if losses[-1] < 0.1 * losses[0]:
            break
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1], len(losses))


def test_captions_reach_the_model_and_are_dropped_at_the_configured_rate(tmp_path, monkeypatch):
    bundle = tiny_bundle()
    seen = []
    original = bundle.encode
    monkeypatch.setattr(bundle, "encode", lambda prompts: seen.extend(prompts) or original(prompts))
    data = _FixedDataset(64)
    data.texts = ["a red circle"] * 64
    trainer = Trainer(bundle, data, TrainingConfig(batch_size=64, cond_dropout=0.25, steps=4, checkpoint_every=0),
                      tmp_path, progress=False)
    for _ in range(4):
        trainer.train_step()
    assert len(seen) == 256 and set(seen) == {"a red circle", ""}
    assert abs(seen.count("") / 256 - 0.25) < 0.08


def test_sample_grids_and_metrics_are_written(tmp_path):
    trainer = Trainer(tiny_bundle(), _FixedDataset(8), TrainingConfig(batch_size=4, steps=2, sample_every=2,
                      log_every=1, checkpoint_every=0), tmp_path, sample_prompts=["a red circle", "a green square"],
                      progress=False)
    trainer.run()
    assert (tmp_path / "samples" / "step_0000002.png").is_file()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"loss", "lr", "grad_norm", "images_per_s", "elapsed_s"} <= set(records[0])


@pytest.mark.parametrize("prediction", ["eps", "v", "x0", "flow"])
def test_every_prediction_type_trains_and_exports(tmp_path, prediction):
    exported = _run(tmp_path / prediction, steps=2, prediction=prediction)
    bundle = load_model(exported)
    assert bundle.diffusion.prediction == prediction


@pytest.mark.parametrize("coupling", ["ot", "sb"])
def test_minibatch_couplings_train(tmp_path, coupling):
    exported = _run(tmp_path / coupling, steps=2, coupling=coupling, prediction="flow")
    saved = load_model(exported).metadata["training"]
    assert saved["coupling"] == coupling


def test_ot_coupling_pairs_noise_with_images_inside_the_batch(tmp_path, monkeypatch):
    import atlas.training.trainer as trainer_module

    seen = []
    real = trainer_module.pair_minibatch

    def spy(images, noise, coupling, **kwargs):
        result = real(images, noise, coupling, **kwargs)
        seen.append((images.clone(), noise.clone(), result.noise.clone()))
        return result

    monkeypatch.setattr(trainer_module, "pair_minibatch", spy)
    trainer = Trainer(tiny_bundle(), _FixedDataset(8), TrainingConfig(batch_size=8, coupling="ot", steps=1,
                      checkpoint_every=0), tmp_path, progress=False)
    trainer.train_step()
    images, noise, paired = seen[0]
    # A permutation of the same noise, with total squared distance no larger than the independent pairing.
    assert torch.equal(paired.flatten(1).sort(0).values, noise.flatten(1).sort(0).values)
    assert (images - paired).square().sum() <= (images - noise).square().sum() + 1e-6


def test_coupling_kernel_settings_round_trip_and_reach_the_pairing(tmp_path, monkeypatch):
    import atlas.training.trainer as trainer_module
    from atlas.config import KernelConfig

    kernel = KernelConfig(solver_type="nystrom", epsilon=0.5, nystrom_landmarks=6)
    config = TrainingConfig(batch_size=8, coupling="sb", steps=1, checkpoint_every=0, coupling_kernel=kernel,
                            sb_iterations=321)
    assert TrainingConfig.from_dict(config.to_dict()) == config
    legacy = {k: v for k, v in config.to_dict().items() if k != "coupling_kernel"} | {"coupling_eps": 0.3}
    assert TrainingConfig.from_dict(legacy).coupling_kernel == KernelConfig(epsilon=0.3)
    with pytest.raises(ValueError, match="sb_iterations=0"):
        TrainingConfig(sb_iterations=0)

    seen = {}
    real = trainer_module.pair_minibatch

    def spy(images, noise, coupling, **kwargs):
        factory = kwargs["kernel_factory"]
        seen.update(kwargs, operator=factory(images.flatten(1).double(), noise.flatten(1).double(), 1.0))
        return real(images, noise, coupling, **kwargs)

    monkeypatch.setattr(trainer_module, "pair_minibatch", spy)
    Trainer(tiny_bundle(), _FixedDataset(8), config, tmp_path, progress=False).train_step()
    assert seen["eps"] == 0.5 and seen["relative_eps"] and seen["max_iter"] == 321
    assert type(seen["operator"]).__name__ == "NystromKernel" and seen["operator"].num_landmarks == 6
