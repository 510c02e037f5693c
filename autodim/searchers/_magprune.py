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
searcher as ``model_``. The class attribute ``retrain = False`` (declared on
:class:`~autodim.searchers.Searcher`) tells orchestration code that this plan's metrics come
from the search itself; ``baseline = True`` that it is a rule, not a search.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Mapping

from autodim.searchers._tables import (
    embedding_state,
    full_model,
    full_tables,
    magnitude_masks,
    sparse_plan,
)
from autodim.searchers.base import Searcher, SearchResult, SearchTask, Stopwatch
from autodim.searchers.registry import register_searcher
from autodim.task import CTRTask, TrainResult, evaluate

__all__ = ["MagPruneSearcher", "magnitude_masks", "sparse_plan"]


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
    accepts_pretrained: ClassVar[bool] = True
    baseline: ClassVar[bool] = True  # magnitude per byte decides, nothing is learned for it

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
            model, _ = full_model(task, pretrained, self.epochs)
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
