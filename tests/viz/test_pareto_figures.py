"""The Pareto figure from plain data and from a study; Optuna's plots on a study."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from autodim.viz.pareto import pareto_figure_from_frame, study_pareto_figure
from autodim.viz.trials import (
    optimization_history_figure,
    param_importances_figure,
    single_objective_study,
)


def _points(fig):
    """(trial, bytes, auc) of every marker drawn for a trial (not the chosen ring)."""
    out = []
    for t in fig.data:
        if t.mode == "markers" and not str(t.name).startswith("chosen"):
            out += list(zip(t.customdata, t.x, t.y))
    return out


def test_one_point_per_complete_trial_from_a_plain_frame():
    df = pd.DataFrame([
        {"trial": 0, "state": "COMPLETE", "method": "baseline:full", "val_auc": 0.70,
         "bytes": 40000, "feasible": False},
        {"trial": 1, "state": "COMPLETE", "method": "baseline:uniform", "val_auc": 0.64,
         "bytes": 5000, "feasible": True},
        {"trial": 2, "state": "COMPLETE", "method": "darts", "val_auc": 0.67, "bytes": 7000,
         "feasible": True, "dims": {"a": 2, "b": 4}},
        {"trial": 3, "state": "COMPLETE", "method": "darts", "val_auc": 0.66, "bytes": 7500,
         "feasible": True},
        {"trial": 4, "state": "FAIL", "method": "sseds", "val_auc": None, "bytes": None,
         "feasible": None},
        {"trial": 5, "state": "COMPLETE", "method": "sseds", "val_auc": 0.69, "bytes": 9000,
         "feasible": False},
    ])
    fig = pareto_figure_from_frame(df, budgets={"6x": 7600}, full_bytes=40000, chosen=2,
                                   bayes_auc=0.8)
    pts = _points(fig)
    assert sorted(p[0] for p in pts) == [0, 1, 2, 3, 5]
    names = [t.name for t in fig.data]
    assert names[:2] == ["darts", "sseds"]  # search methods first, then baselines
    assert "baseline:uniform" in names and "full model" in names
    full = next(t for t in fig.data if t.name == "full model")
    assert full.marker.symbol == "star" and list(full.x) == [40000]
    uni = next(t for t in fig.data if t.name == "baseline:uniform")
    assert uni.marker.symbol == "diamond"
    front = next(t for t in fig.data if t.name.startswith("Pareto front"))
    assert list(front.x) == [5000, 7000]  # infeasible trial 5 is off the front
    ring = next(t for t in fig.data if t.name == "chosen: trial 2")
    assert list(ring.x) == [7000]
    assert fig.layout.xaxis.type == "log"
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    # budget and Bayes lines, the budget labelled at log10(bytes) on the log axis
    assert any(s.x0 == 7600 for s in fig.layout.shapes)
    label = next(a for a in fig.layout.annotations if a.text == "budget 6x")
    assert label.x == pytest.approx(math.log10(7600))
    darts = next(t for t in fig.data if t.name == "darts")
    assert "a:2 b:4" in darts.text[0]  # hover carries the plan summary


def test_full_model_as_a_line_when_it_was_not_trained():
    df = pd.DataFrame([{"trial": 0, "method": "darts", "val_auc": 0.6, "bytes": 100}])
    fig = pareto_figure_from_frame(df, full_bytes=1000)
    assert any(s.x0 == 1000 for s in fig.layout.shapes)
    assert any(a.text == "full model" for a in fig.layout.annotations)


def test_study_pareto_figure_has_one_point_per_complete_trial(fake_study):
    result, _ = fake_study
    df = result.trials_dataframe()
    fig = study_pareto_figure(result, chosen=int(df.iloc[3]["trial"]))
    pts = _points(fig)
    assert sorted(p[0] for p in pts) == sorted(df.loc[df.state == "COMPLETE", "trial"])
    for trial, x, y in pts:
        row = df[df.trial == trial].iloc[0]
        assert (x, y) == (row["bytes"], row["val_auc"])
    hover = next(t for t in fig.data if t.name == "darts").text[0]
    assert "f00:" in hover  # plan summary from the trial's dims


def test_optuna_figures_on_a_multi_objective_study(fake_study):
    result, _ = fake_study
    sub = single_objective_study(result.study, objective="bytes")
    assert sub.direction.name == "MINIMIZE"
    search = [t for t in result.study.trials if t.user_attrs["kind"] == "search"]
    assert len(sub.trials) == len(search)
    hist = optimization_history_figure(result.study)
    assert hist.layout.xaxis.title.text and hist.layout.yaxis.title.text
    # feasible and infeasible trials are separate marker traces; together one per trial
    assert sum(len(t.x) for t in hist.data if t.mode == "markers") == len(search)
    imp = param_importances_figure(result.study)
    assert imp is not None
    assert set(imp.data[0].y) <= {"method", "memcom.inflate"}
    per = param_importances_figure(result.study, method="darts", min_trials=3)
    assert per is not None and set(per.data[0].y) <= {"darts.lr", "memcom.inflate"}
    assert param_importances_figure(result.study, method="darts", min_trials=99) is None
