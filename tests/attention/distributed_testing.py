"""Run a check on P gloo processes on CPU (file rendezvous: no ports, safe under ``pytest -n``; a hard timeout).

``run_on_ranks(check, world_size, tmp_path, *args)`` spawns ``world_size`` processes, each of which joins a
gloo process group through ``file://{tmp_path}/rendezvous`` and calls ``check(rank, world_size, *args)``.  An
exception in any rank fails the calling test with that rank's traceback; a rank still running after ``timeout``
seconds (a hang) is killed and the test fails.  ``check`` must be a module-level function (it is pickled by
name into the spawned processes, which get the parent's ``sys.path``).  Each spawned run costs ~1 s of start-up
per process on a 2-core CPU, so group many checks into one run.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atlas.attention import dilated_attention


def gloo_available() -> bool:
    return dist.is_available() and dist.is_gloo_available()


requires_gloo = pytest.mark.skipif(not gloo_available(),
                                   reason="torch.distributed with the gloo backend is unavailable")


def _entry(rank: int, world_size: int, rendezvous: str, check: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        check(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_on_ranks(check: Callable, world_size: int, tmp_path: Path, *args, timeout: float = 120.0) -> None:
    """Run ``check(rank, world_size, *args)`` on ``world_size`` gloo ranks; fail on error or after ``timeout`` s."""
    context = mp.start_processes(_entry, args=(world_size, str(tmp_path / "rendezvous"), check, args),
                                 nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):  # raises ProcessRaisedException with the rank's traceback
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"{world_size} gloo processes still running after {timeout} s (a hang in a collective?)")


def save_result(directory: str, rank: int, result: dict) -> None:
    (Path(directory) / f"rank{rank}.json").write_text(json.dumps(result))


def load_results(directory: Path, world_size: int) -> list[dict]:
    return [json.loads((directory / f"rank{rank}.json").read_text()) for rank in range(world_size)]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = 1e-12) -> None:
    """Max-abs comparison with a message naming the case (float64 results must agree to ``atol``)."""
    error = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert actual.shape == expected.shape and error <= atol, f"{what}: max |error| {error:.3g} > {atol:g}"


def case_tensors(n, h, masked, seed, batch=2, d=8):
    """Float64 q, k, v, an upstream gradient (b, n, h, d) and an optional (b, n) padding mask, from ``seed``
    (every rank draws the same full-sequence tensors and takes its shard)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v, upstream = (torch.randn(batch, n, h, d, generator=gen, dtype=torch.float64) for _ in range(4))
    mask = torch.rand(batch, n, generator=gen) < 0.25 if masked else None
    return q, k, v, upstream, mask


def reference(q, k, v, upstream, segment_lengths, dilation_rates, mode, causal, mask):
    """The single-process standard result: (out, dq, dk, dv)."""
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    out = dilated_attention(q, k, v, segment_lengths, dilation_rates, mode=mode, is_causal=causal,
                            key_padding_mask=mask)
    return (out, *torch.autograd.grad(out, (q, k, v), upstream))
