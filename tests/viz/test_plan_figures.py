"""Plan figures: dims side by side with planted ranks, bytes per field."""

from __future__ import annotations

import pytest

from autodim.baselines import baseline_plan
from autodim.budget import full_bytes, parse_budget
from autodim.plan import DimensionPlan
from autodim.viz.plans import (
    as_plans,
    field_bytes_figure,
    field_bytes_treemap,
    plan_dims_figure,
    planted_ranks,
)

D = 8


@pytest.fixture(scope="module")
def plans(tiny_data):
    schema = tiny_data.schema
    budget = parse_budget("6x", full_bytes(schema, D))
    return {b: baseline_plan(b, schema, D, budget) for b in ("uniform", "mde")}


def _axis_titles(fig):
    return fig.layout.xaxis.title.text, fig.layout.yaxis.title.text


def test_dims_figure_has_one_bar_trace_per_plan_and_the_planted_ranks(plans, tiny_data):
    fig = plan_dims_figure(plans, planted=tiny_data)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == ["uniform", "mde"]
    for t in bars:
        assert list(t.x) == tiny_data.schema.names
        assert list(t.y) == [plans[t.name][n].dim for n in t.x]
    (planted,) = [t for t in fig.data if t.name == "planted rank"]
    ranks = tiny_data.meta["planted_ranks"]
    assert list(planted.x) == tiny_data.schema.names
    assert list(planted.y) == [min(ranks[n], D) for n in planted.x]
    assert all(_axis_titles(fig))


def test_dims_figure_without_planted_ranks_and_from_plan_json(plans):
    fig = plan_dims_figure(plans["mde"].to_dict())
    assert [t.name for t in fig.data] == ["mde"]
    assert all(_axis_titles(fig))


def test_effective_dims_are_floats_stored_per_row(tiny_data):
    schema = tiny_data.schema
    plan = DimensionPlan.from_dims(schema, D, {n: 4 for n in schema.names})
    f = plan.fields[3]
    half = f.vocab_size // 2
    f.frequency_groups = [{"rows": half, "dim": 4}, {"rows": f.vocab_size - half, "dim": 0}]
    plan.validate()
    fig = plan_dims_figure(plan, effective=True)
    y = list(fig.data[0].y)
    nbytes = plan.field_bytes()
    assert y == pytest.approx([nbytes[fp.name] / (4 * fp.vocab_size) for fp in plan.fields])
    # half the rows at dim 4 (plus a small projection): about 2 floats per row
    assert 2 <= y[3] < 2.2 and 4 <= y[0] < 6


def test_planted_ranks_sources(tiny_data, fake_study):
    ranks = tiny_data.meta["planted_ranks"]
    assert planted_ranks(tiny_data) == ranks
    assert planted_ranks(tiny_data.schema) == ranks
    assert planted_ranks(ranks) == ranks
    assert planted_ranks(None) is None
    result, _ = fake_study
    # The study's config names synthetic:tiny: the preset's ranks, no data drawn.
    assert planted_ranks(result) == ranks


def test_as_plans_labels_duplicates(plans):
    named = as_plans([plans["mde"], plans["mde"], plans["uniform"]])
    assert list(named) == ["mde", "mde (2)", "uniform"]


def test_bytes_figure_stacks_each_plans_field_bytes(plans, tiny_data):
    fig = field_bytes_figure(plans)
    assert [t.name for t in fig.data] == tiny_data.schema.names
    assert fig.layout.barmode == "stack"
    for i, label in enumerate(["uniform", "mde"]):
        assert sum(t.x[i] for t in fig.data) == plans[label].num_bytes()
    assert all(_axis_titles(fig))
    share = field_bytes_figure(plans, share=True)
    assert sum(t.x[0] for t in share.data) == pytest.approx(100.0)


def test_treemap_tiles_are_the_fields_bytes(plans):
    plan = plans["mde"]
    fig = field_bytes_treemap(plan)
    (tm,) = fig.data
    nonzero = {n: b for n, b in plan.field_bytes().items() if b}
    assert dict(zip(tm.labels[1:], tm.values[1:])) == nonzero
    assert tm.values[0] == plan.num_bytes()
