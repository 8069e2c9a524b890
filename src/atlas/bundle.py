"""`ModelBundle`: a trained diffusion model as one object — network, text encoder and its diffusion maths.

The bundle is what a checkpoint stores and what generation needs. It turns the raw network into the
denoiser D(x, sigma, cond) through `atlas.diffusion.Denoiser`, and prompts into `Conditioning`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn

from atlas.conditioning.text_encoder import TextEncoderConfig, VocabTextEncoder
from atlas.diffusion import PREDICTIONS, Conditioning, Denoiser
from atlas.models import HighResLatentScoreModel, HighResModelConfig
from atlas.models.autoencoder import Autoencoder, build_autoencoder

@dataclass
class DiffusionSpec:
    """How the network's output is read (its parameterisation) and the sigma range it was trained on."""

    prediction: str = "edm"
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"DiffusionSpec.prediction={self.prediction!r} is not one of {PREDICTIONS}")
        if not self.sigma_data > 0:
            raise ValueError(f"DiffusionSpec.sigma_data={self.sigma_data!r} must be > 0 (0.5 for images in [-1, 1])")
        if not 0 < self.sigma_min < self.sigma_max or not math.isfinite(self.sigma_max):
            raise ValueError(f"DiffusionSpec needs 0 < sigma_min < sigma_max < inf; got sigma_min="
                             f"{self.sigma_min!r}, sigma_max={self.sigma_max!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelBundle(nn.Module):
    """Network + optional text encoder + diffusion spec + optional autoencoder (+ free-form metadata such as
    the training command).

    Without an autoencoder the network denoises pixels and its samples are the images; with one it denoises
    latents of ``autoencoder.downsample_factor`` times smaller side, and :meth:`decode` turns them into images.
    Its ``state_dict`` keys are ``network.*``, ``text_encoder.*`` and ``autoencoder.*``.
    """

    def __init__(self, network: HighResLatentScoreModel, text_encoder: VocabTextEncoder | None,
                 diffusion: DiffusionSpec, metadata: dict[str, Any] | None = None,
                 autoencoder: Autoencoder | None = None):
        super().__init__()
        if autoencoder is not None and autoencoder.latent_channels != network.config.in_channels:
            raise ValueError(f"the autoencoder makes {autoencoder.latent_channels}-channel latents but the network "
                             f"takes in_channels={network.config.in_channels}; build the network with "
                             f"in_channels={autoencoder.latent_channels}")
        encoder_dim = None if text_encoder is None else text_encoder.dim
        network.config.check_context_dim(encoder_dim)
        if network.config.pooled_dim not in (None, encoder_dim):
            raise ValueError(f"HighResModelConfig.pooled_dim={network.config.pooled_dim!r} does not match the "
                             f"text encoder's pooled width {encoder_dim!r}")
        self.network = network
        self.text_encoder = text_encoder
        self.diffusion = diffusion
        self.metadata = dict(metadata or {})
        self.autoencoder = autoencoder

    @classmethod
    def build(cls, model_config: HighResModelConfig, text_config: TextEncoderConfig | None,
              diffusion: DiffusionSpec | None = None, metadata: dict[str, Any] | None = None,
              autoencoder: Autoencoder | None = None) -> "ModelBundle":
        encoder = VocabTextEncoder(text_config) if text_config is not None else None
        return cls(HighResLatentScoreModel(model_config), encoder, diffusion or DiffusionSpec(), metadata or {},
                   autoencoder)

    @property
    def latent_factor(self) -> int:
        """Image side / the side the network works at (1 for pixel models)."""
        return 1 if self.autoencoder is None else self.autoencoder.downsample_factor

    @property
    def image_channels(self) -> int:
        return self.network.config.in_channels if self.autoencoder is None else self.autoencoder.image_channels

    @property
    def native_resolution(self) -> int:
        """The image side (pixels) the model was trained at."""
        return self.network.config.resolution * self.latent_factor

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples (B, in_channels, h, w) -> images in about [-1, 1] (pixel models: unchanged)."""
        return samples if self.autoencoder is None else self.autoencoder.decode(samples)

    @property
    def is_conditional(self) -> bool:
        return self.text_encoder is not None

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def denoiser(self, network: nn.Module | None = None) -> Denoiser:
        """D(x, sigma, **cond) for this bundle (optionally around a wrapped/compiled network)."""
        return Denoiser(network or self.network, prediction=self.diffusion.prediction,
                        sigma_data=self.diffusion.sigma_data)

    def encode(self, prompts: Sequence[str]) -> Conditioning | None:
        """Encode prompts; raises if prompts are given to an unconditional model (never dropped)."""
        if self.text_encoder is None:
            if any(p for p in prompts):
                raise ValueError(f"this model is unconditional (trained without captions) but prompts were given: "
                                 f"{list(prompts)[:3]}; drop the prompts or use a text-conditioned checkpoint")
            return None
        return self.text_encoder.encode(list(prompts))

    def config_dict(self) -> dict[str, Any]:
        return {
            "model": self.network.config.to_dict(),
            "text_encoder": None if self.text_encoder is None else self.text_encoder.config.to_dict(),
            "diffusion": self.diffusion.to_dict(),
            "autoencoder": None if self.autoencoder is None else self.autoencoder.to_config(),
            "metadata": self.metadata,
        }

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> "ModelBundle":
        text, autoencoder = config.get("text_encoder"), config.get("autoencoder")
        return cls.build(HighResModelConfig.from_dict(config["model"]),
                         None if text is None else TextEncoderConfig.from_dict(text),
                         DiffusionSpec(**config["diffusion"]), dict(config.get("metadata") or {}),
                         None if autoencoder is None else build_autoencoder(autoencoder))
