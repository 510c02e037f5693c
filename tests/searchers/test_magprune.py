"""magprune: global magnitude pruning of a trained table, evaluated without retraining."""

from __future__ import annotations

import torch

from autodim.budget import full_bytes
from autodim.data.datamodule import CTRDataModule
from autodim.embeddings.tables import sparse_table_bytes
from autodim.searchers import SearchTask, create_searcher
from autodim.searchers._tables import full_tables, magnitude_masks, train_full_model
from autodim.task import TrainConfig, evaluate


def test_keeps_the_largest_magnitudes_globally():
    a = torch.tensor([[5.0, -0.1], [0.2, -3.0]])
    b = torch.tensor([[-4.0, 0.3], [0.05, 0.0]])
    # Room for 4 values: 4 x 5 B + row pointers of both fields (3 x 4 B each).
    budget = 4 * 5 + 2 * sparse_table_bytes(2, 2, 0)
    masks = magnitude_masks({"a": a, "b": b}, 2, budget)
    assert masks["a"].tolist() == [[True, False], [False, True]]   # 5, -3
    assert masks["b"].tolist() == [[True, True], [False, False]]   # -4, 0.3
    # One byte less: the smallest kept value (0.3) goes.
    masks = magnitude_masks({"a": a, "b": b}, 2, budget - 1)
    assert int(masks["b"].sum()) == 1 and masks["b"][0, 0]
    # Zeros are never kept, even with room to spare.
    masks = magnitude_masks({"a": a, "b": b}, 2, None)
    assert not masks["b"][1, 1] and int(masks["a"].sum()) == 4


def test_a_field_without_survivors_costs_nothing():
    big = torch.full((100, 2), 0.01)
    small = torch.tensor([[1.0, 2.0]])
    # The big field's row pointers alone (404 B) exceed the budget: only `small` survives.
    masks = magnitude_masks({"big": big, "small": small}, 2, 100)
    assert not masks["big"].any() and masks["small"].all()
    # Even when the big field holds the largest value: its row pointers cannot be paid,
    # so it is skipped and the budget goes to the next entries.
    big[0, 0] = 9.0
    masks = magnitude_masks({"big": big, "small": small}, 2, 100)
    assert not masks["big"].any() and masks["small"].all()


def test_search_prunes_to_budget_and_reports_unretrained_quality(tiny_data):
    D = 8
    dm = CTRDataModule(tiny_data, batch_size=256, seed=0)
    task = SearchTask(data=dm, D=D, budget_bytes=int(full_bytes(tiny_data.schema, D) / 4),
                      candidate_dims=(1, 2, 4, 8),
                      train=TrainConfig(max_epochs=1, batch_size=256, lr=3e-3))
    trained = train_full_model(task)
    original = {n: t.clone() for n, t in full_tables(trained.task).items()}
    searcher = create_searcher("magprune")
    result = searcher.search(task, pretrained=trained)
    plan = result.plan
    assert plan.num_bytes() <= task.budget_bytes
    assert plan.build().num_bytes() == plan.num_bytes()
    assert all(f.sparse is not None or f.dim == 0 for f in plan.fields)
    ev = result.history["eval"]
    assert set(ev) >= {"val_auc", "test_auc", "test_logloss"}
    assert ev["test_auc"] == evaluate(searcher.model_, dm.test_dataloader())["auc"]
    # Every kept entry is at least as large as every pruned one, over all fields together
    # (the fields that keep any entry: a field whose row pointers do not fit is skipped).
    built = plan.build()
    built.load_state_dict(result.warm_start)
    kept, dropped = [], []
    for f, module in zip(plan.fields, built.fields):
        if not f.dim:
            continue
        w = original[f.name].abs()
        mask = module.table.mask
        kept.append(w[mask])
        dropped.append(w[~mask])
        # The warm start is the trained table under the mask.
        assert torch.equal(module.table.embedding.weight, original[f.name] * mask)
    assert torch.cat(kept).min() >= torch.cat(dropped).max()
