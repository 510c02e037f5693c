"""DARTS (AutoEmb) and AutoDim searchers and their shared supernet (``_supernet``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autodim.budget import full_bytes, min_feasible_bytes
from autodim.data.datamodule import CTRDataModule, TensorBatches
from autodim.data.schema import Field, Schema
from autodim.embeddings.field import mean_pool
from autodim.errors import BudgetError, ConfigError
from autodim.models import create_backbone
from autodim.searchers import SearchTask, create_searcher
from autodim.searchers._supernet import (
    BilevelSearch,
    BilevelSettings,
    CandidateLift,
    FusedFieldTable,
    SupernetEmbedding,
    frequency_group_rows,
    tail_scores,
    tau_schedule,
)
from autodim.task import TrainConfig

CANDS = (1, 2, 4, 8)
FAST = {"epochs": 2, "warmup_epochs": 0, "log_every": 2}


def _task(data, budget: int | None, seed: int = 0, epochs: int = 2) -> SearchTask:
    return SearchTask(data=CTRDataModule(data, batch_size=256, seed=seed), D=8,
                      budget_bytes=budget, candidate_dims=CANDS,
                      train=TrainConfig(max_epochs=epochs, batch_size=256, lr=3e-3, seed=seed),
                      seed=seed)


def _module(data, *, gumbel: bool = False, weight_sharing: bool = False, **settings):
    torch.manual_seed(0)
    emb = SupernetEmbedding(data.schema, 8, CANDS, weight_sharing=weight_sharing)
    st = BilevelSettings(lr=1e-2, arch_lr=0.05, gumbel=gumbel,
                         budget_bytes=int(full_bytes(data.schema, 8) / 6), **settings)
    module = BilevelSearch(emb, create_backbone("fm", data.schema.num_fields, 8),
                           TensorBatches(data.val, 256, shuffle=True, seed=1), st)
    opts = module.configure_optimizers()
    return module, opts[:-1], opts[-1]


def _snapshot(module: BilevelSearch) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    weights = [p.detach().clone() for p in module.weight_parameters()]
    stats = [b.clone() for n, b in module.named_buffers() if "running" in n]
    return weights, module.embedding.logits.detach().clone(), stats


# -- the bilevel alternation ------------------------------------------------------------
@pytest.mark.parametrize("gumbel", [False, True])
def test_alpha_moves_only_on_validation_steps_and_weights_only_on_train_steps(tiny_data,
                                                                              gumbel):
    module, weight_opts, arch_opt = _module(tiny_data, gumbel=gumbel, weight_sharing=gumbel)
    train = iter(TensorBatches(tiny_data.train, 256, shuffle=True, seed=0))
    module.weight_step(next(train), weight_opts)  # BN running stats leave their init

    w0, a0, s0 = _snapshot(module)
    module.arch_step(next(train), module._next_val_batch(), arch_opt)
    w1, a1, s1 = _snapshot(module)
    assert not torch.equal(a0, a1), "the α step did not move α"
    assert all(torch.equal(x, y) for x, y in zip(w0, w1)), "the α step moved weights"
    assert all(torch.equal(x, y) for x, y in zip(s0, s1)), "the α step moved BN statistics"

    module.embedding.logits.grad = None
    module.weight_step(next(train), weight_opts)
    w2, a2, _ = _snapshot(module)
    assert torch.equal(a1, a2), "the weight step moved α"
    assert module.embedding.logits.grad is None, "a gradient reached α on a weight step"
    assert sum(not torch.equal(x, y) for x, y in zip(w1, w2)) >= 3


def test_second_order_with_zero_xi_equals_first_order(tiny_data):
    """DARTS eq. 7 with ξ = 0 is the first-order gradient (w' = w, no Hessian term)."""
    batch = next(iter(TensorBatches(tiny_data.train, 256, shuffle=True, seed=0)))
    grads = []
    for second in (False, True):
        module, weight_opts, _ = _module(tiny_data, second_order=second, xi=0.0, penalty=False)
        module.weight_step(batch, weight_opts)
        val = module._next_val_batch()
        torch.manual_seed(1)
        if second:
            g, _ = module._second_order_grad(batch, val)
        else:
            g = torch.autograd.grad(module.loss(*val), [module.embedding.logits])[0]
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["darts", "autodim"])
def test_second_order_search_runs(tiny_data, name):
    task = _task(tiny_data, int(full_bytes(tiny_data.schema, 8) / 4), epochs=1)
    task.train.max_steps = 6  # second-order α steps cost ~4 forward/backward passes
    searcher = create_searcher(name, second_order=True, **{**FAST, "epochs": 1})
    called = []
    original = BilevelSearch._second_order_grad

    def spy(self, *a):
        called.append(1)
        return original(self, *a)

    BilevelSearch._second_order_grad = spy
    try:
        result = searcher.search(task)
    finally:
        BilevelSearch._second_order_grad = original
    assert called, "second_order=True did not use the second-order α gradient"
    assert result.history["total_steps"] == 6
    assert result.plan.num_bytes() <= task.budget_bytes
    assert all(np.isfinite(v) for a in result.history["alpha"].values() for v in a[-1])


def test_tau_follows_its_schedule(tiny_data):
    assert tau_schedule(0) == 1.0
    assert tau_schedule(10_000) == pytest.approx(0.5)
    assert tau_schedule(19_800) == pytest.approx(0.01)
    assert tau_schedule(10**6) == 0.01
    assert tau_schedule(10, decay=0.2, minimum=0.3) == 0.3

    task = _task(tiny_data, int(full_bytes(tiny_data.schema, 8) / 4))
    result = create_searcher("autodim", tau_decay=0.02, tau_min=0.5, **FAST).search(task)
    h = result.history
    assert h["tau"] == [pytest.approx(max(0.5, 1 - 0.02 * t)) for t in h["steps"]]
    assert h["tau"][0] < 1.0 and h["tau"][-1] == 0.5  # 38 steps: the floor is reached


# -- the supernet ----------------------------------------------------------------------
def test_weight_sharing_stores_one_table_per_field(tiny_data):
    rows = tiny_data.schema.total_rows
    shared = SupernetEmbedding(tiny_data.schema, 8, CANDS, weight_sharing=True)
    separate = SupernetEmbedding(tiny_data.schema, 8, CANDS, weight_sharing=False)
    # One max(d)-wide table per field (fused into one tensor) vs one table per candidate.
    assert shared.table.embedding.weight.numel() == rows * max(CANDS)
    assert separate.table.embedding.weight.numel() == rows * sum(CANDS)
    for emb in (shared, separate):
        per_row = [p for p in emb.parameters() if p.shape[0] == rows]
        assert [id(p) for p in per_row] == [id(emb.table.embedding.weight)]
    for f, field in enumerate(tiny_data.schema.fields):
        assert shared.table.field_weight(f).shape == (field.vocab_size, max(CANDS))
    assert create_searcher("autodim").weight_sharing
    assert not create_searcher("darts").weight_sharing


@pytest.mark.parametrize("starts,dims", [([0, 1, 3, 7], [1, 2, 4, 8]),  # separate tables
                                         ([0, 0, 0, 0], [1, 2, 4, 8]),  # weight sharing
                                         ([0, 0, 0], [0, 2, 4])])  # a "drop field" candidate
@pytest.mark.parametrize("per_sample", [False, True])
def test_folded_lift_equals_linear_plus_batchnorm(starts, dims, per_sample):
    """The fold of BN into the maps is exact: same outputs and gradients as the textbook
    Linear + BatchNorm1d(affine=False) per candidate, mixed by the weights."""
    torch.manual_seed(0)
    F, D, B = 3, 8, 64
    width = max(s + d for s, d in zip(starts, dims))
    lift = CandidateLift(F, width, starts, dims, D)
    with torch.no_grad():
        lift.gain.uniform_(0.5, 1.5)
    rows = torch.randn(B, F, width, requires_grad=True)
    w = torch.softmax(torch.randn(B if per_sample else 1, F, len(dims)), -1).requires_grad_()
    out = lift(rows, w)
    z = torch.einsum("bfi,fio->bfo", rows, lift.weight * lift.mask).reshape(B, -1)
    z = torch.nn.functional.batch_norm(z, None, None, training=True, eps=lift.eps)
    ref = (z.view(B, F, len(dims), D) * w.unsqueeze(-1)).sum(2) * lift.gain
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), [rows, lift.weight, w, lift.gain])
    want = torch.autograd.grad((ref * g).sum(), [rows, lift.weight, w, lift.gain])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_batch_moments_backward_is_the_exact_gradient():
    from autodim.searchers._supernet import _moment_blocks, _Moments

    rows = torch.randn(12, 2, 7, dtype=torch.float64, requires_grad=True)
    c = rows - rows.mean(0)
    full = torch.einsum("bfi,bfj->fij", c, c) / 12
    blocks = _moment_blocks([0, 1, 3], [1, 2, 4], 7)  # separate tables: the widest alone
    assert blocks == ((0, 3), (3, 7))
    assert _moment_blocks([0, 0, 0], [1, 2, 4], 4) == ((0, 4),)  # weight sharing: all
    for b in (((0, 7),), blocks):
        assert torch.autograd.gradcheck(lambda x, b=b: _Moments.apply(x, b), (rows,))
        assert torch.autograd.gradcheck(lambda x, b=b: _Moments.apply(x, b)[1:], (rows,))
        mean, cov, centred = _Moments.apply(rows, b)
        torch.testing.assert_close(mean, rows.mean(0))
        torch.testing.assert_close(centred, c.transpose(0, 1))
        for lo, hi in b:
            torch.testing.assert_close(cov[:, lo:hi, lo:hi], full[:, lo:hi, lo:hi])


def test_fused_table_pools_like_mean_pool():
    schema = Schema([Field("user", vocab_size=7), Field("tags", "sequence", 9, width=3),
                     Field("item", vocab_size=5)])
    table = FusedFieldTable(schema, 4)
    ids = torch.tensor([[3, 1, 2, 0, 4], [0, 0, 0, 0, 1], [6, 8, 8, 8, 0]])
    out = table(ids)
    W = table.embedding.weight
    for f, cols, seq in ((0, slice(0, 1), False), (1, slice(1, 4), True), (2, slice(4, 5), False)):
        local = ids[:, cols]
        rows = W[table.field_offsets[f] + local]
        torch.testing.assert_close(out[:, f], mean_pool(rows, local, seq))


def test_frequency_groups_split_by_training_mass(tiny_data):
    field = tiny_data.schema.fields[-1]
    rows = frequency_group_rows(field, 3)
    assert sum(rows) == field.vocab_size and len(rows) == 3
    assert rows[0] < rows[1] < rows[2]  # the head is short, the tail long (Zipf ids)
    assert frequency_group_rows(Field("x", vocab_size=2), 5) == [1, 1]


def test_tail_scores_increase_with_diminishing_steps():
    s = tail_scores(np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]))
    assert np.all(np.diff(s, axis=1) > 0)
    assert np.all(np.diff(np.diff(s, axis=1), axis=1) <= 1e-12)
    np.testing.assert_allclose(s[1], [0.0, 0.3, 0.5, 0.6])  # E[min(level, k)]


# -- budgets ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["darts", "autodim"])
def test_budget_below_minimum_names_it(tiny_data, name):
    minimum = min_feasible_bytes(tiny_data.schema, 8, CANDS)
    with pytest.raises(BudgetError, match=str(minimum)):
        create_searcher(name, **FAST).search(_task(tiny_data, minimum - 1))


@pytest.mark.parametrize("name,ratio", [("darts", 6.0), ("autodim", 3.0)])
def test_plan_fits_and_uses_the_budget(tiny_data, name, ratio):
    budget = int(full_bytes(tiny_data.schema, 8) / ratio)
    result = create_searcher(name, warm_start="exact", **FAST).search(_task(tiny_data, budget))
    nbytes = result.plan.num_bytes()
    h = result.history
    assert nbytes <= budget
    # Less than 90 % only with the measured reason on record: the slots left out of it.
    assert nbytes >= 0.9 * budget or (h["uninformative_slots"]
                                      and "two standard errors" in h["budget_note"]), h
    assert h["budget_used"] == pytest.approx(nbytes / budget)
    assert result.history["plan_bytes"] == nbytes == result.plan.build().num_bytes()
    assert "alpha" in json.dumps(result.history)  # JSON-able for the plots
    _check_warm_start(result)


def test_expected_bytes_penalty_shrinks_plans_with_the_budget(tiny_data):
    full = full_bytes(tiny_data.schema, 8)
    minimum = min_feasible_bytes(tiny_data.schema, 8, CANDS)
    settings = {**FAST, "arch_lr": 0.1, "multiplier_lr": 0.5, "plan_from": "projection"}
    runs = {}
    for label, budget, penalty in (("loose", full // 2, True),
                                   ("tight", int(minimum * 1.1), True),
                                   ("tight, no penalty", int(minimum * 1.1), False)):
        h = create_searcher("darts", penalty=penalty, **settings).search(
            _task(tiny_data, budget)).history
        runs[label] = h
    loose, tight, free = runs["loose"], runs["tight"], runs["tight, no penalty"]
    assert tight["expected_bytes"][-1] < loose["expected_bytes"][-1]
    assert tight["expected_bytes"][-1] < free["expected_bytes"][-1]
    assert tight["argmax_bytes"] < loose["argmax_bytes"]
    assert max(tight["multiplier"]) > 0 and free["multiplier"][-1] == 0
    # Under the tight budget λ rises while E[bytes] > budget.
    over = [m for m, e in zip(tight["multiplier"], tight["expected_bytes"])
            if e > tight["budget_bytes"]]
    assert over == sorted(over)


# -- plans, groups, warm starts -------------------------------------------------------------
def test_frequency_group_plan_validates_and_fits(tiny_data):
    budget = int(full_bytes(tiny_data.schema, 8) / 4)
    result = create_searcher("darts", frequency_groups=2, warm_start="exact",
                             **FAST).search(_task(tiny_data, budget))
    plan = result.plan
    assert plan.num_bytes() <= budget
    assert plan.build().num_bytes() == plan.num_bytes()
    assert any("/g1" in k for k in result.history["alpha"])
    assert set(result.history["frequency_groups"]) == set(tiny_data.schema.names)
    for fp in plan.fields:
        groups = fp.frequency_groups or []
        assert all(a["dim"] != b["dim"] for a, b in zip(groups, groups[1:]))  # merged
    _check_warm_start(result)


def test_cold_by_default_and_bad_settings_are_config_errors(tiny_data):
    task = _task(tiny_data, int(full_bytes(tiny_data.schema, 8) / 4), epochs=1)
    task.train.max_steps = 4
    assert create_searcher("darts", **FAST).search(task).warm_start is None
    for bad in ({"plan_from": "argmax"}, {"warm_start": True}):
        with pytest.raises(ConfigError, match=str(next(iter(bad.values())))):
            create_searcher("autodim", **FAST, **bad).search(task)


def _check_warm_start(result) -> None:
    """The warm start loads into ``plan.build()`` (strict=False), tables included."""
    emb = result.plan.build()
    missing, unexpected = emb.load_state_dict(result.warm_start, strict=False)
    assert not unexpected
    tables = [k for k in emb.state_dict() if k.endswith("table.embedding.weight")]
    assert tables and not set(tables) & set(missing)
    assert torch.equal(emb.state_dict()[tables[0]], result.warm_start[tables[0]])
