"""CUDA graphs on the bundled demo model: sampling time eager vs graphs at batch 1 and 4 (issue 5, section 7).

    python benchmarks/cuda_graphs.py [--batches 1,4] [--steps 25] [--repeats 7] [--json out.json]

Needs a CUDA GPU; without one it prints that and exits 0 (nothing is measured, nothing is claimed).

Protocol:
* The demo checkpoint (`atlas.demo.demo_checkpoint_path()`) on cuda:0 in fp32, TF32 off (``--tf32`` turns it on
  for both modes).  Sampling is the loop of `atlas.pipeline.generate` -- Karras sigmas over the model's trained
  range, per-image generators seeded ``seed + i``, classifier-free guidance (one network call per step on 2B
  rows: prompts, then empty prompts) -- with the network either eager or wrapped in `CUDAGraphModelWrapper`.
  Prompts are encoded once, outside the timed region (the text encoder is not graph-wrapped in either mode).
* Correctness first, per batch: one network call with the sampler's own conditioning, captured then replayed
  with new inputs, must equal the eager network within 1e-5 (max abs); the whole sampling run with graphs is
  compared with eager and its max abs image difference reported.  The run stops with exit code 1 if a check
  fails or if any capture fell back to eager (then there is no graph to time).
* Time: median of ``--repeats`` sampling runs after ``--warmup`` runs, `torch.cuda.synchronize()` before the
  clock stops.  The first graph run (capture + warm-up included) is reported separately as ``first_run_s``.
  Speed-up = eager median / graph median, as measured.
* Peak memory: `torch.cuda.max_memory_allocated` over each mode's timed runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, median_time, print_table  # noqa: E402

from atlas.checkpoint import load_model  # noqa: E402
from atlas.demo import demo_checkpoint_path  # noqa: E402
from atlas.diffusion import classifier_free_guidance, get_sigmas, initial_noise, sample  # noqa: E402
from atlas.runtime import CUDAGraphModelWrapper, detect_capabilities  # noqa: E402

PROMPTS = ("red circle", "blue square", "green triangle", "yellow circle")
NETWORK_TOLERANCE = 1e-5


def make_sampler(bundle, prompts, steps, sampler, guidance, seed):
    """A function network -> images (B, C, H, W) running the generate() loop for these prompts."""
    device, config, spec = bundle.device, bundle.network.config, bundle.diffusion
    sigmas = get_sigmas("karras", steps, sigma_min=spec.sigma_min, sigma_max=spec.sigma_max).to(device)
    cond, uncond = bundle.encode(prompts), bundle.encode([""] * len(prompts))
    shape = (len(prompts), config.in_channels, config.resolution, config.resolution)

    def run(network) -> torch.Tensor:
        generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(len(prompts))]
        x = initial_noise(shape, sigmas[0].item(), generators=generators, device=device)
        denoise = classifier_free_guidance(bundle.denoiser(network), cond, uncond, guidance)
        images = sample(sampler, denoise, x, sigmas, generators=generators)
        torch.cuda.synchronize()
        return images

    return run, cond.cat(uncond).as_kwargs()


def network_check(network, cond_kwargs, seed) -> float:
    """Max |graph - eager| over a capture call and a replay call with new inputs (fresh wrapper)."""
    wrapper = CUDAGraphModelWrapper(network)
    rows = next(iter(cond_kwargs.values())).shape[0]
    config = network.config
    g = torch.Generator(device="cuda").manual_seed(seed)
    worst = 0.0
    for _ in range(2):
        x = torch.randn(rows, config.in_channels, config.resolution, config.resolution, generator=g, device="cuda")
        c_noise = torch.randn(rows, generator=g, device="cuda")
        worst = max(worst, (wrapper(x, c_noise, **cond_kwargs) - network(x, c_noise, **cond_kwargs)).abs().max().item())
    stats = wrapper.stats()
    if stats["captures"] != 1 or stats["hits"] != 1 or stats["fallbacks"]:
        raise SystemExit(f"CUDA graph capture did not work for the demo network: {stats}")
    wrapper.release()
    return worst


def measure(bundle, batch, args) -> tuple[list[dict], dict]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    run, cond_kwargs = make_sampler(bundle, prompts, args.steps, args.sampler, args.guidance, args.seed)
    network = bundle.network
    network_diff = network_check(network, cond_kwargs, args.seed)
    if network_diff > NETWORK_TOLERANCE:
        raise SystemExit(f"batch {batch}: graph replay differs from eager by {network_diff:.3g} > "
                         f"{NETWORK_TOLERANCE}; not timing")

    wrapper = CUDAGraphModelWrapper(network)
    start = time.perf_counter()
    graph_images = run(wrapper)
    first_run = time.perf_counter() - start
    eager_images = run(network)
    image_diff = (graph_images - eager_images).abs().max().item()

    rows = []
    for mode, net in (("eager", network), ("graphs", wrapper)):
        torch.cuda.reset_peak_memory_stats()
        median, times = median_time(lambda: run(net), repeats=args.repeats, warmup=args.warmup)
        rows.append({"batch": batch, "mode": mode, "median_s": median, "per_step_ms": 1000 * median / args.steps,
                     "peak_mib": torch.cuda.max_memory_allocated() / 2**20, "times_s": times})
    rows[1]["speedup"] = rows[0]["median_s"] / rows[1]["median_s"]
    rows[1]["first_run_s"] = first_run
    stats = wrapper.stats()
    if stats["fallbacks"] or stats["eager_calls"]:
        raise SystemExit(f"batch {batch}: some calls did not use graphs: {stats}")
    check = {"batch": batch, "network_max_abs_diff": network_diff, "image_max_abs_diff": image_diff,
             "wrapper_stats": stats}
    wrapper.release()
    return rows, check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,4", help="images per sampling run, comma separated")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per mode (median reported; >= 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions in both modes")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"--repeats={args.repeats}: the protocol needs a median of at least 5 runs")
    if not torch.cuda.is_available():
        print("benchmarks/cuda_graphs.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing was "
              "measured.")
        return
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32

    bundle = load_model(demo_checkpoint_path(), device="cuda").eval()
    rows, checks = [], []
    with torch.no_grad():
        for batch in (int(b) for b in args.batches.split(",")):
            batch_rows, check = measure(bundle, batch, args)
            rows += batch_rows
            checks.append(check)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    emit({"benchmark": "cuda_graphs", "environment": environment(),
          "capabilities": detect_capabilities("cuda").to_dict(), "settings": settings, "checks": checks,
          "results": rows}, args.json)
    print()
    print_table(rows, ["batch", "mode", "median_s", "per_step_ms", "speedup", "first_run_s", "peak_mib"])
    print_table(checks, ["batch", "network_max_abs_diff", "image_max_abs_diff"])


if __name__ == "__main__":
    main()
