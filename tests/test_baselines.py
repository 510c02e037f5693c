from __future__ import annotations

import pytest

from autodim.baselines import BASELINES, baseline_plan, mde_plan, uniform_plan
from autodim.budget import dims_bytes, full_bytes
from autodim.errors import BudgetError


@pytest.mark.parametrize("ratio", [4, 10])
@pytest.mark.parametrize("name", sorted(set(BASELINES) - {"full"}))
def test_baselines_fit_the_budget_and_build(name, ratio, tiny_data):
    schema = tiny_data.schema
    budget = full_bytes(schema, 16) // ratio
    plan = baseline_plan(name, schema, 16, budget)
    assert plan.num_bytes() <= budget
    assert plan.num_bytes() >= 0.5 * budget
    assert plan.build().num_bytes() == plan.num_bytes()
    assert plan.searcher["name"] == name


def test_uniform_takes_the_largest_dim_that_fits(tiny_data):
    s = tiny_data.schema
    budget = dims_bytes(s, 16, [5] * s.num_fields) + 10
    assert set(uniform_plan(s, 16, budget).dims.values()) == {5}


def test_mde_gives_small_fields_more_dims(tiny_data):
    s = tiny_data.schema
    plan = mde_plan(s, 16, full_bytes(s, 16) // 6)
    by_size = sorted(s.fields, key=lambda f: f.vocab_size)
    dims = [plan.dims[f.name] for f in by_size]
    assert dims == sorted(dims, reverse=True) and dims[0] > dims[-1]


def test_too_small_budget_names_the_minimum(tiny_data):
    with pytest.raises(BudgetError, match="below its smallest plan"):
        uniform_plan(tiny_data.schema, 16, 100)
