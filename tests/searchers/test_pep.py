"""PEP: learnable soft thresholds, byte-target snapshots, plans and lottery-ticket warm start."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autodim.budget import full_bytes
from autodim.data.datamodule import CTRDataModule
from autodim.models import create_backbone
from autodim.plan import DimensionPlan, decode_mask
from autodim.searchers import SearchResult, SearchTask, create_searcher, retrain
from autodim.searchers._pep import GRANULARITIES, PEPEmbedding, _PEPTask, mask_bytes
from autodim.task import TrainConfig

D = 8


def _task(data, ratio: float, seed: int = 0, epochs: int = 2) -> SearchTask:
    dm = CTRDataModule(data, batch_size=256, seed=seed)
    return SearchTask(data=dm, D=D, budget_bytes=int(full_bytes(data.schema, D) / ratio),
                      candidate_dims=(1, 2, 4, 8),
                      train=TrainConfig(max_epochs=epochs, batch_size=256, lr=3e-3, seed=seed),
                      seed=seed)


def _batch(data, n: int = 256):
    return (torch.from_numpy(data.train.ids[:n]).long(),
            torch.from_numpy(data.train.labels[:n]).float())


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_soft_threshold_matches_the_formula(tiny_data, granularity):
    torch.manual_seed(0)
    emb = PEPEmbedding(tiny_data.schema, D, granularity=granularity, threshold_init=-4.0)
    with torch.no_grad():
        emb.threshold.uniform_(-5.0, -3.0)
    ids, _ = _batch(tiny_data, 32)
    out = emb(ids)
    assert out.shape == (32, tiny_data.schema.num_fields, D)
    tables = emb.pruned_tables()
    for i, name in enumerate(tiny_data.schema.names):
        # A row's output is its row of the thresholded table: sign(e)·ReLU(|e| − sigmoid(s)).
        assert torch.allclose(out[:, i], tables[name][ids[:, i]], atol=1e-7)
        assert torch.equal(emb.masks()[name], tables[name] != 0)
    counts = emb.column_counts()
    assert counts.sum() == sum(int(m.sum()) for m in emb.masks().values())


def test_threshold_gradient_is_nonzero_and_moves_s(tiny_data):
    torch.manual_seed(0)
    emb = PEPEmbedding(tiny_data.schema, D, granularity="feature_dim", threshold_init=-15.0)
    model = _PEPTask(emb, create_backbone("fm", tiny_data.schema.num_fields, D), lr=1e-2,
                     weight_decay=0.0, threshold_lr=0.1, threshold_pressure=0.0)
    ids, labels = _batch(tiny_data)
    model.loss(model(ids), labels).backward()
    grad = emb.threshold.grad
    assert grad is not None
    # Only the task loss acts here (no pressure): g'(−15) ≈ 3e-7 is tiny but not zero.
    assert float(grad.abs().max()) > 0
    rows = (ids + emb.col_offset).unique()
    assert float(grad[rows].abs().sum()) > 0
    before = emb.threshold.detach().clone()
    (opt,) = model.configure_optimizers()
    opt.step()
    assert not torch.equal(before, emb.threshold.detach())


def test_pressure_raises_undefended_thresholds(tiny_data):
    emb = PEPEmbedding(tiny_data.schema, D, granularity="feature_dim")
    model = _PEPTask(emb, create_backbone("fm", tiny_data.schema.num_fields, D), lr=1e-3,
                     weight_decay=0.0, threshold_lr=0.5, threshold_pressure=1e-3)
    (opt,) = model.configure_optimizers()
    ids, labels = _batch(tiny_data)
    for _ in range(3):
        opt.zero_grad()
        model.loss(model(ids), labels).backward()
        opt.step()
    # Row 0 (OOV) never occurs in training ids: only the pressure moves its threshold.
    assert torch.allclose(emb.threshold[0], torch.full((D,), -15.0 + 1.5), atol=1e-4)


def test_snapshot_mask_reproduces_its_sparsity(tiny_data):
    task = _task(tiny_data, ratio=2.0)
    result = create_searcher("pep", plan_form="sparse", epochs=2, refill=False,
                             drop_uninformative=False).search(task)
    snap = result.history["snapshots"][str(task.budget_bytes)]
    assert snap["reached"] and snap["step"] is not None
    plan = result.plan
    masks = {f.name: decode_mask(f.sparse["bits"], (f.vocab_size, f.dim))
             for f in plan.fields if f.sparse}
    assert sum(int(m.sum()) for m in masks.values()) == snap["nnz"]
    assert plan.num_bytes() == snap["mask_bytes"] <= task.budget_bytes
    # The per-field sparsity logged at the snapshot's step is the plan's.
    k = result.history["steps"].index(snap["step"])
    for f in plan.fields:
        logged = result.history["sparsity"][f.name][k]
        nnz = int(masks[f.name].sum()) if f.name in masks else 0
        assert logged == pytest.approx(1 - nnz / (f.vocab_size * D), abs=1e-9)
    # The mask survives building: the SparseTable of each field keeps exactly those entries.
    built = plan.build()
    for f, module in zip(plan.fields, built.fields):
        if f.sparse:
            assert np.array_equal(module.table.mask.numpy(), masks[f.name])


@pytest.mark.parametrize("plan_form", ["auto", "sparse", "dims"])
def test_plans_fit_every_target(tiny_data, plan_form):
    task = _task(tiny_data, ratio=4.0)
    result = create_searcher("pep", plan_form=plan_form, targets=["8x", "12x"],
                             epochs=2).search(task)
    snaps = result.history["snapshots"]
    assert set(snaps) == {str(task.budget_bytes), str(int(full_bytes(tiny_data.schema, D) / 8)),
                          str(int(full_bytes(tiny_data.schema, D) / 12))}
    for target, snap in snaps.items():
        plan = result.plan if "plan" not in snap else DimensionPlan.from_dict(snap["plan"])
        assert plan.num_bytes() <= int(target)
        assert plan.build().num_bytes() == plan.num_bytes() == snap["plan_bytes"]
        if plan_form != "auto":
            kinds = {"sparse" if f.sparse else "dims" for f in plan.fields if f.dim}
            assert kinds <= {plan_form}


def test_fallback_prunes_to_the_target_and_says_so(tiny_data):
    task = _task(tiny_data, ratio=10.0, epochs=1)
    # No pressure and no budget control: the thresholds barely move in one epoch.
    result = create_searcher("pep", threshold_pressure=0.0, budget_control=False,
                             threshold_lr=1e-3).search(task)
    snap = result.history["snapshots"][str(task.budget_bytes)]
    assert not snap["reached"] and "fallback" in snap
    assert result.plan.num_bytes() <= task.budget_bytes


def test_warm_start_rewinds_kept_weights_to_their_initial_values(tiny_data):
    task = _task(tiny_data, ratio=3.0)
    searcher = create_searcher("pep", epochs=2)
    result = searcher.search(task)
    built = result.plan.build()
    built.load_state_dict(result.warm_start)
    for f, module in zip(result.plan.fields, built.fields):
        if f.dim == 0:
            continue
        w0 = searcher.initial_tables_[f.name]
        weight = module.table.embedding.weight.detach()
        if f.sparse:
            mask = module.table.mask
            assert torch.equal(weight, w0 * mask)
        else:
            cols = f.columns or result.plan.searcher.get("columns", {}).get(
                f.name, list(range(f.dim)))
            assert torch.equal(weight, w0[:, cols])
    metrics = retrain(task, result, warm_start=True).metrics
    assert metrics["num_bytes"] == result.plan.num_bytes()


def test_mask_bytes_counts_the_index_of_non_prefix_columns():
    counts = torch.tensor([[3, 0, 2, 0]])  # one field of 10 rows, columns 0 and 2 survive
    # dims: 10 rows x 2 columns x 4 B + 2 int64 indices (select) or a 2 x 4 map (project);
    # sparse: 5 values x 5 B + 11 x 4 B.
    assert mask_bytes(counts, [10], 4, "dims", "select") == 80 + 16
    assert mask_bytes(counts, [10], 4, "dims", "project") == 80 + 32
    assert mask_bytes(counts, [10], 4, "dims") == 80 + 32
    assert mask_bytes(counts, [10], 4, "sparse") == 25 + 44
    assert mask_bytes(counts, [10], 4, "auto") == 69
    assert mask_bytes(torch.zeros(1, 4, dtype=torch.long), [10], 4, "auto") == 0


def test_bad_settings_raise(tiny_data):
    from autodim.errors import ConfigError

    task = _task(tiny_data, ratio=4.0)
    for bad in ({"granularity": "row"}, {"plan_form": "csr"}, {"rewind": "late"},
                {"threshold_lr": -1.0}):
        with pytest.raises(ConfigError):
            create_searcher("pep", **bad).search(task)


def test_fresh_rewind_gives_no_warm_start(tiny_data):
    task = _task(tiny_data, ratio=4.0, epochs=1)
    result = create_searcher("pep", rewind="fresh").search(task)
    assert isinstance(result, SearchResult) and result.warm_start is None


@pytest.mark.parametrize("form", ["sparse", "dims"])
def test_refill_uses_the_budget_and_keeps_the_snapshot_survivors(tiny_data, form):
    # One step can prune far below the target (the snapshot is the first step at or below
    # it); the refill re-selects by learned margin, so the plan uses >= 95 % of the budget.
    task = _task(tiny_data, ratio=2.0)
    # The field test is off: a dropped field's bytes may rightly stay unspent.
    result = create_searcher("pep", plan_form=form, epochs=2,
                             drop_uninformative=False).search(task)
    plan, snap = result.plan, result.history["snapshots"][str(task.budget_bytes)]
    assert plan.num_bytes() <= task.budget_bytes
    assert plan.num_bytes() >= 0.95 * task.budget_bytes
    assert result.history["budget_used"] >= 0.95
    if "refill" in snap:
        assert snap["plan_bytes"] > snap["refill"]["snapshot_bytes"]
        base = create_searcher("pep", plan_form=form, epochs=2, refill=False,
                               drop_uninformative=False).search(task)
        assert base.plan.num_bytes() < 0.95 * task.budget_bytes  # what the refill fixed
        for fp, bp in zip(plan.fields, base.plan.fields):
            if form == "dims":  # the snapshot's columns are kept (largest margins)
                assert set(bp.columns or range(bp.dim)) <= set(fp.columns or range(fp.dim))


def test_threshold_gradient_has_the_sign_that_defends_a_needed_entry(tiny_data):
    # ê = sign(e)·ReLU(|e| − g(s)): ∂L/∂s = −sign(e)·∂L/∂ê·g'(s) for a surviving entry, 0
    # for a pruned one. A loss that wants an entry larger (∂L/∂|ê| < 0) makes ∂L/∂s > 0,
    # so descent lowers s and the entry survives; one that wants it smaller raises s.
    torch.manual_seed(0)
    emb = PEPEmbedding(tiny_data.schema, D, granularity="feature_dim", threshold_init=-4.0)
    with torch.no_grad():
        emb.weight.weight.normal_(0.0, 0.1)
    ids, _ = _batch(tiny_data, 64)
    out = emb(ids)
    rows = (ids + emb.col_offset)[:, 0]          # field 0's looked-up rows
    e = emb.weight.weight[rows]                   # [B, D]
    want = torch.sign(e).detach()                 # push every |ê| of field 0 up...
    loss = -(out[:, 0] * want).sum() + (out[:, 1] * torch.sign(out[:, 1]).detach()).sum()
    loss.backward()                               # ...and field 1's down
    grad = emb.threshold.grad
    g = torch.sigmoid(emb.threshold.detach())
    alive = (emb.weight.weight.abs() > g).detach()
    lo0, hi0 = emb.bounds[0]
    lo1, hi1 = emb.bounds[1]
    seen0 = torch.unique(rows)
    seen1 = torch.unique((ids + emb.col_offset)[:, 1])
    a0, a1 = alive[seen0], alive[seen1]
    assert (grad[seen0][a0] > 0).all() and a0.any()   # defended: s goes down
    assert (grad[seen1][a1] < 0).all() and a1.any()   # not wanted: s goes up
    assert (grad[seen0][~a0] == 0).all()               # a pruned entry gets no loss gradient
    assert lo0 <= int(seen0.min()) and int(seen0.max()) < hi0 <= lo1


def test_signal_entries_outlive_noise_entries():
    # Four fields of equal size and id frequencies, two with planted signal (rank 8), two pure
    # noise: frequency cannot tell them apart, only the loss can. Under the threshold pressure
    # the loss defends the signal entries, so more of them survive than of the noise fields.
    from autodim.data.synthetic import make_planted

    data = make_planted("tiny", rows=8000, seed=1, cardinalities=[60, 60, 60, 60],
                        ranks=[8, 8, 0, 0], first_order=0.0)
    task = _task(data, ratio=3.0, epochs=3)
    result = create_searcher("pep", plan_form="sparse", refill=False, epochs=3).search(task)
    density = {n: 1 - result.history["sparsity"][n][-1] for n in data.schema.names}
    assert sum(density.values()) < 0.7 * len(density), density  # pruning did happen
    signal = min(density[n] for n in ("f00", "f01"))
    noise = max(density[n] for n in ("f02", "f03"))
    assert signal > noise + 0.05, density  # a flipped threshold gradient inverts this


def test_uninformative_fields_tells_signal_from_noise_and_refuses_an_overfit_model():
    """The backbone reads field 0's vector and ignores field 1's: field 1 is uninformative,
    field 0 is not. A model whose loss is above the label rate's gets no verdict."""
    from autodim.searchers._tables import field_removal_test

    def uninformative_fields(*args):
        return field_removal_test(*args)[0]

    g = torch.Generator().manual_seed(0)
    n = 4000
    x = torch.randn(n, generator=g)
    y = (torch.rand(n, generator=g) < torch.sigmoid(2 * x)).float()
    emb = torch.stack([x, torch.randn(n, generator=g)], 1).unsqueeze(-1)  # [n, 2, 1]

    class Reader(torch.nn.Module):
        def __init__(self, w: float):
            super().__init__()
            self.w = w

        def forward(self, e):
            return self.w * e[:, 0, 0]

    batches = [(emb[i:i + 1000], y[i:i + 1000]) for i in range(0, n, 1000)]
    ident = lambda e: e  # noqa: E731
    assert uninformative_fields(ident, Reader(2.0), batches, ["signal", "noise"]) == ["noise"]
    assert uninformative_fields(ident, Reader(-8.0), batches, ["signal", "noise"]) is None


def test_field_test_ablates_a_field_to_its_mean_not_to_zero():
    """FM reads a noise field's mean vector as a first-order term of the other fields
    (``<m, e_g>``); a model retrained without the field learns that term through ``g``. The
    test must call such a field uninformative: zeroing it would lose the term and keep it."""
    from autodim.searchers._tables import field_removal_test

    g = torch.Generator().manual_seed(0)
    n = 4000
    x = torch.randn(n, generator=g)
    y = (torch.rand(n, generator=g) < torch.sigmoid(2 * x)).float()
    # Field 1's vector is the same for every row (plus a tiny id jitter): no signal.
    noise = 1.0 + 1e-4 * torch.randn(n, generator=g)
    emb = torch.stack([x, noise], 1).unsqueeze(-1)  # [n, 2, 1]

    class Pair(torch.nn.Module):
        def forward(self, e):  # the FM pair term <e_0, e_1> with weight 2
            return 2.0 * (e[:, 0, 0] * e[:, 1, 0])

    batches = [(emb[i:i + 1000], y[i:i + 1000]) for i in range(0, n, 1000)]
    idle, loss = field_removal_test(lambda e: e, Pair(), batches, ["signal", "noise"])
    assert idle == ["noise"]
    assert 0 < loss < math.log(2)


def test_fields_that_fail_the_validation_test_are_dropped_from_the_plan(tiny_data):
    """tiny has two rank-0 fields; whatever the test drops is dim 0 in the plan, its budget
    note says why, and turning the test off keeps those fields."""
    task = _task(tiny_data, ratio=2.0)
    h = (res := create_searcher("pep", epochs=2).search(task)).history
    assert h["field_test"]["result"] == "done", h["field_test"]
    # The verdict is the one of the epoch with the lowest validation log loss.
    losses = h["field_test"]["val_logloss"]
    assert h["field_test"]["epoch"] == 1 + losses.index(min(losses))
    idle = h["dropped_uninformative"]
    assert idle and set(idle) <= {"f03", "f04"}, idle  # only rank-0 fields
    assert all(res.plan.dims[n] == 0 for n in idle)
    off = create_searcher("pep", epochs=2, drop_uninformative=False).search(task)
    assert any(off.plan.dims[n] > 0 for n in idle)


def test_equal_scores_pick_the_form_with_fewer_bytes():
    """Keeping every entry, the sparse and the dims form keep the same score (summed in a
    different order); the cheaper form wins, and a real score gap still decides."""
    from types import SimpleNamespace

    from autodim.searchers._pep import _better_form

    plan = lambda b: SimpleNamespace(num_bytes=lambda: b)  # noqa: E731
    assert _better_form({"sparse": (10.0 + 1e-12, plan(85)), "dims": (10.0, plan(65))}) == "dims"
    assert _better_form({"sparse": (11.0, plan(85)), "dims": (10.0, plan(65))}) == "sparse"
