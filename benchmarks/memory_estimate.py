"""`atlas.config.memory_estimate.estimate_memory` against measured peaks: estimate, measured, ratio.

    python benchmarks/memory_estimate.py [--quick] [--skip-cuda] [--json out.json]

Protocol (issue 5, section 3):
* Each configuration is a `HighResLatentScoreModel` with a batch, a resolution and (for text models) a token
  count. Inference = one Heun step (two denoiser calls) through atlas's real ``Denoiser``,
  ``classifier_free_guidance`` (text models: CFG on, the 2B network batch) and ``sample_heun``; the network
  cast to the dtype. Training = one steady-state step of ``diffusion_loss`` (autocast for fp16/bf16, fp32
  weights), ``backward``, ``clip_grad_norm_(1.0)`` and ``AdamW.step`` after a warm-up step that allocated the
  optimizer state; no EMA (the estimates are asked with ``ema=False``).
* CPU (always): fp32, measured with ``torch.profiler``'s CPU-allocator events (``profiler_peak_bytes``: every
  allocation, kernel-internal buffers included) plus the bytes of what was allocated before the measured
  call (parameters, optimizer state); the estimate is asked with ``device="cpu"`` at this process's thread
  count (``--threads``, default 1). The ledger's own CPU peak (tensor storages only) is shown next to it.
* CUDA (when available, unless ``--skip-cuda``): fp16 inference and bf16 training, measured as
  ``torch.cuda.memory_allocated()`` before the call (after a warm-up call, so cuBLAS/cuDNN handles and
  workspaces already exist) plus the rise of ``max_memory_allocated`` during it; the estimate is asked with
  ``device="cuda"``.
* ratio = estimate / measured. The issue's goals, printed, not asserted: within +-30% on CPU, +-20% on CUDA.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, print_table  # noqa: E402

from atlas.diffusion import Conditioning, Denoiser, classifier_free_guidance, diffusion_loss, sample_heun  # noqa: E402
from atlas.config.memory_estimate import estimate_memory  # noqa: E402
from atlas.memory.ledger import measure_peak_bytes, profiler_peak_bytes  # noqa: E402
from atlas.models import HighResLatentScoreModel, HighResModelConfig  # noqa: E402

MIB = 2.0 ** 20
SMALL = dict(base_channels=16, num_res_blocks=1, num_heads=2, norm_groups=4)
CPU_CONFIGS = {  # name: (config fields, batch, resolution, text tokens)
    "latent-text-cfg": (dict(in_channels=4, channel_mult=(1, 2), attention_levels=(0, 1), context_dim=16,
                             pooled_dim=16, **SMALL), 2, 16, 8),
    "pixel-unconditional": (dict(in_channels=3, channel_mult=(1, 2, 2), attention_levels=(1, 2), **SMALL), 3, 32,
                            None),
    "dilated-text": (dict(in_channels=3, channel_mult=(1, 2), attention_levels=(0, 1), context_dim=16,
                          dilated_levels=(0,), dilated_segment_lengths=(128, 1024), dilated_dilation_rates=(1, 4),
                          **{**SMALL, "num_heads": 4}), 2, 32, 6),
    "latent-64-text-cfg": (dict(in_channels=4, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                                attention_levels=(1, 2), num_heads=4, context_dim=64, norm_groups=8), 2, 64, 16),
}
CUDA_CONFIGS = {
    "latent-64-text-cfg": CPU_CONFIGS["latent-64-text-cfg"],
    "sd-like-512": (dict(in_channels=4, base_channels=128, channel_mult=(1, 2, 4), num_res_blocks=2,
                         attention_levels=(1, 2), num_heads=8, context_dim=768, pooled_dim=768, norm_groups=32),
                    4, 64, 77),
    "pixel-256-dilated": (dict(in_channels=3, base_channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
                               attention_levels=(1, 2, 3), num_heads=8, context_dim=256, norm_groups=32,
                               dilated_levels=(1,), dilated_segment_lengths=(1024, 4096),
                               dilated_dilation_rates=(1, 4)), 4, 256, 32),
}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _conditioning(cfg: HighResModelConfig, batch: int, tokens: Optional[int], device: str,
                  dtype: torch.dtype) -> Optional[Conditioning]:
    if cfg.context_dim is None:
        return None
    pooled = torch.randn(batch, cfg.pooled_dim, device=device, dtype=dtype) if cfg.pooled_dim else None
    return Conditioning(context=torch.randn(batch, tokens, cfg.context_dim, device=device, dtype=dtype),
                        context_mask=torch.ones(batch, tokens, dtype=torch.bool, device=device), pooled=pooled)


def _peak_above(fn: Callable[[], None], device: str) -> int:
    return profiler_peak_bytes(fn) if device == "cpu" else measure_peak_bytes(fn, device)


def _persistent(tensors, device: str) -> int:
    """Bytes allocated before the measured call: counted tensors on the CPU, the allocator's count on CUDA."""
    return _nbytes(tensors) if device == "cpu" else torch.cuda.memory_allocated()


def measure_inference(cfg: HighResModelConfig, batch: int, resolution: int, tokens: Optional[int], device: str,
                      dtype: torch.dtype) -> dict[str, float]:
    torch.manual_seed(0)
    network = HighResLatentScoreModel(cfg).to(device, dtype).eval()
    denoiser = Denoiser(network)

    def step() -> None:
        x = torch.randn(batch, cfg.in_channels, resolution, resolution, device=device, dtype=dtype)
        cond = _conditioning(cfg, batch, tokens, device, dtype)
        uncond = _conditioning(cfg, batch, tokens, device, dtype)
        denoise = classifier_free_guidance(denoiser, cond, uncond, 7.5) if cond else (lambda x, s: denoiser(x, s))
        with torch.no_grad():
            sample_heun(denoise, x, torch.tensor([10.0, 2.0, 0.0], device=device, dtype=dtype))

    step()  # warm-up: lazily created library workspaces are part of the steady state
    result = {"measured_mb": (_persistent(network.parameters(), device) + _peak_above(step, device)) / MIB}
    if device == "cpu":
        result["ledger_mb"] = (_nbytes(network.parameters()) + measure_peak_bytes(step, "cpu")) / MIB
    return result


def measure_training(cfg: HighResModelConfig, batch: int, resolution: int, tokens: Optional[int], device: str,
                     dtype: torch.dtype) -> dict[str, float]:
    torch.manual_seed(0)
    network = HighResLatentScoreModel(cfg).to(device).train()
    denoiser = Denoiser(network)
    optimizer = torch.optim.AdamW(network.parameters())

    def step() -> None:
        x0 = torch.randn(batch, cfg.in_channels, resolution, resolution, device=device)
        noise, sigma = torch.randn_like(x0), torch.rand(batch, device=device) + 0.5
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            cond = _conditioning(cfg, batch, tokens, device, torch.float32)
            loss = diffusion_loss(denoiser, x0, sigma, noise, cond).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # allocates the AdamW state
    state = [t for s in optimizer.state.values() for t in s.values() if t.device.type == device]
    result = {"measured_mb": (_persistent([*network.parameters(), *state], device) + _peak_above(step, device)) / MIB}
    if device == "cpu":
        persistent = _nbytes([*network.parameters(), *state])
        result["ledger_mb"] = (persistent + measure_peak_bytes(step, "cpu")) / MIB
    return result


def run(configs: dict[str, Any], device: str, modes: dict[str, torch.dtype]) -> list[dict[str, Any]]:
    rows = []
    for name, (fields, batch, resolution, tokens) in configs.items():
        cfg = HighResModelConfig(resolution=resolution, **fields)
        for mode, dtype in modes.items():
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            extra = {"ema": False} if mode == "training" else {}
            estimate = estimate_memory(cfg, batch_size=batch, resolution=resolution, dtype=dtype, mode=mode,
                                       text_tokens=tokens, device=device, **extra)
            measure = measure_training if mode == "training" else measure_inference
            measured = measure(cfg, batch, resolution, tokens, device, dtype)
            rows.append({"device": device, "config": name, "mode": mode, "dtype": str(dtype).replace("torch.", ""),
                         "batch": batch, "resolution": resolution, "params_M": estimate.terms["parameter_count"] / 1e6,
                         "estimate_mb": estimate.total_mb, **measured,
                         "ratio": estimate.total_mb / measured["measured_mb"],
                         "activations_mb": estimate.activations_mb, "attention_mb": estimate.attention_mb,
                         "peak_phase": estimate.terms["peak_phase"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the three smallest CPU configurations")
    parser.add_argument("--skip-cuda", action="store_true", help="do not measure on CUDA even if available")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (the estimate models CPU flash attention's per-thread blocks for as many)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cpu_configs = dict(list(CPU_CONFIGS.items())[:3]) if args.quick else CPU_CONFIGS
    rows = run(cpu_configs, "cpu", {"inference": torch.float32, "training": torch.float32})
    cuda = torch.cuda.is_available() and not args.skip_cuda
    if cuda:
        rows += run(CUDA_CONFIGS, "cuda", {"inference": torch.float16, "training": torch.bfloat16})
    goals = {"cpu": 0.30, "cuda": 0.20}
    for row in rows:
        row["within_goal"] = abs(row["ratio"] - 1.0) <= goals[row["device"]]
    emit({"benchmark": "memory_estimate", "environment": environment(),
          "settings": vars(args) | {"cuda_measured": cuda, "goals": goals}, "results": rows}, args.json)
    print()
    print_table(rows, ["device", "config", "mode", "dtype", "batch", "resolution", "params_M", "estimate_mb",
                       "measured_mb", "ledger_mb", "ratio", "within_goal", "peak_phase"])
    if not cuda:
        print("\nCUDA: not measured here (no CUDA device, or --skip-cuda).")


if __name__ == "__main__":
    main()
