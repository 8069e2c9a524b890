"""Test-wide settings and fixtures."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# atlas caches (profile budgets, tuned batch sizes) go to a test folder, never the user's ~/.cache. It is shared
# by the xdist workers and kept between runs: entries are keyed by a fingerprint of the code that computed them.
os.environ["XDG_CACHE_HOME"] = os.path.join(tempfile.gettempdir(), f"atlas-test-cache-{os.getuid()}")
# Under pytest-xdist every worker gets one thread: oversubscribed OpenMP threads on a 2-core machine spin
# and slow everything down several-fold.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))

from atlas_testing import tiny_bundle  # noqa: E402


@pytest.fixture
def bundle():
    return tiny_bundle()
