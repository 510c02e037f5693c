"""The Python API: one searcher run (the CLI's single-run `search` uses the same function)."""

import pytest

from autodim.api import search_plan
from autodim.data.synthetic import make_planted
from autodim.errors import ConfigError


@pytest.fixture(scope="module")
def tiny():
    return make_planted("tiny", rows=3000, seed=0)


def test_search_plan_fits_the_budget_and_retrains(tiny):
    plan, result = search_plan("sseds", tiny, budget="6x", D=8, candidate_dims=(0, 1, 2, 4, 8),
                               epochs=1, batch_size=256, retrain=True, retrain_epochs=1,
                               quick=True)
    assert plan.num_bytes() <= plan.budget_bytes
    assert result.plan is not None and result.history
    assert {"val_auc", "test_auc"} <= set(plan.metrics)


def test_search_plan_passes_train_options(tiny):
    with pytest.raises(TypeError, match="no_such_option"):
        search_plan("sseds", tiny, budget="6x", D=8, candidate_dims=(0, 1, 2, 4, 8), epochs=1,
                    batch_size=256, quick=True, train_options={"no_such_option": 1})


def test_unknown_method_is_a_config_error(tiny):
    with pytest.raises(ConfigError, match="unknown method"):
        search_plan("sseds2", tiny, budget="6x", D=8)
