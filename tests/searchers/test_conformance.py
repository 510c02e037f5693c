"""Conformance suite: every registered searcher honours the contract on tiny data.

A new searcher is checked here the day it is registered: its plan validates against the
schema, fits the byte budget, is the same under the same seed, and its history holds the
keys the plots need.
"""

from __future__ import annotations

import pytest

from autodim.budget import full_bytes
from autodim.data.datamodule import CTRDataModule
from autodim.searchers import SearchTask, create_searcher, get_searcher, list_searchers
from autodim.task import TrainConfig

SEARCHERS = list_searchers()


def _task(data, seed: int = 0, ratio: float = 6.0) -> SearchTask:
    dm = CTRDataModule(data, batch_size=256, seed=seed)
    budget = int(full_bytes(data.schema, 8) / ratio)
    return SearchTask(data=dm, D=8, budget_bytes=budget, candidate_dims=(1, 2, 4, 8),
                      train=TrainConfig(max_epochs=2, batch_size=256, lr=3e-3, seed=seed),
                      seed=seed)


def _run(name: str, data, seed: int = 0):
    cls = get_searcher(name)
    return create_searcher(name, **dict(cls.quick_settings)).search(_task(data, seed))


def test_registry_has_the_builtin_searchers():
    assert SEARCHERS, "no searcher is registered"


@pytest.mark.parametrize("name", SEARCHERS)
def test_plan_validates_and_fits_budget(name, tiny_data):
    task = _task(tiny_data)
    result = create_searcher(name, **dict(get_searcher(name).quick_settings)).search(task)
    plan = result.plan
    plan.validate()
    plan.check_schema(tiny_data.schema)
    assert plan.D == task.D
    assert plan.num_bytes() <= task.budget_bytes
    assert plan.searcher["name"] == name
    assert plan.budget_bytes == task.budget_bytes
    assert plan.build().num_bytes() == plan.num_bytes()


@pytest.mark.parametrize("name", SEARCHERS)
def test_same_seed_same_plan(name, tiny_data):
    a, b = _run(name, tiny_data, seed=3), _run(name, tiny_data, seed=3)
    assert a.plan.to_dict()["fields"] == b.plan.to_dict()["fields"]


@pytest.mark.parametrize("name", SEARCHERS)
def test_history_holds_what_the_plots_need(name, tiny_data):
    cls = get_searcher(name)
    result = _run(name, tiny_data)
    missing = [k for k in cls.history_keys if k not in result.history]
    assert not missing, f"{name} history lacks {missing}"
    assert result.history.get("search_seconds", 0) > 0
