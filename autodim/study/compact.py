"""The final compact model: a searched mixed-dim plan plus MEmCom where it pays most.

A trial lets its searcher spend ``inflate x budget`` bytes, then brings the plan back under
the real budget by hashing fields with MEmCom (Pansare et al., MLSys 2022):
``e(i) = U[i mod m] * w[i]`` stores ``m*d + n`` floats instead of ``n*d``. Fields are taken
greedily in order of *bytes saved per unit of lost accuracy*, where the loss of hashing a
field into ``m`` buckets is estimated, without training, as

    loss_f = d_f * (share of the field's training occurrences whose id is not the most
                    frequent one in its bucket)

i.e. the traffic that loses its own direction vector (it keeps a scalar), weighted by the
dims the searcher judged the field to deserve. A field the searcher shrank to dim 1 saves
nothing by hashing (``m + n > n``) and is never picked. If hashing every eligible field is
not enough, dims are lowered one candidate step at a time where a step saves the most
bytes per lost log-dim.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from autodim.budget import format_bytes
from autodim.data.schema import Field, Schema
from autodim.errors import BudgetError
from autodim.plan import DimensionPlan, FieldPlan

__all__ = ["collision_loss", "memcom_candidates", "compact_plan"]


def collision_loss(field: Field, buckets: int) -> float:
    """Share of training occurrences whose id is not the heaviest id of its MEmCom bucket.

    Without frequencies the ids are taken as equally frequent (``1 - m/n``).
    """
    n = field.vocab_size
    if buckets >= n:
        return 0.0
    if field.freqs is None or field.freqs.sum() <= 0:
        return 1.0 - buckets / n
    freqs = np.asarray(field.freqs, dtype=np.float64)
    top = np.zeros(buckets)
    np.maximum.at(top, np.arange(n) % buckets, freqs)  # the same i mod m as MEmComTable
    return float(1.0 - top.sum() / freqs.sum())


def _plain(fp: FieldPlan) -> bool:
    return (fp.dim > 0 and fp.hashing is None and fp.frequency_groups is None
            and fp.row_mask is None and fp.sparse is None)


def memcom_candidates(plan: DimensionPlan, schema: Schema, ratio: float, min_rows: int
                      ) -> list[dict[str, Any]]:
    """Fields MEmCom could hash, best first (most bytes saved per unit of estimated loss)."""
    out = []
    for fp in plan.fields:
        if not _plain(fp) or fp.vocab_size < min_rows:
            continue
        m = max(1, math.ceil(ratio * fp.vocab_size))
        if m >= fp.vocab_size:
            continue
        hashed = replace(fp, hashing={"method": "memcom", "buckets": m})
        saved = fp.num_bytes(plan.D) - hashed.num_bytes(plan.D)
        if saved <= 0:
            continue
        loss = fp.dim * collision_loss(schema[fp.name], m)
        out.append({"field": fp.name, "buckets": m, "saved_bytes": saved, "loss": loss,
                    "score": saved / (loss + 1e-6)})
    out.sort(key=lambda c: -c["score"])
    return out


def compact_plan(plan: DimensionPlan, schema: Schema, budget_bytes: int | None, *,
                 ratio: float, min_rows: int = 500,
                 candidate_dims: Sequence[int] = (1, 2, 4, 8, 16)
                 ) -> tuple[DimensionPlan, dict[str, Any]]:
    """Fit a searched plan into ``budget_bytes`` with MEmCom (then, if needed, lower dims).

    Args:
        plan: The searcher's plan (may exceed the budget when the searcher was given more).
        schema: The data's schema (its training frequencies estimate the hashing loss).
        budget_bytes: The study's budget (``None``: return the plan unchanged).
        ratio: Buckets of a hashed field as a share of its rows.
        min_rows: Fields with fewer rows are never hashed.
        candidate_dims: Dims the fallback projection may lower fields to.

    Returns:
        ``(plan, info)``; ``info`` lists the hashed fields (``memcom``: field -> buckets),
        the lowered dims (``lowered``: field -> [old, new]) and the bytes before/after. The
        plan is the input object itself when nothing had to change.

    Raises:
        BudgetError: not even hashing and lowering every field fits the budget.

    Example:
        >>> from autodim.data.synthetic import make_planted
        >>> data = make_planted("tiny", rows=2000)
        >>> big = DimensionPlan.full(data.schema, 8)
        >>> small, info = compact_plan(big, data.schema, big.num_bytes() // 4, ratio=0.05)
        >>> small.num_bytes() <= big.num_bytes() // 4, sorted(info["memcom"])[:1]
        (True, ['f03'])
    """
    before = plan.num_bytes()
    info: dict[str, Any] = {"memcom": {}, "lowered": {}, "ratio": ratio,
                            "bytes_before": before, "bytes_after": before}
    if budget_bytes is None or before <= budget_bytes:
        return plan, info
    fields = {fp.name: fp for fp in plan.fields}
    total = before
    for cand in memcom_candidates(plan, schema, ratio, min_rows):
        if total <= budget_bytes:
            break
        name = cand["field"]
        fields[name] = replace(fields[name], hashing={"method": "memcom",
                                                      "buckets": cand["buckets"]})
        total -= cand["saved_bytes"]
        info["memcom"][name] = cand["buckets"]
    if total > budget_bytes:
        lowered = _lower_dims(plan.D, fields, budget_bytes, candidate_dims)
        info["lowered"] = {k: list(v) for k, v in lowered.items()}
    out = replace(plan, fields=[fields[fp.name] for fp in plan.fields])
    out.validate()
    info["bytes_after"] = out.num_bytes()
    if out.num_bytes() > budget_bytes:
        raise BudgetError(f"the searched plan ({format_bytes(before)}) cannot be brought under "
                          f"the budget {format_bytes(budget_bytes)} with MEmCom (ratio "
                          f"{ratio:.3g}) and the smallest candidate dims: "
                          f"{format_bytes(out.num_bytes())} remain")
    return out, info


def _lower_dims(D: int, fields: dict[str, FieldPlan], budget_bytes: int,
                candidate_dims: Sequence[int]) -> dict[str, tuple[int, int]]:
    """Lower dims one candidate step at a time until the plan fits, each step taken where it
    saves the most bytes per lost log-dim. Plain and MEmCom-hashed fields may move (their
    bytes are recomputed exactly); fields with groups, masks or other hashing keep theirs."""
    # 0 (dropping a field) is a step only when the user made it a candidate.
    cands = sorted({int(c) for c in candidate_dims if c >= 0}) or [1]
    start = {n: fp.dim for n, fp in fields.items()}
    total = sum(fp.num_bytes(D) for fp in fields.values())

    def movable(fp: FieldPlan) -> bool:
        # A row mask is over ids, so it stays valid at a lower dim; an element mask
        # (sparse) or frequency groups fix their dims.
        hashed_ok = fp.hashing is None or fp.hashing.get("method") == "memcom"
        return (fp.dim > cands[0] and hashed_ok and fp.frequency_groups is None
                and fp.sparse is None)

    while total > budget_bytes:
        best, best_ratio, best_fp = None, -1.0, None
        for name, fp in fields.items():
            if not movable(fp):
                continue
            lower = max([c for c in cands if c < fp.dim] or [cands[0]])
            cols = fp.columns[:lower] if fp.align == "select" and fp.columns else fp.columns
            new = replace(fp, dim=lower, columns=cols)
            if lower == 0:  # a dropped field stores nothing: no hashing, no row mask
                new = replace(new, hashing=None, row_mask=None)
            saved = fp.num_bytes(D) - new.num_bytes(D)
            if saved <= 0:
                continue
            ratio = saved / (math.log2(1 + fp.dim) - math.log2(1 + lower))
            if ratio > best_ratio:
                best, best_ratio, best_fp = name, ratio, new
        if best is None:
            break
        total -= fields[best].num_bytes(D) - best_fp.num_bytes(D)
        fields[best] = best_fp
    return {n: (start[n], fp.dim) for n, fp in fields.items() if fp.dim != start[n]}
