"""Byte budgets: parsing (``10x``, ``2MB``, ``350000``) and fitting per-field dims to one."""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from autodim.data.schema import Schema
from autodim.embeddings.tables import FLOAT_BYTES
from autodim.errors import BudgetError, ConfigError

__all__ = ["parse_budget", "full_bytes", "dims_bytes", "field_dim_bytes",
           "min_feasible_bytes", "fit_dims_to_budget", "knapsack_dims", "format_bytes"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}


def full_bytes(schema: Schema, D: int) -> int:
    """Bytes of the uncompressed ``D``-wide float32 table over every field."""
    return schema.total_rows * D * FLOAT_BYTES


def parse_budget(value: str | int | float, full: int) -> int:
    """``"10x"`` (10 times fewer bytes than ``full``), ``"2MB"``/``"1.5MiB"`` or a byte count."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"budget must be positive, got {value}")
        return int(value)
    text = str(value).strip().lower().replace(" ", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)x", text)
    if m:
        ratio = float(m.group(1))
        if ratio < 1:
            raise ConfigError(f"budget {value!r}: a compression ratio must be >= 1x")
        return int(full / ratio)
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)([kmg]i?b|b)?", text)
    if not m:
        raise ConfigError(f"budget {value!r} is not understood: use a ratio like '10x', "
                          "bytes like '350000', or a size like '2MB' / '1.5MiB'")
    nbytes = int(float(m.group(1)) * _UNITS[m.group(2) or ""])
    if nbytes <= 0:
        raise ConfigError(f"budget must be positive, got {value!r}")
    return nbytes


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def field_dim_bytes(rows: int, d: int, D: int, align: str = "project") -> int:
    """Bytes of one plain field at dim ``d``: its table plus a ``d x D`` projection."""
    if d == 0:
        return 0
    proj = d * D * FLOAT_BYTES if (align == "project" and d < D) else 0
    return rows * d * FLOAT_BYTES + proj


def dims_bytes(schema: Schema, D: int, dims: Mapping[str, int] | Sequence[int],
               align: str = "project") -> int:
    """Bytes of a plain mixed-dimension plan (no hashing, no pruning)."""
    if isinstance(dims, Mapping):
        dims = [dims[n] for n in schema.names]
    return sum(field_dim_bytes(f.vocab_size, int(d), D, align) for f, d in zip(schema.fields, dims))


def min_feasible_bytes(schema: Schema, D: int, candidate_dims: Sequence[int],
                       align: str = "project") -> int:
    """Bytes with every field at the smallest (non-zero, unless 0 is a candidate) candidate."""
    return dims_bytes(schema, D, [min(candidate_dims)] * schema.num_fields, align)


def fit_dims_to_budget(schema: Schema, D: int, candidate_dims: Sequence[int],
                       scores: Mapping[str, Sequence[float]], budget_bytes: int, *,
                       start: Mapping[str, int] | None = None, align: str = "project",
                       grow: bool = True) -> dict[str, int]:
    """Project per-field dims onto a byte budget using per-candidate preference scores.

    ``scores[field][k]`` says how much field ``field`` values candidate ``candidate_dims[k]``
    (e.g. softmax architecture weights α, or kept saliency). Starting from ``start`` (default:
    each field's best-scoring candidate), the greedy step that loses the least score per
    byte saved moves one field down to its next smaller candidate, until the plan fits.
    With ``grow``, spare budget is then spent on the steps up that gain the most score per
    byte, so the plan uses the budget rather than undershooting it.

    Raises:
        BudgetError: the budget is below the smallest feasible plan (named in the message).
    """
    cands = sorted(set(int(c) for c in candidate_dims))
    minimum = min_feasible_bytes(schema, D, cands, align)
    if budget_bytes < minimum:
        hint = "" if 0 in cands else "; adding 0 (drop a field) to the candidate dims lowers it"
        raise BudgetError(f"budget {budget_bytes} B ({format_bytes(budget_bytes)}) is below the "
                          f"smallest feasible model: {minimum} B ({format_bytes(minimum)}), "
                          f"every field at dim {cands[0]}{hint}; hashing large fields lowers "
                          "it too")
    order = {c: k for k, c in enumerate(sorted(set(int(c) for c in candidate_dims)))}
    # Scores are given in the caller's candidate order; re-index them by sorted candidate.
    raw_order = [int(c) for c in candidate_dims]
    s = {name: np.array([float(scores[name][raw_order.index(c)]) for c in cands])
         for name in schema.names}
    level = {}
    for name in schema.names:
        if start is not None and name in start:
            level[name] = order[int(start[name])]
        else:
            level[name] = int(np.argmax(s[name]))
    rows = {f.name: f.vocab_size for f in schema.fields}

    def cost(name: str, k: int) -> int:
        return field_dim_bytes(rows[name], cands[k], D, align)

    total = sum(cost(n, level[n]) for n in schema.names)
    while total > budget_bytes:
        best, best_ratio = None, np.inf
        for n in schema.names:
            k = level[n]
            if k == 0:
                continue
            saved = cost(n, k) - cost(n, k - 1)
            if saved <= 0:
                continue
            ratio = (s[n][k] - s[n][k - 1]) / saved
            if ratio < best_ratio:
                best, best_ratio = n, ratio
        assert best is not None  # guaranteed by the minimum check above
        total -= cost(best, level[best]) - cost(best, level[best] - 1)
        level[best] -= 1
    while grow:
        best, best_ratio = None, 0.0
        for n in schema.names:
            k = level[n]
            if k + 1 >= len(cands):
                continue
            extra = cost(n, k + 1) - cost(n, k)
            gain = s[n][k + 1] - s[n][k]
            fits = total + extra <= budget_bytes and extra > 0
            if fits and gain > 0 and gain / extra > best_ratio:
                best, best_ratio = n, gain / extra
        if best is None:
            break
        total += cost(best, level[best] + 1) - cost(best, level[best])
        level[best] += 1
    return {n: cands[level[n]] for n in schema.names}


def knapsack_dims(schema: Schema, D: int, candidate_dims: Sequence[int],
                  values: Mapping[str, Sequence[float]], budget_bytes: int, *,
                  align: str = "project", resolution: int = 20000) -> dict[str, int]:
    """Per-field dims maximising ``sum(values[field][k])`` with exact bytes <= the budget.

    ``values[field][k]`` is the learned preference for ``candidate_dims[k]`` (e.g. log α, or a
    measured validation-loss gain); unlike :func:`fit_dims_to_budget` nothing is spent per
    byte greedily: the multiple-choice knapsack (:func:`autodim.knapsack.solve_mckp`) decides.
    """
    from autodim.knapsack import solve_mckp

    cands = [int(c) for c in candidate_dims]
    rows = {f.name: f.vocab_size for f in schema.fields}
    costs = [[field_dim_bytes(rows[n], c, D, align) for c in cands] for n in schema.names]
    vals = [[float(values[n][k]) for k in range(len(cands))] for n in schema.names]
    try:
        chosen = solve_mckp(vals, costs, budget_bytes, resolution=resolution)
    except BudgetError:
        minimum = min_feasible_bytes(schema, D, cands, align)
        hint = "" if 0 in cands else "; adding 0 (drop a field) to the candidate dims lowers it"
        raise BudgetError(f"budget {budget_bytes} B ({format_bytes(budget_bytes)}) is below the "
                          f"smallest feasible model: {minimum} B ({format_bytes(minimum)}), "
                          f"every field at dim {min(cands)}{hint}; hashing large fields lowers "
                          "it too") from None
    return {n: cands[k] for n, k in zip(schema.names, chosen)}
