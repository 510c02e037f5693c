"""The same tiny study, same seed, one worker: the same plans and metrics twice in a row."""

from __future__ import annotations

import json

import optuna
import torch
from conftest import write_study

from autodim.study.config import StudyConfig
from autodim.study.runner import run_study

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.ERROR)


def _record(res):
    out = []
    for t in res.study.trials:
        a = t.user_attrs
        plan = json.loads((res.folder / a["plan_file"]).read_text()) if "plan_file" in a else None
        if plan:
            for key in ("created", "versions"):
                plan.pop(key, None)
        out.append((t.number, t.state.name, t.params, t.values,
                    {k: a.get(k) for k in ("val_auc", "test_auc", "val_logloss", "bytes",
                                           "dims", "memcom", "curve")}, plan))
    return out


def test_same_seed_same_study(tmp_path, tiny_data):
    space = {"candidate_dims": [1, 2, 4, 8],
             "methods": {"blackbox": {"params": {"n_candidates": {"type": "int", "low": 2,
                                                                  "high": 4},
                                                 "max_batches": 4}}},
             "memcom": {"inflate": {"type": "categorical", "choices": [1.0, 2.0]},
                        "ratio": {"type": "float", "low": 0.05, "high": 0.3}, "min_rows": 100}}
    runs = []
    for i in range(2):
        path = write_study(tmp_path / f"run{i}", space=space, n_trials=3,
                           baselines=["uniform", "hash"],
                           sampler={"name": "tpe", "seed": 0, "n_startup_trials": 2})
        runs.append(_record(run_study(StudyConfig.load(path), data=tiny_data)))
    assert runs[0] == runs[1]
    assert sum(r[1] == "COMPLETE" for r in runs[0]) >= 3
