"""Test-wide settings and fixtures."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist every worker gets one thread: oversubscribed OpenMP threads on a 2-core machine spin
# and slow everything down several-fold.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))

from atlas_testing import tiny_bundle  # noqa: E402


@pytest.fixture
def bundle():
    return tiny_bundle()
