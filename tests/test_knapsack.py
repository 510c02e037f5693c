"""The multiple-choice knapsack solver against brute force."""

import itertools

import numpy as np
import pytest

from autodim.errors import BudgetError
from autodim.knapsack import solve_mckp


def _brute(values, costs, budget):
    best_v = -np.inf
    for combo in itertools.product(*[range(len(v)) for v in values]):
        c = sum(costs[g][k] for g, k in enumerate(combo))
        v = sum(values[g][k] for g, k in enumerate(combo))
        if c <= budget and v > best_v + 1e-12:
            best_v = v
    return best_v


@pytest.mark.parametrize("seed", range(25))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    G, K = rng.integers(1, 6), rng.integers(1, 5)
    costs = [sorted(rng.integers(0, 400, size=K).tolist()) for _ in range(G)]
    values = [rng.normal(size=K).tolist() for _ in range(G)]
    budget = int(sum(min(c) for c in costs) + rng.integers(0, 600))
    got = solve_mckp(values, costs, budget)
    assert sum(costs[g][k] for g, k in enumerate(got)) <= budget
    assert sum(values[g][k] for g, k in enumerate(got)) == pytest.approx(
        _brute(values, costs, budget))


def test_large_costs_stay_feasible_and_near_optimal():
    rng = np.random.default_rng(0)
    costs = [[0, 10_000 * (g + 1), 40_000 * (g + 1) + 7] for g in range(6)]
    values = [[0.0, *sorted(rng.random(2))] for _ in range(6)]
    budget = 300_001
    got = solve_mckp(values, costs, budget, resolution=50)
    assert sum(costs[g][k] for g, k in enumerate(got)) <= budget
    assert sum(values[g][k] for g, k in enumerate(got)) >= _brute(values, costs, budget) - 0.5


def test_value_decides_not_cost():
    # The big group values its upgrade more: it gets it although it costs 10x the bytes.
    values = [[0.0, 1.0], [0.0, 0.2]]
    costs = [[0, 1000], [0, 100]]
    assert solve_mckp(values, costs, 1000) == [1, 0]


def test_infeasible_names_the_minimum():
    with pytest.raises(BudgetError, match="smallest feasible total 30"):
        solve_mckp([[0.0, 1.0], [0.0]], [[10, 20], [20]], 29)


def test_forbidden_options_are_never_chosen():
    got = solve_mckp([[-np.inf, 0.0], [0.0, 1.0]], [[0, 5], [0, 5]], 5)
    assert got == [1, 0]
