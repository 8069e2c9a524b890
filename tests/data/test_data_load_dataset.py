"""load_dataset: spec parsing and its error."""

import pytest
from PIL import Image

from atlas.data import DigitsDataset, ImageFolderDataset, ShapesDataset, load_dataset


def test_shapes_spec():
    dataset = load_dataset("shapes", resolution=24, seed=2, size=12)
    assert isinstance(dataset, ShapesDataset)
    assert (dataset.resolution, dataset.seed, len(dataset)) == (24, 2, 12)
    assert len(load_dataset("shapes", resolution=16)) == 10000


def test_digits_spec():
    pytest.importorskip("sklearn")
    dataset = load_dataset("digits", resolution=16, size=10)
    assert isinstance(dataset, DigitsDataset) and len(dataset) == 10 and dataset[0][0].shape == (1, 16, 16)


def test_folder_spec(tmp_path):
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "x.png")
    dataset = load_dataset(f"folder:{tmp_path}", resolution=8)
    assert isinstance(dataset, ImageFolderDataset) and dataset[0][0].shape == (3, 8, 8)


@pytest.mark.parametrize("spec", ["mnist", "Shapes", "folder:", ""])
def test_unknown_spec_lists_valid_forms(spec):
    with pytest.raises(ValueError, match="folder:"):
        load_dataset(spec, resolution=32)
