"""Conditioning container and classifier-free guidance.

A :class:`Conditioning` carries what a network is conditioned on (token states, their mask, a pooled vector)
and reaches the network as keyword arguments ``network(x, c_noise, context=..., context_mask=..., pooled=...)``.
Guidance turns a conditional denoiser into the plain ``DenoiseFn(x, sigma)`` that samplers take, so samplers
never see conditioning.  Nothing here falls back silently: a batch or feature mismatch is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Optional

import torch
from torch import Tensor

from .parameterization import expand_sigma
from .samplers import DenoiseFn

__all__ = ["Conditioning", "classifier_free_guidance", "conditional_denoiser"]


@dataclass
class Conditioning:
    """Per-sample conditioning; every present field has the batch as its first dim.

    Attributes:
        context: token states (B, T, D), e.g. a text encoder's last hidden states.
        context_mask: (B, T) bool, True = a valid token; None means all tokens are valid.
        pooled: a pooled embedding (B, P).
    """

    context: Optional[Tensor] = None
    context_mask: Optional[Tensor] = None
    pooled: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if self.context is not None and self.context.ndim != 3:
            raise ValueError(f"context must have shape (B, T, D), got {tuple(self.context.shape)}")
        if self.context_mask is not None:
            if self.context is None:
                raise ValueError("context_mask was given without context; pass both or neither")
            if self.context_mask.dtype != torch.bool or self.context_mask.shape != self.context.shape[:2]:
                raise ValueError(
                    f"context_mask must be a bool tensor of shape (B, T) = {tuple(self.context.shape[:2])}, got "
                    f"{self.context_mask.dtype} {tuple(self.context_mask.shape)}; use mask.bool() (True = valid token)"
                )
        if self.pooled is not None and self.pooled.ndim != 2:
            raise ValueError(f"pooled must have shape (B, P), got {tuple(self.pooled.shape)}")
        self.batch_size  # validates that the fields agree on B

    @property
    def batch_size(self) -> Optional[int]:
        """The common batch size B of the present fields (None when no field is set)."""
        sizes = {f.name: getattr(self, f.name).shape[0] for f in fields(self) if getattr(self, f.name) is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"conditioning fields disagree on the batch size: {sizes}")
        return next(iter(sizes.values()), None)

    def _present(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def as_kwargs(self) -> dict[str, Tensor]:
        """The present fields as network keyword arguments (None fields are omitted)."""
        return {name: getattr(self, name) for name in self._present()}

    def full_mask(self) -> Tensor:
        """``context_mask``, or an all-True (B, T) mask when it is None (requires context)."""
        if self.context_mask is not None:
            return self.context_mask
        return torch.ones(self.context.shape[:2], dtype=torch.bool, device=self.context.device)

    def pad_tokens(self, length: int) -> "Conditioning":
        """Right-pad ``context`` with zero tokens to ``length`` (mask False on the padding)."""
        if self.context is None:
            return self
        batch, tokens, _ = self.context.shape
        if length < tokens:
            raise ValueError(f"cannot pad {tokens} tokens down to {length}; length must be >= the token count")
        if length == tokens:
            return self
        context = torch.nn.functional.pad(self.context, (0, 0, 0, length - tokens))
        mask = torch.nn.functional.pad(self.full_mask(), (0, length - tokens), value=False)
        return Conditioning(context, mask, self.pooled)

    def check_compatible(self, other: "Conditioning") -> None:
        """Raise ValueError unless ``other`` has the same fields and feature dims (token counts may differ)."""
        if (self.context is None) != (other.context is None) or (self.pooled is None) != (other.pooled is None):
            raise ValueError(
                f"cannot combine conditionings with different fields: {self._present()} vs {other._present()}; "
                "encode the null/negative prompt with the same encoder as the prompt"
            )
        if self.context is not None and self.context.shape[2] != other.context.shape[2]:
            raise ValueError(
                f"context feature dims differ: {self.context.shape[2]} vs {other.context.shape[2]}; both sides "
                "must come from the same text encoder"
            )
        if self.pooled is not None and self.pooled.shape[1] != other.pooled.shape[1]:
            raise ValueError(f"pooled feature dims differ: {self.pooled.shape[1]} vs {other.pooled.shape[1]}")

    def cat(self, other: "Conditioning") -> "Conditioning":
        """Concatenate along the batch (self first); the shorter token axis is right-padded, mask False there."""
        self.check_compatible(other)
        if self.context is None:
            pooled = None if self.pooled is None else torch.cat([self.pooled, other.pooled])
            return Conditioning(pooled=pooled)
        a, b = self, other
        if a.context.shape[1] != b.context.shape[1] or a.context_mask is not None or b.context_mask is not None:
            length = max(a.context.shape[1], b.context.shape[1])
            a, b = a.pad_tokens(length), b.pad_tokens(length)
            mask = torch.cat([a.full_mask(), b.full_mask()])
        else:
            mask = None
        pooled = None if a.pooled is None else torch.cat([a.pooled, b.pooled])
        return Conditioning(torch.cat([a.context, b.context]), mask, pooled)

    def _map(self, fn: Callable[[Tensor], Tensor]) -> "Conditioning":
        return Conditioning(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                               for f in fields(self)})

    def repeat_interleave(self, n: int) -> "Conditioning":
        """Repeat every sample n times along the batch: (B, ...) -> (B * n, ...), sample-major."""
        return self._map(lambda t: t.repeat_interleave(n, dim=0))

    def index(self, idx) -> "Conditioning":
        """Select samples along the batch (an int keeps the batch dim; slices, index and bool tensors work)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return self._map(lambda t: t[idx])

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Conditioning":
        """Move to ``device``; ``dtype`` applies to the floating fields only (the mask stays bool)."""
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))


def _check_batch(cond: Optional[Conditioning], batch: int, name: str) -> None:
    size = None if cond is None else cond.batch_size
    if size is not None and size != batch:
        raise ValueError(
            f"{name} conditioning has batch size {size} but x has {batch}; repeat it with "
            f"{name}.repeat_interleave(n) so there is one row per sample"
        )


def conditional_denoiser(denoiser: Callable[..., Tensor], cond: Optional[Conditioning]) -> DenoiseFn:
    """Bind ``cond`` into ``denoiser(x, sigma, **cond)`` giving a ``DenoiseFn`` without guidance.

    ``cond=None`` (or an empty Conditioning) calls the denoiser with no conditioning keywords.
    """
    kwargs = {} if cond is None else cond.as_kwargs()

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        _check_batch(cond, x.shape[0], "cond")
        return denoiser(x, sigma, **kwargs)

    return denoise


def classifier_free_guidance(
    denoiser: Callable[..., Tensor], cond: Conditioning, uncond: Conditioning, guidance_scale: float
) -> DenoiseFn:
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6) as a ``DenoiseFn(x (B, ...), sigma (B,))``.

    ``D_w = D(x | uncond) + w (D(x | cond) - D(x | uncond))``, computed with ONE batched denoiser call on
    ``cat([x, x])`` and ``cond.cat(uncond)``.  A negative prompt is simply passed as ``uncond``.
    ``guidance_scale`` 1 returns the conditional and 0 the unconditional output, each from a single
    half-size call.  ``cond`` and ``uncond`` must have the same fields, feature dims and batch size as x.
    """
    if not isinstance(cond, Conditioning) or not isinstance(uncond, Conditioning):
        raise TypeError(
            f"cond and uncond must be Conditioning objects, got {type(cond).__name__} and {type(uncond).__name__}; "
            "use conditional_denoiser(denoiser, cond) for sampling without guidance"
        )
    guidance_scale = float(guidance_scale)
    both = cond.cat(uncond)  # validates fields and feature dims once, here
    if cond.batch_size != uncond.batch_size:
        raise ValueError(f"cond has batch size {cond.batch_size} but uncond has {uncond.batch_size}")
    if guidance_scale == 1.0:
        return conditional_denoiser(denoiser, cond)
    if guidance_scale == 0.0:
        return conditional_denoiser(denoiser, uncond)
    kwargs = both.as_kwargs()

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        _check_batch(cond, x.shape[0], "cond")
        sigma = expand_sigma(sigma, x)
        denoised = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **kwargs)
        denoised_cond, denoised_uncond = denoised.chunk(2)
        return denoised_uncond + guidance_scale * (denoised_cond - denoised_uncond)

    return denoise
