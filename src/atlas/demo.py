"""The demo model shipped inside the package (trained by `atlas train` on the `shapes` dataset)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The exact command that produced the bundled checkpoint (also stored in its config.json metadata).



def demo_checkpoint_path() -> Path:
    """Folder of the bundled demo checkpoint; raises if the package was installed without it."""
    path = Path(str(resources.files("atlas") / "assets" / "demo"))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the bundled demo model is missing from {path}; reinstall atlas-diffusion, or pass "
                                f"--checkpoint with a model trained by `atlas train`")
    return path
