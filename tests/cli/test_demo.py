from click.testing import CliRunner

from atlas.checkpoint import load_model
from atlas.cli import cli
from atlas.demo import demo_checkpoint_path


def test_bundled_demo_is_small_and_loads_from_its_files():
    path = demo_checkpoint_path()
    assert sum(p.stat().st_size for p in path.iterdir()) <= 20 * 2**20
    bundle = load_model(path)
    assert bundle.is_conditional and bundle.network.config.resolution >= 32
    assert bundle.metadata["command"].startswith("atlas train --dataset shapes")


def test_generate_with_no_other_argument_uses_the_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["generate", "a red circle", "--steps", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "atlas-outputs").glob("*.png"))) == 5  # 4 images + grid
