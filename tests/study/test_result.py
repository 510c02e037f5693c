"""StudyResult: which trial a user ships under a budget (the report and the CLI ask it)."""

from __future__ import annotations

import optuna
import pytest

from autodim.study.result import StudyResult

FULL = 10_000


def _study(tmp_path, trials, budgets=None):
    """An in-memory study of finished trials ``(state, val_auc, test_auc, bytes)``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                storage=optuna.storages.InMemoryStorage())
    study.set_user_attr("autodim_space", {"budgets": {"10x": FULL // 10, "2x": FULL // 2}
                                          if budgets is None else budgets})
    study.set_user_attr("full_bytes", FULL)
    for state, val, test, nbytes in trials:
        attrs = {"method": "m", "val_auc": val, "test_auc": test, "bytes": nbytes,
                 "feasible": True}
        done = state == optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            state=state, values=[val, float(nbytes)] if done else None, user_attrs=attrs))
    return StudyResult(study, tmp_path)


C, P = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


@pytest.fixture()
def result(tmp_path):
    return _study(tmp_path, [
        (C, 0.70, 0.60, 900),    # 0: best validation AUC under 10x (1,000 B)
        (C, 0.65, 0.80, 800),    # 1: best test AUC under 10x: must not be chosen (test leak)
        (C, 0.90, 0.90, 4_000),  # 2: best overall, fits 2x only
        (P, 0.99, 0.99, 100),    # 3: pruned: never chosen
        (C, 0.70, 0.60, 700),    # 4: ties trial 0 on validation AUC with fewer bytes
    ])


def test_choose_defaults_to_the_first_budget_and_picks_by_validation_auc(result):
    assert result.choose() == 4  # val AUC 0.70 (tie with 0 broken by fewer bytes)
    assert result.choose("10x") == 4 == result.best_under(FULL // 10)


def test_choose_under_a_label_a_ratio_or_bytes(result):
    assert result.choose("2x") == 2
    assert result.choose(4_000) == 2
    assert result.choose(3_999) == 4
    assert result.choose("2.5x") == 2  # not a label of the study: a ratio of the full bytes
    assert result.choose("5x") == 4
    assert result.resolve_budget("2x") == ("2x", FULL // 2)
    assert result.resolve_budget() == ("10x", FULL // 10)


def test_choose_is_none_when_nothing_fits_or_there_is_no_budget(result, tmp_path):
    assert result.choose(500) is None
    assert _study(tmp_path, [(C, 0.7, 0.7, 10)], budgets={}).choose() is None
    assert _study(tmp_path, [], budgets={"10x": 1_000}).choose() is None


def test_the_report_alias_is_the_same_choice(result):
    from autodim.viz.report import choose_trial

    for budget in (None, "10x", "2x", 500):
        assert choose_trial(result, budget) == result.choose(budget)
