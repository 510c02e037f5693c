"""Fake searcher histories and a fake study, for figure and report tests that should not
train anything.

The histories carry the keys each searcher fills (``test_history_keys_match_searchers``
keeps them honest); the study is an in-memory Optuna study whose trials carry the user
attributes the study runner records (kind, method, budget, metrics, bytes, plan JSON,
history file), so the report reads it exactly as it reads a real one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

D = 8
CANDIDATES = [1, 2, 4, 8]


def fake_histories(fields: list[str], budget: int = 7600) -> dict[str, dict[str, Any]]:
    """One history per registered searcher name, shaped like the real ones."""
    rng = np.random.default_rng(0)
    steps = list(range(0, 60, 10))

    def alpha_trace() -> list[list[float]]:
        logits = np.cumsum(rng.normal(size=(len(steps), len(CANDIDATES))), axis=0)
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return [[round(float(v), 5) for v in row] for row in p]

    dims = {f: CANDIDATES[i % len(CANDIDATES)] for i, f in enumerate(fields)}
    darts = {
        "steps": steps, "alpha": {f: alpha_trace() for f in fields},
        "expected_bytes": [float(20000 - 2000 * i) for i in range(len(steps))],
        "multiplier": [0.01 * i for i in range(len(steps))],
        "val_loss": [0.6] * len(steps), "train_loss": [0.6] * len(steps),
        "candidate_dims": CANDIDATES, "search_seconds": 1.0, "slots": list(fields),
        "argmax_dims": dict(dims), "final_alpha": {}, "dims": dict(dims),
        "plan_bytes": budget - 100, "budget_bytes": budget, "total_steps": steps[-1],
        "supernet_val_auc": 0.7}
    autodim = {**darts, "tau": [max(0.01, 1 - 5e-3 * s) for s in steps]}
    pep = {
        "steps": steps,
        "sparsity": {f: [min(1.0, 0.1 * i * (j + 1) / len(fields)) for i in range(len(steps))]
                     for j, f in enumerate(fields)},
        "mask_bytes": [30000 - 4000 * i for i in range(len(steps))],
        "snapshots": {str(budget): {"step": 40, "nnz": 1000, "mask_bytes": budget,
                                    "plan_bytes": budget, "reached": True, "form": "sparse"}},
        "fields": list(fields), "threshold_lr": 0.01, "total_steps": 50,
        "planned_steps": 50, "search_seconds": 1.0}
    sal = rng.random((len(fields), D))
    sseds = {
        "fields": list(fields), "saliency": (sal / sal.sum()).tolist(),
        "saliency_raw": sal.tolist(),
        "kept_columns": {f: sorted(rng.choice(D, size=dims[f], replace=False).tolist())
                         for f in fields},
        "dims": dict(dims), "num_bytes": budget - 50, "full_model": {"val_auc": 0.7},
        "search_seconds": 1.0}
    gens = [{"gen": g, "best_auc": 0.65 + 0.005 * g, "mean_auc": 0.6 + 0.005 * g,
             "best_bytes": budget - 10 * g, "feasible": 10,
             "best_ever_auc": 0.65 + 0.005 * g} for g in range(6)]
    optembed = {
        "generations": gens, "pruned_rows": {f: 3 for f in fields},
        "kept_rows": {f: 10 for f in fields}, "thresholds": {f: 0.1 for f in fields},
        "supernet": {"epochs": [], "seconds": 1.0},
        "best": {"dims": dict(dims), "auc": 0.675, "bytes": budget - 50, "row_masked": {}},
        "evaluations": 20, "fitness_requests": 60, "eval_rows": 600,
        "evolution_seconds": 0.5, "levels": CANDIDATES, "search_seconds": 1.5}
    records = [{"proposal": dict(dims), "dims": dict(dims), "val_auc": 0.6 + 0.01 * i,
                "bytes": budget - 10 * i, "trained": i != 3} for i in range(5)]
    records.append({"proposal": dict(dims), "dims": None, "val_auc": None,
                    "bytes": budget * 2, "trained": False})
    blackbox = {"trials": records, "best_dims": dict(dims), "best_val_auc": 0.64,
                "fields": list(fields), "candidate_dims": CANDIDATES, "search_seconds": 2.0}
    magprune = {"eval": {"val_auc": 0.6, "val_logloss": 0.6, "test_auc": 0.6,
                         "test_logloss": 0.6},
                "nnz": {f: 10 * (i + 1) for i, f in enumerate(fields)},
                "density": {f: 0.1 * (i + 1) for i, f in enumerate(fields)},
                "num_bytes": budget - 5, "search_seconds": 0.5}
    return {"darts": darts, "autodim": autodim, "pep": pep, "sseds": sseds,
            "optembed": optembed, "blackbox": blackbox, "magprune": magprune}


def make_fake_study(folder: Path, *, name: str = "fake", search_trials: int = 12):
    """A :class:`~autodim.study.result.StudyResult` over an in-memory study of fake trials
    on ``synthetic:tiny`` (baselines full/uniform/mde plus ``search_trials`` search trials
    of darts, sseds, pep and optembed), with plan JSON and history files."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from autodim.baselines import baseline_plan
    from autodim.budget import full_bytes, parse_budget
    from autodim.data.synthetic import make_planted
    from autodim.plan import DimensionPlan
    from autodim.study.result import StudyResult

    data = make_planted("tiny", rows=600, seed=0)
    schema = data.schema
    full = full_bytes(schema, D)
    budget = parse_budget("6x", full)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, directions=["maximize", "minimize"],
                                storage=optuna.storages.InMemoryStorage())
    methods = ["darts", "sseds", "pep", "optembed"]
    study.set_user_attr("autodim_space", {"methods": methods, "budgets": {"6x": budget},
                                          "objectives": ["val_auc", "bytes"], "D": D,
                                          "backbone": "fm"})
    study.set_user_attr("autodim_config", {
        "name": name, "dataset": {"source": "synthetic:tiny", "rows": 600}, "backbone": "fm",
        "D": D, "methods": methods, "budgets": ["6x"], "n_trials": search_trials,
        "train": {"epochs": 1}, "search_space": {"candidate_dims": CANDIDATES}})
    study.set_user_attr("full_bytes", full)
    study.set_user_attr("bayes_auc", 0.85)
    histories = fake_histories(schema.names, budget)
    rng = np.random.default_rng(1)
    number = 0

    def add(plan: DimensionPlan, kind: str, method: str, params: dict[str, Any],
            dists: dict[str, Any], auc: float, history: dict[str, Any] | None) -> None:
        nonlocal number
        nbytes = plan.num_bytes()
        attrs: dict[str, Any] = {
            "kind": kind, "method": method, "budget": "6x", "budget_bytes": budget,
            "val_auc": auc, "test_auc": auc - 0.01, "val_logloss": 0.6, "test_logloss": 0.6,
            "bytes": nbytes, "compression": plan.compression(), "feasible": nbytes <= budget,
            "plan": plan.to_dict(), "dims": plan.dims, "memcom": {}}
        if history is not None:
            rel = f"trials/{number:05d}/history.json"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(json.dumps(history), encoding="utf-8")
            attrs["history_file"] = rel
        study.add_trial(optuna.trial.create_trial(
            values=[auc, float(nbytes)], params=params, distributions=dists,
            user_attrs=attrs, constraints={"bytes_over_budget": float(nbytes - budget)}))
        number += 1

    base_dist = {"baseline": CategoricalDistribution(["full", "uniform", "mde"])}
    for b, auc in (("full", 0.70), ("uniform", 0.64), ("mde", 0.66)):
        add(baseline_plan(b, schema, D, budget), "baseline", f"baseline:{b}",
            {"baseline": b}, base_dist, auc, None)
    for i in range(search_trials):
        method = methods[i % len(methods)]
        dims = {n: int(rng.choice(CANDIDATES)) for n in schema.names}
        plan = DimensionPlan.from_dims(schema, D, dims,
                                       searcher={"name": method, "settings": {}})
        lr = float(10 ** rng.uniform(-3.5, -1.5))
        inflate = float(rng.choice([1.0, 2.0]))
        params = {"method": method, f"{method}.lr": lr, "memcom.inflate": inflate}
        dists = {"method": CategoricalDistribution(methods),
                 f"{method}.lr": FloatDistribution(3e-4, 3e-2, log=True),
                 "memcom.inflate": CategoricalDistribution([1.0, 2.0])}
        auc = 0.62 + 0.06 * rng.random() - 0.02 * math.log10(lr * 1000) ** 2
        add(plan, "search", method, params, dists, float(auc), histories[method])
    return StudyResult(study, folder), data
