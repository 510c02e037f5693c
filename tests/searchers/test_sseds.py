"""SSEDS: column saliency, byte-aware column dropping, plans and warm start."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from autodim.budget import full_bytes
from autodim.data.datamodule import CTRDataModule
from autodim.errors import BudgetError
from autodim.plan import DimensionPlan
from autodim.searchers import SearchTask, create_searcher, retrain
from autodim.searchers._sseds import column_saliency
from autodim.searchers._tables import full_tables, select_bytes, select_columns, train_full_model
from autodim.task import TrainConfig

D = 8


def _task(data, ratio: float | None = 4.0, seed: int = 0) -> SearchTask:
    dm = CTRDataModule(data, batch_size=256, seed=seed)
    budget = None if ratio is None else int(full_bytes(data.schema, D) / ratio)
    return SearchTask(data=dm, D=D, budget_bytes=budget, candidate_dims=(1, 2, 4, 8),
                      train=TrainConfig(max_epochs=1, batch_size=256, lr=3e-3, seed=seed),
                      seed=seed)


@pytest.fixture(scope="module")
def trained(tiny_data):
    """A full D=8 model trained for one epoch, with field f03 disconnected (zeroed)."""
    result = train_full_model(_task(tiny_data))
    with torch.no_grad():
        result.task.embedding.fields[3].table.embedding.weight.zero_()
    return result


def test_saliency_of_an_ignored_field_is_zero(tiny_data, trained):
    task = _task(tiny_data)
    sal = column_saliency(trained.task, task.data.val_dataloader())
    assert sal.shape == (tiny_data.schema.num_fields, D)
    # ∂L/∂m_fj = Σ ∂L/∂ê_fj · e_fj vanishes when the field's embedding is zero.
    assert np.all(sal[3] == 0)
    assert np.all(sal[[0, 1, 2]].sum(1) > 0)


def test_ignored_field_loses_its_columns_first(tiny_data, trained):
    task = _task(tiny_data, ratio=3.0)
    result = create_searcher("sseds").search(task, pretrained=trained)
    kept = result.history["kept_columns"]
    assert len(kept["f03"]) == 1  # every field keeps >= 1 column by default
    assert all(len(kept[n]) >= 1 for n in tiny_data.schema.names)
    sal = np.array(result.history["saliency"])
    assert sal.sum() == pytest.approx(1.0)  # "global" normalisation: shares of the total
    assert result.plan.num_bytes() <= task.budget_bytes
    # With fields allowed to go, a tight budget removes the disconnected field entirely.
    small = _task(tiny_data, ratio=12.0)
    result = create_searcher("sseds", allow_drop_fields=True).search(small, pretrained=trained)
    assert result.plan["f03"].dim == 0
    assert result.plan.num_bytes() <= small.budget_bytes


def test_a_column_costs_its_fields_rows():
    # Dropping one column of a 1000-row field saves 4000 bytes (a prefix needs no index)...
    assert select_bytes(1000, [0, 1, 2, 3], 4) - select_bytes(1000, [0, 1, 2], 4) == 4000
    # ...and a non-prefix column set stores one int64 index per kept column.
    assert select_bytes(1000, [1, 2, 3], 4) == 12000 + 3 * 8
    rows = {"big": 1000, "small": 10}
    scores = {"big": np.array([4.0, 3.0, 2.0, 1.0]), "small": np.full(4, 0.1)}
    full = select_bytes(1000, range(4), 4) + select_bytes(10, range(4), 4)
    kept = select_columns(rows, 4, scores, full - 4000)
    # Per byte, big's weakest column (1 / 4000 B) is worth less than small's (0.1 / 40 B).
    assert kept == {"big": [0, 1, 2], "small": [0, 1, 2, 3]}
    # Ranked by raw saliency instead, small's columns go first, but dropping all of them
    # cannot free 4000 bytes; big still loses one and small's are refilled.
    kept = select_columns(rows, 4, scores, full - 4000, per_byte=False)
    assert kept["big"] == [0, 1, 2] and len(kept["small"]) >= 3


def test_plan_bytes_match_and_fit(tiny_data, trained):
    for ratio in (2.0, 4.0, 6.0):
        task = _task(tiny_data, ratio=ratio)
        result = create_searcher("sseds", align="select").search(task, pretrained=trained)
        plan = result.plan
        assert plan.num_bytes() <= task.budget_bytes
        assert plan.build().num_bytes() == plan.num_bytes()
        expected = sum(select_bytes(f.vocab_size, result.history["kept_columns"][f.name], D)
                       for f in tiny_data.schema.fields)
        assert plan.num_bytes() == expected
        assert all(f.align == "select" for f in plan.fields)
        DimensionPlan.from_json(plan.to_json())  # survives a round trip


def test_infeasible_budget_raises_unless_fields_may_go(tiny_data, trained):
    task = _task(tiny_data, ratio=40.0)  # below one column per field
    with pytest.raises(BudgetError, match="smallest feasible budget .* adding 0"):
        create_searcher("sseds").search(task, pretrained=trained)
    result = create_searcher("sseds", allow_drop_fields=True).search(task, pretrained=trained)
    assert result.plan.num_bytes() <= task.budget_bytes


def test_field_normalisation_sums_to_one_per_field(tiny_data, trained):
    task = _task(tiny_data)
    result = create_searcher("sseds", normalize="field").search(task, pretrained=trained)
    sal = np.array(result.history["saliency"])
    live = [0, 1, 2, 4]
    assert np.allclose(sal[live].sum(1), 1.0)
    assert np.all(sal[3] == 0)


def test_warm_start_holds_the_trained_kept_columns(tiny_data, trained):
    task = _task(tiny_data)
    result = create_searcher("sseds", align="select", warm_retrain=True).search(
        task, pretrained=trained)
    tables = full_tables(trained.task)
    built = result.plan.build()
    built.load_state_dict(result.warm_start)
    for f, module in zip(result.plan.fields, built.fields):
        assert torch.equal(module.table.embedding.weight, tables[f.name][:, f.columns])
    metrics = retrain(task, result, warm_start=True).metrics
    assert metrics["num_bytes"] == result.plan.num_bytes()


def test_search_trains_its_own_model_when_none_is_given(tiny_data):
    task = _task(tiny_data, ratio=4.0)
    result = create_searcher("sseds", epochs=1, max_batches=2).search(task)
    assert result.history["full_model"]["val_auc"] > 0.5
    assert result.plan.metrics["val_auc"] == result.history["full_model"]["val_auc"]


class _IgnoreField(torch.nn.Module):
    """A backbone that reads every field but ``field`` (its input is multiplied by 0)."""

    def __init__(self, inner: torch.nn.Module, field: int):
        super().__init__()
        self.inner, self.field = inner, field

    def forward(self, emb):
        keep = torch.ones(emb.shape[1], 1, device=emb.device)
        keep[self.field] = 0.0
        return self.inner(emb * keep)


def test_saliency_is_zero_for_a_field_the_backbone_ignores(tiny_data):
    # The field's embedding stays non-zero (trained), only the backbone does not read it:
    # saliency must measure what the loss depends on, not how large the weights are.
    result = train_full_model(_task(tiny_data))
    model = result.task
    assert model.embedding.fields[1].table.embedding.weight.abs().sum() > 0
    model.backbone = _IgnoreField(model.backbone, 1)
    sal = column_saliency(model, _task(tiny_data).data.val_dataloader())
    assert np.allclose(sal[1], 0.0, atol=1e-12)
    assert np.all(sal[[0, 2]].sum(1) > 1e-6)
    # ...and given 0 among the candidates, the plan drops that field.
    task = replace(_task(tiny_data, ratio=3.0), candidate_dims=(0, 1, 2, 4, 8))
    plan = create_searcher("sseds").search(task, pretrained=model).plan
    assert plan["f01"].dim == 0 and plan["f02"].dim > 0


def test_retrains_from_scratch_by_default_and_honours_candidate_dims(tiny_data, trained):
    task = replace(_task(tiny_data, ratio=6.0), candidate_dims=(0, 2, 8))
    result = create_searcher("sseds").search(task, pretrained=trained)
    assert result.warm_start is None  # the paper retrains from scratch
    assert set(result.plan.dims.values()) <= {0, 2, 8}
    assert all(f.align in ("project", "select") for f in result.plan.fields)
    assert result.plan["f03"].dim == 0  # zeroed field: no saliency, dropped
    assert result.plan.num_bytes() <= task.budget_bytes
    assert result.history["budget_used"] >= 0.9 or result.history["warnings"]


def test_project_warm_start_reproduces_the_measured_subspace(tiny_data, trained):
    # The knapsack valued dim d of a field by the loss with the field's embedding on its top-d
    # principal directions V_d; the warm start (table W·V_d, projection V_dᵀ) is that model.
    task = _task(tiny_data, ratio=3.0)
    result = create_searcher("sseds", warm_retrain=True).search(task, pretrained=trained)
    built = result.plan.build()
    built.load_state_dict(result.warm_start)
    ids, _ = next(iter(task.data.val_dataloader()))
    with torch.no_grad():
        full = trained.task.embedding(ids)
        out = built(ids)
        for i, fp in enumerate(result.plan.fields):
            v = torch.tensor(result.history["subspaces"][i])[:, :fp.dim]
            assert torch.allclose(out[:, i], full[:, i] @ v @ v.T, atol=1e-5)


def test_refit_scores_a_reference_trained_without_the_idle_fields(tiny_data):
    # Two epochs: the full model beats the label rate, so the field test gives a verdict.
    task = replace(_task(tiny_data), candidate_dims=(0, 1, 2, 4, 8))
    task = replace(task, train=replace(task.train, max_epochs=2, patience=2))
    noise = ["f03", "f04"]  # the preset's planted noise fields
    result = create_searcher("sseds").search(task)
    test = result.history["field_test"]
    assert test["idle"] == noise and test["refit"] is True
    assert all(result.plan[n].dim == 0 for n in noise)
    raw = np.array(result.history["saliency_raw"])
    # Scored on the refit reference: the idle fields are not in it, the others are.
    assert np.all(raw[[3, 4]] == 0) and np.all(raw[[0, 1, 2]].sum(1) > 0)
    assert result.history["full_model"] == test["reference"]
    # Without the refit the one full model is scored, idle fields and all.
    plain = create_searcher("sseds", refit=False).search(task)
    assert plain.history["field_test"] is None
    assert np.all(np.array(plain.history["saliency_raw"])[[3, 4]].sum(1) > 0)
    # The warm start reads the refit reference's tables, dropped fields left out.
    warm = create_searcher("sseds", warm_retrain=True).search(task)
    built = warm.plan.build()
    built.load_state_dict(warm.warm_start)


def test_a_plan_under_the_budget_says_why_only_when_measured():
    sseds = create_searcher("sseds")
    task = SearchTask(data=None, D=D, budget_bytes=1000, candidate_dims=(0, 1, 2))
    costs = [[0, 100, 200], [0, 100, 200]]
    worse = np.array([[-0.7, -0.6, -0.65], [-0.7, -0.6, -0.62]])  # dim 2 loses to dim 1
    assert "raises" in sseds._why_less(task, 200, [1, 1], worse, costs)
    tie = worse.copy()
    tie[1, 2] = -0.6  # as good as dim 1: no measured reason to leave the bytes unused
    assert sseds._why_less(task, 200, [1, 1], tie, costs) is None
    assert sseds._why_less(task, 960, [1, 1], tie, costs) is None  # uses >= 95 %
    # A larger candidate that does not fit the spare bytes is no reason either way.
    assert "raises" in sseds._why_less(task, 200, [1, 1], tie, [[0, 100, 200], [0, 100, 2000]])
