"""Full-table helpers the pruning searchers share (``sseds``, ``magprune``, ``pep``).

Train (or accept) the full ``D``-wide model, read its per-field tables, turn per-column
scores or element masks into a plan under a byte budget, and load kept weights into the
built plan. A searcher module imports these from here, never from another searcher.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import torch

from autodim.budget import format_bytes
from autodim.embeddings.field import DroppedField
from autodim.embeddings.tables import FLOAT_BYTES, col_index_bytes, sparse_table_bytes
from autodim.errors import BudgetError, ConfigError
from autodim.plan import DimensionPlan, FieldPlan, encode_mask
from autodim.searchers.base import Searcher, SearchTask
from autodim.task import CTRTask, TrainConfig, TrainResult, train_plan

__all__ = ["train_full_model", "full_model", "full_tables", "select_bytes", "select_columns",
           "column_plan", "embedding_state", "magnitude_masks", "sparse_plan"]


def train_full_model(task: SearchTask, config: TrainConfig | None = None, *,
                     epochs: int | None = None, drop: Collection[str] = ()) -> TrainResult:
    """Train the full ``D``-wide model of ``task`` (early stopping on validation AUC) for
    ``epochs`` (``None``: the config's); the fields in ``drop`` get dim 0 (left out), every
    other field ``D``.

    The search's seed (``task.seed``) seeds initialisation and shuffling, so a search is
    reproducible from its task alone.
    """
    config = replace(config or task.train, seed=task.seed)
    if epochs is not None:
        config = replace(config, max_epochs=epochs)
    plan = DimensionPlan.full(task.schema, task.D, drop=drop)
    return train_plan(plan, task.data, backbone=task.backbone,
                      backbone_kwargs=task.backbone_kwargs, config=config, test=False)


def full_model(task: SearchTask, pretrained: CTRTask | TrainResult | None,
               epochs: int | None = None) -> tuple[CTRTask, dict[str, float]]:
    """The trained full model a pruning searcher scores, and its metrics.

    ``pretrained`` (a model or its :class:`TrainResult`) is used as given; otherwise the
    full model of ``task`` is trained for ``epochs`` (``None``: ``task.train.max_epochs``).
    """
    if pretrained is None:
        trained = train_full_model(task, epochs=epochs)
        return trained.task, dict(trained.metrics)
    if isinstance(pretrained, TrainResult):
        return pretrained.task, dict(pretrained.metrics)
    return pretrained, {}


def full_tables(model: CTRTask, *, skip_dropped: bool = False) -> dict[str, torch.Tensor]:
    """Per-field ``[rows, D]`` weights of a model whose embedding was built from a full plan
    (with ``skip_dropped``, one whose fields are at ``D`` or dropped: those are left out)."""
    out = {}
    for f, module in zip(model.embedding.schema.fields, model.embedding.fields):
        if skip_dropped and type(module) is DroppedField:
            continue
        table = getattr(module, "table", None)
        weight = getattr(getattr(table, "embedding", None), "weight", None)
        if weight is None or weight.shape[0] != f.vocab_size:
            raise ConfigError(f"field {f.name!r}: the model's embedding is not a full table "
                              "(pass a model trained from DimensionPlan.full)")
        out[f.name] = weight.detach()
    return out


def select_bytes(rows: int, columns: Sequence[int], D: int, align: str = "select") -> int:
    """Bytes of a field of ``rows`` rows keeping ``columns``: at their positions
    (``align="select"``) or stored densely and widened by a ``d x D`` map (``"project"``)."""
    cols = sorted(int(c) for c in columns)
    if align == "project":
        return FieldPlan("_", rows, len(cols), align="project").num_bytes(D)
    return FieldPlan("_", rows, len(cols), align="select", columns=cols).num_bytes(D)


def select_columns(rows: Mapping[str, int], D: int, scores: Mapping[str, np.ndarray],
                   budget_bytes: int | None, *, keep: Mapping[str, np.ndarray] | None = None,
                   min_columns: int = 1, allow_drop_fields: bool = False,
                   per_byte: bool = True, align: str = "select") -> dict[str, list[int]]:
    """Project per-column scores onto a byte budget: which columns each field keeps.

    Starting from ``keep`` (default: every column), the column with the lowest key is
    dropped until the ``select`` plan fits; the key is the column's score divided by its
    cost (``rows × 4`` bytes) when ``per_byte``, else the score alone. A field never goes
    below ``min_columns`` unless that floor alone cannot fit and ``allow_drop_fields`` is
    set; then every column competes and a field is dropped when its last column is the
    least valuable one left. Finally the
    dropped columns with the highest keys (and a positive score) are added back while they
    fit, so the plan uses the budget instead of undershooting it by the last (large) drop.

    Args:
        rows: Rows (vocabulary size) of each field, in plan order.
        D: The common dim.
        scores: Per field, ``D`` non-negative scores (higher = keep).
        budget_bytes: The byte budget (``None``: keep everything in ``keep``).
        keep: Per field, a bool array of the columns that are candidates at all.
        min_columns: Columns every field keeps unless fields may be dropped.
        allow_drop_fields: Let the budget remove whole fields.
        per_byte: Rank by score per byte (a knapsack greedy) instead of raw score.
        align: How the kept columns are stored, for their bytes (:func:`select_bytes`).

    Returns:
        Sorted kept column indices per field (an empty list: the field is dropped).

    Raises:
        BudgetError: ``min_columns`` per field does not fit and fields may not be dropped.
    """
    names = list(rows)
    kept = {n: set(np.flatnonzero(keep[n]).tolist()) if keep is not None else set(range(D))
            for n in names}
    cand = {n: set(kept[n]) for n in names}
    fbytes = {n: select_bytes(rows[n], kept[n], D, align) for n in names}

    def key(n: str, j: int) -> float:
        s = float(scores[n][j])
        return s / (rows[n] * 4) if per_byte else s

    def total() -> int:
        return sum(fbytes.values())

    if budget_bytes is None:
        return {n: sorted(kept[n]) for n in names}
    # Stable order: ties broken by field order then column, so a seed gives one plan.
    order = sorted(((key(n, j), i, j, n) for i, n in enumerate(names) for j in kept[n]))
    # The floor: every field at its `min_columns` best columns (the ones the drop keeps).
    best = {n: sorted(kept[n], key=lambda j, n=n: (-key(n, j), j))[:min_columns] for n in names}
    floor = sum(select_bytes(rows[n], best[n], D, align) for n in names)
    if floor > budget_bytes:
        if not allow_drop_fields:
            raise BudgetError(
                f"budget {budget_bytes} B ({format_bytes(budget_bytes)}) is below what keeping "
                f"the best {min_columns} column(s) of every field costs: {floor} B "
                f"({format_bytes(floor)}); raise the budget or allow dropping fields")
        # The budget forces fields out: every column now competes, so a field goes when its
        # last column is the least valuable per byte (rather than the largest fields going
        # first while every other field is held at its floor).
        min_columns = 0
    for _, _, j, n in order:
        if total() <= budget_bytes:
            break
        if len(kept[n]) <= min_columns:
            continue
        kept[n].discard(j)
        fbytes[n] = select_bytes(rows[n], kept[n], D, align)
    # Grow back: the greedy drop may overshoot by a large column; refill with the best
    # dropped columns that still fit.
    for _, _, j, n in reversed(order):
        if j in kept[n] or j not in cand[n] or float(scores[n][j]) <= 0:
            continue  # a column nothing depends on is not worth bytes, even spare ones
        new = select_bytes(rows[n], kept[n] | {j}, D, align)
        if total() - fbytes[n] + new <= budget_bytes:
            kept[n].add(j)
            fbytes[n] = new
    return {n: sorted(kept[n]) for n in names}


def column_plan(searcher: Searcher, task: SearchTask, columns: Mapping[str, Sequence[int]],
                **meta: Any) -> DimensionPlan:
    """A ``select`` plan keeping ``columns[field]`` of each field, stamped by ``searcher``."""
    plan = searcher.make_plan(task, {n: len(c) for n, c in columns.items()}, align="select",
                              **meta)
    for fp in plan.fields:
        fp.columns = sorted(int(c) for c in columns[fp.name])
    plan.validate()
    return plan


def embedding_state(plan: DimensionPlan, tables: Mapping[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """State dict of ``plan.build()`` whose field tables hold ``tables[field]``.

    ``tables[field]`` is the ``[rows, dim]`` weight of the field's table as the plan stores
    it (kept columns for ``select`` fields, the masked full table for ``sparse`` fields);
    masks and column indices come from the plan. Fields absent from ``tables`` or dropped
    keep the built module's fresh values.
    """
    emb = plan.build()
    with torch.no_grad():
        for fp, module in zip(plan.fields, emb.fields):
            if fp.name not in tables or fp.dim == 0 or fp.frequency_groups is not None:
                continue
            weight = module.table.embedding.weight
            value = tables[fp.name].to(weight.dtype)
            if tuple(value.shape) != tuple(weight.shape):
                raise ValueError(f"field {fp.name!r}: table of shape {tuple(value.shape)}, the "
                                 f"plan stores {tuple(weight.shape)}")
            mask = getattr(module.table, "mask", None)
            weight.copy_(value * mask if mask is not None else value)
    return {k: v.detach().clone() for k, v in emb.state_dict().items()}


def magnitude_masks(tables: Mapping[str, torch.Tensor | np.ndarray], D: int,
                    budget_bytes: int | None) -> dict[str, np.ndarray]:
    """Keep the globally largest-magnitude non-zero entries whose CSR storage fits a budget.

    Entries of all fields are ranked together by ``|w|``; the ``k`` largest are kept, with
    ``k`` the largest count whose bytes fit: each kept value costs ``4 + 1`` bytes (float32
    value, uint8 column index) and a field with at least one kept value pays its row
    pointers, ``4 × (rows + 1)``; a field with none is dropped and costs nothing (see
    :func:`autodim.embeddings.tables.sparse_table_bytes`). The cost grows with ``k``, so
    ``k`` is found by one sorted pass. When the entry that overflows would open a field
    whose row pointers no longer fit, that field is skipped entirely and the pass goes on
    (at most one repeat per field), so a small budget is not left unspent. Ties are broken
    by position (field order, row, column), so the result is deterministic.

    Args:
        tables: Per field, its ``[rows, D]`` weights (zeros are never kept).
        D: Columns of every table.
        budget_bytes: Byte budget (``None``: keep every non-zero entry).

    Returns:
        Per field, a bool ``[rows, D]`` mask (all ``False``: the field is dropped).
    """
    names = list(tables)
    mags = [np.abs(np.asarray(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t,
                              dtype=np.float64)) for t in tables.values()]
    flat = np.concatenate([m.ravel() for m in mags])
    owner = np.concatenate([np.full(m.size, i, dtype=np.int32) for i, m in enumerate(mags)])
    nonzero = np.flatnonzero(flat > 0)
    order = nonzero[np.argsort(-flat[nonzero], kind="stable")]
    if budget_bytes is None:
        k = len(order)
    else:
        per_value = FLOAT_BYTES + col_index_bytes(D)
        overhead = np.array([sparse_table_bytes(m.shape[0], D, 0) for m in mags], dtype=np.int64)
        while True:
            owners = owner[order]
            first = np.zeros(len(order), dtype=np.int64)
            fields, at = np.unique(owners, return_index=True)
            first[at] = overhead[fields]
            cost = per_value * np.arange(1, len(order) + 1, dtype=np.int64) + np.cumsum(first)
            k = int(np.searchsorted(cost, budget_bytes, side="right"))
            # If the first entry that does not fit would open a new field (its row pointers
            # are what overflow), that field cannot be afforded at all: skip it and let the
            # remaining budget go to the next entries. Otherwise the budget is spent.
            if k == len(order) or first[k] == 0:
                break
            order = order[owners != owners[k]]
    keep = np.zeros(flat.size, dtype=bool)
    keep[order[:k]] = True
    out, start = {}, 0
    for n, m in zip(names, mags):
        out[n] = keep[start:start + m.size].reshape(m.shape)
        start += m.size
    return out


def sparse_plan(searcher: Searcher, task: SearchTask, masks: Mapping[str, np.ndarray],
                **meta: Any) -> DimensionPlan:
    """A plan storing each field's table sparsely under ``masks`` (all-False: dropped)."""
    dims = {n: task.D if masks[n].any() else 0 for n in task.schema.names}
    plan = searcher.make_plan(task, dims, align="pad", **meta)
    for fp in plan.fields:
        if fp.dim:
            fp.sparse = {"nnz": int(masks[fp.name].sum()), "bits": encode_mask(masks[fp.name])}
    plan.validate()
    return plan


def paired_lower_bound(total: Any, total_sq: Any, n: int, z: float) -> Any:
    """Mean minus ``z`` standard errors of a per-row (paired) difference, from its sum and
    sum of squares over ``n`` rows (tensors of any shape, element-wise)."""
    mean = total / n
    var = (total_sq / n - mean * mean).clamp_min(0.0)
    return mean - z * (var / max(n - 1, 1)).sqrt()


@torch.no_grad()
def field_removal_test(embed, backbone: torch.nn.Module, batches: Any, names: Sequence[str],
                       *, z: float = 2.0, max_rows: int = 50_000, harmful: bool = False
                       ) -> tuple[list[str] | None, float]:
    """(fields whose removal does not raise the validation log loss by ``z`` standard
    errors, the model's mean validation log loss); ``harmful``: only the fields whose
    removal *lowers* it by ``z`` standard errors (the model is better without them).

    ``embed(ids)`` gives the ``[B, F, D]`` field vectors the ``backbone`` reads; a field is
    removed by replacing its vector with its mean over the rows tested (mean ablation). Not
    by zeroing it: in FM a field's mean vector ``m`` enters every pair as ``<m, e_g>``, a
    first-order term of the *other* field ``g`` that a model retrained without the field
    learns through ``g``'s own weights; zeroing removes that term too, so a noise field the
    model routed it through looked needed (decoupled preset: noise fields kept by the
    zeroing test). The loss difference is paired, row by row, over up to ``max_rows`` rows
    of ``batches``, so what the rows share (how hard they are) cancels. A field without
    signal lands well inside two standard errors; one the model needs stands out. The list
    is ``None`` when the model's validation log loss is not below the constant predictor's
    (the label rate): an overfit model gains by losing any field, so the test says nothing
    about the fields.
    """
    was = backbone.training
    backbone.eval()
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    F = len(names)
    s = torch.zeros(F, dtype=torch.float64)
    sq = torch.zeros(F, dtype=torch.float64)
    n, base_sum, pos = 0, 0.0, 0.0
    try:
        # The rows tested, looked up once; each field's mean vector is over all of them.
        rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        for ids, labels in batches:
            rows.append((embed(ids), labels))
            n += len(labels)
            if n >= max_rows:
                break
        if rows:
            mean = torch.cat([e for e, _ in rows]).double().mean(0).to(rows[0][0].dtype)
        for e, labels in rows:
            y = labels.float()
            base = loss(backbone(e).float(), y, reduction="none").double()
            base_sum += float(base.sum())
            pos += float(y.sum())
            for f in range(F):
                out = e.clone()
                out[:, f] = mean[f]
                d = loss(backbone(out).float(), y, reduction="none").double() - base
                s[f] += d.sum()
                sq[f] += d.pow(2).sum()
    finally:
        backbone.train(was)
    if n < 2:
        return [], math.nan
    mean_loss = base_sum / n
    p = min(max(pos / n, 1e-6), 1 - 1e-6)
    if mean_loss >= -(p * math.log(p) + (1 - p) * math.log(1 - p)):
        return None, mean_loss
    if harmful:  # upper bound of the increase below 0: removing the field helps
        ucb = -paired_lower_bound(-s, sq, n, z)
        return [names[f] for f in range(F) if float(ucb[f]) < 0.0], mean_loss
    lcb = paired_lower_bound(s, sq, n, z)
    return [names[f] for f in range(F) if float(lcb[f]) <= 0.0], mean_loss


__all__ += ["field_removal_test", "paired_lower_bound"]
