"""Minibatch couplings (atlas.transport.coupling): the exact assignment solver against brute force and scipy,
and the independent / OT / SB pairings of noise with data."""

from __future__ import annotations

import itertools

import pytest
import torch

from atlas.transport.coupling import pair_minibatch, solve_assignment
from atlas.transport.kernels import squared_distances

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assignment_cost(cost: torch.Tensor, perm: torch.Tensor) -> float:
    return float(cost[torch.arange(cost.shape[0]), perm].sum())


def _brute_force(cost: torch.Tensor) -> float:
    n = cost.shape[0]
    return min(_assignment_cost(cost, torch.tensor(p)) for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("n", range(1, 8))
def test_assignment_matches_brute_force(n):
    for seed in range(3):
        g = _gen(100 * n + seed)
        cost = torch.randn(n, n, generator=g, dtype=F64)
        if seed == 2:
            cost = torch.randint(0, 3, (n, n), generator=g).to(F64)  # many ties
        perm = solve_assignment(cost)
        assert sorted(perm.tolist()) == list(range(n))
        assert _assignment_cost(cost, perm) == pytest.approx(_brute_force(cost), abs=1e-12)


@pytest.mark.parametrize("n", [20, 150])
def test_assignment_matches_scipy(n):
    optimize = pytest.importorskip("scipy.optimize")
    g = _gen(n)
    points = torch.randn(2, n, 8, generator=g, dtype=F64)
    for cost in (torch.rand(n, n, generator=g, dtype=F64), torch.randint(0, 5, (n, n), generator=g).to(F64),
                 squared_distances(points[0], points[1])):
        rows, cols = optimize.linear_sum_assignment(cost.numpy())
        assert _assignment_cost(cost, solve_assignment(cost)) == pytest.approx(float(cost[rows, cols].sum()), abs=1e-9)


def test_assignment_rejects_bad_costs():
    with pytest.raises(ValueError, match="square"):
        solve_assignment(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="finite"):
        solve_assignment(torch.tensor([[0.0, float("inf")], [1.0, 2.0]]))


def _batch(n=7, seed=0):
    g = _gen(seed)
    return torch.randn(n, 2, 3, generator=g, dtype=F64) + 1.0, torch.randn(n, 2, 3, generator=g, dtype=F64)


def test_independent_returns_inputs_and_consumes_no_randomness():
    data, noise = _batch()
    g = _gen(5)
    state, global_state = g.get_state(), torch.get_rng_state()
    paired = pair_minibatch(data, noise, "independent", generator=g)
    assert paired.data is data and paired.noise is noise
    assert torch.equal(g.get_state(), state) and torch.equal(torch.get_rng_state(), global_state)


def test_ot_pairing_is_a_permutation_with_brute_force_cost():
    data, noise = _batch(n=7)
    paired = pair_minibatch(data, noise, "ot")
    assert paired.data is data  # every data sample kept, in order
    assert sorted(map(tuple, paired.noise.reshape(7, -1).tolist())) == sorted(map(tuple, noise.reshape(7, -1).tolist()))
    cost = squared_distances(data.reshape(7, -1), noise.reshape(7, -1))
    assert paired.mean_cost == pytest.approx(_brute_force(cost) / 7, rel=1e-12)
    assert paired.mean_cost <= pair_minibatch(data, noise, "independent").mean_cost


def test_mean_cost_is_the_mean_squared_pair_distance():
    data, noise = _batch()
    expected = float(((data - noise) ** 2).sum(dim=(1, 2)).mean())
    assert pair_minibatch(data, noise, "independent").mean_cost == pytest.approx(expected)


def test_sb_small_eps_approaches_ot_and_huge_eps_approaches_independent():
    data, noise = _batch(n=32, seed=1)
    ot = pair_minibatch(data, noise, "ot")
    sharp = pair_minibatch(data, noise, "sb", eps=1e-4, generator=_gen(0))
    assert sharp.data is data and torch.equal(sharp.noise, ot.noise)

    cost = squared_distances(data.reshape(32, -1), noise.reshape(32, -1))
    independent_mean = float(cost.mean())  # E[cost] of a uniformly random partner
    blurred = [pair_minibatch(data, noise, "sb", eps=1e4, generator=_gen(s)).mean_cost for s in range(40)]
    estimate = sum(blurred) / len(blurred)
    assert abs(estimate - independent_mean) < 0.05 * independent_mean
    assert ot.mean_cost < 0.8 * independent_mean  # the two limits are far apart, so the checks are not vacuous


def test_sb_keeps_all_data_may_repeat_noise_and_is_deterministic():
    data, noise = _batch(n=16, seed=2)
    first = pair_minibatch(data, noise, "sb", eps=1.0, generator=_gen(3))
    second = pair_minibatch(data, noise, "sb", eps=1.0, generator=_gen(3))
    assert first.data is data and torch.equal(first.noise, second.noise)
    flat_noise = noise.reshape(16, -1)
    partners = [int((flat_noise == row).all(1).nonzero()[0]) for row in first.noise.reshape(16, -1)]
    assert len(partners) == 16  # each data sample has exactly one partner drawn from the noise batch
    repeated = pair_minibatch(data, noise, "sb", eps=50.0, generator=_gen(4)).noise.reshape(16, -1)
    assert len({tuple(r) for r in repeated.tolist()}) < 16  # row-wise draws: some noise is used twice


def test_sb_absolute_eps_and_batch_of_one():
    data, noise = _batch(n=5, seed=3)
    absolute = pair_minibatch(data, noise, "sb", eps=1e-6, relative_eps=False, generator=_gen(0))
    assert torch.equal(absolute.noise, pair_minibatch(data, noise, "ot").noise)
    single = pair_minibatch(data[:1], noise[:1], "sb", generator=_gen(0))
    assert torch.equal(single.noise, noise[:1])


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(coupling="sinkhorn"), "coupling must be"), (dict(coupling="sb", eps=0.0), "eps must be")],
)
def test_invalid_arguments_raise(kwargs, match):
    data, noise = _batch()
    with pytest.raises(ValueError, match=match):
        pair_minibatch(data, noise, **kwargs)
    with pytest.raises(ValueError, match="same shape"):
        pair_minibatch(data, noise[:3], "ot")
