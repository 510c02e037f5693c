"""Optuna's own study plots, made to work on autodim's multi-objective studies.

An autodim study optimises ``(val AUC, bytes)`` and holds baseline trials beside the search
trials, with different parameters per method. Optuna's plots need a single target and a
search space shared by the trials they compare, so these helpers first copy the relevant
trials into a small in-memory single-objective study (one objective; for importances one
method's trials and the parameters they all share), then call
:mod:`optuna.visualization`. Constraints travel with the trials, so the optimisation history
still tells feasible from infeasible trials.

Example:
    >>> res = autodim.load_study("studies/quick.yaml")                # doctest: +SKIP
    >>> optimization_history_figure(res.study).show()                  # doctest: +SKIP
    >>> param_importances_figure(res.study, method="darts").show()     # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

__all__ = ["objective_names", "single_objective_study", "optimization_history_figure",
           "param_importances_figure"]

_LABELS = {"val_auc": "validation AUC", "val_logloss": "validation log loss",
           "bytes": "embedding bytes"}


def objective_names(study: "optuna.Study") -> list[str]:
    """The study's objective names, as the runner recorded them (default
    ``["val_auc", "bytes"]``)."""
    snap = study.user_attrs.get("autodim_space") or {}
    names = list(snap.get("objectives") or ["val_auc", "bytes"])
    return names[: len(study.directions)]


def _index(study: "optuna.Study", objective: int | str) -> int:
    if isinstance(objective, int):
        return objective
    names = objective_names(study)
    if objective not in names:
        raise ValueError(f"objective {objective!r} is not one of the study's {names}")
    return names.index(objective)


def single_objective_study(study: "optuna.Study", *, objective: int | str = "val_auc",
                           method: str | None = None, search_only: bool = True,
                           params: Sequence[str] | None = None) -> "optuna.Study":
    """An in-memory single-objective copy of ``study``'s complete trials.

    Args:
        study: The autodim study (multi-objective).
        objective: Objective kept (name or index).
        method: Keep only trials of this method (user attr ``method``).
        search_only: Leave out the baseline trials.
        params: Parameters each copied trial keeps (default: all of its own).
    """
    import optuna
    from optuna.trial import TrialState

    idx = _index(study, objective)
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        copy = optuna.create_study(direction=study.directions[idx].name.lower(),
                                   storage=optuna.storages.InMemoryStorage())
    finally:
        optuna.logging.set_verbosity(old)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if search_only and a.get("kind", "search") != "search":
            continue
        if method is not None and a.get("method") != method:
            continue
        keep = [p for p in t.params if params is None or p in params]
        copy.add_trial(optuna.trial.create_trial(
            value=t.values[idx], params={p: t.params[p] for p in keep},
            distributions={p: t.distributions[p] for p in keep},
            user_attrs={"method": a.get("method"), "number": t.number},
            constraints=dict(t.constraints) if t.constraints else None))
    return copy


def optimization_history_figure(study: "optuna.Study", *, objective: int | str = "val_auc",
                                search_only: bool = True) -> "go.Figure":
    """Optuna's optimisation history of one objective over the search trials (best value so
    far among feasible trials as a line, infeasible trials greyed)."""
    from optuna.visualization import plot_optimization_history

    idx = _index(study, objective)
    name = objective_names(study)[idx] if idx < len(objective_names(study)) else str(idx)
    sub = single_objective_study(study, objective=idx, search_only=search_only)
    fig = plot_optimization_history(sub, target_name=_LABELS.get(name, name))
    fig.update_layout(title=f"Optimisation history: {_LABELS.get(name, name)} per search trial",
                      template="plotly_white")
    # Trials are counted: integer ticks (plotly would put some at 0.5 for a few trials).
    n = len(sub.trials)
    fig.update_xaxes(title_text="search trial (in order)", tickmode="linear", tick0=0,
                     dtick=max(1, math.ceil(n / 10)))
    fig.update_yaxes(title_text=_LABELS.get(name, name))
    return fig


def param_importances_figure(study: "optuna.Study", *, method: str | None = None,
                             objective: int | str = "val_auc", target_quantile: float = 0.25,
                             min_trials: int = 4) -> "go.Figure | None":
    """Optuna's hyperparameter importances (PED-ANOVA) for one objective.

    PED-ANOVA (Watanabe et al., IJCAI 2023) rates how much each parameter matters for
    reaching the top ``target_quantile`` of trials. It is used rather than Optuna's default
    fANOVA because it needs no scikit-learn and copes with the few trials a study has.

    Importances compare trials that share parameters, so with ``method`` only that
    method's trials count (and only the parameters they all have, with more than one value
    seen); without it, the parameters every search trial shares (``method``, MEmCom
    settings, budget).

    Returns:
        The figure, or ``None`` when fewer than ``min_trials`` trials or fewer than two
        varying parameters are left (nothing to compare).
    """
    import optuna
    from optuna.visualization import plot_param_importances

    sub = single_objective_study(study, objective=objective, method=method)
    trials = sub.get_trials(deepcopy=False)
    if len(trials) < max(2, min_trials):
        return None
    shared = set(trials[0].params)
    for t in trials[1:]:
        shared &= set(t.params)
    varying = sorted(p for p in shared if len({repr(t.params[p]) for t in trials}) > 1)
    if len(varying) < 2:
        return None  # one parameter always gets importance 1: nothing learned
    sub = single_objective_study(study, objective=objective, method=method, params=varying)
    idx = _index(study, objective)
    name = objective_names(study)[idx]
    # A quantile that leaves fewer than two "good" trials says nothing; widen it then.
    quantile = min(0.5, max(target_quantile, 2 / len(trials)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PED-ANOVA is "experimental" in Optuna
        evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
        fig = plot_param_importances(sub, evaluator=evaluator,
                                     target_name=_LABELS.get(name, name))
    what = f"{method} " if method else ""
    fig.update_layout(title=f"Importance of the {what}hyperparameters for "
                            f"{_LABELS.get(name, name)} ({len(trials)} trials)",
                      template="plotly_white")
    fig.update_xaxes(title_text="importance (PED-ANOVA)")
    fig.update_yaxes(title_text="hyperparameter")
    return fig
