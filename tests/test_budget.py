from __future__ import annotations

import pytest

from autodim.budget import dims_bytes, fit_dims_to_budget, parse_budget
from autodim.data.schema import Field, Schema
from autodim.errors import BudgetError, ConfigError

SCHEMA = Schema([Field("a", vocab_size=1000), Field("b", vocab_size=100),
                 Field("c", vocab_size=10)])


@pytest.mark.parametrize("text, expected", [
    ("10x", 1000), ("2.5x", 4000), ("350000", 350000), (350000, 350000), ("2MB", 2_000_000),
    ("1.5MiB", int(1.5 * 2**20)), ("3 kB", 3000), ("12b", 12),
])
def test_parse_budget(text, expected):
    assert parse_budget(text, 10_000) == expected


@pytest.mark.parametrize("bad", ["ten", "0.5x", "-3", "0", "5 parsecs"])
def test_parse_budget_rejects(bad):
    with pytest.raises(ConfigError):
        parse_budget(bad, 10_000)


def test_fit_dims_moves_the_least_valued_bytes_first():
    cands = [1, 2, 4, 8]
    # Field a barely prefers 8 over 1; b and c strongly prefer 8.
    scores = {"a": [0.24, 0.25, 0.25, 0.26], "b": [0.0, 0.0, 0.1, 0.9],
              "c": [0.0, 0.0, 0.1, 0.9]}
    budget = dims_bytes(SCHEMA, 8, {"a": 1, "b": 8, "c": 8})
    dims = fit_dims_to_budget(SCHEMA, 8, cands, scores, budget)
    assert dims == {"a": 1, "b": 8, "c": 8}
    assert dims_bytes(SCHEMA, 8, dims) <= budget


def test_fit_dims_grows_into_spare_budget():
    cands = [1, 2, 4, 8]
    scores = {n: [0.1, 0.2, 0.3, 0.4] for n in "abc"}
    budget = dims_bytes(SCHEMA, 8, {"a": 4, "b": 8, "c": 8})
    dims = fit_dims_to_budget(SCHEMA, 8, cands, scores, budget, start={"a": 1, "b": 1, "c": 1})
    assert dims_bytes(SCHEMA, 8, dims) <= budget
    assert dims_bytes(SCHEMA, 8, dims) >= 0.9 * budget


def test_budget_below_minimum_names_the_minimum():
    minimum = dims_bytes(SCHEMA, 8, {"a": 1, "b": 1, "c": 1})
    with pytest.raises(BudgetError, match=f"smallest feasible model: {minimum} B"):
        fit_dims_to_budget(SCHEMA, 8, [1, 2], {n: [1, 0] for n in "abc"}, minimum - 1)
