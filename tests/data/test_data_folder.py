"""ImageFolderDataset on a temporary tree of PIL-made images."""

import pytest
import torch
from PIL import Image

from atlas.data.folder import ImageFolderDataset

GREEN, RED, BLUE, YELLOW = (0, 200, 0), (200, 0, 0), (0, 0, 200), (230, 230, 0)


def _banded_image(width: int, height: int) -> Image.Image:
    """Outer bands (green left, yellow right) that a short-side resize + centre crop must cut off."""
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (width // 2, 0, width - 30, height))
    image.paste(GREEN, (0, 0, 30, height))
    image.paste(YELLOW, (width - 30, 0, width, height))
    return image


def _nearest(pixel: torch.Tensor) -> tuple[int, int, int]:
    rgb = (pixel + 1) * 127.5
    return min((GREEN, RED, BLUE, YELLOW), key=lambda c: float((rgb - torch.tensor(c)).norm()))


@pytest.fixture
def image_tree(tmp_path):
    _banded_image(300, 200).save(tmp_path / "a_wide.png")
    (tmp_path / "a_wide.txt").write_text("  a wide banded picture \n")
    nested = tmp_path / "nested" / "deeper"
    nested.mkdir(parents=True)
    Image.new("RGB", (40, 60), (10, 20, 30)).save(nested / "b_tall.jpg")
    Image.new("RGB", (16, 16), (250, 250, 250)).save(tmp_path / "c_small.BMP")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_finds_images_recursively_sorted_with_sidecar_captions(image_tree):
    dataset = ImageFolderDataset(image_tree, resolution=32)
    assert [p.name for p in dataset.paths] == ["a_wide.png", "c_small.BMP", "b_tall.jpg"]
    assert dataset.resolution == 32 and dataset.channels == 3 and len(dataset) == 3
    captions = [dataset[i][1] for i in range(3)]
    assert captions == ["a wide banded picture", "", ""]
    assert dataset.captions() == ["", "a wide banded picture"]
    for index in range(3):
        image, _ = dataset[index]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1


def test_short_side_resize_then_centre_crop_keeps_aspect(image_tree):
    image, _ = ImageFolderDataset(image_tree, resolution=32)[0]
    # 300x200 -> 48x32, crop columns 8..39: the 30-pixel outer bands (5 output pixels) are gone.
    colours = {_nearest(image[:, row, col]) for row in range(32) for col in range(32)}
    assert colours == {RED, BLUE}
    assert _nearest(image[:, 16, 0]) == RED and _nearest(image[:, 16, 31]) == BLUE
    # The red/blue edge sits at the centre: a squash would move it, a crop keeps it.
    assert _nearest(image[:, 16, 14]) == RED and _nearest(image[:, 16, 17]) == BLUE


def test_portrait_image_and_greyscale(tmp_path):
    _banded_image(300, 200).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "tall.png")
    image, _ = ImageFolderDataset(tmp_path, resolution=20)[0]
    assert image.shape == (3, 20, 20)
    assert {_nearest(image[:, row, col]) for row in range(20) for col in range(20)} == {RED, BLUE}
    grey, _ = ImageFolderDataset(tmp_path, resolution=20, channels=1)[0]
    assert grey.shape == (1, 20, 20)


def test_size_keeps_the_first_images(image_tree):
    assert len(ImageFolderDataset(image_tree, resolution=8, size=2)) == 2
    with pytest.raises(ValueError, match="size must be between 1 and 3"):
        ImageFolderDataset(image_tree, resolution=8, size=4)


def test_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderDataset(missing, resolution=32)


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"no images found under .*\.png.*\.webp"):
        ImageFolderDataset(tmp_path, resolution=32)


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    dataset = ImageFolderDataset(tmp_path, resolution=32)
    with pytest.raises(OSError, match="broken.png"):
        dataset[0]


def test_invalid_channels(image_tree):
    with pytest.raises(ValueError, match="channels must be 3 .* or 1"):
        ImageFolderDataset(image_tree, resolution=32, channels=4)


@pytest.fixture
def class_tree(tmp_path):
    for relative in ("airplane/0001.png", "pickup_truck/0002.png", "bird-of-prey/0003.png", "loose.png"):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 12), (90, 90, 90)).save(path)
    (tmp_path / "airplane" / "0001.txt").write_text("a sidecar caption")
    return tmp_path


def test_caption_sources(class_tree):
    # Sorted paths: airplane/0001.png, bird-of-prey/0003.png, loose.png, pickup_truck/0002.png.
    expected = {
        "folder": ["airplane", "bird of prey", "", "pickup truck"],
        "sidecar": ["a sidecar caption", "", "", ""],
        "none": ["", "", "", ""],
    }
    for source, captions in expected.items():
        dataset = ImageFolderDataset(class_tree, resolution=8, captions=source)
        assert dataset.caption_source == source
        assert [dataset[i][1] for i in range(len(dataset))] == captions
        assert dataset.captions() == sorted(set(captions))
    assert ImageFolderDataset(class_tree, resolution=8).caption_source == "sidecar"


def test_folder_captions_use_the_folder_holding_the_image(tmp_path):
    nested = tmp_path / "train" / "sea_lion"
    nested.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(nested / "x.png")
    assert ImageFolderDataset(tmp_path, resolution=8, captions="folder")[0][1] == "sea lion"


def test_invalid_caption_source_lists_the_valid_ones(class_tree):
    with pytest.raises(ValueError, match=r"captions must be one of .*'sidecar', 'folder', 'none'.*got 'labels'"):
        ImageFolderDataset(class_tree, resolution=8, captions="labels")
