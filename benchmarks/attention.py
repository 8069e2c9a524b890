"""Dilated attention (atlas.attention, kinds "standard" and "improved") against F.scaled_dot_product_attention
on CPU: time of the forward and of the forward+backward pass, and peak memory.

    python benchmarks/attention.py [--quick] [--max-n 32768] [--budget-s 180] [--json out.json]

Protocol (issue 4, section 8):
* b=1, h=8, d=64, float32, torch.set_num_threads(2); n in {1K, 2K, 4K, 8K, 16K, 32K} for all three, and
  n in {64K, 128K} for dilated attention alone.  ``--quick``: n <= 8K and 3 runs; ``--max-n`` caps n.
* Time: median of 5 runs after one warm-up run; the forward pass runs under ``torch.no_grad()``, the
  forward+backward pass backpropagates a fixed random output gradient to q, k and v.  Each implementation gets
  its native layout, allocated contiguously: SDPA (b, h, n, d), dilated (b, n, h, d).
* Time budget per configuration (``--budget-s``): a configuration whose predicted (from the previous n,
  quadratic for SDPA, linear for dilated) or measured warm-up time means warm-up + runs would exceed the budget
  is skipped, and the skip is listed under the table -- it never hangs the run.
* Peak memory: each configuration runs once in a fresh subprocess (``--worker``) that imports everything,
  allocates its inputs (and output gradient), resets the kernel's peak-RSS mark (/proc/self/clear_refs) and
  reports the peak RSS (VmHWM) after the call minus the RSS before it: the memory the call itself needs (output,
  temporaries and, for the backward pass, the q/k/v gradients), excluding the inputs.  Also measured for naive
  attention, softmax(QK^T/sqrt(d))V with the n x n score matrix, skipped where its estimated peak
  (2 n^2 h floats forward, 3 with backward) exceeds ``--naive-max-gib``.
* Correctness before timing (the run stops if any fails): dilated standard and improved against a dense,
  independently written masked-attention reference (float64, outputs and gradients); SDPA on the (b, h, n, d)
  layout against naive attention; dilated attention with one segment of length n and rate 1 against SDPA
  (float32); improved against standard on the first benchmark pattern with several segments (float32).

Pattern (LongNet, Ding et al. 2023, Sec. 2.2; mode "head_split"): segment lengths 2048, 4096, 8192, ... and
dilation rates 1, 2, 4, ..., doubling together until a segment covers the whole sequence, the last one capped
at n: n=1K -> [1024]/[1], n=2K -> [2048]/[1], n=16K -> [2048, 4096, 8192, 16384]/[1, 2, 4, 8].  The largest
segment spanning n gives every token a global receptive field, as in the paper; every pattern keeps w/r = 2048
rows per segment, so each costs n * 2048 * d per head and the total grows as n log n, not n^2.  For n <= 2048
the pattern is full attention, so dilated attention cannot win there by construction.

Goals from the issue are printed next to the results, computed from the measured numbers (not asserted):
>= 10x faster than SDPA's forward at 16K; crossover at or below 4K; improved >= 1.5x faster than standard;
memory stated honestly (CPU SDPA runs a flash kernel whose memory is already linear in n).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, median_time, print_table  # noqa: E402

from atlas.attention import create_dilated_attention  # noqa: E402

BATCH, HEADS, HEAD_DIM, THREADS = 1, 8, 64, 2
BASE_SEGMENT = 2048
SIZES = (1024, 2048, 4096, 8192, 16384, 32768)
DILATED_ONLY_SIZES = (65536, 131072)
QUICK_MAX_N = 8192
IMPLEMENTATIONS = ("sdpa", "standard", "improved")
PASSES = ("forward", "forward+backward")
# Exponent of n in each implementation's running time, used only to predict whether a configuration fits the budget.
GROWTH = {"sdpa": 2.0, "naive": 2.0, "standard": 1.2, "improved": 1.2}


def longnet_pattern(n: int, base: int = BASE_SEGMENT) -> tuple[list[int], list[int]]:
    """Segment lengths base * 2^i and dilation rates 2^i until a segment covers n, the last capped at n."""
    segments, rates = [], []
    segment, rate = base, 1
    while True:
        segments.append(min(segment, n))
        rates.append(rate)
        if segment >= n:
            return segments, rates
        segment, rate = 2 * segment, 2 * rate


def naive_attention(q, k, v):
    """softmax(Q K^T / sqrt(d)) V on (b, h, n, d), materialising the n x n scores."""
    return torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2), dim=-1) @ v


def dense_dilated_reference(q, k, v, segment_lengths, dilation_rates):
    """Head-split dilated attention as masked dense attention, (b, n, h, d) -> (b, n, h, d).

    Written from the definition, independently of atlas: heads split into contiguous groups (sizes h // k, the
    first h % k one larger); group i keeps, in every segment of w_i positions, those whose index in the segment
    is i mod r_i (mod r_i); kept queries attend to kept keys of their segment; other rows are 0; the sum over
    groups is divided by k.
    """
    b, n, h, d = q.shape
    groups = len(segment_lengths)
    out = torch.zeros_like(q)
    position = torch.arange(n)
    first = 0
    for i, (w, r) in enumerate(zip(segment_lengths, dilation_rates)):
        heads = slice(first, first + h // groups + (1 if i < h % groups else 0))
        first = heads.stop
        kept = (position % w) % r == i % r
        allowed = (position[:, None] // w == position[None, :] // w) & kept[:, None] & kept[None, :]
        allowed |= torch.eye(n, dtype=torch.bool) & ~kept[:, None]  # dropped rows: finite softmax, zeroed below
        qh, kh, vh = (x[:, :, heads].transpose(1, 2) for x in (q, k, v))
        scores = (qh @ kh.transpose(-1, -2) / math.sqrt(d)).masked_fill(~allowed, -math.inf)
        attended = (torch.softmax(scores, dim=-1) @ vh).transpose(1, 2)  # (b, n, g, d)
        out[:, :, heads] = torch.where(kept[:, None, None], attended, 0.0)
    return out / groups


def build(name: str, n: int) -> Callable:
    """The attention function for one implementation at length n, over its native layout."""
    if name == "sdpa":
        return F.scaled_dot_product_attention
    if name == "naive":
        return naive_attention
    segments, rates = longnet_pattern(n)
    return create_dilated_attention(name, segment_lengths=segments, dilation_rates=rates)


def make_inputs(name: str, n: int, backward: bool, dtype=torch.float32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (BATCH, HEADS, n, HEAD_DIM) if name in ("sdpa", "naive") else (BATCH, n, HEADS, HEAD_DIM)
    q, k, v = (torch.randn(shape, generator=generator, dtype=dtype).requires_grad_(backward) for _ in range(3))
    grad_out = torch.randn(shape, generator=generator, dtype=dtype) if backward else None
    return q, k, v, grad_out


def make_call(name: str, n: int, backward: bool) -> Callable[[], None]:
    """A no-argument closure running one forward (no_grad) or forward+backward pass."""
    attend = build(name, n)
    q, k, v, grad_out = make_inputs(name, n, backward)
    if not backward:
        def forward() -> None:
            with torch.no_grad():
                attend(q, k, v)
        return forward

    def forward_backward() -> None:
        for x in (q, k, v):
            x.grad = None
        attend(q, k, v).backward(grad_out)
    return forward_backward


# -- correctness -------------------------------------------------------------------------------------------------
def check_correctness() -> dict[str, float]:
    """Max errors of every check; raises SystemExit when one exceeds its tolerance."""
    torch.manual_seed(0)
    errors, tolerances = {}, {}

    # 1. Dilated kinds vs the dense reference, float64, on the benchmark's ladder scaled down (tail segment
    #    and several groups included): outputs and q/k/v gradients.
    n = 96
    segments, rates = longnet_pattern(n, base=16)  # [16, 32, 64, 96] / [1, 2, 4, 8]
    q, k, v = (torch.randn(2, n, HEADS, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(2, n, HEADS, 16, dtype=torch.float64)
    results = {}
    for name, fn in {"reference": lambda *x: dense_dilated_reference(*x, segments, rates),
                     "standard": create_dilated_attention("standard", segment_lengths=segments, dilation_rates=rates),
                     "improved": create_dilated_attention("improved", segment_lengths=segments, dilation_rates=rates),
                     }.items():
        out = fn(q, k, v)
        results[name] = (out, *torch.autograd.grad(out, (q, k, v), grad_out))
    for name in ("standard", "improved"):
        key = f"{name} vs dense reference (float64, out + grads)"
        errors[key] = max((a - b).abs().max().item() for a, b in zip(results[name], results["reference"]))
        tolerances[key] = 1e-10

    # 2. SDPA on the (b, h, n, d) layout attends over positions: equal to naive attention.
    q, k, v = (torch.randn(1, HEADS, 128, HEAD_DIM, dtype=torch.float64) for _ in range(3))
    key = "SDPA (b, h, n, d) vs naive attention (float64)"
    errors[key] = (F.scaled_dot_product_attention(q, k, v) - naive_attention(q, k, v)).abs().max().item()
    tolerances[key] = 1e-10

    # 3. One full segment with rate 1 is full attention: ties dilated (b, n, h, d) to SDPA (b, h, n, d), float32.
    n = 1024
    q, k, v = (torch.randn(1, n, HEADS, HEAD_DIM) for _ in range(3))
    full = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    for name in ("standard", "improved"):
        key = f"{name} [n]/[1] vs SDPA (float32, n={n})"
        attend = create_dilated_attention(name, segment_lengths=[n], dilation_rates=[1])
        errors[key] = (attend(q, k, v) - full).abs().max().item()
        tolerances[key] = 1e-5

    # 4. improved vs standard on a benchmark pattern with three segments, float32.
    n = 4 * BASE_SEGMENT  # [2048, 4096, 8192] / [1, 2, 4]
    q, k, v = (torch.randn(1, n, HEADS, HEAD_DIM) for _ in range(3))
    with torch.no_grad():
        key = f"improved vs standard, benchmark pattern (float32, n={n})"
        errors[key] = (build("improved", n)(q, k, v) - build("standard", n)(q, k, v)).abs().max().item()
        tolerances[key] = 1e-5

    failed = [f"{key}: {errors[key]:.3g} > {tolerances[key]:g}" for key in errors if not errors[key] <= tolerances[key]]
    if failed:
        raise SystemExit("correctness check failed, not timing:\n  " + "\n  ".join(failed))
    return errors


def sdpa_cpu_ops() -> list[str]:
    """The aten attention kernels F.scaled_dot_product_attention dispatches to here (flash = O(n) memory)."""
    q, k, v = (torch.randn(1, HEADS, 256, HEAD_DIM) for _ in range(3))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        F.scaled_dot_product_attention(q, k, v)
    return sorted({event.key for event in profile.key_averages() if "attention" in event.key})


# -- memory ----------------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    """A memory line of /proc/self/status in KiB: VmRSS (now) or VmHWM (the peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def worker(name: str, pass_name: str, n: int) -> None:
    """Child process: print the extra peak RSS (MiB) of one call over the RSS after imports and inputs."""
    torch.set_num_threads(THREADS)
    call = make_call(name, n, pass_name == "forward+backward")
    # VmHWM, not ru_maxrss: after fork + exec, ru_maxrss keeps the parent's peak (the kernel carries it over in
    # signal->maxrss, which clear_refs does not reset), so a child of a big parent would report the parent's.
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    method, baseline = "clear_refs + VmHWM", _status_kib("VmRSS")
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mib": (peak - baseline) / 1024, "baseline_mib": baseline / 1024, "method": method,
                      "seconds": seconds}))


def measure_memory(name: str, pass_name: str, n: int, budget_s: float) -> tuple[float | None, str | None]:
    command = [sys.executable, __file__, "--worker", name, pass_name, str(n)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=budget_s)
    except subprocess.TimeoutExpired:
        return None, f"memory {name} {pass_name} n={n}: worker exceeded the {budget_s:.0f} s budget"
    if done.returncode:
        return None, f"memory {name} {pass_name} n={n}: worker failed: {done.stderr.strip()[-300:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"], None


def naive_estimate_gib(n: int, backward: bool) -> float:
    return (3 if backward else 2) * n * n * HEADS * BATCH * 4 / 2**30


# -- timing ----------------------------------------------------------------------------------------------------
def time_configuration(name: str, pass_name: str, n: int, runs: int, budget_s: float,
                       previous: tuple[int, float] | None) -> tuple[dict, str | None]:
    """Median time of ``runs`` runs after a warm-up, or a skip note when it would exceed the budget."""
    if previous is not None:
        predicted = previous[1] * (n / previous[0]) ** GROWTH[name]
        if predicted * (runs + 1) > budget_s:
            return {}, (f"time {name} {pass_name} n={n}: skipped, predicted {predicted:.1f} s a run "
                        f"x {runs + 1} > budget {budget_s:.0f} s")
    call = make_call(name, n, pass_name == "forward+backward")
    start = time.perf_counter()
    call()  # warm-up
    warmup = time.perf_counter() - start
    if warmup * runs > budget_s:
        return {"warmup_s": warmup}, (f"time {name} {pass_name} n={n}: skipped after the warm-up took {warmup:.1f} s "
                                      f"(x {runs} runs > budget {budget_s:.0f} s)")
    median, times = median_time(call, repeats=runs, warmup=0)
    return {"median_s": median, "runs_s": times, "warmup_s": warmup}, None


def goals(rows: list[dict]) -> list[str]:
    """The issue's goals, computed from the measured rows (reported, not asserted)."""
    table = {(row["n"], row["pass"]): row for row in rows}

    def ratio(n, pass_name, slow, fast):
        row = table.get((n, pass_name), {})
        a, b = row.get(f"{slow}_s"), row.get(f"{fast}_s")
        return None if a is None or b is None else a / b

    def verdict(ok):
        return "not measured" if ok is None else ("met" if ok else "NOT met")

    lines = []
    speedup = ratio(16384, "forward", "sdpa", "improved")
    lines.append(f">= 10x faster than SDPA forward at 16K: "
                 f"{'n/a' if speedup is None else f'{speedup:.1f}x'} -> {verdict(None if speedup is None else speedup >= 10)}")
    for pass_name in PASSES:
        measured = [(n, ratio(n, pass_name, "sdpa", "improved")) for n in sorted({r["n"] for r in rows})]
        measured = [(n, s) for n, s in measured if s is not None]
        crossover = None
        for index, (n, _) in enumerate(measured):
            if all(s > 1 for _, s in measured[index:]):
                crossover = n
                break
        text = "none measured" if crossover is None else f"n = {crossover}"
        ok = None if not measured else (crossover is not None and crossover <= 4096)
        lines.append(f"crossover (improved faster than SDPA from here on), {pass_name}: {text} "
                     f"(goal <= 4096) -> {verdict(ok)}")
    for pass_name in PASSES:
        gains = [ratio(n, pass_name, "standard", "improved") for n in sorted({r["n"] for r in rows})]
        gains = [g for g in gains if g is not None]
        if gains:
            lines.append(f"improved vs standard, {pass_name}: median {statistics.median(gains):.2f}x, "
                         f"min {min(gains):.2f}x over {len(gains)} sizes (goal >= 1.5x) -> "
                         f"{verdict(statistics.median(gains) >= 1.5)}")
    for pass_name in PASSES:
        both = [r for r in rows if r["pass"] == pass_name and r.get("mem_sdpa_mib") and r.get("mem_improved_mib")]
        if len(both) >= 2:
            small, large = both[0], both[-1]
            lines.append(
                f"memory, {pass_name}: SDPA {small['mem_sdpa_mib']:.0f} -> {large['mem_sdpa_mib']:.0f} MiB and "
                f"improved {small['mem_improved_mib']:.0f} -> {large['mem_improved_mib']:.0f} MiB from n={small['n']} "
                f"to n={large['n']} ({large['n'] // small['n']}x n); improved / SDPA at n={large['n']}: "
                f"{large['mem_improved_mib'] / large['mem_sdpa_mib']:.2f}x")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"n <= {QUICK_MAX_N} and 3 runs (a smoke test)")
    parser.add_argument("--max-n", type=int, default=None,
                        help=f"largest sequence length to run (default {DILATED_ONLY_SIZES[-1]}, {QUICK_MAX_N} with --quick)")
    parser.add_argument("--budget-s", type=float, default=180.0,
                        help="time budget of one configuration (warm-up + runs, or one memory worker)")
    parser.add_argument("--naive-max-gib", type=float, default=8.0,
                        help="skip naive attention's memory run where its estimated peak exceeds this")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "PASS", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]))
        return

    torch.set_num_threads(THREADS)
    runs = 3 if args.quick else 5
    max_n = args.max_n or (QUICK_MAX_N if args.quick else DILATED_ONLY_SIZES[-1])
    sizes = [n for n in SIZES + DILATED_ONLY_SIZES if n <= max_n]
    checks = check_correctness()
    sdpa_ops = sdpa_cpu_ops()

    rows, notes, raw = [], [], {}
    previous: dict[tuple[str, str], tuple[int, float]] = {}
    skipped: set[tuple[str, str]] = set()
    for n in sizes:
        for pass_name in PASSES:
            segments, rates = longnet_pattern(n)
            row = {"n": n, "pass": pass_name, "pattern": f"{segments}/{rates}"}
            for name in IMPLEMENTATIONS:
                if name == "sdpa" and n > SIZES[-1]:
                    continue
                key = (name, pass_name)
                if key in skipped:
                    notes.append(f"time {name} {pass_name} n={n}: skipped, a smaller n already exceeded the budget")
                    continue
                result, note = time_configuration(name, pass_name, n, runs, args.budget_s, previous.get(key))
                raw[f"{name} {pass_name} {n}"] = result
                if note:
                    notes.append(note)
                    skipped.add(key)
                    continue
                row[f"{name}_s"] = result["median_s"]
                previous[key] = (n, result["median_s"])
                memory, note = measure_memory(name, pass_name, n, args.budget_s)
                row[f"mem_{name}_mib"] = memory
                if note:
                    notes.append(note)
            if n <= SIZES[-1]:
                estimate = naive_estimate_gib(n, pass_name == "forward+backward")
                if estimate > args.naive_max_gib:
                    notes.append(f"memory naive {pass_name} n={n}: skipped, estimated {estimate:.1f} GiB of scores "
                                 f"> {args.naive_max_gib:g} GiB")
                else:
                    row["mem_naive_mib"], note = measure_memory("naive", pass_name, n, args.budget_s)
                    if note:
                        notes.append(note)
            if "sdpa_s" in row and "improved_s" in row:
                row["improved_vs_sdpa"] = row["sdpa_s"] / row["improved_s"]
            if "standard_s" in row and "improved_s" in row:
                row["improved_vs_standard"] = row["standard_s"] / row["improved_s"]
            rows.append(row)
            print(f"n={n} {pass_name}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                      if isinstance(v, float)), file=sys.stderr, flush=True)

    goal_lines = goals(rows)
    emit({"benchmark": "attention", "environment": environment(), "settings": vars(args) | {"runs": runs},
          "shape": {"batch": BATCH, "heads": HEADS, "head_dim": HEAD_DIM, "dtype": "float32", "threads": THREADS},
          "sdpa_cpu_ops": sdpa_ops, "correctness_max_error": checks, "results": rows, "raw": raw,
          "notes": notes, "goals": goal_lines}, args.json)
    print()
    print_table(rows, ["n", "pass", "sdpa_s", "standard_s", "improved_s", "improved_vs_sdpa", "improved_vs_standard",
                       "mem_sdpa_mib", "mem_naive_mib", "mem_standard_mib", "mem_improved_mib"])
    print(f"\nSDPA CPU kernels: {', '.join(sdpa_ops) or 'unknown'}; memory = extra peak RSS of one call (MiB), "
          "inputs excluded")
    for line in notes:
        print(f"note: {line}")
    print("\nGoals (issue 4), from the numbers above:")
    for line in goal_lines:
        print(f"  {line}")


if __name__ == "__main__":
    main()
