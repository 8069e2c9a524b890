"""Entropic OT: atlas.transport.sinkhorn against POT (and geomloss if installed) on point clouds, and
atlas.transport.grid_sinkhorn against POT's separable-kernel (convolutional) Sinkhorn on 2-D grids.

    python benchmarks/transport.py [--quick] [--budget-s 60] [--json out.json]

Point clouds: x ~ N(0, I_d), y ~ 1.5 N(0, I_d) + 0.5, uniform weights, float64, cost ||x - y||^2,
eps = {0.1, 0.01} x the median squared distance.  Every result's accuracy is measured by the same function,
``||pi 1 - a||_1 + ||pi^T 1 - b||_1``, and every solver is run to <= 1e-6 on it: ours with ``tol=1e-6``; POT's
``stopThr`` (L2 norm of one marginal) is calibrated on POT's plain "sinkhorn" until the measured error is
<= 1e-6, and the same stopThr is used for "sinkhorn_log", whose iterates are the same in exact arithmetic.
When a POT log run would exceed ``--budget-s`` its time is projected as (time per iteration, from 10 vs 20)
x (iterations plain POT needed), and marked ``projected``.  POT is timed without building M (in its favour).
geomloss runs a fixed eps-annealing schedule (no tolerance): its time is reported with the error it reaches.
POT's plain "sinkhorn" is reported as failed when its plan has NaN/inf or it warns (divide by zero, overflow).
Times are medians of repeats (one run when a run takes over a second).  Optional peers are imported lazily.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, print_table  # noqa: E402

from atlas.transport.kernels import squared_distances  # noqa: E402
from atlas.transport import grid_sinkhorn, sinkhorn  # noqa: E402

TOL = 1e-6


def timed(fn, slow_s: float = 1.0, repeats: int = 3):
    """(median seconds, last result): one run if it takes over ``slow_s``, else ``repeats`` more."""
    start = time.perf_counter()
    result = fn()
    times = [time.perf_counter() - start]
    if times[0] < slow_s:
        for _ in range(repeats):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times), result


def violation(rows, cols, a, b) -> float:
    """``||pi 1 - a||_1 + ||pi^T 1 - b||_1`` from the row and column sums (numpy or torch)."""
    rows, cols, a, b = (np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v) for v in (rows, cols, a, b))
    return float(np.abs(rows - a).sum() + np.abs(cols - b).sum())


def quietly(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message)[:80] for w in caught]


def seconds_per_iteration(run) -> float:
    """Seconds per iteration of ``run(k)`` (k iterations), without its set-up: (t(20) - t(10)) / 10."""
    elapsed = []
    for k in (10, 20):
        start = time.perf_counter()
        quietly(lambda: run(k))
        elapsed.append(time.perf_counter() - start)
    return max(elapsed[1] - elapsed[0], 1e-3 * elapsed[1]) / 10


def pot_calibrate(ot, a, b, M, eps, budget_s):
    """Plain POT Sinkhorn with stopThr lowered until the measured error is <= TOL (iterations capped so that
    one run stays within ``budget_s``)."""
    per_iter = seconds_per_iteration(lambda k: ot.sinkhorn(a, b, M, eps, method="sinkhorn", stopThr=0.0, numItermax=k))
    cap = max(100, min(100_000, int(budget_s / per_iter)))
    stop, row = TOL, {}
    for _ in range(5):
        (seconds, (G, log)), caught = quietly(lambda: timed(
            lambda: ot.sinkhorn(a, b, M, eps, method="sinkhorn", stopThr=stop, numItermax=cap, log=True)))
        finite = bool(np.isfinite(G).all())
        err = violation(G.sum(1), G.sum(0), a, b) if finite else math.nan
        # failed: NaN/inf in the plan, or POT's own divide-by-zero / overflow / "numerical errors" warnings
        numerical = [w for w in caught if "did not converge" not in w]
        row = {"pot_s": seconds, "pot_iters": int(log["niter"]) + 1, "pot_err": err, "pot_stopThr": stop,
               "pot_failed": not finite or bool(numerical), "pot_capped": int(log["niter"]) + 1 >= cap,
               "pot_warnings": sorted(set(caught))}
        if row["pot_failed"] or err <= TOL or row["pot_capped"]:
            break
        stop *= 0.5 * TOL / err
    return row


def pot_log(ot, a, b, M, eps, stop, iters, budget_s, label):
    """POT sinkhorn_log (numpy or torch arrays), run in full or projected from 10 iterations."""
    per_iter = seconds_per_iteration(
        lambda k: ot.sinkhorn(a, b, M, eps, method="sinkhorn_log", stopThr=0.0, numItermax=k))
    if iters is not None and per_iter * iters > budget_s:
        return {f"{label}_s": per_iter * iters, f"{label}_projected": True}
    # iters None: plain POT failed, so run the log version for as long as the budget allows
    cap = 100_000 if iters is not None else max(10, int(budget_s / per_iter))
    (seconds, G), _ = quietly(lambda: timed(
        lambda: ot.sinkhorn(a, b, M, eps, method="sinkhorn_log", stopThr=stop, numItermax=cap)))
    return {f"{label}_s": seconds, f"{label}_err": violation(G.sum(1), G.sum(0), a, b), f"{label}_projected": False}


def geomloss_row(x, y, eps):
    try:
        from geomloss import SamplesLoss
    except ImportError:
        return {}
    # geomloss: cost |x - y|^2 / 2 and epsilon = blur^2, i.e. our eps / 2 for our cost |x - y|^2
    loss = SamplesLoss("sinkhorn", p=2, blur=math.sqrt(eps / 2), scaling=0.9, debias=False, potentials=True,
                       backend="tensorized")
    seconds, (F, G) = timed(lambda: loss(x, y))
    n, m = x.shape[0], y.shape[0]
    log_plan = (F.reshape(n, 1) + G.reshape(1, m) - squared_distances(x, y) / 2) / (eps / 2)
    plan = (log_plan - math.log(n * m)).exp().numpy()
    return {"geomloss_s": seconds, "geomloss_err": violation(plan.sum(1), plan.sum(0), np.full(n, 1 / n),
                                                              np.full(m, 1 / m))}


def point_cloud_case(n: int, d: int, eps_rel: float, budget_s: float, ot, geomloss_max_n: int) -> dict:
    g = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = 1.5 * torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5
    median = float(squared_distances(x[:2000], y[:2000]).median())
    eps = eps_rel * median
    row = {"N": n, "d": d, "eps/median": eps_rel}
    dense_bytes = 2 * n * n * 8  # let the 16k float64 case keep its 2 GiB kernel (default limit 1 GiB)
    (seconds, result), caught = quietly(lambda: timed(lambda: sinkhorn(x, y, eps=eps, tol=TOL,
                                                                       max_dense_bytes=dense_bytes)))
    ones = torch.ones(n, dtype=torch.float64)
    a = b = np.full(n, 1 / n)
    row.update(ours_s=seconds, ours_iters=result.n_iter, ours_method=result.method, ours_warnings=caught,
               ours_converged=result.converged,
               ours_err=violation(result.apply_plan(ones).numpy(), result.transposed().apply_plan(ones).numpy(), a, b))
    if ot is None:
        return row
    M = squared_distances(x, y).numpy()
    row.update(pot_calibrate(ot, a, b, M, eps, budget_s))
    iters = None if row["pot_failed"] or row["pot_capped"] else row["pot_iters"]
    stop = TOL if iters is None else row["pot_stopThr"]
    row.update(pot_log(ot, a, b, M, eps, stop, iters, budget_s, "pot_log"))
    ta, tM = torch.from_numpy(a), torch.from_numpy(M)
    row.update(pot_log(ot, ta, ta, tM, eps, stop, iters, budget_s, "pot_log_torch"))
    del M, tM
    for label in ("pot_log", "pot_log_torch"):  # only a like-for-like ratio: both reached TOL (or projected to)
        reached = row.get(f"{label}_projected") or row.get(f"{label}_err", math.inf) <= TOL
        row[f"speedup_vs_{label}"] = row[f"{label}_s"] / row["ours_s"] if reached and result.converged else None
    if n <= geomloss_max_n:
        row.update(geomloss_row(x, y, eps))
    return row


def blobs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    image = torch.zeros(n, n, dtype=torch.float64)
    for _ in range(3):
        cx, cy, width = torch.rand(3, generator=g, dtype=torch.float64) * torch.tensor([1, 1, 0.1]) + torch.tensor(
            [0, 0, 0.03])
        image += torch.exp(-((t[:, None] - cx) ** 2 + (t[None, :] - cy) ** 2) / (2 * width**2))
    image += 1e-4
    return image / image.sum()


def grid_case(n: int, reg: float, ot, iterations: int, with_log: bool) -> dict:
    """Per-iteration cost on an n x n grid over [0, 1]^2 (POT's convolution convention, eps = reg)."""
    a, b = blobs(n, 0), blobs(n, 1)
    spacing = 1.0 / (n - 1)
    row = {"grid": f"{n}x{n}", "reg": reg, "kernel_range": 2.0 / reg,
           "auto_method": quietly(lambda: grid_sinkhorn(a, b, eps=reg, spacing=spacing, max_iter=1))[0].method}

    def per_iteration_ms(method):  # one eps stage, so that every iteration is the same work; minus the setup
        def run(max_iter):
            return quietly(lambda: timed(lambda: grid_sinkhorn(
                a, b, eps=reg, spacing=spacing, method=method, max_iter=max_iter, tol=1e-300, eps_scaling=None),
                slow_s=0.5))[0][0]
        return 1e3 * (run(iterations + 1) - run(1)) / iterations

    for method in ("fft", "matmul") if 2.0 / reg <= 40 else ("matmul", "log") if with_log else ("matmul",):
        row[f"ours_{method}_iter_ms"] = per_iteration_ms(method)
    if ot is not None:
        A = np.stack([a.numpy(), b.numpy()])
        for method in ("sinkhorn", "sinkhorn_log"):
            (pot_s, _), _ = quietly(lambda: timed(lambda: ot.bregman.convolutional_barycenter2d(
                A, reg, method=method, numItermax=iterations, stopThr=0.0, warn=False), slow_s=0.0))
            # one barycentre iteration convolves both histograms twice: the work of 2 two-sided iterations
            row[f"pot_{method}_iter_ms"] = 1e3 * pot_s / iterations / 2
        ours = row[f"ours_{row['auto_method']}_iter_ms"]
        row["speedup_auto_vs_pot_sinkhorn"] = row["pot_sinkhorn_iter_ms"] / ours
        row["speedup_auto_vs_pot_sinkhorn_log"] = row["pot_sinkhorn_log_iter_ms"] / ours
    return row


def grid_equal_accuracy(n: int, reg: float, ot) -> dict:
    """Full solves to TOL on an n x n grid: grid_sinkhorn against POT's dense Sinkhorn on the grid points."""
    a, b = blobs(n, 0), blobs(n, 1)
    spacing = 1.0 / (n - 1)
    seconds, result = timed(lambda: grid_sinkhorn(a, b, eps=reg, spacing=spacing, tol=TOL))
    ones = torch.ones(n * n, dtype=torch.float64)
    row = {"grid": f"{n}x{n}", "reg": reg, "ours_method": result.method, "ours_s": seconds,
           "ours_err": violation(result.apply_plan(ones).numpy(), result.transposed().apply_plan(ones).numpy(),
                                 result.a.numpy(), result.b.numpy())}
    if ot is not None:
        M = squared_distances(result.x, result.x).numpy()
        pot = pot_calibrate(ot, result.a.numpy(), result.b.numpy(), M, reg, budget_s=300.0)
        row.update(pot_dense_s=pot["pot_s"], pot_dense_err=pot["pot_err"], speedup=pot["pot_s"] / seconds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N in {1k, 4k} only, fewer grid iterations")
    parser.add_argument("--budget-s", type=float, default=60.0, help="longest POT log run before projecting")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated N for the point clouds only (e.g. 16000); skips the stress and grid "
                             "cases, to run the slow sizes on their own")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        import ot
    except ImportError:
        ot = None
        print("POT not installed (pip install pot): reporting atlas only", file=sys.stderr)
    sizes = (1000, 4000) if args.quick else (1000, 4000, 16000)
    if args.sizes:
        sizes = tuple(int(n) for n in args.sizes.split(","))
    geomloss_max_n = 1000 if args.quick else 4000
    clouds = [point_cloud_case(n, d, rel, args.budget_s, ot, geomloss_max_n)
              for n in sizes for d in (2, 64) for rel in (0.1, 0.01)]
    grids, accuracy = [], []
    if not args.sizes:
        # stress: eps = 0.001 x median, where exp(-C / eps) underflows for whole rows in plain-domain Sinkhorn
        clouds += [point_cloud_case(1000, d, 0.001, min(args.budget_s, 20.0), ot, 0) for d in (2, 64)]
        grids = [grid_case(n, reg, ot, iterations=2 if args.quick else 10, with_log=not (args.quick and n > 128))
                 for n in (128, 512) for reg in (0.05, 0.004)]
        accuracy = [grid_equal_accuracy(n, reg, ot) for n in ((64,) if args.quick else (64, 128))
                    for reg in (0.05, 0.004)]
    emit({"benchmark": "transport", "environment": environment(), "tol": TOL, "point_clouds": clouds,
          "grids_per_iteration": grids, "grids_equal_accuracy": accuracy}, args.json)
    print()
    print_table(clouds, ["N", "d", "eps/median", "ours_s", "ours_iters", "ours_err", "ours_converged", "pot_s",
                         "pot_iters", "pot_err", "pot_failed", "pot_log_s", "pot_log_err", "pot_log_projected",
                         "pot_log_torch_s", "speedup_vs_pot_log",
                         "speedup_vs_pot_log_torch", "geomloss_s", "geomloss_err"])
    print()
    print_table(grids, ["grid", "reg", "kernel_range", "auto_method", "ours_fft_iter_ms", "ours_matmul_iter_ms",
                        "ours_log_iter_ms", "pot_sinkhorn_iter_ms", "pot_sinkhorn_log_iter_ms",
                        "speedup_auto_vs_pot_sinkhorn", "speedup_auto_vs_pot_sinkhorn_log"])
    print()
    print_table(accuracy, ["grid", "reg", "ours_method", "ours_s", "ours_err", "pot_dense_s", "pot_dense_err",
                           "speedup"])


if __name__ == "__main__":
    main()
