"""Studies: file validation, constraints, baselines, pruning, failures, resume, the API."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

import autodim
from autodim.errors import BudgetError, ConfigError, DataError
from autodim.study.compact import collision_loss, compact_plan
from autodim.study.config import StudyConfig
from autodim.study.objective import PruneHopeless, Reference
from autodim.study.runner import run_study

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.ERROR)

SPACE = {
    "candidate_dims": [1, 2, 4, 8],
    "methods": {"blackbox": {"params": {"n_candidates": {"type": "int", "low": 2, "high": 3},
                                        "epochs": 1, "max_batches": 4}}},
    "memcom": {"inflate": {"type": "categorical", "choices": [1.0, 2.0]},
               "ratio": {"type": "float", "low": 0.05, "high": 0.3, "log": True},
               "min_rows": 100},
}
BASELINES = ["full", "uniform", "mde", "hash", "qr", "memcom", "magprune"]


def write_study(folder: Path, name: str = "tiny", space: dict | None = None, **overrides) -> Path:
    """A 1-epoch study on synthetic:tiny with its own search-space file."""
    (folder / "spaces").mkdir(parents=True, exist_ok=True)
    (folder / "spaces" / "space.yaml").write_text(yaml.safe_dump(space or SPACE))
    study = {"name": name, "dataset": {"source": "synthetic:tiny", "rows": 3000}, "D": 8,
             "methods": ["blackbox"], "search_space": "spaces/space.yaml", "budget": "6x",
             "n_trials": 2, "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
             "baselines": BASELINES,
             "train": {"epochs": 1, "batch_size": 256},
             "search_train": {"epochs": 1, "batch_size": 256}, "output": "out"}
    if "budgets" in overrides:
        study.pop("budget")
    study.update(overrides)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    path = write_study(folder)
    return path, run_study(StudyConfig.load(path))


# -- validation ----------------------------------------------------------------------------
def _error(tmp_path: Path, space: dict | None = None, **overrides) -> str:
    path = write_study(tmp_path, space=space, **overrides)
    with pytest.raises(ConfigError) as info:
        StudyConfig.load(path)
    return str(info.value)


def _space(**changes) -> dict:
    space = yaml.safe_load(yaml.safe_dump(SPACE))
    for dotted, value in changes.items():
        node = space
        *parents, leaf = dotted.split("/")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return space


@pytest.mark.parametrize("overrides, expected", [
    ({"methods": ["blackbx"]}, ["unknown method 'blackbx'", "did you mean 'blackbox'"]),
    ({"n_trails": 3}, ["unknown key 'n_trails'", "did you mean 'n_trials'"]),
    ({"n_trials": "many"}, ["n_trials", "expected an integer", "'many'"]),
    ({"D": [16]}, ["D", "expected an integer"]),
    ({"sampler": {"name": "tpee"}}, ["sampler.name", "'tpee'", "did you mean 'tpe'"]),
    ({"sampler": {"name": "nsga2", "n_startup_trials": 3}},
     ["sampler", "unknown key 'n_startup_trials'"]),
    ({"objectives": ["val_auc", "byte"]}, ["objectives", "'byte'", "did you mean 'bytes'"]),
    ({"baselines": ["unifrom"]}, ["baselines", "'unifrom'", "did you mean 'uniform'"]),
    ({"budget": "ten"}, ["budgets[0]", "'ten'"]),
    ({"search_space": "spaces/nope.yaml"}, ["search_space", "nope.yaml", "not found"]),
    ({"backbone": "fmm"}, ["backbone", "'fmm'", "did you mean 'fm'"]),
    ({"train": {"epochs": 1, "lr": "fast"}}, ["train.lr", "'fast'"]),
    ({"train": {"epoch": 1}}, ["train", "unknown key 'epoch'", "did you mean 'epochs'"]),
    ({"dataset": {"rows": 10}}, ["dataset.source", "missing"]),
])
def test_study_file_errors_name_the_key(tmp_path, overrides, expected):
    message = _error(tmp_path, **overrides)
    for part in expected:
        assert part in message, message
    assert "\n" not in message


@pytest.mark.parametrize("changes, expected", [
    ({"methods/blackbox/params/n_candidates": {"type": "int", "low": 9, "high": 2}},
     ["methods.blackbox.params.n_candidates", "low 9 is greater than high 2"]),
    ({"methods/blackbox/params/n_candidate": 3},
     ["methods.blackbox.params.n_candidate", "did you mean 'n_candidates'"]),
    ({"methods/blackbox/params/n_candidates": {"type": "integer", "low": 1, "high": 2}},
     ["n_candidates.type", "'integer'", "did you mean 'int'"]),
    ({"methods/blackbox/params/n_candidates": {"type": "int", "low": 1, "hihg": 2}},
     ["unknown key 'hihg'", "did you mean 'high'"]),
    ({"memcom/ratio": {"type": "float", "low": 0.0, "high": 0.5, "log": True}},
     ["memcom.ratio", "log distribution needs low > 0"]),
    ({"memcom/inflate": {"type": "categorical", "choices": [0.5, 2.0]}},
     ["memcom.inflate", "0.5", "out of range"]),
    ({"candidate_dims": ["four"]}, ["candidate_dims[0]", "'four'"]),
    ({"methods/blackbox/cands": [1, 2]}, ["methods.blackbox", "unknown key 'cands'"]),
])
def test_search_space_errors_name_the_key(tmp_path, changes, expected):
    message = _error(tmp_path, space=_space(**changes))
    assert "space.yaml" in message
    for part in expected:
        assert part in message, message


def test_study_defaults_and_all_methods(tmp_path):
    cfg = StudyConfig.load(write_study(tmp_path, methods="all"))
    assert "blackbox" in cfg.methods and "magprune" not in cfg.methods
    assert cfg.output_dir == tmp_path / "out" / "tiny"
    assert cfg.directions == ["maximize", "minimize"]
    assert cfg.candidate_dims("blackbox") == (1, 2, 4, 8)


def test_budget_below_smallest_model_is_an_error_above_full_a_warning(tmp_path, tiny_data):
    cfg = StudyConfig.load(write_study(tmp_path, budget=100))
    with pytest.raises(BudgetError, match="budgets: 100 = 100 B is below the smallest feasible"):
        run_study(cfg, data=tiny_data)
    warned: list[str] = []
    cfg = StudyConfig.load(write_study(tmp_path, name="big", budget="1x", n_trials=0,
                                       baselines=["uniform"]))
    res = run_study(cfg, data=tiny_data, warn=warned.append)
    assert any("not below the full D=8 model" in w for w in warned), warned
    assert len(res.study.trials) == 1


def test_unknown_dataset_is_an_error_naming_it(tmp_path):
    cfg = StudyConfig.load(write_study(tmp_path, dataset={"source": "no-such-data.csv"}))
    with pytest.raises(DataError, match="dataset.*no-such-data"):
        run_study(cfg)


# -- a study run ---------------------------------------------------------------------------
def test_constraints_and_values_are_recorded(study_run):
    _, res = study_run
    budget = res.budgets["6x"]
    complete = res.study.get_trials(states=(TrialState.COMPLETE,))
    assert complete
    for t in complete:
        a = t.user_attrs
        assert t.constraints["bytes_over_budget"] == a["bytes"] - budget
        assert a["feasible"] == (a["bytes"] <= budget)
        assert t.values == [a["val_auc"], a["bytes"]]
        assert a["plan"]["num_bytes"] == a["bytes"]
        assert (res.folder / a["plan_file"]).is_file()
    full = [t for t in complete if t.user_attrs["method"] == "baseline:full"]
    assert full and full[0].constraints["bytes_over_budget"] > 0
    searched = [t for t in complete if t.user_attrs["kind"] == "search"]
    assert searched and all(t.user_attrs["feasible"] for t in searched)
    assert all((res.folder / t.user_attrs["weights_file"]).is_file() for t in searched)


def test_baselines_sit_in_the_same_study(study_run):
    _, res = study_run
    df = res.trials_dataframe()
    baselines = df[df["kind"] == "baseline"]
    assert set(baselines["method"]) == {f"baseline:{b}" for b in BASELINES}
    assert (baselines["state"] == "COMPLETE").all()
    mag = [t for t in res.study.trials if t.user_attrs.get("method") == "baseline:magprune"][0]
    assert mag.user_attrs["retrained"] is False
    assert len(df[df["kind"] == "search"]) == 2
    front = res.front
    assert not front.empty and front["feasible"].all()
    assert (res.folder / "pareto.csv").is_file() and (res.folder / "pareto.json").is_file()


def test_result_api(study_run):
    path, res = study_run
    loaded = autodim.load_study(path)
    assert len(loaded.study.trials) == len(res.study.trials)
    again = autodim.load_study(res.folder)
    n = again.best_under("6x")
    plan = again.plan(n)
    assert plan.num_bytes() <= again.budgets["6x"]
    assert again.trial(n).user_attrs["val_auc"] == max(
        t.user_attrs["val_auc"] for t in again.study.trials
        if t.state == TrialState.COMPLETE and t.user_attrs["bytes"] <= again.budgets["6x"])
    model = again.model(n)
    assert model.num_bytes() == plan.num_bytes()
    with pytest.raises(ConfigError, match="fits"):
        again.best_under(10)
    with pytest.raises(ConfigError, match="no trial 999"):
        again.plan(999)


def test_budgets_take_turns_and_each_trial_is_held_to_its_own(tmp_path, tiny_data):
    cfg = StudyConfig.load(write_study(tmp_path, budgets=["4x", "6x"], n_trials=2,
                                       baselines=["full", "hash"]))
    res = run_study(cfg, data=tiny_data)
    search = [t for t in res.study.trials if t.user_attrs["kind"] == "search"]
    assert sorted(t.params["budget"] for t in search) == ["4x", "6x"]
    base = [t.user_attrs["method"] for t in res.study.trials if t.user_attrs["kind"] == "baseline"]
    assert sorted(base) == ["baseline:full", "baseline:hash", "baseline:hash"]  # full once
    for t in res.study.get_trials(states=(TrialState.COMPLETE,)):
        budget = res.budgets[t.user_attrs["budget"]]
        assert t.constraints["bytes_over_budget"] == t.user_attrs["bytes"] - budget


@pytest.mark.parametrize("sampler", [{"name": "nsga2", "population_size": 2},
                                     {"name": "random", "seed": 3}])
def test_other_samplers_run(tmp_path, tiny_data, sampler):
    cfg = StudyConfig.load(write_study(tmp_path, sampler=sampler, baselines=["uniform"],
                                       n_trials=3))
    res = run_study(cfg, data=tiny_data)
    assert type(res.study.sampler).__name__ == {"nsga2": "NSGAIISampler",
                                                "random": "RandomSampler"}[sampler["name"]]
    assert sum(t.state == TrialState.COMPLETE for t in res.study.trials) >= 3


def test_identical_parameters_reuse_the_result(tmp_path, tiny_data):
    space = {"candidate_dims": [1, 2, 4, 8], "memcom": {"enabled": False},
             "methods": {"blackbox": {"params": {"n_candidates": 2, "max_batches": 4}}}}
    cfg = StudyConfig.load(write_study(tmp_path, space=space, baselines=[], n_trials=2))
    res = run_study(cfg, data=tiny_data)
    first, second = res.study.trials
    assert first.params == second.params == {"method": "blackbox"}
    assert second.user_attrs["duplicate_of"] == first.number
    assert second.values == first.values
    assert second.constraints == first.constraints
    assert res.plan(second.number).to_dict()["fields"] == res.plan(first.number).to_dict()["fields"]


def test_rerun_without_resume_is_refused(study_run):
    path, _ = study_run
    with pytest.raises(ConfigError, match="already exists.*--resume"):
        run_study(StudyConfig.load(path))


# -- resume --------------------------------------------------------------------------------
def test_resume_requeues_a_trial_left_running(tmp_path, tiny_data):
    cfg = StudyConfig.load(write_study(tmp_path, baselines=["uniform"]))
    first = run_study(cfg, data=tiny_data)
    before = {t.number: (t.state, t.values) for t in first.study.trials}
    # A crash mid-trial: a worker sampled a method and died, leaving the trial RUNNING.
    study = first.study
    crashed = study.ask()
    crashed.set_user_attr("kind", "search")
    crashed.suggest_categorical("method", ["blackbox"])
    assert study.trials[crashed.number].state == TrialState.RUNNING

    res = run_study(cfg, data=tiny_data, n_trials=3, resume=True)
    trials = {t.number: t for t in res.study.trials}
    for number, (state, values) in before.items():  # nothing finished is lost or re-run
        assert trials[number].state == state and trials[number].values == values
    assert trials[crashed.number].state == TrialState.FAIL
    assert "stale" in trials[crashed.number].user_attrs["fail_reason"]
    retries = [t for t in trials.values() if t.user_attrs.get("retry_of") == crashed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params["method"] == "blackbox"
    search_done = [t for t in trials.values() if t.user_attrs.get("kind") == "search"
                   and t.state == TrialState.COMPLETE]
    assert len(search_done) == 3

    again = run_study(cfg, data=tiny_data, n_trials=3, resume=True)
    assert len(again.study.trials) == len(res.study.trials)  # complete: nothing more to run


def test_diverged_trial_fails_with_reason_and_the_study_goes_on(tmp_path, tiny_data, monkeypatch):
    import autodim.searchers.base as base
    from autodim.task import TrainingDiverged

    real = base.retrain_plan
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise TrainingDiverged("training loss became nan at epoch 0, step 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "retrain_plan", flaky)  # what every trial retrains with
    cfg = StudyConfig.load(write_study(tmp_path, baselines=["uniform"], n_trials=2))
    res = run_study(cfg, data=tiny_data)
    states = [t.state for t in res.study.trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 2
    failed = [t for t in res.study.trials if t.state == TrialState.FAIL][0]
    assert failed.user_attrs["fail_reason"].startswith("TrainingDiverged: training loss")


# -- pruning and the MEmCom decision ---------------------------------------------------------
class _Trainer:
    sanity_checking = False
    should_stop = False

    def __init__(self, auc: float) -> None:
        self.callback_metrics = {"val_auc": torch.tensor(auc)}


def test_pruning_rule_stops_runs_that_cannot_catch_up():
    refs = [Reference(1000, 0.80, 3), Reference(5000, 0.90, 4)]
    rule = PruneHopeless(refs, 2000, max_epochs=10, after_epochs=2, margin=0.01)
    assert rule.reference.number == 3  # trial 4 uses more bytes: not a reference
    t = _Trainer(0.60)
    rule.on_validation_end(t, None)
    assert not t.should_stop  # too early: no gain to extrapolate yet
    t.callback_metrics["val_auc"] = torch.tensor(0.605)
    rule.on_validation_end(t, None)  # at most 0.605 + 8 * 0.005 = 0.645 < 0.79
    assert t.should_stop and rule.pruned["reference_trial"] == 3
    assert rule.pruned["bound"] == pytest.approx(0.645)

    slow = PruneHopeless(refs, 2000, max_epochs=10, after_epochs=2, margin=0.01)
    for auc in (0.60, 0.65, 0.69):  # far behind, but gaining fast: could still make it
        t = _Trainer(auc)
        slow.on_validation_end(t, None)
        assert not t.should_stop
    assert PruneHopeless(refs, 500, max_epochs=10, after_epochs=2, margin=0.0).reference is None


def test_pruned_trials_are_recorded(tmp_path, tiny_data):
    cfg = StudyConfig.load(write_study(
        tmp_path, baselines=["uniform"], n_trials=1, train={"epochs": 2, "batch_size": 256},
        pruning={"after_epochs": 2, "margin": -1.0}))  # any run below AUC+1 is "hopeless"
    res = run_study(cfg, data=tiny_data)
    search = [t for t in res.study.trials if t.user_attrs.get("kind") == "search"]
    assert [t.state for t in search] == [TrialState.PRUNED]
    assert search[0].user_attrs["prune_reason"]["epoch"] == 2
    assert "bytes_over_budget" in search[0].constraints


def test_compact_plan_hashes_where_it_pays_and_fits(tiny_data):
    from autodim.plan import DimensionPlan

    schema = tiny_data.schema
    plan = DimensionPlan.from_dims(schema, 8, [2, 4, 8, 8, 8])
    same, info = compact_plan(plan, schema, plan.num_bytes(), ratio=0.1)
    assert same is plan and info["memcom"] == {}
    budget = int(plan.num_bytes() * 0.6)
    out, info = compact_plan(plan, schema, budget, ratio=0.1, min_rows=100,
                             candidate_dims=(1, 2, 4, 8))
    assert out.num_bytes() <= budget
    assert set(info["memcom"]) <= {"f03", "f04"}  # only fields with >= 100 rows
    for name, m in info["memcom"].items():
        assert out[name].hashing == {"method": "memcom", "buckets": m}
    assert out.build().num_bytes() == out.num_bytes()
    tight, info = compact_plan(plan, schema, int(plan.num_bytes() * 0.15), ratio=0.1,
                               min_rows=100, candidate_dims=(1, 2, 4, 8))
    assert tight.num_bytes() <= int(plan.num_bytes() * 0.15) and info["lowered"]
    with pytest.raises(BudgetError, match="cannot be brought under"):
        compact_plan(plan, schema, 50, ratio=0.1, candidate_dims=(1, 2, 4, 8))


def test_collision_loss_uses_frequencies(tiny_data):
    f = tiny_data.schema["f04"]
    assert collision_loss(f, f.vocab_size) == 0.0
    loss_small, loss_big = collision_loss(f, 10), collision_loss(f, 400)
    assert 0.0 < loss_big < loss_small < 1.0
    assert math.isclose(collision_loss(type(f)(f.name, vocab_size=100), 25), 0.75)


def test_a_budget_only_low_bits_reach_runs_with_the_compressor(tmp_path, tiny_data):
    """Below the smallest float32 model (every field at dim 1) a study is refused, unless
    the compressor may store weights in fewer bits: then the searcher plans at its smallest
    float32 size and the compressor brings the plan under the budget."""
    from autodim.budget import min_feasible_bytes
    from autodim.study.runner import resolve_budgets, smallest_model_bytes

    schema = tiny_data.schema
    floor32 = min_feasible_bytes(schema, 8, (1, 2, 4, 8))
    # Row-wise scales (float16 scale + offset per row) cost more than they save at dim 1;
    # one scale per field does not.
    assert smallest_model_bytes(schema, 8, (1, 2, 4, 8), [(32, "row"), (4, "row")]) == floor32
    floor4 = smallest_model_bytes(schema, 8, (1, 2, 4, 8), [(32, "row"), (4, "field")])
    assert floor4 < floor32
    budget = (floor4 + floor32) // 2
    cfg = StudyConfig.load(write_study(tmp_path, budget=budget, baselines=[]))
    with pytest.raises(BudgetError, match="smallest feasible model"):
        resolve_budgets(cfg, schema, print)
    space = _space(compress={"enabled": True, "bits": "32,8,4", "scale": "field",
                             "estimator": "proxy"})
    cfg = StudyConfig.load(write_study(tmp_path, name="low", budget=budget, baselines=[],
                                       space=space, n_trials=1))
    assert resolve_budgets(cfg, schema, print) == {str(budget): budget}
    res = run_study(cfg, data=tiny_data)
    trial = res.study.trials[0]
    assert trial.state.name == "COMPLETE", trial.user_attrs
    assert 0 < trial.values[1] <= budget


def test_a_searcher_with_masked_plans_is_not_inflated(tmp_path, tiny_data):
    """pep's sparse fields stay as they are when compacted, so a study searches it at the
    budget itself: no trial is pruned because its plan cannot be brought back."""
    space = _space(**{"memcom/inflate": {"type": "categorical", "choices": [3.0]}})
    space["methods"] = {"pep": {"params": {"epochs": 1}}}
    cfg = StudyConfig.load(write_study(tmp_path, methods=["pep"], baselines=[], space=space,
                                       n_trials=1, budget="4x"))
    res = run_study(cfg, data=tiny_data)
    (trial,) = res.study.trials
    assert trial.state.name == "COMPLETE", trial.user_attrs
    assert trial.user_attrs["memcom"]["inflate"] == 1.0
    assert "memcom.inflate" not in trial.params


def test_compact_plan_lowers_fields_with_frequency_groups(tiny_data):
    """A darts/autodim plan with frequency groups fits a tight budget: the widest groups step
    down (a grouped field used to be immovable, so such trials were pruned)."""
    from dataclasses import replace

    from autodim.plan import DimensionPlan

    schema = tiny_data.schema
    plan = DimensionPlan.from_dims(schema, 8, [8, 8, 8, 8, 8])
    rows = schema["f04"].vocab_size
    plan = plan.replace(fields=[
        replace(fp, frequency_groups=[{"rows": 100, "dim": 8}, {"rows": rows - 100, "dim": 2}])
        if fp.name == "f04" else fp for fp in plan.fields])
    plan.validate()
    budget = int(plan.num_bytes() * 0.3)  # below what f04 alone stores as planned
    assert plan["f04"].num_bytes(8) > budget
    out, info = compact_plan(plan, schema, budget, ratio=0.1, min_rows=10**9,
                             candidate_dims=(1, 2, 4, 8))
    assert out.num_bytes() <= budget
    assert "f04" in info["lowered"]
    assert out.build().num_bytes() == out.num_bytes()


def test_a_search_trial_beyond_the_target_is_surplus(tmp_path, tiny_data):
    """Two workers that both read "one trial to go" both start one; the later-numbered one
    sees the earlier one running, is pruned as ``surplus`` before it trains, and counts
    nowhere (a three-worker PostgreSQL study ended with 7 search trials for a target of 6)."""
    import optuna
    from optuna.trial import TrialState

    from autodim.study.objective import TrialObjective
    from autodim.study.runner import _counts, resolve_budgets

    cfg = StudyConfig.load(write_study(tmp_path, n_trials=1, baselines=[]))
    budgets = resolve_budgets(cfg, tiny_data.schema, print)
    objective = TrialObjective(cfg, tiny_data, budgets, tmp_path / "trials", journal=False,
                               references=lambda: [])
    study = optuna.create_study(directions=["maximize", "minimize"])
    first = study.ask()  # the other worker's trial, still running
    first.set_user_attr("kind", "search")
    study.optimize(objective, n_trials=1, catch=(Exception,))
    late = study.trials[1]
    assert late.state == TrialState.PRUNED and late.user_attrs["kind"] == "surplus"
    assert "method" not in late.params  # nothing sampled, nothing trained
    assert _counts(study) == (0, 1, 0)  # only the first trial counts (running)
