"""Plans come from what a searcher learned, not from bytes per field.

On decoupled planted data (large signal fields of high rank, small and medium noise fields)
the vocabulary size carries no hint of the rank, so a plan that equals the bytes-only plan
(every candidate valued alike, :func:`autodim.searchers.base.bytes_only_dims`) has ignored
what the search learned. Every searcher's plan must differ from it, unless the searcher
declares itself a baseline.
"""

from __future__ import annotations

import pytest

from autodim.budget import full_bytes
from autodim.data.datamodule import CTRDataModule
from autodim.searchers import SearchTask, create_searcher, get_searcher, list_searchers
from autodim.searchers.base import bytes_only_dims
from autodim.task import TrainConfig

D = 8
# Rank-informed allocation and vocabulary size point in opposite directions here.
DECOUPLED = {"cardinalities": [600, 400, 300, 20, 40, 60, 80], "ranks": [8, 8, 4, 0, 0, 0, 1]}


@pytest.fixture(scope="module")
def decoupled():
    from autodim.data.synthetic import make_planted

    return make_planted("tiny", rows=12_000, seed=2, first_order=0.0, **DECOUPLED)


def _task(data, ratio: float) -> SearchTask:
    dm = CTRDataModule(data, batch_size=256, seed=0)
    return SearchTask(data=dm, D=D, budget_bytes=int(full_bytes(data.schema, D) / ratio),
                      candidate_dims=(0, 1, 2, 4, 8),
                      train=TrainConfig(max_epochs=2, batch_size=256, lr=3e-3, seed=0), seed=0)


SEARCHERS = [n for n in list_searchers() if not get_searcher(n).baseline]


def test_baselines_declare_themselves():
    assert [n for n in list_searchers() if get_searcher(n).baseline] == ["magprune"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SEARCHERS)
def test_plan_differs_from_the_bytes_only_plan(name, decoupled):
    task = _task(decoupled, ratio=4.0)
    ref = bytes_only_dims(task)
    assert ref is not None
    result = create_searcher(name, **dict(get_searcher(name).quick_settings)).search(task)
    assert result.plan.dims != ref, f"{name}: {result.plan.dims} is the bytes-only plan"
    assert not any("bytes-only" in w for w in result.history.get("warnings", []))
