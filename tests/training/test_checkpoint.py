import json

import pytest
import torch

import atlas.checkpoint as checkpoint_module
from atlas.checkpoint import load_model, save_checkpoint

from atlas_testing import tiny_bundle


def _outputs(bundle):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    cond = bundle.encode(["a red circle", "a green square on a blue background"])
    return bundle.denoiser()(x, torch.tensor([0.5, 3.0]), **cond.as_kwargs())


def test_round_trip_rebuilds_the_model_from_files_alone(tmp_path):
    bundle = tiny_bundle()
    with torch.no_grad():
        for p in bundle.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(tmp_path / "ckpt", bundle.eval())
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config_dict() == bundle.config_dict()
    for key, value in bundle.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    with torch.no_grad():
        assert torch.equal(_outputs(bundle), _outputs(loaded))


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "ckpt", tiny_bundle())

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must not be used to read checkpoints")

    monkeypatch.setattr(torch, "load", forbidden)
    load_model(tmp_path / "ckpt")


def test_missing_checkpoint_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    save_checkpoint(tmp_path / "ckpt", tiny_bundle())
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_model(tmp_path / "ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        load_model(tmp_path / "empty")


def test_truncated_and_corrupt_files_are_detected(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", tiny_bundle())
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt, truncated"):
        load_model(path)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="does not match the checksum"):
        load_model(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(path)


def test_unreadable_safetensors_without_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", tiny_bundle())
    config = json.loads((path / "config.json").read_text())
    del config["files"]["model.safetensors"]["sha256"]
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(path)


def test_weights_that_do_not_match_the_config(tmp_path):
    small = save_checkpoint(tmp_path / "small", tiny_bundle())
    big = save_checkpoint(tmp_path / "big", tiny_bundle(base_channels=16))
    (small / "model.safetensors").write_bytes((big / "model.safetensors").read_bytes())
    config = json.loads((small / "config.json").read_text())
    config["files"]["model.safetensors"] = json.loads((big / "config.json").read_text())["files"]["model.safetensors"]
    (small / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="wrong shapes"):
        load_model(small)


def test_invalid_config_and_foreign_folder(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", tiny_bundle())
    config = json.loads((path / "config.json").read_text())
    config["model"]["resolution"] = 7
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="describes an invalid model.*resolution=7"):
        load_model(path)
    config["format"] = "something-else"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not an atlas checkpoint"):
        load_model(path)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    original = tiny_bundle(seed=0)
    path = save_checkpoint(tmp_path / "ckpt", original)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "atomic_write_json", explode)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_bundle(seed=1))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no partial folder left behind
    load_model(path)


def test_overwrite_replaces_atomically(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", tiny_bundle(seed=0))
    second = tiny_bundle(seed=1)
    save_checkpoint(path, second)
    loaded = load_model(path)
    for key, value in second.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
