"""Soft-selection searchers: ``darts`` (AutoEmb / DARTS) and ``autodim`` (AutoDim).

Both train a supernet (:mod:`autodim.searchers._supernet`) in which every field holds all
candidate dims at once, each lifted to ``D`` by its own linear map + BatchNorm, mixed by
architecture weights α. Bilevel optimisation as in DARTS (Liu et al., ICLR 2019,
Algorithm 1): the weights (tables, lifts, backbone) step on training batches, α steps on
validation batches, one validation batch per training step, cycling the validation split.

- ``darts``: α = softmax(logits) per field, or per frequency group of a field (AutoEmb,
  Zhao et al. ICDM 2021, gives popular and long-tail ids their own dims); separate tables
  per candidate by default; first-order by default, ``second_order=True`` uses DARTS eq. 7-8.
- ``autodim``: AutoDim (Zhao et al., WWW 2021): one D-wide table per field whose first
  ``d_k`` columns are candidate ``k`` (weight sharing, §2.2.1; separate tables optional),
  Gumbel-softmax over α (eq. 5) with temperature ``τ = max(0.01, 1 − decay·t)``, the decay
  set so that τ reaches 0.01 at the last planned step (the paper's 5e-5 is an option).

Budget and plan (this tool's addition; upstream cannot aim at a size and reads the plan off
argmax α): the α loss carries a Lagrangian term ``λ (E[bytes] − B) / B`` on the expected
bytes of the plan, λ adapted by dual ascent, and the plan is chosen by the exact
multiple-choice knapsack over the plan's bytes on a learned value per (slot, candidate):
by default the validation-loss gain measured on the trained supernet (``plan_from``). See
:mod:`autodim.searchers._supernet` for the details and why.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Mapping

import numpy as np

from autodim.data.datamodule import TensorBatches
from autodim.errors import ConfigError
from autodim.searchers._supernet import (
    PLAN_RULES,
    BilevelSearch,
    BilevelSettings,
    SupernetEmbedding,
    alpha_values,
    candidate_gains,
    frequency_group_rows,
    knapsack_slots,
    project_to_budget,
    significant_values,
    slot_bytes_of,
    slot_plan_fields,
    uniform_alpha_dims,
)
from autodim.searchers.base import Searcher, SearchResult, SearchTask, Stopwatch, check_plan
from autodim.searchers.registry import register_searcher
from autodim.task import evaluate, make_trainer, seed_everything

__all__ = ["DartsSearcher", "AutoDimSearcher"]


class _SoftSelectionSearcher(Searcher):
    """The search flow DARTS and AutoDim share; subclasses fix the supernet's flavour."""

    history_keys: ClassVar[tuple[str, ...]] = (
        "alpha", "steps", "expected_bytes", "multiplier", "candidate_dims", "search_seconds")
    quick_settings: ClassVar[Mapping[str, Any]] = {"epochs": 1, "log_every": 5}

    # Set by the subclasses' constructors.
    epochs: int | None
    arch_lr: float
    arch_every: int
    warmup_epochs: float
    weight_sharing: bool
    penalty: bool
    multiplier_lr: float
    log_every: int
    warm_start: str
    plan_from: str
    width_test: bool
    second_order: bool
    xi: float | None

    def _check_settings(self) -> None:
        if self.plan_from not in PLAN_RULES:
            raise ConfigError(f"{self.name}: plan_from must be one of {list(PLAN_RULES)}, "
                              f"got {self.plan_from!r}")
        if self.warm_start not in ("none", "exact", "initial"):
            raise ConfigError(f"{self.name}: warm_start must be 'none', 'exact' or 'initial', "
                              f"got {self.warm_start!r}")

    def _bilevel_settings(self, task: SearchTask) -> BilevelSettings:
        return BilevelSettings(
            lr=task.train.lr, weight_decay=task.train.weight_decay, arch_lr=self.arch_lr,
            arch_every=self.arch_every, budget_bytes=task.budget_bytes, penalty=self.penalty,
            multiplier_lr=self.multiplier_lr, log_every=self.log_every,
            max_steps=task.train.max_steps, second_order=self.second_order, xi=self.xi)

    def _group_rows(self, task: SearchTask) -> list[list[int]]:
        return [[f.vocab_size] for f in task.schema.fields]

    def search(self, task: SearchTask) -> SearchResult:
        """Train the supernet, read the plan off α and fit it to ``task.budget_bytes``."""
        self._check_settings()
        task.check_budget()
        schema, cfg = task.schema, task.train
        with Stopwatch() as sw:
            seed_everything(task.seed)
            group_rows = self._group_rows(task)
            embedding = SupernetEmbedding(
                schema, task.D, task.candidate_dims, weight_sharing=self.weight_sharing,
                group_rows=group_rows, sparse_threshold=cfg.sparse_threshold)
            # Own loaders, seeded from the task: the datamodule's cached loaders carry an
            # epoch counter across runs, which would break "same seed, same plan".
            train = TensorBatches(task.data.data.train, cfg.batch_size, shuffle=True,
                                  seed=task.seed)
            val = TensorBatches(task.data.data.val, cfg.batch_size, shuffle=True,
                                seed=task.seed + 1)
            settings = self._bilevel_settings(task)
            epochs = self.epochs or cfg.max_epochs
            # Warm-up is capped at half the search so that α always gets steps.
            settings.warmup_steps = min(int(round(self.warmup_epochs * len(train))),
                                        epochs * len(train) // 2)
            planned = epochs * len(train)
            settings.planned_steps = (min(planned, cfg.max_steps) if cfg.max_steps >= 0
                                      else planned)
            module = BilevelSearch(embedding, task.make_backbone(), val, settings)
            trainer = make_trainer(cfg, max_epochs=epochs, max_steps=-1,
                                   limit_val_batches=0)
            trainer.fit(module, train_dataloaders=train)

            probs = embedding.probs().detach().double().cpu().numpy()
            argmax = embedding.argmax_dims()
            tau = module.tau() if settings.gumbel else None
            values = fill = gains = informative = None
            if self.plan_from == "projection":  # the old rule: argmax α, projected
                slot_dims = project_to_budget(schema, task.D, task.candidate_dims, group_rows,
                                              probs, task.budget_bytes)
            else:
                if self.plan_from == "alpha":
                    values = alpha_values(probs)
                else:
                    gains, mean, beats = candidate_gains(
                        embedding, module.backbone,
                        TensorBatches(task.data.data.val, task.data.eval_batch_size), tau=tau,
                        with_mean=True, with_pairs=True)
                    # The plan is retrained from scratch, where a wider table can learn all
                    # a narrower one can: a candidate is worth at least the best narrower
                    # one (a lower measured gain reflects how the supernet trained it).
                    values = np.maximum.accumulate(gains, axis=1)
                    fill = np.maximum.accumulate(mean, axis=1)
                    if self.width_test:
                        values = significant_values(values, beats)
                        fill = significant_values(fill, beats)
                    # A slot none of whose wider candidates beats its smallest one by two
                    # standard errors shows no signal: it keeps the knapsack's (cheapest)
                    # choice instead of taking spare bytes (see ``_fill``).
                    informative = values[:, -1] > values[:, 0]
                slot_dims = knapsack_slots(schema, task.D, task.candidate_dims, group_rows,
                                           values, task.budget_bytes, fill=fill,
                                           informative=informative)
            uniform = uniform_alpha_dims(schema, task.D, task.candidate_dims, group_rows,
                                         task.budget_bytes)
            differs = [n for n, a, b in zip(embedding.slot_names, slot_dims, uniform) if a != b]
            if not differs:
                warnings.warn(f"{self.name}: the searched plan equals the uniform-α plan (what "
                              "bytes alone give): the search did not change the allocation",
                              stacklevel=2)
            dims, groups = slot_plan_fields(schema, group_rows, slot_dims)
            # The supernet's own validation metrics (softmax(α) mixture, running BN stats).
            seen = evaluate(module, TensorBatches(task.data.data.val, task.data.eval_batch_size))
            plan = self.make_plan(task, dims, metrics={"supernet_val_auc": seen["auc"],
                                                       "supernet_val_logloss": seen["logloss"]})
            for fp in plan.fields:
                if fp.name in groups:
                    fp.frequency_groups = groups[fp.name]
            plan.validate()
            warm = (None if self.warm_start == "none" else
                    embedding.warm_start(slot_dims, tau=tau, scale=self.warm_start))

        history = module.history
        if not module.settings.gumbel:
            history.pop("tau")
        history.update(
            candidate_dims=list(task.candidate_dims), search_seconds=sw.seconds,
            slots=embedding.slot_names,
            argmax_dims=dict(zip(embedding.slot_names, argmax)),
            argmax_bytes=slot_bytes_of(schema, task.D, group_rows, argmax),
            final_alpha={n: [round(float(v), 5) for v in p]
                         for n, p in zip(embedding.slot_names, probs)},
            dims=plan.dims, plan_bytes=plan.num_bytes(), budget_bytes=task.budget_bytes,
            total_steps=module.step_count,
            supernet_val_auc=seen["auc"], plan_from=self.plan_from,
            slot_dims=dict(zip(embedding.slot_names, map(int, slot_dims))),
            uniform_alpha_dims=dict(zip(embedding.slot_names, map(int, uniform))),
            differs_from_uniform_alpha=differs)
        why_less = None
        if gains is not None:  # the measured gain per slot and candidate (lower bound, mean)
            idle = [n for n, i in zip(embedding.slot_names, informative) if not i]
            if idle:
                why_less = (f"slots {idle} keep their smallest candidate: none of their wider "
                            "candidates beats it by two standard errors of the validation "
                            "loss, and width given to a field without signal adds noise to "
                            "every pair it enters once retrained (see _supernet._fill)")
            history.update(
                uninformative_slots=idle,
                candidate_gain={n: [round(float(v), 6) for v in g]
                                for n, g in zip(embedding.slot_names, gains)},
                candidate_gain_mean={n: [round(float(v), 6) for v in g]
                                     for n, g in zip(embedding.slot_names, mean)})
        if values is not None:
            history["plan_values"] = {n: [round(float(v), 6) for v in row] for n, row in
                                      zip(embedding.slot_names, np.asarray(values))}
        if embedding.grouped:
            history["frequency_groups"] = {f.name: g for f, g in zip(schema.fields, group_rows)}
        check_plan(self, task, plan, history, why_less=why_less)
        return SearchResult(plan=plan, history=history, warm_start=warm)


_PLAN_DOC = """
        plan_from: How the plan is read off the trained supernet, always by the exact
            multiple-choice knapsack over the plan's bytes (:func:`autodim.budget.
            knapsack_dims`): ``"gain"`` maximises the measured validation-loss gain of each
            (slot, candidate) on the trained supernet (:func:`~autodim.searchers._supernet.
            candidate_gains`); ``"alpha"`` maximises ``Σ log α``; ``"projection"`` is the old
            rule kept as a fallback: argmax α projected onto the budget by
            :func:`~autodim.budget.fit_dims_to_budget` (greedy per byte, so bytes rather than
            α decide most of the plan). The history records how the plan differs from the
            uniform-α plan (``differs_from_uniform_alpha``) and a warning says when it does
            not.
        width_test: With ``plan_from="gain"``, a wider candidate is worth more than a
            narrower one only where the paired test says it lowers the validation loss by
            two standard errors (:func:`~autodim.searchers._supernet.significant_values`);
            ties leave the width to the value-neutral fill, which spreads it evenly. On the
            decoupled preset (4x, 3 seeds) darts 0.7606 → 0.7727 and autodim 0.7422 →
            0.7708; ``False``: the raw gains decide.
        warm_start: ``"none"`` (default: retrain from scratch), ``"exact"`` (the compact
            model's embedding output equals the supernet's path through the chosen
            candidates) or ``"initial"`` (that fold rescaled to a fresh model's scale)."""


@register_searcher("darts")
class DartsSearcher(_SoftSelectionSearcher):
    """AutoEmb / DARTS soft selection over candidate dims, budget-aware.

    Args:
        epochs: Search epochs over the training split (``None``: ``task.train.max_epochs``).
        arch_lr: Adam learning rate of α (betas (0.5, 0.999) as in DARTS). DARTS uses 3e-4
            over tens of thousands of α steps; a search here makes hundreds.
        arch_every: One α step every this many weight steps.
        warmup_epochs: Epochs of weight steps before the first α step (α judged on
            untrained weights mostly reads initialisation noise); at most half the search.
        weight_sharing: Candidates share one ``max(d)``-wide table per field (AutoDim style);
            ``False`` (default, as in AutoEmb) gives each candidate its own table.
        frequency_groups: Contiguous id ranges per field (ids are in descending frequency
            order) with their own α and own dim in the plan; 1 = per field.
        second_order: DARTS' second-order approximation (eq. 7-8): ~3x the cost of an α step.
        xi: Virtual-step learning rate of the second-order term (``None``: the weights' lr).
        penalty: Use the expected-bytes Lagrangian during the search (otherwise the budget
            is only met when the plan is chosen).
        multiplier_lr: Dual-ascent step of the Lagrange multiplier λ (per α step, times the
            budget violation relative to the budget; λ is in units of the validation
            gradient's scale).
        log_every: Record α, expected bytes and λ every this many steps.
    """ + _PLAN_DOC + """

    Example:
        >>> from autodim.searchers import create_searcher
        >>> searcher = create_searcher("darts", epochs=2, frequency_groups=2)
    """

    def __init__(self, *, epochs: int | None = None, arch_lr: float = 0.03,
                 arch_every: int = 1, warmup_epochs: float = 1.0,
                 weight_sharing: bool = False, frequency_groups: int = 1,
                 second_order: bool = False, xi: float | None = None, penalty: bool = True,
                 multiplier_lr: float = 0.05, log_every: int = 10, plan_from: str = "gain",
                 width_test: bool = True, warm_start: str = "none"):
        self.epochs, self.arch_lr, self.arch_every = epochs, arch_lr, arch_every
        self.width_test = width_test
        self.warmup_epochs = warmup_epochs
        self.weight_sharing, self.frequency_groups = weight_sharing, frequency_groups
        self.second_order, self.xi = second_order, xi
        self.penalty, self.multiplier_lr = penalty, multiplier_lr
        self.log_every, self.plan_from, self.warm_start = log_every, plan_from, warm_start

    def _group_rows(self, task: SearchTask) -> list[list[int]]:
        return [frequency_group_rows(f, self.frequency_groups) for f in task.schema.fields]


@register_searcher("autodim")
class AutoDimSearcher(_SoftSelectionSearcher):
    """AutoDim (Zhao et al., WWW 2021): Gumbel-softmax over candidate dims, budget-aware.

    Args:
        epochs, arch_lr, arch_every, warmup_epochs, second_order, xi, penalty,
            multiplier_lr, log_every: As for :class:`DartsSearcher`.
        weight_sharing: Candidate ``k`` = the first ``d_k`` columns of one table per field
            (default, AutoDim §2.2.1); ``False``: a table per candidate.
        tau_decay, tau_min: Temperature schedule ``τ = max(tau_min, 1 − tau_decay · t)``, t the
            training step. ``tau_decay=None`` (default) anneals to ``tau_min`` at the last
            planned step; AutoDim §2.2.2's own rate is ``tau_decay=5e-5`` (it needs ~20k
            steps to anneal, see :meth:`BilevelSearch.tau`). Evaluation uses the noise-free
            ``softmax(logits / τ)``.""" + _PLAN_DOC + """

    Example:
        >>> from autodim.searchers import create_searcher
        >>> searcher = create_searcher("autodim", epochs=2, tau_decay=1e-3)
    """

    history_keys: ClassVar[tuple[str, ...]] = _SoftSelectionSearcher.history_keys + ("tau",)

    def __init__(self, *, epochs: int | None = None, arch_lr: float = 0.03,
                 arch_every: int = 1, warmup_epochs: float = 1.0,
                 weight_sharing: bool = True, tau_decay: float | None = None,
                 tau_min: float = 0.01, second_order: bool = False, xi: float | None = None,
                 penalty: bool = True, multiplier_lr: float = 0.05, log_every: int = 10,
                 plan_from: str = "gain", width_test: bool = True, warm_start: str = "none"):
        self.epochs, self.arch_lr, self.arch_every = epochs, arch_lr, arch_every
        self.width_test = width_test
        self.warmup_epochs = warmup_epochs
        self.weight_sharing, self.tau_decay, self.tau_min = weight_sharing, tau_decay, tau_min
        self.second_order, self.xi = second_order, xi
        self.penalty, self.multiplier_lr = penalty, multiplier_lr
        self.log_every, self.plan_from, self.warm_start = log_every, plan_from, warm_start

    def _bilevel_settings(self, task: SearchTask) -> BilevelSettings:
        s = super()._bilevel_settings(task)
        s.gumbel, s.tau_decay, s.tau_min = True, self.tau_decay, self.tau_min
        return s
