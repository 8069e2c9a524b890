"""The easy-API faces of the CLI: atlas generate's specification flags, easy_start, profiles, hardware, validate."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from atlas.cli import GPU_MEMORY, cli
from atlas.config.profiles import GPU_MEMORY_CHOICES

SPEC_FLAGS = ["--checkpoint", "--num_samples", "--gpu_memory", "--prompts", "--guidance_scale", "--timesteps",
              "--seed", "--output_dir", "--list_profiles"]


def test_cli_gpu_memory_choices_are_the_profiles():
    assert GPU_MEMORY == list(GPU_MEMORY_CHOICES)


def test_generate_help_lists_every_easy_start_flag():
    result = CliRunner().invoke(cli, ["generate", "--help"])
    assert result.exit_code == 0
    for flag in SPEC_FLAGS:
        assert flag in result.output, flag


def test_easy_start_flags_as_written_in_the_specification(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["generate", "--prompts", "a red circle", "a blue square", "--guidance_scale",
                                      "3", "--num_samples", "1", "--timesteps", "2", "--gpu_memory", "CPU",
                                      "--seed", "5", "--output_dir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.glob("*.png"))
    # --prompts' value comes first: the order the user wrote
    assert names == ["0000-a-red-circle-seed5.png", "0001-a-blue-square-seed6.png", "grid.png"]
    assert "CPU profile" in result.output


def test_list_profiles_flag_prints_and_exits_without_generating(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["generate", "--list_profiles"])
    assert result.exit_code == 0 and "Available GPU Memory Profiles:" in result.output
    assert "6GB:" in result.output and "32GB:" in result.output
    assert not (tmp_path / "atlas-outputs").exists()


def test_profiles_command():
    result = CliRunner().invoke(cli, ["profiles"])
    assert result.exit_code == 0 and "Memory budget (estimated):" in result.output


def test_hardware_json_is_the_capabilities_record():
    result = CliRunner().invoke(cli, ["hardware", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["capabilities"]["device_kind"] == "cpu" and document["recommended_precision"] == "fp32"


def test_bad_flag_values_are_messages(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["generate", "a red circle", "--gpu_memory", "10GB"])
    assert result.exit_code != 0 and "10GB" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["generate", "a red circle", "--batch-size", "lots", "--quiet"])
    assert result.exit_code != 0 and "--batch-size must be a positive integer or 'auto'" in result.output
    result = runner.invoke(cli, ["generate", "a purple circle", "--timesteps", "1", "--quiet",
                                 "--output_dir", str(tmp_path)])
    assert result.exit_code != 0 and "never saw in training: ['purple']" in result.output


def test_easy_start_module_runs_the_same_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "atlas.examples.easy_start", "--prompts", "a green triangle",
                           "--num_samples", "1", "--timesteps", "2", "--gpu_memory", "CPU", "--output_dir",
                           str(tmp_path), "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "0000-a-green-triangle-seed0.png").is_file()
    listed = subprocess.run([sys.executable, "-m", "atlas.examples.easy_start", "--list_profiles"],
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "Available GPU Memory Profiles:" in listed.stdout


def test_check_hardware_module():
    done = subprocess.run([sys.executable, "-m", "atlas.check_hardware"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "Recommendations:" in done.stdout


@pytest.mark.slow
def test_validate_runs_every_check_and_prints_a_passing_table():
    done = subprocess.run([sys.executable, "-m", "atlas", "validate"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 of 5 checks passed" in done.stdout
    for name in ("imports", "sampler maths", "train -> save -> load -> generate", "tiling", "GPU profiles"):
        assert name in done.stdout
