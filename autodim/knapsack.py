"""Multiple-choice knapsack: pick one option per group, maximise total value, cost <= budget.

Every "how do I spend the budget" decision in autodim is this problem: a searcher's learned
preference per (field, candidate dim), or the compressor's estimated loss per (field, dims x
bits x hashing) option, with each option's exact bytes as its cost. The solver is a dynamic
programme over byte buckets. Costs are rounded *up* to the bucket size, so every answer fits
the real budget; with ``resolution`` buckets the bytes lost to rounding are at most
``groups * budget / resolution``, and a final greedy fill spends them on the upgrades that
still fit in real bytes. When the budget is at most ``resolution`` bytes (or all costs share
a divisor that brings it there) the answer is exact.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Sequence

import numpy as np

from autodim.errors import BudgetError

__all__ = ["solve_mckp", "min_cost"]


def min_cost(costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]] | None = None
             ) -> int:
    """Smallest total cost of any choice (options with value ``-inf`` are not allowed)."""
    total = 0
    for g, c in enumerate(costs):
        c = np.asarray(c, dtype=np.int64)
        if values is not None:
            c = c[np.isfinite(np.asarray(values[g], dtype=np.float64))]
        if c.size == 0:
            raise BudgetError(f"group {g} has no allowed option")
        total += int(c.min())
    return total


def solve_mckp(values: Sequence[Sequence[float]], costs: Sequence[Sequence[int]],
               budget: int, *, resolution: int = 20000, names: Sequence[str] | None = None
               ) -> list[int]:
    """Choose one option per group maximising ``sum(values)`` with ``sum(costs) <= budget``.

    Args:
        values: ``values[g][k]``: value of option ``k`` in group ``g`` (``-inf``: forbidden).
        costs: ``costs[g][k]``: non-negative integer cost (bytes) of that option.
        budget: The cost limit.
        resolution: Number of cost buckets of the dynamic programme (time and memory are
            ``O(groups * options * resolution)``).
        names: Group names for error messages.

    Returns:
        The chosen option index per group. Among equal-value answers the cheaper one wins.

    Raises:
        BudgetError: no choice fits (the message names the smallest feasible cost).
    """
    G = len(values)
    if len(costs) != G:
        raise ValueError("values and costs must have one entry per group")
    vals = [np.asarray(v, dtype=np.float64) for v in values]
    cst = [np.asarray(c, dtype=np.int64) for c in costs]
    for g in range(G):
        if vals[g].shape != cst[g].shape or vals[g].ndim != 1 or vals[g].size == 0:
            raise ValueError(f"group {g}: values and costs must be equal-length 1-d sequences")
        if (cst[g] < 0).any():
            raise ValueError(f"group {g}: costs must be non-negative")
        if np.isnan(vals[g]).any():
            raise ValueError(f"group {g}: a value is NaN")
    if G == 0:
        return []
    lowest = min_cost(cst, vals)
    if lowest > budget:
        label = "" if names is None else f" ({G} fields)"
        raise BudgetError(f"budget {int(budget)} B is below the smallest feasible total "
                          f"{lowest} B{label}")
    budget = int(budget)
    # Shared divisor of every cost: exact DP on a coarser grid at no loss.
    div = reduce(math.gcd, [int(x) for c in cst for x in c if x > 0], 0) or 1
    unit = max(div, div * math.ceil((budget // div) / max(1, resolution)))
    B = budget // unit
    units = [np.ceil(c / unit).astype(np.int64) for c in cst]

    neg = -np.inf
    dp = np.zeros(B + 1)  # dp[b]: best value with total units <= b (monotone in b)
    choice = np.zeros((G, B + 1), dtype=np.int32)
    for g in range(G):
        new = np.full(B + 1, neg)
        pick = np.zeros(B + 1, dtype=np.int32)
        # Cheaper options first so that, on ties, the cheaper one is kept (strict >).
        for k in sorted(range(vals[g].size), key=lambda k: (cst[g][k], k)):
            v, u = vals[g][k], int(units[g][k])
            if not np.isfinite(v) or u > B:
                continue
            cand = np.full(B + 1, neg)
            cand[u:] = dp[:B + 1 - u] + v
            better = cand > new
            new[better] = cand[better]
            pick[better] = k
        dp, choice[g] = new, pick
    if not np.isfinite(dp[B]):
        # Rounding made it infeasible on the grid although it fits in bytes: start cheapest.
        chosen = [int(np.argmin(np.where(np.isfinite(vals[g]), cst[g], np.iinfo(np.int64).max)))
                  for g in range(G)]
    else:
        chosen = [0] * G
        b = int(np.argmax(dp == dp[B]))  # smallest bucket reaching the best value
        for g in range(G - 1, -1, -1):
            k = int(choice[g][b])
            chosen[g] = k
            b -= int(units[g][k])
    return _greedy_fill(vals, cst, chosen, budget)


def _greedy_fill(vals: list[np.ndarray], cst: list[np.ndarray], chosen: list[int],
                 budget: int) -> list[int]:
    """Spend the bytes lost to bucket rounding: best value-per-byte upgrades that fit."""
    total = sum(int(cst[g][k]) for g, k in enumerate(chosen))
    while True:
        best, best_key = None, None
        for g, k in enumerate(chosen):
            for j in range(vals[g].size):
                gain = vals[g][j] - vals[g][k]
                extra = int(cst[g][j]) - int(cst[g][k])
                if not np.isfinite(vals[g][j]) or gain <= 0 or total + extra > budget:
                    continue
                key = gain / extra if extra > 0 else np.inf
                if best_key is None or key > best_key:
                    best, best_key = (g, j, extra), key
        if best is None:
            return chosen
        g, j, extra = best
        chosen[g] = j
        total += extra
