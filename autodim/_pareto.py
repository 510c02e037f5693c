"""Non-domination ranks of multi-objective points (shared by the study results and the
Pareto figures, so neither imports the other)."""

from __future__ import annotations

__all__ = ["nondominated_ranks"]


def nondominated_ranks(values: list[list[float]], directions: list[str]) -> list[int]:
    """Non-domination rank of each point (0 = on the Pareto front); O(n^2), n is small."""
    signs = [-1.0 if d == "maximize" else 1.0 for d in directions]
    pts = [[s * v for s, v in zip(signs, row)] for row in values]
    n = len(pts)

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    ranks = [-1] * n
    remaining = set(range(n))
    level = 0
    while remaining:
        front = {i for i in remaining
                 if not any(dominates(pts[j], pts[i]) for j in remaining if j != i)}
        for i in front:
            ranks[i] = level
        remaining -= front
        level += 1
    return ranks
