"""``blackbox``: Optuna samples the per-field dims directly; each candidate trains briefly.

The black-box reference for the gradient-based searchers: no supernet, no saliency, just
"try a plan, look at its validation AUC". An in-memory Optuna study (multivariate TPE,
seeded by ``task.seed``) proposes one categorical dim per field from
``task.candidate_dims``. A proposal over the byte budget is projected onto it with
:func:`autodim.budget.fit_dims_to_budget` (the fields whose dims cost the most bytes per
lost log-dim shrink first), so every trained candidate is feasible and no training is
spent on plans the user cannot ship; the trial records how far the raw proposal was over
(``trial.set_constraint``), so TPE also learns where the budget lies. Each distinct plan
trains for ``epochs`` epochs (optionally ``max_batches`` batches per epoch) and is scored
by validation AUC; the best one is the result.

Two proposals are enqueued first so the search starts from sensible plans: the largest
uniform candidate dim that fits, and every field at the largest candidate (projected).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any, ClassVar, Mapping

from autodim.budget import dims_bytes, fit_dims_to_budget
from autodim.errors import ConfigError
from autodim.searchers.base import (
    BUDGET_USE,
    Searcher,
    SearchResult,
    SearchTask,
    Stopwatch,
    check_plan,
)
from autodim.searchers.registry import register_searcher

__all__ = ["BlackboxSearcher"]


@register_searcher("blackbox")
class BlackboxSearcher(Searcher):
    """Black-box dimension search: TPE over per-field dims, short training per candidate.

    Args:
        n_candidates: Candidate plans to propose (Optuna trials), enqueued starts included.
        epochs: Training epochs per candidate (``None``: ``task.train.max_epochs``).
        max_batches: Training batches per epoch (``None``: all).
        n_startup: Random proposals before TPE takes over (``None``: a third of
            ``n_candidates``, at least 2).
        project: Project over-budget proposals onto the budget (default); otherwise they
            are recorded as infeasible without training.

    Example:
        >>> from autodim.searchers import create_searcher
        >>> searcher = create_searcher("blackbox", n_candidates=8, epochs=1)  # doctest: +SKIP
        >>> result = searcher.search(task)                                    # doctest: +SKIP
        >>> result.history["best_val_auc"]                                    # doctest: +SKIP
    """

    history_keys: ClassVar[tuple[str, ...]] = ("trials", "best_dims", "best_val_auc",
                                               "search_seconds")
    quick_settings: ClassVar[Mapping[str, Any]] = {"n_candidates": 3, "epochs": 1,
                                                   "max_batches": 4}

    def __init__(self, *, n_candidates: int = 16, epochs: int | None = 1,
                 max_batches: int | None = None, n_startup: int | None = None,
                 project: bool = True) -> None:
        self.n_candidates = n_candidates
        self.epochs = epochs
        self.max_batches = max_batches
        self.n_startup = n_startup
        self.project = project

    def _check(self) -> None:
        if self.n_candidates < 1:
            raise ConfigError(f"blackbox: n_candidates must be >= 1, got {self.n_candidates}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"blackbox: epochs must be >= 1, got {self.epochs}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ConfigError(f"blackbox: max_batches must be >= 1, got {self.max_batches}")

    def _project(self, task: SearchTask, dims: dict[str, int]) -> dict[str, int]:
        cands = list(task.candidate_dims)
        # Score = log-dim, flat above the proposal: projection keeps the proposal where it
        # can and takes bytes from where they are cheapest in lost log-dims.
        scores = {n: [math.log2(1 + min(c, d)) for c in cands] for n, d in dims.items()}
        return fit_dims_to_budget(task.schema, task.D, cands, scores, task.budget_bytes,
                                  start=dims, grow=False)

    def search(self, task: SearchTask) -> SearchResult:
        import optuna

        from autodim.task import train_plan

        self._check()
        task.check_budget()
        schema, cands = task.schema, list(task.candidate_dims)
        budget = task.budget_bytes
        config = replace(task.train, seed=task.seed,
                         max_epochs=self.epochs or task.train.max_epochs,
                         limit_train_batches=self.max_batches or task.train.limit_train_batches,
                         patience=max(task.train.patience, 1))
        n_startup = self.n_startup or max(2, self.n_candidates // 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=task.seed, multivariate=True,
                                                 n_startup_trials=n_startup)
        old = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        names = schema.names
        fits = [c for c in cands if budget is None or dims_bytes(schema, task.D, [c] * len(names))
                <= budget]
        study.enqueue_trial({f"dim.{n}": (fits[-1] if fits else cands[0]) for n in names})
        study.enqueue_trial({f"dim.{n}": cands[-1] for n in names})
        cache: dict[tuple[int, ...], float] = {}
        records: list[dict[str, Any]] = []

        def objective(trial) -> float:
            proposal = {n: trial.suggest_categorical(f"dim.{n}", cands) for n in names}
            over = 0 if budget is None else dims_bytes(schema, task.D, proposal) - budget
            trial.set_constraint("bytes_over_budget", float(over))
            dims = proposal
            if over > 0:
                if not self.project:
                    records.append({"proposal": proposal, "dims": None, "val_auc": None,
                                    "bytes": over + budget, "trained": False})
                    return 0.5  # constrained out; the value is not used by TPE's ordering
                dims = self._project(task, proposal)
            trained = train(dims)
            key = tuple(dims[n] for n in names)
            records.append({"proposal": proposal, "dims": dims, "val_auc": cache[key],
                            "bytes": dims_bytes(schema, task.D, dims), "trained": trained})
            return cache[key]

        def train(dims: dict[str, int]) -> bool:
            """Train ``dims`` once (cached by dims); whether it was trained now."""
            key = tuple(dims[n] for n in names)
            if key in cache:
                return False
            plan = self.make_plan(task, dims)
            result = train_plan(plan, task.data, backbone=task.backbone,
                                backbone_kwargs=task.backbone_kwargs, config=config,
                                test=False)
            auc = float(result.metrics["val_auc"])
            cache[key] = auc if math.isfinite(auc) else 0.0
            return True

        try:
            with Stopwatch() as sw:
                study.optimize(objective, n_trials=self.n_candidates)
                feasible = [r for r in records if r["dims"] is not None]
                if not feasible:  # only with project=False and an unlucky draw
                    best_dims = {n: fits[-1] if fits else cands[0] for n in names}
                    best_auc, note = math.nan, None
                else:
                    best = max(feasible, key=lambda r: (r["val_auc"], -r["bytes"]))
                    best_dims, best_auc = best["dims"], best["val_auc"]
                    best_dims, best_auc, note = self._fill(task, best_dims, best_auc,
                                                           records, cache, train)
                plan = self.make_plan(task, best_dims,
                                      metrics={"val_auc": best_auc} if math.isfinite(
                                          best_auc) else {})
        finally:
            optuna.logging.set_verbosity(old)
        history = {"trials": records, "best_dims": best_dims, "best_val_auc": best_auc,
                   "fields": list(names), "candidate_dims": cands,
                   "search_seconds": sw.seconds}
        check_plan(self, task, plan, history, why_less=note)
        return SearchResult(plan=plan, history=history)

    def _fill(self, task: SearchTask, dims: dict[str, int], auc: float,
              records: list[dict[str, Any]], cache: dict[tuple[int, ...], float], train
              ) -> tuple[dict[str, int], float, str | None]:
        """If the best plan leaves more than 5 % of the budget unused, grow it to the budget
        (the fields the search gave the most dims per byte first: the proposal's own
        log-dims, grown where bytes are cheapest) and train that plan as one more candidate;
        it wins only if its validation AUC is not lower (our addition: the budget is used
        where measurement does not say that less is better)."""
        budget = task.budget_bytes
        if budget is None or dims_bytes(task.schema, task.D, dims) >= BUDGET_USE * budget:
            return dims, auc, None
        cands = list(task.candidate_dims)
        scores = {n: [math.log2(1 + c) for c in cands] for n in dims}
        grown = fit_dims_to_budget(task.schema, task.D, cands, scores, budget, start=dims)
        if grown == dims:
            return dims, auc, None
        trained = train(grown)
        key = tuple(grown[n] for n in task.schema.names)
        records.append({"proposal": dims, "dims": grown, "val_auc": cache[key],
                        "bytes": dims_bytes(task.schema, task.D, grown), "trained": trained,
                        "fill": True})
        if cache[key] >= auc:
            return grown, cache[key], None
        return dims, auc, (f"the plan grown to the budget trained to a lower validation AUC "
                           f"({cache[key]:.4f} < {auc:.4f}), so the smaller plan is kept")
