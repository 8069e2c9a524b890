"""The `atlas` command line: `atlas train`, `generate`, `profiles`, `hardware` and `validate`."""

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


GPU_MEMORY = ["auto", "6GB", "8GB", "12GB", "16GB", "24GB", "32GB", "CPU"]  # atlas.config.profiles, checked by a test


def _print_profiles(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from atlas.config.profiles import list_profiles

        list_profiles()
        ctx.exit()


@cli.command()
@click.argument("prompts", nargs=-1)
@click.option("--prompts", "prompt_options", multiple=True, help="A prompt (repeatable; same as the arguments).")
@click.option("--checkpoint", default=None, type=click.Path(), help="Model folder (default: the bundled demo).")
@click.option("--num-samples", "--num_samples", "num_samples", default=4, show_default=True, type=int,
              help="Images per prompt.")
@click.option("--steps", "--timesteps", "steps", default=None, type=int, help="Sampler steps [default: 50].")
@click.option("--sampler", default="dpmpp_2m", show_default=True, type=click.Choice(SAMPLER_NAMES))
@click.option("--schedule", default="karras", show_default=True,
              type=click.Choice(["karras", "exponential", "flow", "vp_linear", "vp_cosine"]), help="Sigma grid.")
@click.option("--guidance-scale", "--guidance_scale", "guidance_scale", default=None, type=float,
              help="Classifier-free guidance [default: the checkpoint's recommendation (3 for the demo), else 7.5].")
@click.option("--negative-prompt", default=None, help="Used on the unconditional side of guidance.")
@click.option("--seed", default=0, show_default=True, type=int, help="Image i uses seed + i.")
@click.option("--gpu-memory", "--gpu_memory", "gpu_memory", default="auto", show_default=True,
              type=click.Choice(GPU_MEMORY, case_sensitive=False), help="GPU profile (atlas profiles lists them).")
@click.option("--batch-size", default=None, help="Images per forward pass, or 'auto' [default: the profile's].")
@click.option("--resolution", default=None, type=int, help="Image side in pixels (above native: coarse-to-fine).")
@click.option("--tile-size", default=None, type=int, help="Denoise over tiles of this many pixels.")
@click.option("--precision", default=None, type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Autocast dtype [default: the profile's].")
@click.option("--out", "--output_dir", "--output-dir", "out_dir", default=DEFAULT_OUT, show_default=True,
              type=click.Path(file_okay=False))
@click.option("--device", default=None, help="cuda, cuda:1, cpu, ... [default: CUDA if available].")
@click.option("--list-profiles", "--list_profiles", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_profiles, help="Print the GPU profiles and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate(prompts: tuple[str, ...], prompt_options: tuple[str, ...], checkpoint: str | None, num_samples: int,
             steps: int | None, sampler: str, schedule: str, guidance_scale: float | None,
             negative_prompt: str | None, seed: int, gpu_memory: str, batch_size: str | None,
             resolution: int | None, tile_size: int | None, precision: str | None, out_dir: str,
             device: str | None, quiet: bool) -> None:
    """Generate images for PROMPTS (none: unconditional) and save PNGs and a grid."""
    from tqdm.auto import tqdm

    from atlas.api import create_sampler

    # --prompts values first: `--prompts "a red car" "a blue house"` (the specification's form) parses as one
    # option value and one argument, in that order.
    prompts = tuple(prompt_options) + tuple(prompts)
    options = {"sampler": sampler, "schedule": schedule}
    for name, value in (("tile_size", tile_size), ("precision", precision), ("guidance_scale", guidance_scale),
                        ("negative_prompt", negative_prompt)):
        if value is not None:
            options[name] = value
    try:
        if batch_size is not None and batch_size != "auto":
            try:
                batch_size = int(batch_size)
            except ValueError:
                raise ValueError(f"--batch-size must be a positive integer or 'auto', got {batch_size!r}") from None
        easy = create_sampler(checkpoint, gpu_memory=gpu_memory, device=device, batch_size=batch_size,
                              resolution=resolution, **options)
        started = time.perf_counter()
        with tqdm(desc="generate", unit="step", disable=quiet) as bar:
            images = easy.generate(list(prompts) or None, num_samples=num_samples, timesteps=steps, seed=seed,
                                   callback=lambda info: bar.update(1))
        elapsed = time.perf_counter() - started
        paths = easy.save(images, out_dir)
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    result = easy.last_result
    click.echo(f"{len(images)} images in {elapsed:.1f} s ({easy.profile.name} profile, {result.stats['precision']}) "
               f"-> {Path(out_dir).resolve()}")
    if result.backoff is not None and result.backoff.backed_off:
        click.echo(f"out-of-memory back-off: {result.backoff.summary()}")
    for p in paths:
        click.echo(f"  {p}")


@cli.command()
def profiles() -> None:
    """List the GPU memory profiles (the easy API's and the training presets' settings)."""
    from atlas.config.profiles import list_profiles

    list_profiles()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the capabilities record as JSON.")
@click.option("--device", default=None, help="Device to inspect [default: CUDA, else MPS, else CPU].")
def hardware(as_json: bool, device: str | None) -> None:
    """Print this machine's capabilities and recommendations."""
    from atlas.check_hardware import main as check_hardware

    code = check_hardware((["--json"] if as_json else []) + (["--device", device] if device else []))
    if code:
        raise SystemExit(code)


@cli.command()
def validate() -> None:
    """Self-check (under a minute on a CPU): imports, sampler maths, train -> save -> load -> generate, tiling,
    profiles. Prints a pass/fail table; exits 1 if a check fails."""
    from atlas.selfcheck import main as selfcheck

    raise SystemExit(selfcheck())


def main() -> None:
    cli(prog_name="atlas")


if __name__ == "__main__":
    main()
