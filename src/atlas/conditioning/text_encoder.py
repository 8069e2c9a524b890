"""A small, dependency-free text encoder trained together with the diffusion model.

Its vocabulary is built from the training captions. Its interface, ``encode(prompts) -> Conditioning``
(token states, padding mask, pooled vector), is the one every text encoder in atlas implements, so larger
pretrained encoders plug into the same place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from atlas.diffusion.guidance import Conditioning

PAD, START = "<pad>", "<start>"
_WORD = re.compile(r"[a-z0-9]+")


def tokenize_words(text: str) -> list[str]:
    """Lower-case words of a prompt; punctuation is ignored."""
    return _WORD.findall(text.lower())


def build_vocabulary(captions: Iterable[str]) -> list[str]:
    """Sorted list of distinct words over all captions (the special tokens are not included)."""
    return sorted({word for caption in captions for word in tokenize_words(caption)})


@dataclass
class TextEncoderConfig:
    """Architecture and vocabulary of a `VocabTextEncoder` (stored in the checkpoint's config.json)."""

    vocabulary: list[str]
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    max_length: int = 16

    def __post_init__(self) -> None:
        self.vocabulary = list(self.vocabulary)
        if not self.vocabulary:
            raise ValueError("TextEncoderConfig.vocabulary is empty; build it from the training captions with "
                             "build_vocabulary(dataset.captions())")
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError("TextEncoderConfig.vocabulary has duplicate words; pass distinct words")
        bad = [w for w in self.vocabulary if tokenize_words(w) != [w]]
        if bad:
            raise ValueError(f"TextEncoderConfig.vocabulary has entries that are not single lower-case words: "
                             f"{bad[:5]}; build it with build_vocabulary()")
        for name in ("dim", "num_heads", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"TextEncoderConfig.{name}={getattr(self, name)!r} must be >= 1")
        if self.num_layers < 0:
            raise ValueError(f"TextEncoderConfig.num_layers={self.num_layers!r} must be >= 0")
        if self.dim % self.num_heads:
            raise ValueError(f"TextEncoderConfig.dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if self.max_length < 2:
            raise ValueError(f"TextEncoderConfig.max_length={self.max_length} must be >= 2 (start token + a word)")

    def to_dict(self) -> dict[str, Any]:
        return dict(vocabulary=list(self.vocabulary), dim=self.dim, num_layers=self.num_layers,
                    num_heads=self.num_heads, max_length=self.max_length)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TextEncoderConfig":
        return cls(**data)


class VocabTextEncoder(nn.Module):
    """Word embeddings + positions + a small pre-norm Transformer encoder.

    ``encode(prompts)`` returns a `Conditioning` with
        context: (B, T, dim) token states (T = longest prompt in the batch + the start token),
        context_mask: (B, T) bool, True for real tokens (the start token is always real, so the empty prompt
            "" is a valid, distinct encoding: it is the null condition for classifier-free guidance),
        pooled: (B, dim) masked mean of the token states.
    An unknown word raises ValueError listing the known vocabulary: prompts are never silently altered.
    """

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.tokens = [PAD, START, *config.vocabulary]
        self.token_ids = {token: i for i, token in enumerate(self.tokens)}
        self.embed = nn.Embedding(len(self.tokens), config.dim, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(config.max_length, config.dim))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(config.dim, config.num_heads, dim_feedforward=4 * config.dim,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False) \
            if config.num_layers else None
        self.norm = nn.LayerNorm(config.dim)

    @property
    def dim(self) -> int:
        return self.config.dim

    def token_ids_for(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token ids (B, T) and mask (B, T) for a list of prompts (with the start token prepended)."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string; wrap it: [prompt]")
        rows: list[list[int]] = []
        for prompt in prompts:
            words = tokenize_words(prompt)
            unknown = [w for w in words if w not in self.token_ids]
            if unknown:
                raise ValueError(
                    f"prompt {prompt!r} has words this text encoder never saw in training: {unknown}. "
                    f"Known words: {', '.join(self.config.vocabulary)}"
                )
            if len(words) + 1 > self.config.max_length:
                raise ValueError(f"prompt {prompt!r} has {len(words)} words; this encoder takes at most "
                                 f"{self.config.max_length - 1}. Shorten the prompt")
            rows.append([self.token_ids[START]] + [self.token_ids[w] for w in words])
        length = max(len(r) for r in rows) if rows else 1
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != 0

    def encode(self, prompts: Sequence[str]) -> Conditioning:
        device = self.position.device
        ids, mask = self.token_ids_for(prompts)
        ids, mask = ids.to(device), mask.to(device)
        h = self.embed(ids) + self.position[: ids.shape[1]]
        if self.transformer is not None:
            h = self.transformer(h, src_key_padding_mask=~mask)
        h = self.norm(h)
        weights = mask.to(h.dtype)[..., None]
        pooled = (h * weights).sum(1) / weights.sum(1)
        return Conditioning(context=h, context_mask=mask, pooled=pooled)

    def forward(self, prompts: Sequence[str]) -> Conditioning:
        return self.encode(prompts)
