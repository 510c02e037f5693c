"""autodim: budget-constrained embedding-dimension search for CTR models.

The public names below are imported on first use, so ``import autodim`` stays fast (no
torch, Lightning or Optuna until a name that needs them is touched).

Example:
    >>> import autodim
    >>> res = autodim.search("studies/quick.yaml")       # doctest: +SKIP
    >>> res.front                                         # doctest: +SKIP
    >>> plan = res.plan(res.best_under("10x"))            # doctest: +SKIP
    >>> model = plan.build_model("fm")                    # doctest: +SKIP
"""

from __future__ import annotations

from autodim._lazy import lazy_attributes
from autodim.errors import AutodimError, BudgetError, ConfigError, DataError, PlanError

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    # studies (Optuna around the searchers)
    "search": "autodim.api",
    "load_study": "autodim.api",
    "search_plan": "autodim.api",
    "StudyConfig": "autodim.study.config",
    "StudyResult": "autodim.study.result",
    # the plan and the compact model
    "DimensionPlan": "autodim.plan",
    "build_model": "autodim.export",
    "load_model": "autodim.export",
    "baseline_plan": "autodim.baselines",
    "parse_budget": "autodim.budget",
    "tune_allocator": "autodim.runtime",
    # data
    "load_data": "autodim.data",
    # searchers
    "Searcher": "autodim.searchers",
    "SearchTask": "autodim.searchers",
    "SearchResult": "autodim.searchers",
    "register_searcher": "autodim.searchers",
    "list_searchers": "autodim.searchers",
    "get_searcher": "autodim.searchers",
    "create_searcher": "autodim.searchers",
}

__all__ = [
    "AutodimError", "BudgetError", "ConfigError", "DataError", "DimensionPlan", "PlanError",
    "SearchResult", "SearchTask", "Searcher", "StudyConfig", "StudyResult", "__version__",
    "baseline_plan", "build_model", "create_searcher", "get_searcher", "list_searchers",
    "load_data", "load_model", "load_study", "parse_budget", "register_searcher", "search",
    "search_plan", "tune_allocator",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__, globals())
