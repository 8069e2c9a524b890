"""RFF and Nystrom kernel approximations: error against the number of features / landmarks, next to
scikit-learn's ``RBFSampler`` and ``Nystroem`` on the same points and bandwidth.

    python benchmarks/kernel_error.py [--n 2000] [--json out.json]

Points: x ~ N(0, I_d), n of them, d in {2, 64}, float64; kernel exp(-||x - y||^2 / eps) with eps = the median
squared distance x {1, 0.1} (sklearn's gamma = 1 / eps).  Error = mean |K~_ij - K_ij| over ALL n^2 entries
against the exact dense kernel, median over 3 seeds; build time = median over the seeds (features or landmarks
for the n points, sklearn's fit + transform).  atlas RFF is run iid and orthogonal; sklearn's RBFSampler is iid.
Expected: RFF error ~ 1/sqrt(D) whatever d; Nystrom error falls fast in low d and slowly in high d.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, print_table  # noqa: E402

from atlas.transport import NystromKernel, RFFKernel, gaussian_kernel, squared_distances  # noqa: E402

SIZES = (64, 256, 1024, 4096)
SEEDS = (0, 1, 2)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def atlas_rows(x: torch.Tensor, exact: torch.Tensor, eps: float) -> list[dict]:
    rows = []
    for method, size_name in (("rff_iid", "features"), ("rff_orthogonal", "features"), ("nystrom", "landmarks")):
        for size in SIZES:
            errors, times = [], []
            for seed in SEEDS:
                generator = torch.Generator().manual_seed(seed)
                if method == "nystrom":
                    build = lambda: NystromKernel(x, eps=eps, num_landmarks=size, generator=generator)  # noqa: E731
                else:
                    build = lambda: RFFKernel(x, eps=eps, num_features=size, generator=generator,  # noqa: E731
                                              orthogonal=method == "rff_orthogonal")
                seconds, op = timed(build)
                times.append(seconds)
                errors.append(float((op.pairwise() - exact).abs().mean()))
            rows.append({"library": "atlas", "method": method, size_name: size, "size": size,
                         "error": statistics.median(errors), "build_s": statistics.median(times)})
    return rows


def sklearn_rows(x: torch.Tensor, exact: torch.Tensor, eps: float) -> list[dict]:
    try:
        from sklearn.kernel_approximation import Nystroem, RBFSampler
    except ImportError:
        print("scikit-learn not installed: atlas only", file=sys.stderr)
        return []
    points = x.numpy()
    rows = []
    for method, maker in (("rff_iid", lambda s, seed: RBFSampler(gamma=1 / eps, n_components=s, random_state=seed)),
                          ("nystrom", lambda s, seed: Nystroem(gamma=1 / eps, n_components=min(s, len(points)),
                                                               random_state=seed))):
        for size in SIZES:
            errors, times = [], []
            for seed in SEEDS:
                seconds, features = timed(lambda: maker(size, seed).fit_transform(points))
                times.append(seconds)
                features = torch.from_numpy(features).double()
                errors.append(float((features @ features.T - exact).abs().mean()))
            rows.append({"library": "sklearn", "method": method, "size": size,
                         "error": statistics.median(errors), "build_s": statistics.median(times)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="number of points")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for d in (2, 64):
        x = torch.randn(args.n, d, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
        median = float(squared_distances(x).median())
        for scale in (1.0, 0.1):
            eps = scale * median
            exact = gaussian_kernel(x, None, eps)
            case = {"d": d, "eps_over_median": scale, "mean_exact_entry": float(exact.mean())}
            rows += [{**case, **row} for row in atlas_rows(x, exact, eps) + sklearn_rows(x, exact, eps)]
    for row in rows:
        row["error_x_sqrt_size"] = row["error"] * row["size"] ** 0.5
    emit({"benchmark": "kernel_error", "environment": environment(), "n": args.n, "seeds": list(SEEDS),
          "rows": rows}, args.json)
    print()
    print_table(rows, ["d", "eps_over_median", "mean_exact_entry", "library", "method", "size", "error",
                       "error_x_sqrt_size", "build_s"])


if __name__ == "__main__":
    main()
