"""``magprune``: one-shot global magnitude pruning of a trained full table (a baseline).

Train the full ``D``-wide model, keep the largest ``|w|`` entries of the whole embedding
table (all fields ranked together) while the CSR storage of what is kept fits the byte
budget, and stop: no retraining. The plan is an ordinary ``sparse`` plan (one element mask
per field), so the baseline sits on the same Pareto chart as every searcher.

Because it is not retrained, the quality to chart is that of the trained model with its
table pruned: ``SearchResult.history["eval"]`` holds its validation and test AUC/logloss,
computed inside :meth:`MagPruneSearcher.search` with :func:`autodim.task.evaluate`.
``SearchResult.warm_start`` is the pruned embedding's state dict (loadable into
``result.plan.build()``); the pruned model with its trained backbone is kept on the
searcher as ``model_``. The class attribute ``retrain = False`` tells orchestration code
that this plan's metrics come from the search itself.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from autodim.embeddings.tables import FLOAT_BYTES, col_index_bytes, sparse_table_bytes
from autodim.plan import DimensionPlan, encode_mask
from autodim.searchers._sseds import embedding_state, full_tables, train_full_model
from autodim.searchers.base import Searcher, SearchResult, SearchTask, Stopwatch
from autodim.searchers.registry import register_searcher
from autodim.task import CTRTask, TrainResult, evaluate

__all__ = ["MagPruneSearcher", "magnitude_masks", "sparse_plan"]


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


@register_searcher("magprune")
class MagPruneSearcher(Searcher):
    """Baseline: global magnitude pruning of the trained full table to the budget, no retrain.

    Args:
        epochs: Epochs of the full model's training (``None``: ``task.train.max_epochs``).

    Attributes (after :meth:`search`):
        model_: The trained model with its embedding replaced by the pruned one.
    """

    history_keys: ClassVar[tuple[str, ...]] = ("eval", "nnz", "search_seconds")
    quick_settings: ClassVar[Mapping[str, Any]] = {"epochs": 1}
    retrain: ClassVar[bool] = False  # the plan's quality is measured without retraining

    def __init__(self, *, epochs: int | None = None) -> None:
        self.epochs = epochs

    def search(self, task: SearchTask, *, pretrained: CTRTask | TrainResult | None = None
               ) -> SearchResult:
        """Prune the trained full table of ``task`` to its budget.

        Args:
            task: The search task.
            pretrained: A trained full-``D`` model (or its :class:`TrainResult`) to prune
                instead of training one; its training time is then not in
                ``search_seconds``.
        """
        with Stopwatch() as sw:
            if pretrained is None:
                config = task.train if self.epochs is None else replace(
                    task.train, max_epochs=self.epochs)
                model = train_full_model(task, config).task
            else:
                model = pretrained.task if isinstance(pretrained, TrainResult) else pretrained
            tables = full_tables(model)
            masks = magnitude_masks(tables, task.D, task.budget_bytes)
            plan = sparse_plan(self, task, masks)
            warm = embedding_state(plan, {n: tables[n] for n in tables if masks[n].any()})
            embedding = plan.build()
            embedding.load_state_dict(warm)
            pruned = CTRTask(embedding, copy.deepcopy(model.backbone), lr=model.lr,
                             weight_decay=model.weight_decay)
            val = evaluate(pruned, task.data.val_dataloader())
            test = evaluate(pruned, task.data.test_dataloader())
            plan.metrics = {"val_auc": val["auc"], "val_logloss": val["logloss"]}
        self.model_ = pruned
        history = {
            "eval": {"val_auc": val["auc"], "val_logloss": val["logloss"],
                     "test_auc": test["auc"], "test_logloss": test["logloss"]},
            "nnz": {n: int(m.sum()) for n, m in masks.items()},
            "density": {n: float(m.mean()) for n, m in masks.items()},
            "num_bytes": plan.num_bytes(),
            "search_seconds": sw.seconds,
        }
        return SearchResult(plan=plan, history=history, warm_start=warm)
