"""Numerical faults: a diverging trial fails with its reason and the study goes on; a
search space where every trial diverges ends with one clear message, not an empty front.

(tests/study/test_study.py::test_diverged_trial_fails_with_reason_and_the_study_goes_on covers a
searcher that *raises*; here the loss itself becomes NaN inside training.)
"""

from __future__ import annotations

import math

import optuna
import torch
from conftest import run_cli, write_study
from optuna.trial import TrialState

import autodim
import autodim.searchers.base as base
from autodim.task import CTRTask

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_nan_loss_fails_the_trial_and_the_study_goes_on(tmp_path, monkeypatch):
    real_retrain, real_loss = base.retrain_plan, CTRTask.loss
    state = {"calls": 0, "poison": False}

    def retrain(*args, **kwargs):
        state["calls"] += 1
        state["poison"] = state["calls"] == 2  # the second retrain's loss turns NaN
        try:
            return real_retrain(*args, **kwargs)
        finally:
            state["poison"] = False

    def loss(self, logits, labels):
        out = real_loss(self, logits, labels)
        return out * math.nan if state["poison"] else out

    monkeypatch.setattr(base, "retrain_plan", retrain)  # what every trial retrains with
    monkeypatch.setattr(CTRTask, "loss", loss)
    path = write_study(tmp_path, n_trials=3)
    rc, out, err = run_cli(["search", str(path)])
    assert rc == 0, err
    assert "failed: TrainingDiverged: training loss became nan" in out
    res = autodim.load_study(path)
    states = [t.state for t in res.study.trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 2
    bad = next(t for t in res.study.trials if t.state == TrialState.FAIL)
    assert bad.user_attrs["fail_reason"].startswith("TrainingDiverged: training loss became nan")
    assert not res.front.empty and bad.number not in set(res.front["trial"])


def test_every_trial_diverging_is_a_clear_error(tmp_path, one_line_error):
    # A learning rate no model survives, set in the study file itself.
    path = write_study(tmp_path, n_trials=2, train={"epochs": 1, "batch_size": 256,
                                                    "lr": 1.0e30},
                       search_train={"epochs": 1, "batch_size": 256, "lr": 1.0e30})
    rc, out, err = run_cli(["search", str(path)])
    line = one_line_error(rc, err, "all 2 search trial(s) of study 'rel' failed",
                          "first reason: TrainingDiverged")
    assert "Pareto front" not in out  # no empty front printed as if it were a result
    assert "nan" in line or "inf" in line
