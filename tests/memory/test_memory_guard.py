"""Out-of-memory recognition, the specification's message, and the back-off ladder (fault injection on CPU)."""

import logging
import re
import weakref

import pytest
import torch

import atlas.memory.guard as guard
from atlas.diffusion import classifier_free_guidance, get_sigmas, initial_noise, sample
from atlas.memory.guard import format_oom_message, is_out_of_memory, run_with_backoff
from atlas.pipeline import generate

from atlas_testing import tiny_bundle

SEED = 40
ITEM_SHAPE = (3, 4, 4)


def items(start, stop):
    """Per-item generators seeded SEED + i, as atlas.pipeline does: item i never depends on its chunk."""
    generators = [torch.Generator().manual_seed(SEED + i) for i in range(start, stop)]
    return initial_noise((stop - start, *ITEM_SHAPE), 80.0, generators=generators)


def reference(total):
    # Oracle: every item generated alone.
    return torch.cat([items(i, i + 1) for i in range(total)])


class Injector:
    """run_chunk that raises torch.OutOfMemoryError when a chunk has more than `max_items` items, or when it holds
    an item of `needs_tiling` and runs untiled; records every call."""

    def __init__(self, max_items=10**9, needs_tiling=(), error=None):
        error = error or (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        self.max_items, self.needs_tiling, self.error, self.calls = max_items, set(needs_tiling), error, []

    def __call__(self, start, stop, tiled):
        self.calls.append((start, stop, tiled))
        if stop - start > self.max_items or (not tiled and self.needs_tiling & set(range(start, stop))):
            raise self.error()
        return items(start, stop)


@pytest.mark.parametrize("error, expected", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (torch.cuda.OutOfMemoryError("anything"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)"), True),
    (RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB, other allocations: 1.00 GB)"), True),
    (RuntimeError("HIP out of memory. Tried to allocate 1.00 GiB"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 4611686018427387904 bytes. Error code 12 (Cannot allocate memory)"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: not enough memory: you tried "
                  "to allocate 1024 bytes."), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False),
    (ValueError("out of memory"), False),
    (MemoryError(), False),
    (KeyError("out of memory"), False),
])
def test_is_out_of_memory(error, expected):
    assert is_out_of_memory(error) is expected


def test_a_real_cpu_allocator_failure_is_out_of_memory():
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**62, dtype=torch.uint8)  # 4 EiB: malloc refuses at once
    assert is_out_of_memory(info.value)


SPEC_SETTINGS = {"batch_size": 8, "shape": (8, 4, 128, 128), "mixed_precision": True}


def suggestions_of(message):
    lines = message.split("Suggestions:\n", 1)[1].splitlines()
    numbered = [line for line in lines if re.match(r"  \d+\. ", line)]
    assert [int(line.split(".")[0]) for line in numbered] == list(range(1, len(numbered) + 1))
    return [line.split(". ", 1)[1] for line in numbered]


def test_cuda_message_matches_the_specification(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: int(8234.5 * 2**20))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: int(9012.3 * 2**20) + 1)
    message = format_oom_message(RuntimeError("CUDA out of memory"), settings=SPEC_SETTINGS, device="cuda")
    assert message.splitlines()[:7] == [
        "Out of GPU memory during sampling.",
        "Memory usage: 8234.5 MB allocated, 9012.3 MB peak",
        "Current settings:",
        "  - batch_size: 8",
        "  - shape: (8, 4, 128, 128)",
        "  - mixed_precision: True",
        "",
    ]
    tips = suggestions_of(message)
    assert tips[0] == "Reduce batch_size (currently 8)"
    assert not any("mixed_precision" in tip for tip in tips)  # already on
    assert any(tip.startswith("Use smaller resolution") for tip in tips)
    assert any(tip.startswith("Enable tiling") for tip in tips)
    assert any("torch.cuda.empty_cache()" in tip for tip in tips)
    assert message.splitlines()[-1] == "Cause: CUDA out of memory"


def test_suggestions_follow_the_settings():
    error = torch.OutOfMemoryError("out of memory")
    off = suggestions_of(format_oom_message(error, settings={"batch_size": 4, "mixed_precision": False,
                                                             "resolution": 256}, device="cpu"))
    assert off[:3] == ["Reduce batch_size (currently 4)",
                       "Enable mixed_precision (bf16/fp16 activations take half the memory of fp32)",
                       "Use smaller resolution (currently 256 px)"]
    assert any("tile_size=128" in tip for tip in off)
    on = suggestions_of(format_oom_message(error, settings={"batch_size": 1, "mixed_precision": True, "tiling": True,
                                                            "tile_size": 64, "guidance_scale": 7.5,
                                                            "attention": "naive", "cuda_graphs": True,
                                                            "kernel_cache_size": 32}, device="cpu",
                                           suggestions=["Call sampler.clear_cache()"]))
    assert not any("batch_size" in tip and "Reduce" in tip for tip in on)  # batch 1 cannot shrink
    assert not any(tip.startswith(("Enable mixed_precision", "Enable tiling")) for tip in on)
    assert "Use a smaller tile_size (currently 64)" in on
    assert any(tip.startswith("guidance_scale=7.5") for tip in on)
    assert any("attention='sdpa'" in tip for tip in on)
    assert any(tip.startswith("Disable CUDA graphs") for tip in on)
    assert "Reduce kernel cache size in KernelConfig (currently 32)" in on
    assert on[-1] == "Call sampler.clear_cache()"  # caller's suggestions come last
    assert not any("empty_cache" in tip for tip in on)  # a CPU run has no GPU cache


def test_cpu_message_reports_process_memory_and_never_a_fake_zero(monkeypatch):
    message = format_oom_message(RuntimeError("DefaultCPUAllocator: can't allocate memory"), settings={},
                                 device="cpu")
    assert message.splitlines()[0] == "Out of memory during sampling."
    rss, peak = map(float, re.search(r"([\d.]+) MB resident, ([\d.]+) MB peak \(process RSS",
                                     message).groups())
    assert 0 < rss <= peak
    monkeypatch.setattr(guard, "_process_memory_bytes", lambda: (None, None))
    message = format_oom_message(RuntimeError("x"), settings={}, device="cpu")
    assert message.splitlines()[1].startswith("Memory usage: unknown")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = format_oom_message(RuntimeError("CUDA out of memory"), settings={}, device=None)
    assert message.splitlines()[:2] == ["Out of GPU memory during sampling.",
                                        "Memory usage: unknown (CUDA is not available in this process)"]


def test_halving_keeps_every_item_and_later_chunks_start_reduced(caplog):
    run = Injector(max_items=3)
    with caplog.at_level(logging.WARNING, logger="atlas.memory.guard"):
        out, log = run_with_backoff(run, 11, 8, device="cpu")
    assert torch.equal(out, reference(11)) and torch.equal(out, items(0, 11))
    assert run.calls == [(0, 8, False), (0, 4, False), (0, 2, False), (2, 4, False), (4, 6, False),
                         (6, 8, False), (8, 10, False), (10, 11, False)]
    assert [(e.start, e.stop, e.action, e.retry_batch_size) for e in log.events] == [(0, 8, "split", 4),
                                                                                    (0, 4, "split", 2)]
    assert (log.initial_batch_size, log.final_batch_size, log.tiling_enabled) == (8, 2, False)
    assert log.chunks == [(0, 2, False), (2, 4, False), (4, 6, False), (6, 8, False), (8, 10, False),
                          (10, 11, False)]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    assert log.as_dict()["events"][0]["action"] == "split"


def test_odd_chunks_split_into_halves_rounding_up():
    run = Injector(max_items=2)
    out, log = run_with_backoff(run, 5, 5)
    assert torch.equal(out, reference(5))
    assert run.calls[:2] == [(0, 5, False), (0, 3, False)]  # 5 -> ceil(5/2) = 3 -> 2
    assert log.final_batch_size == 2


def test_tiling_is_the_last_step_and_stays_on(caplog):
    run = Injector(needs_tiling={5})
    with caplog.at_level(logging.WARNING, logger="atlas.memory.guard"):
        out, log = run_with_backoff(run, 8, 4)
    assert torch.equal(out, reference(8))
    assert [e.action for e in log.events] == ["split", "split", "enable_tiling"]
    assert log.tiling_enabled and log.final_batch_size == 1
    assert log.tiled_items == [5, 6, 7]
    assert run.calls[-3:] == [(5, 6, True), (6, 7, True), (7, 8, True)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and "tiled images differ" in warnings[-1]


def test_exhausted_ladder_raises_the_original_type_with_message_and_log():
    run = Injector(max_items=0)
    with pytest.raises(torch.OutOfMemoryError) as info:
        run_with_backoff(run, 3, 8, settings={"shape": (8, 3, 32, 32), "mixed_precision": False}, device="cpu")
    error = info.value
    assert type(error) is torch.OutOfMemoryError
    assert isinstance(error.__cause__, torch.OutOfMemoryError) and error.__cause__ is not error
    assert run.calls == [(0, 3, False), (0, 2, False), (0, 1, False), (0, 1, True)]
    assert [e.action for e in error.backoff_log.events] == ["split", "split", "enable_tiling", "give_up"]
    text = str(error)
    assert text.startswith("Out of memory during sampling.\nMemory usage: ")
    for line in ("  - batch_size: 1", "  - shape: (1, 3, 32, 32)", "  - tiling: True", "Back-off log: batch_size "
                 "8 -> 1, tiling enabled", "Cause: CUDA out of memory. Tried to allocate 2.00 GiB"):
        assert line in text
    assert "Enable mixed_precision" in text and "Reduce batch_size" not in text


def test_without_tiling_the_ladder_ends_at_one_item_and_keeps_runtime_errors_runtime_errors():
    run = Injector(max_items=0, error=lambda: RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    with pytest.raises(RuntimeError) as info:
        run_with_backoff(run, 2, 2, tiling_available=False)
    assert type(info.value) is RuntimeError
    assert str(info.value).startswith("Out of GPU memory during sampling.")  # device read from the message
    assert [e.action for e in info.value.backoff_log.events] == ["split", "give_up"]
    assert run.calls == [(0, 2, False), (0, 1, False)]
    # A caller that tiles on its own (and so offers no tiling step) is told to shrink its tiles.
    with pytest.raises(RuntimeError) as info:
        run_with_backoff(Injector(max_items=0), 1, 1, tiling_available=False, device="cpu",
                         settings={"tiling": True, "tile_size": 64})
    assert "  - tiling: True" in str(info.value) and "Use a smaller tile_size (currently 64)" in str(info.value)


def test_other_errors_propagate_untouched(caplog):
    failure = ValueError("bad prompt")
    calls = []

    def run_chunk(start, stop, tiled):
        calls.append((start, stop))
        if start == 0 and stop == 4:
            raise torch.OutOfMemoryError("out of memory")
        if start == 2:
            raise failure
        return items(start, stop)

    with caplog.at_level(logging.WARNING), pytest.raises(ValueError) as info:
        run_with_backoff(run_chunk, 4, 4)
    assert info.value is failure and info.value.__cause__ is None
    assert calls == [(0, 4), (0, 2), (2, 4)]
    assert len(caplog.records) == 1  # only the back-off step, nothing about the ValueError


def test_memory_of_the_failed_chunk_is_released_before_freeing(monkeypatch):
    alive = []

    def run_chunk(start, stop, tiled):
        if stop - start > 1:
            activations = torch.ones(1000)
            alive.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("out of memory")
        return items(start, stop)

    freed = []
    monkeypatch.setattr(guard, "free_memory", lambda device=None: freed.append([ref() for ref in alive]))
    out, _ = run_with_backoff(run_chunk, 2, 2, device="cpu")
    assert torch.equal(out, reference(2))
    assert freed == [[None]]  # the failed chunk's tensors were unreachable when memory was freed


@pytest.mark.parametrize("kwargs, match", [
    (dict(total=0, batch_size=1), "total=0"), (dict(total=3, batch_size=0), "batch_size=0"),
    (dict(total=3, batch_size=True), "batch_size=True"),
])
def test_arguments_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_with_backoff(Injector(), **kwargs)


def test_run_chunk_must_return_one_row_per_item():
    with pytest.raises(ValueError, match=r"returned \(1, 3, 4, 4\); it must return a tensor with 2 items"):
        run_with_backoff(lambda start, stop, tiled: items(start, start + 1), 2, 2)


# --- A real (tiny) model: torch.OutOfMemoryError injected by a forward hook, generation chunked as atlas.pipeline
# does it (one generator per image, seeded seed + i), checked against atlas.pipeline.generate itself.

def _oom_above(bundle, max_batch):
    """Make the network raise torch.OutOfMemoryError when its batch exceeds max_batch (classifier-free guidance
    calls it on 2 x the images)."""
    def hook(module, args):
        if args[0].shape[0] > max_batch:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: batch {args[0].shape[0]} > {max_batch})")
    return bundle.network.register_forward_pre_hook(hook)


def pipeline_chunks(bundle, prompts, *, seed, steps, sampler, guidance_scale):
    """run_chunk(start, stop, tiled) doing what one iteration of atlas.pipeline.generate's chunk loop does."""
    config, spec = bundle.network.config, bundle.diffusion
    device, dtype = bundle.device, next(bundle.network.parameters()).dtype
    sigmas = get_sigmas("karras", steps, sigma_min=spec.sigma_min, sigma_max=spec.sigma_max).to(device, dtype)
    denoiser = bundle.denoiser()

    @torch.no_grad()
    def run_chunk(start, stop, tiled):
        assert not tiled, "these runs have tiling_available=False"
        generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(start, stop)]
        x = initial_noise((stop - start, config.in_channels, config.resolution, config.resolution),
                          sigmas[0].item(), generators=generators, dtype=dtype, device=device)
        cond, uncond = bundle.encode(prompts[start:stop]), bundle.encode([""] * (stop - start))
        denoise = classifier_free_guidance(denoiser, cond, uncond, guidance_scale)
        x = sample(sampler, denoise, x, sigmas, generators=generators)
        return ((x.float() + 1) / 2).clamp(0, 1).cpu()

    return run_chunk


@pytest.fixture(scope="module")
def model():
    bundle = tiny_bundle(seed=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # an untrained network predicts ~0; perturb it so images depend on every weight
        for p in bundle.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return bundle.eval()


def test_back_off_on_a_real_model_gives_the_pipelines_images(model):
    prompts = ["a red circle"] * 3 + ["a blue square"] * 2
    options = dict(seed=7, steps=3, sampler="dpmpp_2m", guidance_scale=2.5)
    handle = _oom_above(model, max_batch=4)  # 2 images (4 with guidance) fit, 4 images do not
    try:
        out, log = run_with_backoff(pipeline_chunks(model, prompts, **options), 5, 4, tiling_available=False)
    finally:
        handle.remove()
    assert [(e.start, e.stop, e.action) for e in log.events] == [(0, 4, "split")]
    assert log.chunks == [(0, 2, False), (2, 4, False), (4, 5, False)]
    kwargs = dict(num_samples=1, steps=3, sampler="dpmpp_2m", guidance_scale=2.5, seed=7)
    same_chunks = generate(model, prompts, batch_size=2, **kwargs).images  # the pipeline, no fault
    assert torch.equal(out, same_chunks)
    all_at_once = generate(model, prompts, **kwargs).images
    torch.testing.assert_close(out, all_at_once, rtol=0, atol=1e-10)  # batching changes only rounding
    assert out.std() > 0.01


def test_a_model_that_never_fits_raises_its_out_of_memory_error_with_the_log(model):
    prompts = ["a red circle"] * 2
    handle = _oom_above(model, max_batch=1)  # guidance doubles even one image to a batch of 2
    try:
        with pytest.raises(torch.OutOfMemoryError) as info:
            run_with_backoff(pipeline_chunks(model, prompts, seed=0, steps=2, sampler="euler", guidance_scale=2.0),
                             2, 2, tiling_available=False, device="cpu",
                             settings={"shape": (2, 3, 8, 8), "guidance_scale": 2.0})
    finally:
        handle.remove()
    assert "injected: batch 2 > 1" in str(info.value.__cause__)
    assert [e.action for e in info.value.backoff_log.events] == ["split", "give_up"]
    assert "guidance_scale=2.0 runs the model on cond and uncond together" in str(info.value)
