"""The `atlas` command line: `atlas train` and `atlas generate`."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path

import click

DEFAULT_OUT = "atlas-outputs"
# Kept in step with atlas.diffusion.SAMPLERS by tests/cli/test_cli.py (importing it here would load torch for --help).
SAMPLER_NAMES = ["ddim", "dpmpp_2m", "dpmpp_2m_sde", "euler", "euler_ancestral", "flow_heun", "heun", "unipc"]


def _int_tuple(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip() != "")
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 1,2,2; got {value!r}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="atlas-diffusion")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """atlas: train and run diffusion image models on the hardware you have."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--dataset", default="shapes", show_default=True, help="shapes | digits | folder:PATH")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--steps", default=1000, show_default=True, type=int)
@click.option("--resolution", default=32, show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--grad-accum", default=1, show_default=True, type=int, help="Micro-batches per step.")
@click.option("--lr", default=5e-4, show_default=True, type=float)
@click.option("--warmup-steps", default=100, show_default=True, type=int)
@click.option("--lr-schedule", default="constant", show_default=True, type=click.Choice(["constant", "cosine"]))
@click.option("--grad-clip", default=1.0, show_default=True, type=float, help="0 disables clipping.")
@click.option("--ema-decay", default=0.999, show_default=True, type=float, help="0 disables EMA.")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16", "fp16"]))
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network (eager fallback on failure).")
@click.option("--cond-dropout", default=0.1, show_default=True, type=float, help="Caption dropout for CFG.")
@click.option("--prediction", default="edm", show_default=True, type=click.Choice(["edm", "eps", "v", "x0", "flow"]))
@click.option("--min-snr-gamma", default=None, type=float, help="Min-SNR weighting (eps/v/x0).")
@click.option("--coupling", default="independent", show_default=True, type=click.Choice(["independent", "ot", "sb"]),
              help="Noise-data pairing inside a batch (minibatch OT / Schrodinger bridge).")
@click.option("--coupling-eps", default=0.1, show_default=True, type=float,
              help="Entropic regularisation of --coupling sb, relative to the median squared distance.")
@click.option("--coupling-solver", default="auto", show_default=True,
              type=click.Choice(["auto", "direct", "nystrom", "rff"]),
              help="Kernel operator of the --coupling sb solve (auto: exact whenever the dense kernel fits).")
@click.option("--sb-iterations", default=1000, show_default=True, type=int,
              help="Sinkhorn iteration cap per batch for --coupling sb.")
@click.option("--dataset-size", default=None, type=int, help="Items in a procedural dataset.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--base-channels", default=48, show_default=True, type=int)
@click.option("--channel-mult", default="1,2,2", show_default=True, callback=_int_tuple)
@click.option("--num-res-blocks", default=1, show_default=True, type=int)
@click.option("--attention-levels", default="1,2", show_default=True, callback=_int_tuple)
@click.option("--norm-groups", default=16, show_default=True, type=int)
@click.option("--text-dim", default=64, show_default=True, type=int, help="Text encoder width.")
@click.option("--text-layers", default=2, show_default=True, type=int)
@click.option("--log-every", default=50, show_default=True, type=int)
@click.option("--sample-every", default=0, show_default=True, type=int, help="0 = no sample grids.")
@click.option("--checkpoint-every", default=500, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True)
@click.option("--resume", is_flag=True, help="Continue exactly from the newest checkpoint in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(out_dir: str, steps: int, resolution: int, batch_size: int, grad_accum: int, lr: float,
          warmup_steps: int, lr_schedule: str, grad_clip: float, ema_decay: float, precision: str, compile_: bool,
          cond_dropout: float, prediction: str, min_snr_gamma: float | None, coupling: str, coupling_eps: float,
          coupling_solver: str, sb_iterations: int,
          dataset: str, dataset_size: int | None,
          seed: int, base_channels: int, channel_mult: tuple[int, ...], num_res_blocks: int,
          attention_levels: tuple[int, ...], norm_groups: int, text_dim: int, text_layers: int, log_every: int,
          sample_every: int, checkpoint_every: int, device: str, resume: bool, quiet: bool) -> None:
    """Train a text-conditioned diffusion model and export it to OUT/model."""
    from atlas.config import KernelConfig
    from atlas.training import TrainingConfig, train as run_training

    try:
        config = TrainingConfig(
            dataset=dataset, dataset_size=dataset_size, resolution=resolution, steps=steps, batch_size=batch_size,
            grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps, lr_schedule=lr_schedule,
            grad_clip=grad_clip or None, ema_decay=ema_decay, precision=precision, compile=compile_,
            cond_dropout=cond_dropout, prediction=prediction, min_snr_gamma=min_snr_gamma, coupling=coupling,
            coupling_kernel=KernelConfig(solver_type=coupling_solver, epsilon=coupling_eps),
            sb_iterations=sb_iterations, seed=seed,
            log_every=log_every, sample_every=sample_every, checkpoint_every=checkpoint_every, device=device)
        model = dict(base_channels=base_channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
                     attention_levels=attention_levels, norm_groups=norm_groups)
        text = dict(dim=text_dim, num_layers=text_layers, num_heads=4 if text_dim % 4 == 0 else 1)
        command = "atlas " + shlex.join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("atlas") else None
        exported = run_training(config, out_dir, model_overrides=model, text_overrides=text, resume=resume,
                                command=command, progress=not quiet)
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"model written to {exported}")


@cli.command()
@click.argument("prompts", nargs=-1)
@click.option("--checkpoint", default=None, type=click.Path(), help="Model folder (default: the bundled demo).")
@click.option("--num-samples", default=4, show_default=True, type=int, help="Images per prompt.")
@click.option("--steps", default=25, show_default=True, type=int)
@click.option("--sampler", default="dpmpp_2m", show_default=True,
              type=click.Choice(SAMPLER_NAMES))
@click.option("--schedule", default="karras", show_default=True,
              type=click.Choice(["karras", "exponential", "flow", "vp_linear", "vp_cosine"]), help="Sigma grid.")
@click.option("--guidance-scale", default=3.0, show_default=True, type=float)
@click.option("--negative-prompt", default=None, help="Used on the unconditional side of guidance.")
@click.option("--seed", default=0, show_default=True, type=int, help="Image i uses seed + i.")
@click.option("--batch-size", default=None, type=int, help="Images per forward pass (results do not change).")
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate(prompts: tuple[str, ...], checkpoint: str | None, num_samples: int, steps: int, sampler: str,
             schedule: str, guidance_scale: float, negative_prompt: str | None, seed: int, batch_size: int | None, out_dir: str,
             device: str, quiet: bool) -> None:
    """Generate images for PROMPTS (none: unconditional) and save PNGs and a grid."""
    from tqdm.auto import tqdm

    from atlas.checkpoint import load_model
    from atlas.demo import demo_checkpoint_path
    from atlas.images import save_images
    from atlas.pipeline import generate as run_generate

    try:
        path = Path(checkpoint) if checkpoint else demo_checkpoint_path()
        bundle = load_model(path, device=device)
        started = time.perf_counter()
        images = max(1, len(prompts)) * num_samples
        chunks = -(-images // batch_size) if batch_size else 1
        with tqdm(total=steps * chunks, desc="generate", unit="step", disable=quiet) as bar:
            result = run_generate(bundle, list(prompts) or None, negative_prompts=negative_prompt,
                                  num_samples=num_samples, steps=steps, sampler=sampler, schedule=schedule,
                                  guidance_scale=guidance_scale, seed=seed, batch_size=batch_size,
                                  callback=lambda info: bar.update(1))
        elapsed = time.perf_counter() - started
        paths = save_images(result.images, out_dir, result.prompts, result.seeds)
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{len(result.images)} images in {elapsed:.1f} s -> {Path(out_dir).resolve()}")
    for p in paths:
        click.echo(f"  {p}")


def main() -> None:
    cli(prog_name="atlas")


if __name__ == "__main__":
    main()
