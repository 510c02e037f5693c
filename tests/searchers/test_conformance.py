"""Conformance suite: every registered searcher honours the contract on tiny data.

A new searcher is checked here the day it is registered (add its name to ``EXPECTED``): its
plan validates against the schema, fits the byte budget, is the same under the same seed,
its history holds the keys the plots need, and its declared capabilities hold. Each
searcher runs twice (the same seed twice); every check reads those two runs.
"""

from __future__ import annotations

import inspect

import pytest

from autodim.budget import full_bytes
from autodim.data.datamodule import CTRDataModule
from autodim.searchers import Searcher, SearchTask, create_searcher, get_searcher, list_searchers
from autodim.task import TrainConfig

EXPECTED = ("autodim", "blackbox", "darts", "magprune", "optembed", "pep", "sseds")
SEED = 3


def _task(data, seed: int = SEED, ratio: float = 6.0) -> SearchTask:
    dm = CTRDataModule(data, batch_size=256, seed=seed)
    budget = int(full_bytes(data.schema, 8) / ratio)
    return SearchTask(data=dm, D=8, budget_bytes=budget, candidate_dims=(0, 1, 2, 4, 8),
                      train=TrainConfig(max_epochs=2, batch_size=256, lr=3e-3, seed=seed),
                      seed=seed)


@pytest.fixture(scope="module")
def runs(tiny_data):
    """Per searcher name, ``(task, searcher, [result, result])``: two runs, one seed."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            settings = dict(get_searcher(name).quick_settings)
            task = _task(tiny_data)
            searcher = create_searcher(name, **settings)
            first = searcher.search(task)
            second = create_searcher(name, **settings).search(_task(tiny_data))
            cache[name] = (task, searcher, [first, second])
        return cache[name]

    return get


def test_registry_holds_exactly_the_builtin_searchers():
    assert tuple(list_searchers()) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_plan_validates_and_fits_budget(name, runs, tiny_data):
    task, _, (result, _) = runs(name)
    plan = result.plan
    plan.validate()
    plan.check_schema(tiny_data.schema)
    assert plan.D == task.D
    assert plan.num_bytes() <= task.budget_bytes
    assert plan.searcher["name"] == name
    assert plan.budget_bytes == task.budget_bytes
    assert plan.build().num_bytes() == plan.num_bytes()


@pytest.mark.parametrize("name", EXPECTED)
def test_same_seed_same_plan(name, runs):
    _, _, (a, b) = runs(name)
    assert a.plan.to_dict()["fields"] == b.plan.to_dict()["fields"]


@pytest.mark.parametrize("name", EXPECTED)
def test_history_holds_what_the_plots_need(name, runs):
    cls = get_searcher(name)
    _, _, (result, _) = runs(name)
    missing = [k for k in cls.history_keys if k not in result.history]
    assert not missing, f"{name} history lacks {missing}"
    assert result.history.get("search_seconds", 0) > 0


@pytest.mark.parametrize("name", EXPECTED)
def test_declared_capabilities_hold(name, runs):
    cls = get_searcher(name)
    assert issubclass(cls, Searcher) and cls.name == name
    for attr in ("retrain", "accepts_pretrained", "baseline", "inflatable"):
        assert isinstance(getattr(cls, attr), bool), f"{name}.{attr} is not declared as a bool"
    # `accepts_pretrained` is what callers read; it must agree with the signature.
    takes = "pretrained" in inspect.signature(cls.search).parameters
    assert takes == cls.accepts_pretrained
    _, searcher, (result, _) = runs(name)
    if cls.retrain:
        assert searcher.model_ is None  # nothing to hand off: the plan is retrained
    else:
        # Not retrained: the search hands over its model and measured the plan itself.
        assert searcher.model_ is not None
        assert {"val_auc", "test_auc"} <= set(result.history["eval"])
