"""Text conditioning: encoders with the interface ``encode(prompts) -> Conditioning``."""

from .text_encoder import TextEncoderConfig, VocabTextEncoder, build_vocabulary, tokenize_words

__all__ = ["TextEncoderConfig", "VocabTextEncoder", "build_vocabulary", "tokenize_words"]
