"""DatasetConfig and the dataset presets on temporary trees of PIL-made images (nothing is downloaded)."""

import os

import pytest
import torch
from PIL import Image

from atlas.data import (DATASET_PRESETS, DatasetConfig, ImageFolderDataset, ShapesDataset, dataset_preset,
                        load_dataset)

PRESET_RESOLUTIONS = {"cifar10": 32, "imagenet64": 64, "ffhq128": 128, "lsun_bedroom256": 256,
                      "celebahq1024": 1024}
SOLID = (51, 102, 204)  # 8-bit values v map to v / 127.5 - 1: -0.6, -0.2, 0.6


def _black_white(width: int, height: int) -> Image.Image:
    """Left half black, right half white: the crop keeps both, so the range is exactly [-1, 1]."""
    image = Image.new("RGB", (width, height), (0, 0, 0))
    image.paste((255, 255, 255), (width // 2, 0, width, height))
    return image


@pytest.fixture
def class_tree(tmp_path):
    """CIFAR-10-like class folders, plus a sidecar caption that folder captions must ignore."""
    _black_white(40, 30).save(tmp_path / "frog.png")
    for relative in ("airplane/00001.png", "airplane/00002.png", "pickup_truck/00003.png"):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (36, 36), SOLID).save(path)
    (tmp_path / "airplane" / "00001.txt").write_text("ignored for captions='folder'")
    return tmp_path


def test_the_five_presets_and_their_resolutions():
    assert {name: preset.resolution for name, preset in DATASET_PRESETS.items()} == PRESET_RESOLUTIONS
    for name, preset in DATASET_PRESETS.items():
        assert preset.name == name and preset.root is None and preset.channels == 3 and preset.description
    assert DATASET_PRESETS["cifar10"].captions == DATASET_PRESETS["imagenet64"].captions == "folder"


@pytest.mark.parametrize("name", list(PRESET_RESOLUTIONS))
def test_each_preset_reads_a_local_tree_at_its_resolution(tmp_path, name):
    _black_white(30, 20).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (25, 25), SOLID).save(tmp_path / "sub" / "b.jpg", quality=100, subsampling=0)
    Image.new("RGB", (10, 10)).save(tmp_path / "sub" / "c.png")
    config = dataset_preset(name)
    config.root = str(tmp_path)
    config.size = 2
    dataset = config.build()
    side = PRESET_RESOLUTIONS[name]
    assert isinstance(dataset, ImageFolderDataset) and len(dataset) == 2 and dataset.resolution == side
    edges, _ = dataset[0]
    assert edges.shape == (3, side, side) and edges.dtype == torch.float32
    assert edges.min() == -1.0 and edges.max() == 1.0  # pure black and pure white survive resize and crop
    solid, _ = dataset[1]
    # A constant image stays constant through the resize; JPEG quality 100 is within 1 of the 8-bit value.
    expected = torch.tensor(SOLID, dtype=torch.float32).div(127.5).sub(1).view(3, 1, 1).expand(3, side, side)
    torch.testing.assert_close(solid, expected, rtol=0, atol=1.01 / 127.5)


def test_class_folder_captions(class_tree):
    config = dataset_preset("cifar10")
    config.root = class_tree
    dataset = config.build()
    assert config.root == str(class_tree)  # a Path is stored as its string
    assert [dataset[i][1] for i in range(len(dataset))] == ["airplane", "airplane", "", "pickup truck"]
    assert dataset.captions() == ["", "airplane", "pickup truck"]
    # The uncaptioned presets read sidecar captions (none here but one).
    ffhq = DatasetConfig(name="ffhq128", root=str(class_tree), resolution=8, captions="sidecar").build()
    assert ffhq.captions() == ["", "ignored for captions='folder'"]


def test_lsun_crops_a_300x200_bedroom_to_the_centre(tmp_path):
    image = Image.new("RGB", (300, 200), (200, 0, 0))
    image.paste((0, 200, 0), (0, 0, 30, 200))  # a 30-pixel green band that the centre crop must remove
    image.save(tmp_path / "room.png")
    config = dataset_preset("lsun_bedroom256")
    config.root = str(tmp_path)
    room, _ = config.build()[0]
    # 300x200 -> 384x256, then columns 64..319: the band (columns 0..38 after the resize) is cut off.
    assert room.shape == (3, 256, 256)
    red = torch.tensor([200 / 127.5 - 1, -1.0, -1.0]).view(3, 1, 1)
    assert (room - red).abs().max() < 1e-6


def test_unset_root_says_how_to_provide_the_data():
    with pytest.raises(ValueError, match=r"DatasetConfig\(name='cifar10'\)\.root is not set; atlas never downloads"
                                         r".*class.*config\['dataset'\]\.root = '/path/to/cifar10'"):
        dataset_preset("cifar10").build()
    with pytest.raises(ValueError, match="root is not set"):
        dataset_preset("ffhq128").spec


def test_missing_root_names_the_path_and_the_layout(tmp_path):
    config = dataset_preset("celebahq1024")
    config.root = str(tmp_path / "celeba_missing")
    with pytest.raises(FileNotFoundError, match=r"root='.*celeba_missing' does not exist.*CelebA-HQ.*ROOT"):
        config.build()
    (tmp_path / "a_file").write_text("x")
    config.root = str(tmp_path / "a_file")
    with pytest.raises(NotADirectoryError, match="is a file"):
        config.build()


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown dataset preset 'cifar100'.*cifar10, imagenet64, ffhq128, "
                                         "lsun_bedroom256, celebahq1024"):
        dataset_preset("cifar100")


def test_presets_are_fresh_editable_copies():
    first = dataset_preset("imagenet64")
    first.root, first.resolution = "/somewhere", 32
    assert dataset_preset("imagenet64") == DATASET_PRESETS["imagenet64"]
    assert DATASET_PRESETS["imagenet64"].root is None and DATASET_PRESETS["imagenet64"].resolution == 64


def test_dict_round_trip_and_unknown_fields(tmp_path):
    config = DatasetConfig(name="folder", root=tmp_path, resolution=16, channels=1, captions="none", size=3)
    data = config.to_dict()
    assert data["root"] == str(tmp_path) and isinstance(data["root"], str)
    assert DatasetConfig.from_dict(data) == config
    with pytest.raises(ValueError, match=r"unknown DatasetConfig fields \['url'\]"):
        DatasetConfig.from_dict({**data, "url": "https://example.invalid"})


def test_specs_map_to_equivalent_configs(tmp_path):
    shapes = DatasetConfig.from_spec("shapes", resolution=16, size=5)
    assert shapes.spec == "shapes" and shapes.channels == 3
    built = shapes.build(seed=3)
    reference = ShapesDataset(size=5, resolution=16, seed=3)
    assert isinstance(built, ShapesDataset) and len(built) == 5
    for index in range(5):
        assert torch.equal(built[index][0], reference[index][0]) and built[index][1] == reference[index][1]
    assert DatasetConfig.from_spec("digits", resolution=16).channels == 1
    Image.new("RGB", (20, 20), SOLID).save(tmp_path / "x.png")
    folder = DatasetConfig.from_spec(f"folder:{tmp_path}", resolution=8)
    assert folder.name == "folder" and folder.spec == f"folder:{tmp_path}"
    torch.testing.assert_close(folder.build()[0][0], load_dataset(folder.spec, resolution=8)[0][0], rtol=0, atol=0)
    for spec in ("mnist", "folder:", ""):
        with pytest.raises(ValueError, match="valid forms are 'shapes', 'digits', 'folder:PATH'"):
            DatasetConfig.from_spec(spec, resolution=8)


@pytest.mark.parametrize("fields,match", [
    (dict(resolution=0), "resolution=0 must be a positive integer"),
    (dict(size=0), r"size=0 must be a positive integer or None"),
    (dict(channels=4), "channels=4 must be 3"),
    (dict(captions="labels"), r"captions='labels' must be one of \('sidecar', 'folder', 'none'\)"),
    (dict(name=""), "name='' must be a non-empty string"),
    (dict(name="shapes", root="./images"), "generated, not read from a folder.*name='folder'"),
    (dict(name="digits", channels=3), "has 1 channel.*set channels=1"),
    (dict(name="shapes", captions="folder"), "makes its own captions"),
])
def test_invalid_fields(fields, match):
    with pytest.raises(ValueError, match=match):
        DatasetConfig(**fields)


def test_fields_edited_after_construction_are_checked_by_build(tmp_path):
    config = DatasetConfig(name="shapes", resolution=16, size=2)
    config.root = str(tmp_path)
    with pytest.raises(ValueError, match="generated, not read from a folder"):
        config.build()
    folder = DatasetConfig(name="folder", root=os.fspath(tmp_path))
    folder.captions = "class"
    with pytest.raises(ValueError, match="captions='class'"):
        folder.build()
