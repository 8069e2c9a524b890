"""Training throughput on CPU: atlas's HighResLatentScoreModel vs diffusers' UNet2DModel at a matched
parameter count (same resolution, batch, optimizer, loss and threads; runs interleaved to share noise).

    python benchmarks/train_throughput.py [--batch 32] [--resolution 32] [--steps 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, print_table  # noqa: E402

from atlas.models import HighResLatentScoreModel, HighResModelConfig  # noqa: E402


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def atlas_model(width: int) -> tuple[torch.nn.Module, callable]:
    config = HighResModelConfig(in_channels=3, resolution=32, base_channels=width, channel_mult=(1, 2, 4),
                                num_res_blocks=1, attention_levels=(2,), num_heads=4, norm_groups=8)
    model = HighResLatentScoreModel(config)
    return model, lambda x, t: model(x, t)


def diffusers_model(width: int):
    from diffusers import UNet2DModel

    model = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                        block_out_channels=(width, 2 * width, 4 * width), norm_num_groups=8,
                        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=width)
    return model, lambda x, t: model(x, t).sample


def step_time(forward, model, optimizer, x, t) -> float:
    start = time.perf_counter()
    loss = F.mse_loss(forward(x, t), x)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        import diffusers  # noqa: F401
    except ImportError:
        sys.exit("this benchmark compares against diffusers: pip install 'atlas-diffusion[bench]'")

    torch.manual_seed(0)
    candidates = {"atlas HighResLatentScoreModel": atlas_model(args.width)}
    # diffusers' blocks differ (two convs per block, extra norms): search its width for the closest size.
    target = count(candidates["atlas HighResLatentScoreModel"][0])
    best = min(range(8, 4 * args.width + 1, 8), key=lambda w: abs(count(diffusers_model(w)[0]) - target))
    candidates["diffusers UNet2DModel"] = diffusers_model(best)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    t = torch.rand(args.batch)
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, (m, _) in candidates.items()}
    times = {name: [] for name in candidates}
    for name, (model, forward) in candidates.items():  # warm-up
        step_time(forward, model, optimizers[name], x, t)
    for _ in range(args.steps):
        for name, (model, forward) in candidates.items():
            times[name].append(step_time(forward, model, optimizers[name], x, t))
    rows = []
    for name, (model, _) in candidates.items():
        median = statistics.median(times[name])
        rows.append({"model": name, "params_M": count(model) / 1e6, "median_step_s": median,
                     "images_per_s": args.batch / median})
    base = rows[1]["median_step_s"]
    for row in rows:
        row["speed_vs_diffusers"] = base / row["median_step_s"]
    emit({"benchmark": "train_throughput", "environment": environment(), "settings": vars(args),
          "diffusers_width": best, "results": rows, "raw_step_s": times}, args.json)
    print()
    print_table(rows, ["model", "params_M", "median_step_s", "images_per_s", "speed_vs_diffusers"])


if __name__ == "__main__":
    main()
