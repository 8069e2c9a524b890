import pytest
import torch

from atlas.conditioning import TextEncoderConfig, VocabTextEncoder, build_vocabulary, tokenize_words


def _encoder(**kw):
    torch.manual_seed(0)
    config = dict(vocabulary=build_vocabulary(["a red circle on a blue background", "a green square"]), dim=16,
                  num_layers=2, num_heads=4, max_length=8)
    config.update(kw)
    return VocabTextEncoder(TextEncoderConfig(**config)).double()


def test_vocabulary_and_tokenizer():
    assert tokenize_words("A Red, circle!") == ["a", "red", "circle"]
    assert build_vocabulary(["b a", "a c"]) == ["a", "b", "c"]


def test_encode_shapes_mask_and_pooled():
    enc = _encoder()
    cond = enc.encode(["a red circle", "", "a green square on a blue background"])
    assert cond.context.shape == (3, 8, 16)
    assert cond.context_mask.tolist()[1] == [True] + [False] * 7
    assert cond.context_mask.sum(1).tolist() == [4, 1, 8]
    assert cond.pooled.shape == (3, 16)
    assert torch.isfinite(cond.context).all()


def test_unknown_word_lists_the_vocabulary():
    enc = _encoder()
    with pytest.raises(ValueError, match=r"never saw in training: \['purple'\].*Known words: a, background, blue"):
        enc.encode(["a purple circle"])


def test_prompt_too_long_and_single_string_are_errors():
    enc = _encoder(max_length=4)
    with pytest.raises(ValueError, match="at most 3"):
        enc.encode(["a red circle on a blue background"])
    with pytest.raises(TypeError, match="list of prompts"):
        enc.encode("a red circle")


def test_encoding_does_not_depend_on_the_rest_of_the_batch():
    enc = _encoder()
    alone = enc.encode(["a red circle"])
    batch = enc.encode(["a green square on a blue background", "a red circle"])
    torch.testing.assert_close(batch.context[1, :4], alone.context[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(batch.pooled[1], alone.pooled[0], rtol=0, atol=1e-12)


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="vocabulary is empty"):
        TextEncoderConfig(vocabulary=[])
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TextEncoderConfig(vocabulary=["a"], dim=10, num_heads=4)
    with pytest.raises(ValueError, match="single lower-case words"):
        TextEncoderConfig(vocabulary=["Red Car"])
    cfg = TextEncoderConfig(vocabulary=["a", "b"], dim=8, num_heads=2)
    assert TextEncoderConfig.from_dict(cfg.to_dict()) == cfg
