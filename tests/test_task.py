"""CTRTask / train_plan: learning, early stopping, determinism, sparse optimiser, divergence."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from autodim.data.datamodule import CTRDataModule, TensorBatches
from autodim.models import create_backbone, list_backbones
from autodim.plan import DimensionPlan
from autodim.task import CTRTask, TrainConfig, TrainingDiverged, make_optimizers, train_plan

CFG = TrainConfig(max_epochs=3, batch_size=256, lr=5e-3, patience=1)


@pytest.mark.parametrize("backbone", list_backbones())
def test_every_backbone_learns(backbone, tiny_data):
    dm = CTRDataModule(tiny_data, batch_size=256)
    plan = DimensionPlan.full(tiny_data.schema, 8)
    m = train_plan(plan, dm, backbone=backbone, config=CFG).metrics
    assert m["test_auc"] > 0.6, m
    assert m["num_bytes"] == plan.num_bytes()
    assert math.isclose(m["compression"], 1.0)
    assert {"val_auc", "val_logloss", "test_logloss", "epochs", "samples_per_s"} <= set(m)


def test_same_seed_same_metrics(tiny_data):
    plan = DimensionPlan.from_dims(tiny_data.schema, 8, [2, 4, 8, 1, 1])
    a = train_plan(plan, CTRDataModule(tiny_data, batch_size=256), config=CFG).metrics
    b = train_plan(plan, CTRDataModule(tiny_data, batch_size=256), config=CFG).metrics
    assert a["test_auc"] == b["test_auc"] and a["test_logloss"] == b["test_logloss"]


def test_early_stopping_stops_before_max_epochs(tiny_data):
    dm = CTRDataModule(tiny_data, batch_size=256)
    plan = DimensionPlan.full(tiny_data.schema, 16)  # overfits the noise fields quickly
    cfg = TrainConfig(max_epochs=40, batch_size=256, lr=3e-2, patience=1)
    m = train_plan(plan, dm, config=cfg).metrics
    assert m["epochs"] < 40


def test_backbones_take_batch_fields_dim():
    emb = torch.randn(5, 3, 4)
    for name in list_backbones():
        assert create_backbone(name, 3, 4)(emb).shape == (5,)


def test_sparse_tables_get_a_row_wise_optimiser(tiny_data):
    plan = DimensionPlan.full(tiny_data.schema, 8)
    emb = plan.build(sparse_threshold=100)  # the two noise fields (>100 rows) go sparse
    task = CTRTask(emb, create_backbone("fm", 5, 8))
    opts = make_optimizers(task, 1e-3)
    kinds = sorted(type(o).__name__ for o in opts)
    assert kinds == ["Adam", "RowWiseAdam"]
    sparse_params = opts[[type(o).__name__ for o in opts].index("RowWiseAdam")].param_groups[0]
    assert len(sparse_params["params"]) == 2
    opts = make_optimizers(task, 1e-3, sparse_optimizer="sparse_adam")
    assert sorted(type(o).__name__ for o in opts) == ["Adam", "SparseAdam"]


def test_training_with_sparse_tables_learns(tiny_data):
    dm = CTRDataModule(tiny_data, batch_size=256)
    plan = DimensionPlan.full(tiny_data.schema, 8)
    cfg = TrainConfig(max_epochs=3, batch_size=256, lr=5e-3, sparse_threshold=100)
    assert train_plan(plan, dm, config=cfg).metrics["test_auc"] > 0.6


def test_divergence_is_reported(tiny_data):
    import dataclasses

    import numpy as np

    bad = dataclasses.replace(tiny_data, train=dataclasses.replace(
        tiny_data.train, labels=np.full(len(tiny_data.train), np.nan, dtype=np.float32)))
    plan = DimensionPlan.full(tiny_data.schema, 8)
    cfg = TrainConfig(max_epochs=2, batch_size=256)
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        train_plan(plan, CTRDataModule(bad, batch_size=256), config=cfg)


def test_batches_are_slices_with_seeded_shuffling(tiny_data):
    a = TensorBatches(tiny_data.train, 100, shuffle=True, seed=1)
    b = TensorBatches(tiny_data.train, 100, shuffle=True, seed=1)
    xa, ya = next(iter(a))
    xb, yb = next(iter(b))
    assert xa.dtype == torch.long and xa.shape == (100, 5)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x2, _ = next(iter(a))  # the next epoch reshuffles
    assert not torch.equal(xa, x2)
    assert len(a) == math.ceil(len(tiny_data.train) / 100)


def test_reused_datamodule_is_reproducible(tiny_data):
    dm = CTRDataModule(tiny_data, batch_size=256)
    plan = DimensionPlan.from_dims(tiny_data.schema, 8, [2, 4, 8, 1, 1])
    cfg = TrainConfig(max_epochs=1, batch_size=256, lr=5e-3)
    a = train_plan(plan, dm, config=cfg).metrics["test_auc"]
    b = train_plan(plan, dm, config=cfg).metrics["test_auc"]
    assert a == b


def test_max_steps_counts_batches_with_sparse_tables(tiny_data):
    from lightning.pytorch.callbacks import Callback

    from autodim.task import make_trainer

    task = CTRTask(DimensionPlan.full(tiny_data.schema, 8).build(sparse_threshold=100),
                   create_backbone("fm", 5, 8))
    assert len(task.configure_optimizers()) == 2
    seen = []

    class Count(Callback):
        def on_train_batch_end(self, *args, **kwargs):
            seen.append(1)

    trainer = make_trainer(TrainConfig(max_epochs=5, max_steps=7), [Count()],
                           limit_val_batches=0)
    dm = CTRDataModule(tiny_data, batch_size=256)
    trainer.fit(task, train_dataloaders=dm.train_dataloader())
    assert len(seen) == 7 and trainer.global_step == 7


def test_batches_per_call_trains_the_same_model(tiny_data, monkeypatch):
    """train_plan hands chunks of batches to one Lightning step (batches_per_call): every
    batch is still one optimiser step in the same order, so the weights are bit-identical
    to batch-by-batch training; max_steps holds inside a chunk; a callback with per-batch
    hooks, or limit_train_batches, turns chunking off (it sees every batch)."""
    from lightning.pytorch.callbacks import Callback

    import autodim.task as task_mod
    from autodim.errors import AutodimError

    chunked = []
    real_fit = task_mod._fit

    def spy(trainer, task, dm, *, batches_per_call=1):
        chunked.append(batches_per_call)
        return real_fit(trainer, task, dm, batches_per_call=batches_per_call)

    monkeypatch.setattr(task_mod, "_fit", spy)
    plan = DimensionPlan.from_dims(tiny_data.schema, 8, [2, 4, 8, 1, 1])
    runs = {}
    for k in (1, 3):
        cfg = TrainConfig(max_epochs=3, batch_size=256, lr=5e-3, patience=1, batches_per_call=k)
        runs[k] = train_plan(plan, CTRDataModule(tiny_data, batch_size=256), config=cfg,
                             test=False)
    assert chunked == [1, 3]
    a, b = (runs[k].task.state_dict() for k in (1, 3))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert runs[1].metrics["val_auc"] == runs[3].metrics["val_auc"]
    assert runs[1].metrics["epochs"] == runs[3].metrics["epochs"]
    # max_steps inside a chunk: 7 steps of 8-batch chunks
    short = TrainConfig(max_epochs=2, max_steps=7, batch_size=256, batches_per_call=8)
    r = train_plan(plan, CTRDataModule(tiny_data, batch_size=256), config=short, test=False)
    assert round(r.metrics["samples_per_s"] * r.metrics["train_seconds"] / 256) == 7
    seen = []

    class Count(Callback):
        def on_train_batch_end(self, *args, **kwargs):
            seen.append(1)

    dm = CTRDataModule(tiny_data, batch_size=256)
    train_plan(plan, dm, config=replace(short, max_steps=-1, max_epochs=1), test=False,
               callbacks=[Count()])
    assert chunked[-1] == 1 and len(seen) == len(dm.train_dataloader())
    train_plan(plan, dm, config=replace(short, limit_train_batches=0.5), test=False)
    assert chunked[-1] == 1
    with pytest.raises(AutodimError, match="batches_per_call=0"):
        train_plan(plan, dm, config=replace(short, batches_per_call=0), test=False)


def test_a_run_shorter_than_one_epoch_still_reports(tiny_data):
    dm = CTRDataModule(tiny_data, batch_size=256)
    cfg = TrainConfig(max_epochs=1, max_steps=3, batch_size=256)
    m = train_plan(DimensionPlan.full(tiny_data.schema, 8), dm, config=cfg).metrics
    assert 0.0 < m["val_auc"] <= 1.0 and 0.0 < m["test_auc"] <= 1.0


def test_rowwise_adam_updates_only_touched_rows_by_its_formula():
    from autodim.task import RowWiseAdam

    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = RowWiseAdam(emb.parameters(), lr=0.1)
    before = emb.weight.detach().clone()
    ids = torch.tensor([1, 4, 4, 7])
    for step in (1, 2):
        opt.zero_grad()
        prev = emb.weight.detach().clone()
        (emb(ids) * torch.arange(1.0, 4.0)).sum().backward()
        g = emb.weight.grad.coalesce().to_dense()
        opt.step()
        untouched = torch.ones(10, dtype=torch.bool)
        untouched[ids] = False
        assert torch.equal(emb.weight[untouched], before[untouched])  # rows not in the batch
        st = opt.state[emb.weight]
        assert st["exp_avg"].shape == (10, 3) and st["exp_avg_sq"].shape == (10,)
        if step == 1:  # Adam's first step with a per-row second moment
            m, v = 0.1 * g, 0.001 * g.pow(2).mean(1)
            expect = prev - 0.1 * (m / 0.1) / ((v / 0.001).sqrt() + 1e-8).unsqueeze(1)
            rows = torch.tensor([1, 4, 7])
            torch.testing.assert_close(emb.weight[rows], expect[rows])
            # the first moment is stored in bfloat16 (computed in float32)
            assert st["exp_avg"].dtype == torch.bfloat16
            assert torch.equal(st["exp_avg"][rows], m[rows].bfloat16())
    assert not torch.equal(emb.weight[ids], before[ids])
    exact = RowWiseAdam(emb.parameters(), lr=0.1, moment_dtype=torch.float32)
    emb.zero_grad()
    emb(ids).sum().backward()
    exact.step()
    assert exact.state[emb.weight]["exp_avg"].dtype == torch.float32


def test_rowwise_adam_finds_duplicate_rows_without_coalescing():
    """Steps from autodim's slot-based deduplication equal steps from coalesced gradients."""
    from autodim.task import RowWiseAdam

    torch.manual_seed(0)
    a = torch.nn.Embedding(500, 4, sparse=True)
    b = torch.nn.Embedding(500, 4, sparse=True, _weight=a.weight.detach().clone())
    opt_a, opt_b = RowWiseAdam(a.parameters(), lr=0.05), RowWiseAdam(b.parameters(), lr=0.05)
    for _ in range(3):
        ids = torch.randint(0, 500, (300,))
        ids[:100] = ids[:100] % 7  # many repeats
        w = torch.randn(300, 4)
        for emb, opt, coalesce in ((a, opt_a, False), (b, opt_b, True)):
            opt.zero_grad()
            (emb(ids) * w).sum().backward()
            if coalesce:
                emb.weight.grad = emb.weight.grad.coalesce()
            assert emb.weight.grad.is_coalesced() == coalesce
            opt.step()
        torch.testing.assert_close(a.weight, b.weight, atol=1e-6, rtol=1e-5)
    assert "slot" in opt_a.state[a.weight] and "slot" not in opt_b.state[b.weight]


def test_rowwise_adam_training_learns(tiny_data):
    dm = CTRDataModule(tiny_data, batch_size=256)
    plan = DimensionPlan.full(tiny_data.schema, 8)
    cfg = TrainConfig(max_epochs=3, batch_size=256, lr=5e-3, sparse_threshold=0)
    res = train_plan(plan, dm, config=cfg)
    assert res.metrics["test_auc"] > 0.6


def test_optimizer_state_is_released_after_training(tiny_data):
    import gc
    import weakref

    from lightning.pytorch.callbacks import Callback

    refs = []

    class Grab(Callback):
        def on_train_end(self, trainer, pl_module):
            refs.extend(weakref.ref(getattr(o, "optimizer", o)) for o in trainer.optimizers)

    dm = CTRDataModule(tiny_data, batch_size=256)
    cfg = TrainConfig(max_epochs=2, batch_size=256, sparse_threshold=100)
    for restore in (True, False):
        refs.clear()
        res = train_plan(DimensionPlan.full(tiny_data.schema, 8), dm, callbacks=[Grab()],
                         config=TrainConfig(**{**cfg.to_dict(), "restore_best": restore}))
        gc.collect()
        assert len(refs) == 2 and all(r() is None for r in refs), restore
        assert res.task.trainer.strategy.optimizers == []


def test_restore_best_reloads_the_best_epoch_from_disk(tiny_data):
    import os

    from lightning.pytorch.callbacks import Callback

    from autodim.task import RestoreBest

    snapshots = {}

    class Snap(Callback):
        def on_validation_end(self, trainer, pl_module):
            snapshots[trainer.current_epoch] = {k: v.clone() for k, v in
                                                pl_module.state_dict().items()}

    best = RestoreBest()
    seen_paths = []

    class Path(Callback):
        def on_validation_end(self, trainer, pl_module):
            seen_paths.append(best.path)

    dm = CTRDataModule(tiny_data, batch_size=256)
    plan = DimensionPlan.full(tiny_data.schema, 16)
    cfg = TrainConfig(max_epochs=8, batch_size=256, lr=2e-2, patience=3, restore_best=False,
                      sparse_threshold=100)
    res = train_plan(plan, dm, config=cfg, callbacks=[Snap(), best, Path()])
    assert best.best_epoch >= 0 and len(snapshots) > best.best_epoch + 1  # a later epoch lost
    state = res.task.state_dict()
    for k, v in snapshots[best.best_epoch].items():
        assert torch.equal(state[k], v), k
    last = snapshots[max(snapshots)]
    assert any(not torch.equal(state[k], v) for k, v in last.items())
    assert best.path is None and seen_paths[0] and not os.path.exists(seen_paths[0])


def test_train_plan_hands_back_the_per_field_layer(tiny_data):
    from autodim.embeddings.compact import FieldwiseEmbedding
    from autodim.embeddings.fused import FusedEmbedding

    dm = CTRDataModule(tiny_data, batch_size=256)
    plan = DimensionPlan.full(tiny_data.schema, 8)
    assert isinstance(plan.build(fused=True), FusedEmbedding)
    res = train_plan(plan, dm, config=TrainConfig(max_epochs=1, batch_size=256))
    emb = res.task.embedding
    assert type(emb) is FieldwiseEmbedding and emb.num_bytes() == plan.num_bytes()
    rebuilt = plan.build_model("fm", weights=res.task.state_dict())
    x = next(iter(dm.test_dataloader()))[0]
    res.task.eval()
    assert torch.allclose(rebuilt(x), res.task(x), atol=1e-6)
