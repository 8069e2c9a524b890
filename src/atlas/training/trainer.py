"""The training loop: AdamW + warm-up, gradient accumulation, clipping, EMA, AMP, optional torch.compile,
exact resume, periodic sample grids, a JSONL metrics log and a progress bar.

Randomness is a pure function of (seed, step): the data order, the noise, the sigmas, the condition dropout
and the network's dropout at step k are the same whether the run was interrupted before k or not. Together
with bit-exact checkpoints (safetensors) this makes resume exact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from atlas.bundle import ModelBundle
from atlas.checkpoint import load_training_checkpoint, load_weights, save_checkpoint
from atlas.diffusion import diffusion_loss, sample_sigmas_logit_normal, sample_sigmas_lognormal, sample_sigmas_vp
from atlas.images import make_grid, save_png
from atlas.training.config import TrainingConfig
from atlas.transport.coupling import pair_minibatch
from atlas.training.ema import EMA
from atlas.training.optim_state import optimizer_state_from_files, optimizer_state_to_files

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
EXPORT = "model"


def learning_rate(config: TrainingConfig, step: int) -> float:
    """LR for optimizer step ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for (run seed, step, stream); streams separate data order from noise etc."""
    value = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) % (2**63)
    return value ^ (value >> 31)


def batch_indices(dataset_size: int, seed: int, step: int, batch_size: int) -> list[int]:
    """Indices of the images in step ``step``: consecutive slices of per-epoch random permutations."""
    first = step * batch_size
    indices: list[int] = []
    epoch = -1
    order: Tensor | None = None
    for position in range(first, first + batch_size):
        if position // dataset_size != epoch:
            epoch = position // dataset_size
            generator = torch.Generator().manual_seed(step_seed(seed, epoch, stream=1))
            order = torch.randperm(dataset_size, generator=generator)
        indices.append(int(order[position % dataset_size]))
    return indices


class Trainer:
    """Trains a `ModelBundle` on a dataset of (image, caption) pairs, writing everything under ``out_dir``.

    Layout of ``out_dir``: ``checkpoints/step_XXXXXXX/`` (resumable), ``model/`` (exported EMA weights),
    ``samples/step_XXXXXXX.png``, ``metrics.jsonl``.
    """

    def __init__(self, bundle: ModelBundle, dataset: Dataset, config: TrainingConfig, out_dir: str | Path, *,
                 sample_prompts: Sequence[str] | None = None, progress: bool = True,
                 compile_fn: Callable[[nn.Module], nn.Module] | None = None):
        self.bundle = bundle.to(config.device).train()
        self.dataset = dataset
        self.config = config
        self.out_dir = Path(out_dir)
        self.sample_prompts = list(sample_prompts or [])
        self.progress = progress
        self.step = 0
        params = [p for p in self.bundle.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay)
        self.ema = EMA(self.bundle, config.ema_decay, config.ema_warmup) if config.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self._compile_pending = config.compile
        self._compile_fn = compile_fn or torch.compile
        self.denoiser = self.bundle.denoiser()

    # -- resume ------------------------------------------------------------------------------------------
    @staticmethod
    def latest_checkpoint(out_dir: str | Path) -> Path | None:
        root = Path(out_dir) / CHECKPOINTS
        complete = sorted(p for p in root.glob("step_*") if (p / "config.json").is_file()) if root.is_dir() else []
        return complete[-1] if complete else None

    def load_state(self, directory: str | Path) -> None:
        """Restore weights, EMA, optimizer and step from a training checkpoint."""
        loaded, state = load_training_checkpoint(directory)
        saved = TrainingConfig.from_dict(state.training_state["config"])
        if saved != self.config:
            differing = {k: (v, getattr(self.config, k)) for k, v in saved.to_dict().items()
                         if v != self.config.to_dict()[k] and k != "steps"}
            if differing:
                raise ValueError(f"cannot resume {directory}: the training settings differ from the checkpoint's "
                                 f"(saved, now): {differing}. Resume with the same settings (only --steps may change)")
        load_weights(self.bundle, loaded.state_dict(), str(directory))
        if self.ema is not None:
            if state.ema_state is None:
                raise ValueError(f"{directory} has no EMA weights but ema_decay={self.config.ema_decay}")
            self.ema.load_state_dict(state.ema_state, state.training_state["ema_updates"])
        optimizer_state_from_files(self.optimizer, state.optimizer_tensors or {},
                                   state.training_state["optimizer"])
        self.step = int(state.training_state["step"])

    # -- one step ----------------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(device_type=torch.device(self.config.device).type, dtype=dtype)

    def _draw_sigmas(self, batch: int, generator: torch.Generator) -> Tensor:
        if self.config.prediction in ("edm", "x0"):
            return sample_sigmas_lognormal(batch, generator=generator)
        if self.config.prediction == "flow":
            return sample_sigmas_logit_normal(batch, generator=generator)
        return sample_sigmas_vp(batch, generator=generator)

    def _forward_loss(self, images: Tensor, captions: list[str], sigma: Tensor, noise: Tensor) -> Tensor:
        cond = self.bundle.encode(captions) if self.bundle.is_conditional else None
        if self._compile_pending:
            self._compile_pending = False
            compiled = self._compile_fn(self.bundle.network)
            try:
                with self._autocast():
                    losses = diffusion_loss(self.bundle.denoiser(compiled), images, sigma, noise, cond,
                                            min_snr_gamma=self.config.min_snr_gamma)
                self.denoiser = self.bundle.denoiser(compiled)
                return losses
            except Exception as error:  # torch.compile raises many types (Inductor, Dynamo, C++ toolchain)
                message = f"torch.compile failed on the first step ({type(error).__name__}: {error}); " \
                          f"continuing in eager mode"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                log.warning(message)
        with self._autocast():
            return diffusion_loss(self.denoiser, images, sigma, noise, cond, min_snr_gamma=self.config.min_snr_gamma)

    def accumulate_gradients(self, images: Tensor, captions: list[str], sigma: Tensor, noise: Tensor) -> float:
        """Backward over ``grad_accum`` micro-batches; the summed gradient equals the full-batch mean's.

        All randomness (sigma, noise, caption dropout) is drawn for the whole batch before it is split, so
        the result does not depend on ``grad_accum``.
        """
        total = images.shape[0]
        loss_sum = 0.0
        micro = self.config.micro_batch_size
        for start in range(0, total, micro):
            part = slice(start, start + micro)
            losses = self._forward_loss(images[part], captions[part], sigma[part], noise[part])
            loss = losses.float().sum() / total
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += float(loss.detach())
        return loss_sum

    def _load_batch(self) -> tuple[Tensor, list[str]]:
        indices = batch_indices(len(self.dataset), self.config.seed, self.step, self.config.batch_size)
        items = [self.dataset[i] for i in indices]
        images = torch.stack([image for image, _ in items]).to(self.config.device)
        return images, [caption for _, caption in items]

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        images, captions = self._load_batch()
        generator = torch.Generator(device=cfg.device).manual_seed(step_seed(cfg.seed, self.step, stream=2))
        torch.manual_seed(step_seed(cfg.seed, self.step, stream=3))  # network dropout
        sigma = self._draw_sigmas(images.shape[0], generator).to(cfg.device)
        noise = torch.randn(images.shape, generator=generator, device=cfg.device, dtype=images.dtype)
        if self.bundle.is_conditional and cfg.cond_dropout > 0:
            # Classifier-free guidance training (Ho & Salimans 2022): the empty prompt is the null condition,
            # exactly what generation uses on the unconditional side.
            drop = torch.rand(len(captions), generator=generator, device=cfg.device) < cfg.cond_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        if cfg.coupling != "independent":
            # Minibatch OT / SB pairing of noise with images (Tong et al. 2023). Its own random stream, so the
            # independent coupling's draws are unchanged.
            pairing_generator = torch.Generator(device=cfg.device).manual_seed(step_seed(cfg.seed, self.step, 4))
            kernel = cfg.coupling_kernel
            noise = pair_minibatch(images, noise, cfg.coupling, eps=kernel.epsilon,
                                   relative_eps=kernel.relative_epsilon, max_iter=cfg.sb_iterations,
                                   kernel_factory=kernel.kernel_factory(seed=step_seed(cfg.seed, self.step, 5)),
                                   generator=pairing_generator).noise
        lr = learning_rate(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.accumulate_gradients(images, captions, sigma, noise)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.bundle)
        self.step += 1
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm}

    # -- outputs -----------------------------------------------------------------------------------------
    def inference_weights(self) -> dict[str, Tensor]:
        return self.ema.state_dict() if self.ema is not None else self.bundle.state_dict()

    def save_training_checkpoint(self) -> Path:
        tensors, optimizer_meta = optimizer_state_to_files(self.optimizer)
        state = {"step": self.step, "config": self.config.to_dict(), "optimizer": optimizer_meta,
                 "ema_updates": 0 if self.ema is None else self.ema.num_updates}
        path = save_checkpoint(self.out_dir / CHECKPOINTS / f"step_{self.step:07d}", self.bundle,
                               ema_state=None if self.ema is None else self.ema.state_dict(),
                               optimizer_tensors=tensors, training_state=state)
        complete = sorted(p for p in (self.out_dir / CHECKPOINTS).glob("step_*") if (p / "config.json").is_file())
        for old in complete[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def export(self) -> Path:
        """Write the inference model (EMA weights when EMA is on) to ``out_dir/model``."""
        return save_checkpoint(self.out_dir / EXPORT, self.bundle, weights=self.inference_weights())

    def save_sample_grid(self) -> Path | None:
        if not self.sample_prompts and self.bundle.is_conditional:
            return None
        from atlas.pipeline import generate

        sampler_bundle = ModelBundle.from_config_dict(self.bundle.config_dict()).to(self.config.device)
        sampler_bundle.load_state_dict(self.inference_weights())
        result = generate(sampler_bundle.eval(), self.sample_prompts or None, steps=20,
                          num_samples=1 if self.sample_prompts else 8, seed=0)
        return save_png(make_grid(result.images), self.out_dir / "samples" / f"step_{self.step:07d}.png")

    def _log(self, record: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def run(self) -> Path:
        """Train until ``config.steps``, then export; returns the exported model folder."""
        cfg = self.config
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not self.progress)
        started, window_start, window_steps, window_loss = time.perf_counter(), time.perf_counter(), 0, 0.0
        while self.step < cfg.steps:
            stats = self.train_step()
            window_steps += 1
            window_loss += stats["loss"]
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                elapsed = time.perf_counter() - window_start
                self._log({"step": self.step, "loss": window_loss / window_steps, "lr": stats["lr"],
                           "grad_norm": stats["grad_norm"], "images_per_s": window_steps * cfg.batch_size / elapsed,
                           "elapsed_s": time.perf_counter() - started})
                window_start, window_steps, window_loss = time.perf_counter(), 0, 0.0
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_training_checkpoint()
            if cfg.sample_every and self.step % cfg.sample_every == 0:
                self.save_sample_grid()
        bar.close()
        if cfg.checkpoint_every and self.latest_checkpoint(self.out_dir) != \
                self.out_dir / CHECKPOINTS / f"step_{self.step:07d}":
            self.save_training_checkpoint()
        return self.export()
