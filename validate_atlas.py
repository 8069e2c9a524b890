"""Self-check of an atlas install, under a minute on a CPU: ``python validate_atlas.py`` (same as ``atlas validate``).

Prints a pass/fail table (imports, exact-Gaussian sampler maths, train -> save -> load -> generate, tiling, GPU
profiles) and exits 1 if a check fails. Works from a source checkout without installing (it adds ``src/``).
"""

import sys
from pathlib import Path

try:
    import atlas.selfcheck
except ImportError:  # a source checkout that was not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    import atlas.selfcheck

if __name__ == "__main__":
    raise SystemExit(atlas.selfcheck.main())
