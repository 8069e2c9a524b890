"""Training losses, training-sigma distributions and condition dropout.

Noising uses :func:`atlas.diffusion.convention.add_noise` (``x = x0 + sigma * noise``), the same object the
samplers' convention is built on.  The loss is the regression of the raw network output ``F`` onto its
target ``F* = (x0 - c_skip x) / c_out`` (Karras et al. 2022, Eq. 8), so one function serves every prediction
type in :mod:`atlas.diffusion.parameterization`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import schedules
from .convention import add_noise, alpha_bar_to_sigma, broadcast
from .guidance import Conditioning
from .parameterization import Denoiser

__all__ = [
    "add_noise",
    "condition_dropout",
    "diffusion_loss",
    "edm_loss",
    "min_snr_weight",
    "sample_sigmas_logit_normal",
    "sample_sigmas_lognormal",
    "sample_sigmas_vp",
]

_VP_ALPHA_BAR = {"vp_cosine": schedules.vp_cosine_alpha_bar, "vp_linear": schedules.vp_linear_alpha_bar}


def _draw_device(generator: Optional[torch.Generator], device):
    """Draw on the generator's own device (so a seed gives the same numbers everywhere), then move."""
    return generator.device if generator is not None else device


def sample_sigmas_lognormal(
    batch: int, p_mean: float = -1.2, p_std: float = 1.2, generator: Optional[torch.Generator] = None, *,
    dtype: torch.dtype = torch.float32, device=None,
) -> Tensor:
    """EDM training noise levels ``ln sigma ~ N(p_mean, p_std^2)`` (Karras et al. 2022, Table 1). Shape (batch,)."""
    if not p_std > 0:
        raise ValueError(f"p_std must be > 0, got {p_std!r}; EDM uses 1.2")
    normal = torch.randn(batch, generator=generator, dtype=torch.float64, device=_draw_device(generator, device))
    return torch.exp(p_mean + p_std * normal).to(dtype=dtype, device=device)


def sample_sigmas_vp(
    batch: int, schedule: str = "vp_cosine", generator: Optional[torch.Generator] = None, *,
    t_min: float = 1e-3, dtype: torch.dtype = torch.float32, device=None,
) -> Tensor:
    """VP training noise levels: ``t ~ U(t_min, 1)``, ``sigma = alpha_bar_to_sigma(alpha_bar(t))``. Shape (batch,).

    ``schedule`` is "vp_cosine" (:func:`schedules.vp_cosine_alpha_bar`) or "vp_linear"
    (:func:`schedules.vp_linear_alpha_bar`), each with its default parameters; ``t_min > 0`` keeps sigma > 0.
    """
    if schedule not in _VP_ALPHA_BAR:
        raise ValueError(f"unknown VP schedule {schedule!r}; valid names are {sorted(_VP_ALPHA_BAR)}")
    if not (0.0 < t_min < 1.0):
        raise ValueError(f"t_min must lie in (0, 1), got {t_min!r}; t=0 is clean data where sigma=0")
    uniform = torch.rand(batch, generator=generator, dtype=torch.float64, device=_draw_device(generator, device))
    t = t_min + (1.0 - t_min) * uniform
    return alpha_bar_to_sigma(_VP_ALPHA_BAR[schedule](t)).to(dtype=dtype, device=device)


def sample_sigmas_logit_normal(
    batch: int, mean: float = 0.0, std: float = 1.0, generator: Optional[torch.Generator] = None, *,
    dtype: torch.dtype = torch.float32, device=None,
) -> Tensor:
    """Flow-matching training noise levels: ``t = sigmoid(mean + std * n)`` (the logit-normal of Esser et al.
    2024, Sec. 3.1) on the path ``x_t = (1 - t) x0 + t noise``, mapped to ``sigma = t / (1 - t)``. Shape (batch,).
    """
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std!r}; 1.0 is the usual choice")
    normal = torch.randn(batch, generator=generator, dtype=torch.float64, device=_draw_device(generator, device))
    # sigma = t / (1 - t) = exp(logit(t)): the logit-normal is a log-normal in sigma.
    return torch.exp(mean + std * normal).to(dtype=dtype, device=device)


def min_snr_weight(sigma: Tensor, prediction: str, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting").

    With ``SNR = 1 / sigma^2`` the x0-space weight ``min(SNR, gamma)`` becomes, in the space of each target:
    "x0": ``min(SNR, gamma)``; "eps": ``min(SNR, gamma) / SNR``; "v": ``min(SNR, gamma) / (SNR + 1)``.
    Shape of sigma (B,).
    """
    if not gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {gamma!r}; the paper uses 5")
    snr = 1.0 / sigma**2
    clipped = snr.clamp(max=gamma)
    if prediction == "x0":
        return clipped
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1)
    raise ValueError(
        f"min-SNR weighting is defined for predictions 'eps', 'v' and 'x0', got {prediction!r}; the 'edm' "
        "preconditioning already weights its loss (lambda(sigma) = 1 / c_out^2), leave min_snr_gamma=None"
    )


def diffusion_loss(
    denoiser: Denoiser, x0: Tensor, sigma: Tensor, noise: Tensor, cond: Optional[Conditioning] = None, *,
    min_snr_gamma: Optional[float] = None,
) -> Tensor:
    """Per-sample denoising loss ``mean((F(c_in x, c_noise) - F*)^2)`` over the non-batch dims.

    For "edm" this equals the EDM loss ``lambda(sigma) ||D(x) - x0||^2`` with
    ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` (Karras et al. 2022, Eq. 8; D - x0 = c_out (F - F*)).
    For "eps"/"v" it is the usual noise/v MSE, optionally times :func:`min_snr_weight`.

    Args:
        denoiser: the wrapped network.
        x0: clean data (B, ...).
        sigma: noise levels (B,), e.g. from :func:`sample_sigmas_lognormal`.
        noise: standard normal, like x0.
        cond: conditioning passed to the network, or None.
        min_snr_gamma: if set, apply min-SNR-gamma weighting (not for "edm").

    Returns:
        Loss per sample, shape (B,); reduce with ``.mean()``.
    """
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser must be an atlas.diffusion.Denoiser, got {type(denoiser).__name__}")
    if sigma.shape != (x0.shape[0],):
        raise ValueError(f"sigma must have shape (B,) = ({x0.shape[0]},), got {tuple(sigma.shape)}")
    kwargs = {} if cond is None else cond.as_kwargs()
    if cond is not None and cond.batch_size not in (None, x0.shape[0]):
        raise ValueError(f"cond has batch size {cond.batch_size} but x0 has {x0.shape[0]}")
    x = add_noise(x0, noise, sigma)
    output = denoiser.network_output(x, sigma, **kwargs)
    target = denoiser.network_target(x0, noise, sigma)
    loss = (output - target).pow(2).flatten(1).mean(dim=1)
    if min_snr_gamma is not None:
        loss = loss * min_snr_weight(sigma, denoiser.prediction, min_snr_gamma)
    return loss


def edm_loss(
    denoiser: Denoiser, x0: Tensor, sigma: Tensor, noise: Tensor, cond: Optional[Conditioning] = None
) -> Tensor:
    """The EDM training loss (Karras et al. 2022, Eq. 8): :func:`diffusion_loss` for an "edm" denoiser. (B,)."""
    if getattr(denoiser, "prediction", None) != "edm":
        raise ValueError(
            f"edm_loss needs a Denoiser with prediction='edm', got {getattr(denoiser, 'prediction', None)!r}; "
            "use diffusion_loss for other prediction types"
        )
    return diffusion_loss(denoiser, x0, sigma, noise, cond)


def condition_dropout(
    cond: Conditioning, null_cond: Conditioning, p: float, generator: Optional[torch.Generator] = None
) -> Conditioning:
    """Replace each sample's conditioning by ``null_cond`` with probability ``p`` (for classifier-free guidance;
    Ho & Salimans 2022, Algorithm 1).

    ``null_cond`` has batch 1 (broadcast) or B.  Both sides are right-padded to the longer token count with the
    mask False on padding, so the result always has ``max(T_cond, T_null)`` tokens whatever was dropped.
    """
    if not (0.0 <= p <= 1.0) or math.isnan(p):
        raise ValueError(f"condition dropout probability p must lie in [0, 1], got {p!r}; 0.1 is common")
    batch = cond.batch_size
    if batch is None:
        raise ValueError("cond has no fields to drop out; pass a Conditioning with context and/or pooled")
    if null_cond.batch_size == 1 and batch != 1:
        null_cond = null_cond.repeat_interleave(batch)
    if null_cond.batch_size != batch:
        raise ValueError(f"null_cond must have batch size 1 or {batch} (that of cond), got {null_cond.batch_size}")
    cond.check_compatible(null_cond)
    device = next(iter(cond.as_kwargs().values())).device
    keep = (torch.rand(batch, generator=generator, device=_draw_device(generator, device)) >= p).to(device)
    if cond.context is not None:
        length = max(cond.context.shape[1], null_cond.context.shape[1])
        cond, null_cond = cond.pad_tokens(length), null_cond.pad_tokens(length)

    def pick(kept: Optional[Tensor], null: Optional[Tensor]) -> Optional[Tensor]:
        return None if kept is None else torch.where(broadcast(keep, kept), kept, null.to(kept.dtype))

    masks = (None, None) if cond.context is None else (cond.full_mask(), null_cond.full_mask())
    mask = pick(*masks)
    if mask is not None and cond.context_mask is None and null_cond.context_mask is None:
        mask = None
    return Conditioning(pick(cond.context, null_cond.context), mask, pick(cond.pooled, null_cond.pooled))
