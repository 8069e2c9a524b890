"""Autoencoders: how a latent diffusion model's latents become images (and images latents).

A model that denoises pixels needs no autoencoder (``ModelBundle.autoencoder`` is None; its samples ARE the
images). A latent model carries one, and generation decodes through it. Every autoencoder here implements the
same small interface, so any other (e.g. a pretrained VAE from another library) plugs in by subclassing
:class:`Autoencoder`:

* ``image_channels``, ``latent_channels``: channel counts of images and latents;
* ``downsample_factor``: image side / latent side (tile sizes in pixels are divided by it);
* ``encode(images (B, image_channels, H, W) in [-1, 1]) -> latents (B, latent_channels, H / f, W / f)``, already
  multiplied by ``scaling_factor`` so that latents have roughly unit variance (Rombach et al. 2022, Sec. 4.3);
* ``decode(latents) -> images`` in about [-1, 1] (undoes the scaling first);
* ``to_config() -> dict`` with a ``"type"`` key that :func:`build_autoencoder` reads back (checkpoints store it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["AUTOENCODERS", "Autoencoder", "ConvAutoencoder", "ConvAutoencoderConfig", "build_autoencoder"]


class Autoencoder(nn.Module):
    """Base class of the autoencoder interface (see the module docstring)."""

    image_channels: int
    latent_channels: int
    downsample_factor: int

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement encode(images) -> latents")

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement decode(latents) -> images")

    def to_config(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement to_config() for checkpoints")

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Latent shape for images of ``height`` x ``width`` pixels; both must be multiples of the factor."""
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not a multiple of the autoencoder's downsampling factor "
                             f"{f}; use a resolution divisible by {f}, e.g. {max(f, height // f * f)}")
        return batch, self.latent_channels, height // f, width // f

    def _check_input(self, tensor: Tensor, channels: int, name: str) -> None:
        if tensor.ndim != 4 or tensor.shape[1] != channels:
            raise ValueError(f"{type(self).__name__}.{name} expects (B, {channels}, H, W), got {tuple(tensor.shape)}")


@dataclass(frozen=True)
class ConvAutoencoderConfig:
    """Shape of a :class:`ConvAutoencoder`.

    Attributes:
        image_channels: channels of images (3 = RGB).
        latent_channels: channels of latents.
        downsample_factor: image side / latent side, a power of two >= 2 (one stride-2 stage per factor of 2).
        base_channels: width of the first stage; each further stage doubles it.
        scaling_factor: latents are ``encoder(x) * scaling_factor`` (set it to 1 / std of the latents of your data).
    """

    image_channels: int = 3
    latent_channels: int = 4
    downsample_factor: int = 4
    base_channels: int = 32
    scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        for name in ("image_channels", "latent_channels", "base_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ConvAutoencoderConfig.{name}={value!r} must be a positive integer")
        f = self.downsample_factor
        if isinstance(f, bool) or not isinstance(f, int) or f < 2 or f & (f - 1):
            raise ValueError(f"ConvAutoencoderConfig.downsample_factor={f!r} must be a power of two >= 2 "
                             f"(2, 4, 8, ...)")
        if not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0):
            raise ValueError(f"ConvAutoencoderConfig.scaling_factor={self.scaling_factor!r} must be a finite number > 0")

    @property
    def stages(self) -> int:
        return int(math.log2(self.downsample_factor))


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class ConvAutoencoder(Autoencoder):
    """A small deterministic convolutional autoencoder (conv + GroupNorm + SiLU stages, stride-2 down,
    nearest-neighbour up). Trainable as is; used for latent models and, randomly initialised, in tests."""

    def __init__(self, config: ConvAutoencoderConfig | None = None):
        super().__init__()
        self.config = config or ConvAutoencoderConfig()
        c = self.config
        self.image_channels, self.latent_channels = c.image_channels, c.latent_channels
        self.downsample_factor = c.downsample_factor
        widths = [c.base_channels * 2 ** i for i in range(c.stages + 1)]
        encoder: list[nn.Module] = [nn.Conv2d(c.image_channels, widths[0], 3, padding=1)]
        for i in range(c.stages):
            encoder += [_norm(widths[i]), nn.SiLU(), nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)]
        encoder += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], c.latent_channels, 3, padding=1)]
        decoder: list[nn.Module] = [nn.Conv2d(c.latent_channels, widths[-1], 3, padding=1)]
        for i in reversed(range(c.stages)):
            decoder += [_norm(widths[i + 1]), nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.Conv2d(widths[i + 1], widths[i], 3, padding=1)]
        decoder += [_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], c.image_channels, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)

    def encode(self, images: Tensor) -> Tensor:
        self._check_input(images, self.image_channels, "encode")
        self.latent_shape(*images.shape[:1], *images.shape[2:])  # checks divisibility
        return self.encoder(images) * self.config.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        self._check_input(latents, self.latent_channels, "decode")
        return self.decoder(latents / self.config.scaling_factor)

    def to_config(self) -> dict[str, Any]:
        return {"type": "conv", **asdict(self.config)}


AUTOENCODERS = {"conv": (ConvAutoencoder, ConvAutoencoderConfig)}


def build_autoencoder(config: dict[str, Any]) -> Autoencoder:
    """Rebuild an autoencoder from ``Autoencoder.to_config()`` (randomly initialised; load weights after)."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"an autoencoder config must be a dict with a 'type' key, got {config!r}")
    fields = dict(config)
    kind = fields.pop("type")
    if kind not in AUTOENCODERS:
        raise ValueError(f"unknown autoencoder type {kind!r}; known types are {sorted(AUTOENCODERS)}")
    cls, config_cls = AUTOENCODERS[kind]
    try:
        return cls(config_cls(**fields))
    except TypeError as error:
        raise ValueError(f"invalid {kind!r} autoencoder config {config!r}: {error}") from error
