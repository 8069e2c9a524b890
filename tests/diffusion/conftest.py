"""Fixtures for the diffusion-maths tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """These tests use small tensors: one intra-op thread is fastest and avoids oversubscribing shared CPUs
    (on a loaded 2-core machine two OpenMP threads made a 20-step run 100x slower). Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
