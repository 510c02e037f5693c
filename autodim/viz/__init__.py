"""Figures (plotly) and the HTML report of a study.

Every figure function takes plain data (plans, searcher history dicts, a trials DataFrame,
an Optuna study) and returns a ``plotly.graph_objects.Figure`` with titled axes:

- :mod:`autodim.viz.pareto`: AUC vs bytes of every trial (the study's Pareto front).
- :mod:`autodim.viz.plans`: per-field dims of plans side by side (planted ranks overlaid on
  synthetic data) and where a plan's bytes go.
- :mod:`autodim.viz.history`: a searcher's dynamics (α, sparsity, saliency, evolution).
- :mod:`autodim.viz.trials`: Optuna's optimisation history and parameter importances.
- :mod:`autodim.viz.report`: one self-contained HTML page with all of the above.

The names below are imported on first use, so neither ``import autodim`` nor
``import autodim.viz`` imports plotly.

Example:
    >>> import autodim.viz as viz
    >>> res = autodim.load_study("studies/quick.yaml")          # doctest: +SKIP
    >>> viz.study_pareto_figure(res).show()                      # doctest: +SKIP
    >>> viz.write_report(res, "report.html")                     # doctest: +SKIP
"""

from __future__ import annotations

from autodim._lazy import lazy_attributes

_LAZY: dict[str, str] = {
    # the study's front
    "pareto_figure": "autodim.viz.pareto",
    "pareto_frame": "autodim.viz.pareto",
    "pareto_figure_from_frame": "autodim.viz.pareto",
    "study_pareto_figure": "autodim.viz.pareto",
    "write_pareto_html": "autodim.viz.pareto",
    # plans
    "planted_ranks": "autodim.viz.plans",
    "plan_dims_figure": "autodim.viz.plans",
    "field_bytes_figure": "autodim.viz.plans",
    "field_bytes_treemap": "autodim.viz.plans",
    # searcher histories
    "alpha_figure": "autodim.viz.history",
    "supernet_budget_figure": "autodim.viz.history",
    "sparsity_figure": "autodim.viz.history",
    "saliency_figure": "autodim.viz.history",
    "evolution_figure": "autodim.viz.history",
    "blackbox_figure": "autodim.viz.history",
    "density_figure": "autodim.viz.history",
    "history_figures": "autodim.viz.history",
    "load_trial_history": "autodim.viz.history",
    # Optuna's plots
    "optimization_history_figure": "autodim.viz.trials",
    "param_importances_figure": "autodim.viz.trials",
    # the report
    "build_report": "autodim.viz.report",
    "write_report": "autodim.viz.report",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__, globals())
