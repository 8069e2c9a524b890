"""Prompt adherence and speed of the bundled demo model (or any shapes checkpoint).

For every (colour, shape) prompt, generate images and classify them with the procedural shapes classifier
(exact on the dataset itself); report colour / shape / background accuracy, and the wall time of generating
16 images (median of repeats). Goals (issue 2): colour >= 90 %, shape >= 80 %, 16 images < 30 s on 2 cores.

    python benchmarks/demo_quality.py [--checkpoint DIR] [--per-prompt 8] [--steps 25] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, median_time, print_table  # noqa: E402

from atlas.checkpoint import load_model  # noqa: E402
from atlas.data.shapes import COLORS, SHAPES, shapes_caption  # noqa: E402
from atlas.demo import demo_checkpoint_path  # noqa: E402
from atlas.eval import shapes_prompt_adherence  # noqa: E402
from atlas.pipeline import generate  # noqa: E402


def adherence(bundle, prompts, per_prompt, steps, sampler, guidance_scale, seed):
    result = generate(bundle, prompts, num_samples=per_prompt, steps=steps, sampler=sampler,
                      guidance_scale=guidance_scale, seed=seed, batch_size=64)
    return shapes_prompt_adherence(result.images * 2 - 1, result.prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--per-prompt", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--samplers", default="dpmpp_2m,heun,euler_ancestral")
    parser.add_argument("--guidance", default="1,3,5")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--use-ema", action="store_true", help="read ema.safetensors of a training checkpoint")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    path = Path(args.checkpoint) if args.checkpoint else demo_checkpoint_path()
    bundle = load_model(path, use_ema=args.use_ema)
    short = [shapes_caption(s, c) for c, s in itertools.product(COLORS, SHAPES)]
    full = [shapes_caption(s, c, b) for (c, s), b in zip(itertools.product(COLORS, SHAPES),
                                                         itertools.cycle(["black", "white", "gray", "blue", "yellow"]))
            if b != c]
    rows = []
    for sampler in args.samplers.split(","):
        for scale in (float(g) for g in args.guidance.split(",")):
            for name, prompts in (("short", short), ("with background", full)):
                scores = adherence(bundle, prompts, args.per_prompt, args.steps, sampler, scale, args.seed)
                rows.append({"sampler": sampler, "guidance": scale, "prompts": name, "n": scores["n"],
                             "color_acc": scores["color_accuracy"], "shape_acc": scores["shape_accuracy"],
                             "background_acc": scores["background_accuracy"], "joint_acc": scores["joint_accuracy"]})

    def sixteen():
        generate(bundle, ["a red circle", "a blue square", "a green triangle", "a yellow circle"], num_samples=4,
                 steps=args.steps, guidance_scale=3.0, seed=0)

    seconds, all_times = (None, []) if args.skip_speed else median_time(sixteen, repeats=3)
    model_facts = {"parameters": sum(p.numel() for p in bundle.parameters()),
                   "bytes_on_disk": sum(f.stat().st_size for f in path.iterdir() if f.is_file())}
    document = {"benchmark": "demo_quality", "environment": environment(), "checkpoint": str(path),
                "model": model_facts,
                "settings": vars(args), "results": rows,
                "speed": {"images": 16, "steps": args.steps, "sampler": "dpmpp_2m", "guidance": 3.0,
                          "median_s": seconds, "runs_s": all_times}}
    emit(document, args.json)
    print()
    print_table(rows, ["sampler", "guidance", "prompts", "n", "color_acc", "shape_acc", "background_acc", "joint_acc"])
    if seconds is not None:
        print(f"\n16 images, {args.steps} steps, dpmpp_2m, CFG 3: median {seconds:.2f} s over 3 runs")


if __name__ == "__main__":
    main()
