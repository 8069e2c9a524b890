"""Prompt adherence of hierarchical (coarse-to-fine) sampling at 2x (or 4x) the demo model's resolution.

The bundled demo model was trained at 32x32.  For the same prompts and per-image seeds as demo_quality.py
(every (colour, shape) prompt, seeds ``seed + i``, dpmpp_2m, 25 steps, CFG 3 as in atlas.pipeline.generate) this
script scores, with the procedural shapes classifier:

* native: plain sampling at 32x32 (``atlas.pipeline.generate``);
* direct: plain sampling at the final size (64x64) from pure noise, the baseline hierarchical sampling must beat
  (run here with the same denoiser and seeds, not through generate(), which goes coarse-to-fine above native);
* upsampled native: the native images bicubic-upsampled to the final size, no refinement (sigma_start -> 0);
* hierarchical: ``sample_hierarchical`` with ``default_level_plan(32, factor)`` (one 2x level; two for
  ``--factor 4``, i.e. 128x128), for several ``sigma_start`` values.

The classifier works at any size (its features are ratios: fill and taper of the coverage map, border median for
the background, a foreground fraction), so 64x64 (128x128) images are classified as they are; the table also
gives the joint accuracy after average pooling back to 32x32 as a cross-check.  "detail" is the share of an image's
variance above the half-resolution band: mean (x - up(pool(x)))^2 / var(x), with up = bicubic and pool = 2x2
average; its value on real renders of the shapes dataset at the same size is printed as the reference
(upsampled images have little).

Goal (issue 5, section 5): joint adherence at 2x within 10 points of native.

    OMP_NUM_THREADS=1 python benchmarks/hierarchical_quality.py [--per-prompt 4] [--sigma-starts 1,2,4]
        [--level-steps 12] [--factor 2] [--skip-direct]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, print_table  # noqa: E402

from atlas.checkpoint import load_model  # noqa: E402
from atlas.data.shapes import COLORS, SHAPES, ShapesDataset, shapes_caption  # noqa: E402
from atlas.demo import demo_checkpoint_path  # noqa: E402
from atlas.diffusion import classifier_free_guidance, get_sigmas, initial_noise  # noqa: E402
from atlas.diffusion.hierarchical import HierarchyLevel, default_level_plan, sample_hierarchical  # noqa: E402
from atlas.eval import shapes_prompt_adherence  # noqa: E402
from atlas.pipeline import generate  # noqa: E402


def detail_share(images: torch.Tensor) -> float:
    """Mean over images of the variance share above the half-resolution band (images (B, C, H, W))."""
    low = functional.interpolate(functional.avg_pool2d(images, 2), size=images.shape[-2:], mode="bicubic",
                                 align_corners=False)
    share = (images - low).pow(2).mean(dim=(1, 2, 3)) / images.var(dim=(1, 2, 3)).clamp(min=1e-8)
    return float(share.mean())


def score(name: str, images: torch.Tensor, prompts: list[str], seconds: float, **extra) -> dict:
    """images in [-1, 1]; adherence at their own size and after pooling to 32x32."""
    images = images.float().clamp(-1, 1)
    own = shapes_prompt_adherence(images, prompts)
    pooled = images if images.shape[-1] == 32 else functional.adaptive_avg_pool2d(images, 32)
    return {"method": name, **extra, "size": images.shape[-1], "n": own["n"], "color_acc": own["color_accuracy"],
            "shape_acc": own["shape_accuracy"], "joint_acc": own["joint_accuracy"],
            "joint_acc_pooled32": shapes_prompt_adherence(pooled, prompts)["joint_accuracy"],
            "detail": detail_share(images), "seconds": seconds}


def hierarchical(bundle, prompts, seed, steps, guidance, levels: tuple[HierarchyLevel, ...], batch: int,
                 start_side: int):
    """sample_hierarchical with the denoiser, grid, noise and generators atlas.pipeline.generate uses, from noise
    of side ``start_side``; with no levels this is plain sampling at that side (the direct baseline)."""
    spec, config = bundle.diffusion, bundle.network.config
    sigmas = get_sigmas("karras", steps, sigma_min=spec.sigma_min, sigma_max=spec.sigma_max)
    denoiser = bundle.denoiser()
    outputs, natives = [], []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        x = initial_noise((len(chunk), config.in_channels, start_side, start_side), sigmas[0].item(),
                          generators=generators)
        guided = classifier_free_guidance(denoiser, bundle.encode(chunk), bundle.encode([""] * len(chunk)), guidance)
        result = sample_hierarchical("dpmpp_2m", lambda level, shape: guided, x, sigmas, levels,
                                     generators=generators, return_intermediates=True)
        outputs.append(result.images)
        natives.append(result.levels[0])
    return torch.cat(outputs), torch.cat(natives)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--sigma-starts", default="1,2,4")
    parser.add_argument("--factor", type=int, default=2, help="final size / native size: 2 or 4")
    parser.add_argument("--level-steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--skip-direct", action="store_true",
                        help="skip plain sampling at the final size (the slowest row)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    bundle = load_model(demo_checkpoint_path())
    base = [shapes_caption(s, c) for c, s in itertools.product(COLORS, SHAPES)]
    prompts = [p for p in base for _ in range(args.per_prompt)]
    native_size = bundle.network.config.resolution
    big = args.factor * native_size
    rows = []

    start = time.perf_counter()
    native = generate(bundle, base, num_samples=args.per_prompt, steps=args.steps, guidance_scale=args.guidance,
                      seed=args.seed, batch_size=args.batch)
    assert native.prompts == prompts
    native_images = native.images * 2 - 1
    rows.append(score("native", native_images, prompts, time.perf_counter() - start))
    upsampled = functional.interpolate(native_images, size=(big, big), mode="bicubic", align_corners=False)
    rows.append(score("upsampled native", upsampled, prompts, 0.0))

    if not args.skip_direct:
        start = time.perf_counter()
        direct, _ = hierarchical(bundle, prompts, args.seed, args.steps, args.guidance, (), args.batch, big)
        rows.append(score("direct", direct, prompts, time.perf_counter() - start))

    max_native_gap = 0.0
    for sigma_start in (float(s) for s in args.sigma_starts.split(",")):
        levels = default_level_plan(native_size, args.factor, sigma_start=sigma_start, steps=args.level_steps)
        start = time.perf_counter()
        images, level0 = hierarchical(bundle, prompts, args.seed, args.steps, args.guidance, levels, args.batch,
                                      native_size)
        seconds = time.perf_counter() - start
        # Level 0 must be exactly what generate() makes: same seeds, grid, guidance and sampler.
        max_native_gap = max(max_native_gap, float((((level0 + 1) / 2).clamp(0, 1) - native.images).abs().max()))
        rows.append(score("hierarchical", images, prompts, seconds, sigma_start=sigma_start,
                          level_steps=args.level_steps))

    reference = torch.stack([ShapesDataset(size=256, resolution=big, seed=0)[i][0] for i in range(256)])
    document = {"benchmark": "hierarchical_quality", "environment": environment(), "settings": vars(args),
                "sampler": "dpmpp_2m", "schedule": "karras", "native_resolution": native_size, "resolution": big,
                "level0_max_abs_diff_vs_generate": max_native_gap,
                "detail_real_renders": detail_share(reference), "results": rows}
    emit(document, args.json)
    print()
    print_table(rows, ["method", "sigma_start", "level_steps", "size", "n", "color_acc", "shape_acc", "joint_acc",
                       "joint_acc_pooled32", "detail", "seconds"])
    print(f"\ndetail of real {big}x{big} renders: {document['detail_real_renders']:.4g}; level 0 vs generate(): "
          f"max |diff| {max_native_gap:.3g}")


if __name__ == "__main__":
    main()
