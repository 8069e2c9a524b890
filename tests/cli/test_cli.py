import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from atlas.cli import cli

TINY = ["--resolution", "16", "--batch-size", "4", "--dataset-size", "16", "--base-channels", "8",
        "--channel-mult", "1,2", "--attention-levels", "1", "--norm-groups", "4", "--text-dim", "16",
        "--text-layers", "1", "--log-every", "1", "--checkpoint-every", "1", "--quiet"]


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["generate", "--help"]])
def test_help(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "atlas", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "train" in done.stdout and "generate" in done.stdout


def test_two_step_train_then_generate_then_resume(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(cli, ["train", "--dataset", "shapes", "--out", str(out), "--steps", "2", *TINY])
    assert result.exit_code == 0, result.output
    assert (out / "model" / "config.json").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

    images = tmp_path / "images"
    result = runner.invoke(cli, ["generate", "a red circle", "a blue square on a yellow background",
                                 "--checkpoint", str(out / "model"), "--num-samples", "2", "--steps", "2",
                                 "--negative-prompt", "a green triangle", "--out", str(images), "--quiet"])
    assert result.exit_code == 0, result.output
    pngs = sorted(p.name for p in images.glob("*.png"))
    assert len(pngs) == 5 and "grid.png" in pngs
    assert pngs[0].startswith("0000-a-red-circle-seed0")

    result = runner.invoke(cli, ["train", "--dataset", "shapes", "--out", str(out), "--steps", "3", "--resume", *TINY])
    assert result.exit_code == 0, result.output
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_errors_are_messages_not_tracebacks(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["generate", "a red circle", "--checkpoint", str(tmp_path / "missing")])
    assert result.exit_code != 0 and "does not exist" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["train", "--out", str(tmp_path / "x"), "--dataset", "imagenet", *TINY])
    assert result.exit_code != 0 and "unknown dataset spec 'imagenet'" in result.output
    result = runner.invoke(cli, ["train", "--out", str(tmp_path / "x"), "--channel-mult", "1,x"])
    assert result.exit_code != 0 and "comma-separated integers" in result.output


def test_cli_offers_every_sampler():
    from atlas.cli import SAMPLER_NAMES
    from atlas.diffusion import SAMPLERS

    assert SAMPLER_NAMES == sorted(SAMPLERS)


def test_train_coupling_flags_reach_the_saved_config(tmp_path):
    out = tmp_path / "sb"
    result = CliRunner().invoke(cli, ["train", "--dataset", "shapes", "--out", str(out), "--steps", "1",
                                      "--prediction", "flow", "--coupling", "sb", "--coupling-eps", "0.3",
                                      "--coupling-solver", "direct", "--sb-iterations", "50", *TINY])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "model" / "config.json").read_text())["metadata"]["training"]
    assert saved["coupling_kernel"]["solver_type"] == "direct" and saved["coupling_kernel"]["epsilon"] == 0.3
    assert saved["sb_iterations"] == 50
