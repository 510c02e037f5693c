"""Optuna studies around the searchers: study files, trials, storage, resume, results.

Data flow of one study (see ARCHITECTURE.md)::

    studies/*.yaml + search_spaces/*.yaml --config--> StudyConfig
        --runner--> optuna.Study (journal file or any storage URL; resumable)
            each trial --objective--> searcher -> compact plan (+ MEmCom) -> retrain
        --result--> StudyResult (front, trials_dataframe, plan, best_under, model, export)

Modules: :mod:`~autodim.study.config` (the study file), :mod:`~autodim.study.space` (the
search-space file), :mod:`~autodim.study._validate` (shared checks),
:mod:`~autodim.study.compact` (the MEmCom decision), :mod:`~autodim.study.objective` (one
trial, the pruning rule), :mod:`~autodim.study.storage` (storage, heartbeat, recovery),
:mod:`~autodim.study.runner` (:func:`run_study`), :mod:`~autodim.study.result`.
Importing this package does not import torch; the runner and objective do.
"""

from __future__ import annotations

from autodim._lazy import lazy_attributes
from autodim.study.config import SearchSpace, StudyConfig, load_search_space, load_study_config

__all__ = ["StudyConfig", "SearchSpace", "load_study_config", "load_search_space",
           "run_study", "StudyResult", "load_study", "compact_plan"]

_LAZY = {
    "run_study": "autodim.study.runner",
    "StudyResult": "autodim.study.result",
    "load_study": "autodim.study.result",
    "compact_plan": "autodim.study.compact",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__, globals())
