"""Baseline plans generated from a schema and a byte budget, no training needed.

They are plans like any searcher's, so they sit on the same Pareto chart:

- ``full``: every field at ``D``.
- ``uniform``: the largest single dim whose plan fits the budget.
- ``mde``: mixed-dimension embeddings (Ginart et al., ISIT 2021), power-law rule
  ``d_f = D * (n_min / n_f)^alpha`` (eq. 9 with popularity ~ 1/n), alpha found by bisection
  to hit the budget.
- ``hash``: the hashing trick, every field capped at ``m`` buckets, ``m`` found to fit.
- ``qr``: quotient-remainder (Shi et al., KDD 2020) on fields above a row cap.
- ``memcom``: MEmCom (Pansare et al., MLSys 2022) on fields above a bucket cap.
- ``quant``: every field at ``D``, all at the highest precision (bits, then row before field
  scales) that fits (uniform row-wise quantization, as Guan et al. 2019 ship it).
- ``mixed-precision``: every field at ``D``, bits per field by a power rule on its rows,
  ``b_f = 32 * (n_min / n_f)^alpha`` rounded down to an allowed precision (the MDE rule
  applied to bits instead of dims), alpha bisected to fit.
"""

from __future__ import annotations

import math
from typing import Callable

from autodim.budget import dims_bytes, format_bytes
from autodim.data.schema import Schema
from autodim.errors import BudgetError, ConfigError
from autodim.plan import DimensionPlan, FieldPlan

__all__ = ["BASELINES", "baseline_plan", "full_plan", "uniform_plan", "mde_plan", "hash_plan",
           "qr_plan", "memcom_plan", "hashed_plan", "quant_plan", "mixed_precision_plan"]


def _meta(name: str, budget: int | None, **settings) -> dict:
    return {"searcher": {"name": name, "settings": settings}, "budget_bytes": budget}


def _too_small(name: str, budget: int, minimum: int, how: str) -> BudgetError:
    return BudgetError(f"{name}: budget {budget} B ({format_bytes(budget)}) is below its smallest "
                       f"plan, {minimum} B ({format_bytes(minimum)}) with {how}")


def full_plan(schema: Schema, D: int, budget_bytes: int | None = None) -> DimensionPlan:
    return DimensionPlan.full(schema, D, **_meta("full", budget_bytes))


def uniform_plan(schema: Schema, D: int, budget_bytes: int) -> DimensionPlan:
    """Every field at the largest common dim ``d <= D`` that fits (projected to ``D``)."""
    for d in range(D, 0, -1):
        if dims_bytes(schema, D, [d] * schema.num_fields) <= budget_bytes:
            return DimensionPlan.from_dims(schema, D, [d] * schema.num_fields,
                                           **_meta("uniform", budget_bytes, dim=d))
    raise _too_small("uniform", budget_bytes, dims_bytes(schema, D, [1] * schema.num_fields),
                     "every field at dim 1")


def _mde_dims(schema: Schema, D: int, alpha: float) -> list[int]:
    n_min = min(f.vocab_size for f in schema.fields)
    return [max(1, min(D, int(round(D * (n_min / f.vocab_size) ** alpha)))) for f in schema.fields]


def mde_plan(schema: Schema, D: int, budget_bytes: int, *, iters: int = 60) -> DimensionPlan:
    """MDE power rule with alpha in [0, inf) bisected so the plan fits the budget tightly.

    Bytes fall monotonically as alpha grows (every dim shrinks), so bisection finds the
    smallest alpha that fits, i.e. the most bytes within the budget.
    """
    if dims_bytes(schema, D, _mde_dims(schema, D, 0.0)) <= budget_bytes:
        return DimensionPlan.from_dims(schema, D, _mde_dims(schema, D, 0.0),
                                       **_meta("mde", budget_bytes, alpha=0.0))
    hi = 1.0
    while dims_bytes(schema, D, _mde_dims(schema, D, hi)) > budget_bytes:
        hi *= 2
        if hi > 64:
            # All large fields are at dim 1 already; only the smallest field keeps D.
            break
    lo = 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if dims_bytes(schema, D, _mde_dims(schema, D, mid)) <= budget_bytes:
            hi = mid
        else:
            lo = mid
    dims = _mde_dims(schema, D, hi)
    if dims_bytes(schema, D, dims) > budget_bytes:
        raise _too_small("mde", budget_bytes, dims_bytes(schema, D, dims),
                         f"alpha={hi:g} (only the smallest field keeps D)")
    return DimensionPlan.from_dims(schema, D, dims, **_meta("mde", budget_bytes, alpha=hi))


def hashed_plan(schema: Schema, D: int, method: str, buckets: dict[str, int], *,
                dims: dict[str, int] | None = None, **meta) -> DimensionPlan:
    """A plan where the named fields use ``method`` hashing with the given bucket counts."""
    fields = []
    for f in schema.fields:
        d = (dims or {}).get(f.name, D)
        m = buckets.get(f.name)
        hashed = m is not None and m < f.vocab_size
        hashing = {"method": method, "buckets": int(m)} if hashed else None
        fields.append(FieldPlan(name=f.name, vocab_size=f.vocab_size, dim=d, kind=f.kind,
                                width=f.width, hashing=hashing if d > 0 else None))
    plan = DimensionPlan(fields=fields, D=D, schema_fingerprint=schema.fingerprint(), **meta)
    plan.validate()
    return plan


def _capped(schema: Schema, D: int, budget_bytes: int, method: str,
            buckets_for: Callable[[int, int], int], lo: int, name: str) -> DimensionPlan:
    """Largest cap ``c`` (bisection) such that hashing every field above it fits."""

    def plan_for(cap: int) -> DimensionPlan:
        b = {f.name: buckets_for(f.vocab_size, cap) for f in schema.fields}
        return hashed_plan(schema, D, method, b, **_meta(name, budget_bytes, cap=cap))

    hi = max(f.vocab_size for f in schema.fields)
    if plan_for(hi).num_bytes() <= budget_bytes:
        return plan_for(hi)
    smallest = plan_for(lo)
    if smallest.num_bytes() > budget_bytes:
        raise _too_small(name, budget_bytes, smallest.num_bytes(), f"cap {lo}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if plan_for(mid).num_bytes() <= budget_bytes:
            lo = mid
        else:
            hi = mid
    return plan_for(lo)


def hash_plan(schema: Schema, D: int, budget_bytes: int) -> DimensionPlan:
    """Hashing trick at full ``D``: fields with more than ``m`` rows share ``m`` buckets."""
    return _capped(schema, D, budget_bytes, "hash", lambda n, cap: min(n, cap), 1, "hash")


def memcom_plan(schema: Schema, D: int, budget_bytes: int) -> DimensionPlan:
    """MEmCom at full ``D``: fields above ``m`` rows use ``m`` buckets x one scalar per id."""
    return _capped(schema, D, budget_bytes, "memcom", lambda n, cap: min(n, cap), 1, "memcom")


def qr_plan(schema: Schema, D: int, budget_bytes: int) -> DimensionPlan:
    """QR at full ``D``: a field above ``c`` rows gets ``m`` remainder buckets so that
    ``ceil(n/m) + m <= c`` (the table shrinks to ~``c`` rows; at best ``2*sqrt(n)``)."""

    def buckets(n: int, cap: int) -> int:
        if n <= cap:
            return n
        best = max(1, int(math.isqrt(n)))
        # The largest m with ceil(n/m) + m <= cap keeps the most unique rows.
        for m in range(min(cap - 1, n - 1), best - 1, -1):
            if math.ceil(n / m) + m <= cap:
                return m
        return best

    lo = 2 * math.isqrt(max(f.vocab_size for f in schema.fields)) + 2
    return _capped(schema, D, budget_bytes, "qr", buckets, min(lo, 3), "qr")


def _bits_plan(schema: Schema, D: int, field_bits: list[int], granularity: str, name: str,
               budget_bytes: int, **settings) -> DimensionPlan:
    plan = DimensionPlan.full(schema, D, **_meta(name, budget_bytes, **settings))
    for fp, b in zip(plan.fields, field_bits):
        if b < 32:
            fp.precision = {"bits": b, **({"scale": granularity} if b <= 8 else {})}
    plan.validate()
    return plan


_BITS_DESC = (32, 16, 8, 4, 2, 1)


def quant_plan(schema: Schema, D: int, budget_bytes: int) -> DimensionPlan:
    """Full dims, one precision for every field: the highest that fits."""
    n = schema.num_fields
    for b in _BITS_DESC:
        for scale in (("row", "field") if b <= 8 else ("row",)):
            plan = _bits_plan(schema, D, [b] * n, scale, "quant", budget_bytes, bits=b,
                              scale=scale)
            if plan.num_bytes() <= budget_bytes:
                return plan
    raise _too_small("quant", budget_bytes, plan.num_bytes(),
                     f"every field at D={D} and 1 bit (field scales)")


def _rule_bits(schema: Schema, alpha: float) -> list[int]:
    n_min = min(f.vocab_size for f in schema.fields)
    out = []
    for f in schema.fields:
        target = 32 * (n_min / f.vocab_size) ** alpha
        out.append(next((b for b in _BITS_DESC if b <= target), 1))
    return out


def mixed_precision_plan(schema: Schema, D: int, budget_bytes: int, *, iters: int = 60
                         ) -> DimensionPlan:
    """Full dims, bits per field by the power rule (see the module docstring)."""
    for scale in ("row", "field"):
        def plan_for(alpha: float, scale: str = scale) -> DimensionPlan:
            return _bits_plan(schema, D, _rule_bits(schema, alpha), scale, "mixed-precision",
                              budget_bytes, alpha=round(alpha, 6), scale=scale)

        if plan_for(0.0).num_bytes() <= budget_bytes:
            return plan_for(0.0)
        hi = 1.0
        while plan_for(hi).num_bytes() > budget_bytes and hi <= 64:
            hi *= 2
        if plan_for(hi).num_bytes() > budget_bytes:
            continue  # only the smallest field keeps 32 bits and it still does not fit
        lo = 0.0
        for _ in range(iters):
            mid = (lo + hi) / 2
            if plan_for(mid).num_bytes() <= budget_bytes:
                hi = mid
            else:
                lo = mid
        return plan_for(hi)
    smallest = _bits_plan(schema, D, [1] * schema.num_fields, "field", "mixed-precision",
                          budget_bytes)
    raise _too_small("mixed-precision", budget_bytes, smallest.num_bytes(),
                     f"every field at D={D} and 1 bit (field scales)")


BASELINES: dict[str, Callable[..., DimensionPlan]] = {
    "full": full_plan, "uniform": uniform_plan, "mde": mde_plan, "hash": hash_plan,
    "qr": qr_plan, "memcom": memcom_plan, "quant": quant_plan,
    "mixed-precision": mixed_precision_plan,
}


def baseline_plan(name: str, schema: Schema, D: int, budget_bytes: int | None) -> DimensionPlan:
    """A baseline plan by name (see :data:`BASELINES`)."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    if name != "full" and budget_bytes is None:
        raise ConfigError(f"baseline {name!r} needs a byte budget")
    return BASELINES[name](schema, D, budget_bytes)
