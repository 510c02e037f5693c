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


# -- retrain: the one way to train a plan's compact model ------------------------------------
def _mde(data, D=8):
    from autodim.baselines import mde_plan
    from autodim.budget import full_bytes

    return mde_plan(data.schema, D, full_bytes(data.schema, D) // 4)


def _weights(result):
    return {k: v.detach().clone() for k, v in result.task.state_dict().items()}


def _same_weights(a, b) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_retrain_equals_train_plan_under_the_same_seed(tiny):
    from autodim.api import retrain
    from autodim.data.datamodule import CTRDataModule
    from autodim.task import TrainConfig, train_plan

    plan = _mde(tiny)
    ours = retrain(plan, tiny, {"epochs": 1, "batch_size": 256, "lr": 3e-3}, seed=3)
    ref = train_plan(plan, CTRDataModule(tiny, batch_size=256, seed=3),
                     config=TrainConfig(max_epochs=1, batch_size=256, lr=3e-3, seed=3))
    assert ours.metrics["test_auc"] == ref.metrics["test_auc"]
    assert ours.metrics["num_bytes"] == plan.num_bytes()
    assert _same_weights(_weights(ours), _weights(ref))
    # The seed reaches the training: another one trains other weights.
    other = retrain(plan, tiny, {"epochs": 1, "batch_size": 256, "lr": 3e-3}, seed=4)
    assert not _same_weights(_weights(other), _weights(ref))


def test_searchers_retrain_and_api_retrain_agree_warm_start_included(tiny):
    from autodim.api import retrain
    from autodim.data.datamodule import CTRDataModule
    from autodim.searchers import SearchResult, SearchTask
    from autodim.searchers import retrain as task_retrain
    from autodim.task import TrainConfig

    plan = _mde(tiny)
    cfg = TrainConfig(max_epochs=1, batch_size=256, seed=1)
    warm = {k: v + 0.5 for k, v in plan.build().state_dict().items()}
    task = SearchTask(data=CTRDataModule(tiny, batch_size=256, seed=1), D=8,
                      candidate_dims=(8,), train=cfg)
    old = task_retrain(task, SearchResult(plan=plan, warm_start=warm), warm_start=True)
    new = retrain(plan, CTRDataModule(tiny, batch_size=256, seed=1), cfg, warm_start=warm)
    cold = retrain(plan, CTRDataModule(tiny, batch_size=256, seed=1), cfg)
    assert _same_weights(_weights(old), _weights(new))
    assert not _same_weights(_weights(new), _weights(cold))  # the warm start was used


def test_retrain_distils_from_a_teacher(tiny):
    from autodim.api import retrain
    from autodim.plan import DimensionPlan

    settings = {"epochs": 1, "batch_size": 256}
    teacher = retrain(DimensionPlan.full(tiny.schema, 8), tiny, settings)
    plan = _mde(tiny)
    plain = retrain(plan, tiny, settings)
    taught = retrain(plan, tiny, settings, teacher=teacher, distill_weight=2.0)
    assert not _same_weights(_weights(plain), _weights(taught))
    assert "distill" not in taught.task.state_dict()  # the teacher is not a student weight


@pytest.mark.parametrize("kwargs, message", [
    ({"plan": 42}, r"plan: expected a DimensionPlan .* got int 42"),
    ({"data": 3.5}, r"data: expected a CTRDataModule, CTRData or a data source, got float 3.5"),
    ({"settings": {"lrr": 0.1}}, r"settings: unknown key 'lrr' \(did you mean 'lr'\?\)"),
    ({"settings": {"epochs": 0}}, r"settings.epochs: must be >= 1, got 0"),
    ({"settings": {"seed": "x"}}, r"settings.seed: expected an integer, got 'x'"),
    ({"settings": "fast"}, r"settings: expected a TrainConfig.* got str 'fast'"),
    ({"teacher": "big"}, r"teacher: expected a trained model .* got str 'big'"),
])
def test_retrain_bad_input_names_the_value(tiny, kwargs, message):
    from autodim.api import retrain

    args = {"plan": _mde(tiny), "data": tiny, **kwargs}
    with pytest.raises(ConfigError, match=message):
        retrain(args.pop("plan"), args.pop("data"), **args)
