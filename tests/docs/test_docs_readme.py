"""The README's Python block runs as written, and its two first-screen commands are what CI runs."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_three_lines_of_python_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (code,) = _blocks("python")
    namespace: dict = {}
    exec(compile(code + "\nsampler.save(images, 'out')\n", str(README), "exec"), namespace)
    assert tuple(namespace["images"].shape) == (8, 3, 32, 32)
    assert len(list((tmp_path / "out").glob("*.png"))) == 9  # 8 images and the grid


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and "<!-- test-command -->" in README.read_text()
    assert "<!-- main-command -->" in README.read_text()
