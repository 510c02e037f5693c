"""Mechanisms of the soft-selection searchers that decide their plans: the exact warm start,
α's gradient source, the temperature, and plans that come from what the supernet learned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autodim.budget import dims_bytes, full_bytes
from autodim.data.datamodule import CTRDataModule, TensorBatches
from autodim.data.schema import Field, Schema
from autodim.data.synthetic import make_planted
from autodim.metrics import spearman
from autodim.models import create_backbone
from autodim.plan import DimensionPlan
from autodim.searchers import SearchTask, create_searcher
from autodim.searchers._supernet import (
    BilevelSearch,
    BilevelSettings,
    SupernetEmbedding,
    candidate_gains,
    knapsack_slots,
    slot_plan_fields,
)
from autodim.task import TrainConfig

CANDS = (0, 1, 2, 4, 8)


def _trained_supernet(schema: Schema, *, weight_sharing: bool, group_rows=None,
                      steps: int = 12) -> SupernetEmbedding:
    """A supernet whose weights, α and BN statistics all left their initial values."""
    torch.manual_seed(0)
    emb = SupernetEmbedding(schema, 8, CANDS, weight_sharing=weight_sharing,
                            group_rows=group_rows)
    opt = torch.optim.Adam(emb.parameters(), lr=0.05)
    for _ in range(steps):
        ids = _ids(schema, 64)
        out = emb(ids, tau=0.7)
        loss = (out.sum(-1) - 1.0).pow(2).mean() + (out[:, 0] * out[:, -1]).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return emb


def _ids(schema: Schema, n: int, *, seed: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    cols = []
    for f in schema.fields:
        c = torch.randint(0, f.vocab_size, (n, f.width), generator=g)
        if f.kind == "sequence":
            c[:, 0] = torch.randint(1, f.vocab_size, (n,), generator=g)  # >= 1 real id
        cols.append(c)
    return torch.cat(cols, 1)


def _plan(schema: Schema, group_rows, slot_dims) -> DimensionPlan:
    dims, groups = slot_plan_fields(schema, group_rows, slot_dims)
    plan = DimensionPlan.from_dims(schema, 8, dims)
    for fp in plan.fields:
        if fp.name in groups:
            fp.frequency_groups = groups[fp.name]
    plan.validate()
    return plan


SCHEMA = Schema([Field("user", vocab_size=40), Field("tags", "sequence", 30, width=3),
                 Field("item", vocab_size=50), Field("city", vocab_size=20)])


@pytest.mark.parametrize("weight_sharing", [True, False])
@pytest.mark.parametrize("grouped,tau", [(False, None), (True, None), (False, 0.3)])
def test_warm_start_equals_the_supernet_path(weight_sharing, grouped, tau):
    """The compact model built from the plan and loaded with the warm start gives the
    supernet's evaluation-mode output through the chosen candidates, to 1e-5: every
    field's lift and BatchNorm (shift included, fields at D included) and the chosen
    candidate's weight are folded in."""
    group_rows = ([[10, 30], [30], [20, 30], [20]] if grouped else None)
    emb = _trained_supernet(SCHEMA, weight_sharing=weight_sharing, group_rows=group_rows)
    assert emb.lift.running_row_mean.abs().max() > 1e-3  # BN has a shift to fold
    rows = emb.group_rows
    slot_dims = [8, 2, 4, 1, 4, 8][:sum(len(g) for g in rows)]  # D, projected, grouped
    if not grouped:
        slot_dims = [8, 2, 1, 4]
    plan = _plan(SCHEMA, rows, slot_dims)
    compact = plan.build()
    missing, unexpected = compact.load_state_dict(emb.warm_start(slot_dims, tau=tau),
                                                  strict=False)
    assert not unexpected and not missing
    emb.eval()
    ids = _ids(SCHEMA, 200, seed=3)
    with torch.no_grad():
        want = emb.forward_weights(ids, emb.path_weights(slot_dims, tau))
        got = compact(ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert want.abs().mean() > 1e-3  # a real output, not two zero tensors


def test_warm_start_initial_scale_keeps_the_direction():
    emb = _trained_supernet(SCHEMA, weight_sharing=True)
    slot_dims = [8, 2, 1, 4]
    plan = _plan(SCHEMA, emb.group_rows, slot_dims)
    exact, scaled = plan.build(), plan.build()
    exact.load_state_dict(emb.warm_start(slot_dims), strict=False)
    scaled.load_state_dict(emb.warm_start(slot_dims, scale="initial"), strict=False)
    ids = _ids(SCHEMA, 100, seed=1)
    with torch.no_grad():
        a, b = exact(ids), scaled(ids)
    for f in range(SCHEMA.num_fields):
        cos = torch.nn.functional.cosine_similarity(a[:, f], b[:, f], dim=-1)
        assert torch.all(cos > 0.9999)
        assert 0.001 < float(b[:, f].std()) < 0.03  # a fresh compact field's scale


def test_no_gumbel_noise_at_evaluation():
    emb = _trained_supernet(SCHEMA, weight_sharing=True, steps=2)
    ids = _ids(SCHEMA, 32, seed=0)
    emb.eval()
    with torch.no_grad():
        a, b = emb(ids, tau=0.5), emb(ids, tau=0.5)
        ref = emb.forward_weights(ids, torch.softmax(emb.logits / 0.5, -1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, ref)
    emb.train()
    with torch.no_grad():
        c, d = emb(ids, tau=0.5), emb(ids, tau=0.5)
    assert not torch.allclose(c, d)  # training samples Gumbel noise


def test_alpha_gradient_comes_from_the_validation_batch(tiny_data):
    """The α step differentiates the loss of the validation batch (not the training
    batch): its gradient equals ∇_α L_val and differs from ∇_α L_train."""
    torch.manual_seed(0)
    emb = SupernetEmbedding(tiny_data.schema, 8, (1, 2, 4, 8), weight_sharing=False)
    module = BilevelSearch(emb, create_backbone("fm", tiny_data.schema.num_fields, 8),
                           TensorBatches(tiny_data.val, 256, shuffle=True, seed=1),
                           BilevelSettings(lr=1e-2, penalty=False))
    opts = module.configure_optimizers()
    train = list(TensorBatches(tiny_data.train, 256, shuffle=True, seed=0))
    for b in train[:5]:
        module.weight_step(b, opts[:-1])
    with torch.no_grad():
        emb.logits.normal_(0, 0.5)  # away from the symmetric start
    val = module._next_val_batch()
    want = {}
    for name, batch in (("val", val), ("train", train[5])):
        (want[name],) = torch.autograd.grad(module.loss(*batch), [emb.logits])
    module.arch_step(train[5], val, opts[-1])
    torch.testing.assert_close(emb.logits.grad, want["val"])
    assert not torch.allclose(emb.logits.grad, want["train"], rtol=0.05, atol=1e-6)


def test_tau_anneals_to_its_floor_by_the_end_of_the_search(tiny_data):
    task = SearchTask(data=CTRDataModule(tiny_data, batch_size=256), D=8,
                      budget_bytes=int(full_bytes(tiny_data.schema, 8) / 4),
                      candidate_dims=(1, 2, 4, 8),
                      train=TrainConfig(max_epochs=2, batch_size=256, lr=3e-3))
    h = create_searcher("autodim", epochs=2, warmup_epochs=0, log_every=4).search(task).history
    assert h["tau"][0] < 1.0
    assert h["steps"][-1] == h["total_steps"]
    assert h["tau"][-1] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(h["tau"], h["tau"][1:]))


def test_knapsack_plan_follows_values_not_bytes():
    """With equal values bytes decide (cheapest); with values the knapsack spends the
    budget where they are, even on the largest field."""
    schema = Schema([Field("big", vocab_size=1000), Field("small", vocab_size=10)])
    budget = dims_bytes(schema, 8, [4, 1])
    flat = np.zeros((2, 5))
    assert knapsack_slots(schema, 8, CANDS, [[1000], [10]], flat, budget) == [0, 0]
    values = np.array([[0.0, 0.1, 0.2, 0.3, 0.4], [0.0, 0.01, 0.01, 0.01, 0.01]])
    assert knapsack_slots(schema, 8, CANDS, [[1000], [10]], values, budget) == [4, 1]


def _decoupled(rows: int = 40_000):
    """Signal in the large fields, noise in the small ones: bytes give no hint."""
    return make_planted("planted", rows=rows, seed=0,
                        cardinalities=[300, 200, 150, 8, 12, 16],
                        ranks=[8, 8, 4, 0, 0, 0], first_order=0.1)


@pytest.fixture(scope="module")
def decoupled():
    return _decoupled()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["darts", "autodim"])
def test_plan_on_decoupled_data_differs_from_the_bytes_only_plan(decoupled, name):
    """Where bytes give no hint, the plan read from the supernet is not the uniform-α plan
    (what the old projection gives when α says nothing), and it ranks the fields as the
    planted ranks do."""
    schema = decoupled.schema
    task = SearchTask(data=CTRDataModule(decoupled, batch_size=512), D=8,
                      budget_bytes=int(full_bytes(schema, 8) / 4), candidate_dims=CANDS,
                      train=TrainConfig(max_epochs=3, batch_size=512, lr=3e-3))
    result = create_searcher(name, epochs=3, log_every=20).search(task)
    h = result.history
    assert h["differs_from_uniform_alpha"], h["uniform_alpha_dims"]
    dims = [result.plan.dims[n] for n in schema.names]
    ranks = [decoupled.meta["planted_ranks"][n] for n in schema.names]
    assert spearman(dims, ranks) >= 0.6, dims
    assert result.plan.num_bytes() <= task.budget_bytes


def _weights_trained(data, cands, *, epochs: int, batch: int, val_batch: int):
    """A weight-sharing FM supernet over ``cands`` whose weights (not α) trained ``epochs``
    epochs on ``data`` (seed 0): ``(embedding, module)``."""
    torch.manual_seed(0)
    schema = data.schema
    emb = SupernetEmbedding(schema, 8, cands, weight_sharing=True)
    module = BilevelSearch(emb, create_backbone("fm", schema.num_fields, 8),
                           TensorBatches(data.val, val_batch), BilevelSettings(lr=1e-2))
    opts = module.configure_optimizers()
    for _ in range(epochs):
        for b in TensorBatches(data.train, batch, shuffle=True, seed=0):
            module.weight_step(b, opts[:-1])
    return emb, module


def test_candidate_gains_see_a_field_the_model_needs(tiny_data):
    """Dropping a signal field (candidate 0) costs more validation loss than dropping a
    noise field, and the gains are measured on the validation rows (finite, per slot)."""
    schema = tiny_data.schema
    emb, module = _weights_trained(tiny_data, (0, 2, 8), epochs=3, batch=256, val_batch=512)
    gains = candidate_gains(emb, module.backbone, TensorBatches(tiny_data.val, 512))
    assert gains.shape == (schema.num_fields, 3)
    assert np.isfinite(gains).all()
    # Field 2 (rank 8) loses more by being dropped than the noise fields 3 and 4.
    drop = -gains[:, 0]
    assert drop[2] > 0.01 and drop[2] > max(drop[3], drop[4])


def test_candidate_pairs_agree_with_the_gains(tiny_data):
    """``beats[s, k, j]`` is the paired test between two candidates: never a candidate over
    itself, never both ways, and dropping a signal field loses to keeping it."""
    emb, module = _weights_trained(tiny_data, (0, 2, 8), epochs=3, batch=256, val_batch=512)
    gains, mean, beats = candidate_gains(emb, module.backbone, TensorBatches(tiny_data.val, 512),
                                         with_mean=True, with_pairs=True)
    S, K = gains.shape
    assert beats.shape == (S, K, K) and beats.dtype == bool
    assert not beats[:, np.arange(K), np.arange(K)].any()
    assert not (beats & beats.transpose(0, 2, 1)).any()
    assert beats[2, 1:, 0].any()  # field 2 (rank 8): some width beats dropping it
    # Where k beats j, its mean gain is the larger.
    s_, k, j = np.nonzero(beats)
    assert (mean[s_, k] > mean[s_, j]).all()


def test_significant_values_tie_widths_the_test_cannot_tell_apart():
    """A wider candidate counts only where it beats the running choice: a field whose step
    to dim 1 is significant but whose wider steps are noise is worth the same at every
    width >= 1, so the knapsack does not buy the noisiest winner."""
    from autodim.searchers._supernet import significant_values

    values = np.array([[0.0, 1.0, 1.0004, 1.0005], [0.0, 1.0, 2.0, 2.1]])
    beats = np.zeros((2, 4, 4), dtype=bool)
    beats[:, 1, 0] = True           # both: dim 1 beats dropping the field
    beats[1, 2, :2] = True          # second slot: the next width beats both narrower ones
    out = significant_values(values, beats)
    assert out[0].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert out[1].tolist() == [0.0, 1.0, 2.0, 2.0]
    # With every step significant, the values are the plain running maximum.
    assert (significant_values(values, np.ones_like(beats)) ==
            np.maximum.accumulate(values, axis=1)).all()


def test_spare_bytes_go_to_informative_slots_cheapest_step_first():
    """The knapsack leaves bytes over; they go to slots whose gain over their smallest
    candidate was significant, evenly (cheapest step first), never to a slot without one
    (a noise field stays dropped), even when its wider candidates look value-neutral."""
    schema = Schema([Field("a", vocab_size=100), Field("b", vocab_size=100),
                     Field("noise", vocab_size=50)])
    rows = [[100], [100], [50]]
    # a, b: dim 1 is worth it, wider adds nothing measurable; noise: nothing anywhere.
    values = np.array([[0.0, 0.1, 0.1, 0.1, 0.1], [0.0, 0.1, 0.1, 0.1, 0.1],
                       [0.0, 0.0, 0.0, 0.0, 0.0]])
    budget = dims_bytes(schema, 8, [4, 4, 0]) + 60
    informative = values[:, -1] > values[:, 0]
    dims = knapsack_slots(schema, 8, CANDS, rows, values, budget, fill=values,
                          informative=informative)
    assert dims == [4, 4, 0]
    # Without the flags the noise field takes spare bytes too (what the flags prevent).
    assert knapsack_slots(schema, 8, CANDS, rows, values, budget, fill=values)[2] > 0


def test_candidate_gains_bound_the_step_over_the_smallest_candidate(decoupled):
    """On a trained supernet, the lower bound of a signal field's best step over dropping
    it is positive, and no wider candidate of a noise field (rank 0) beats dropping it by
    two standard errors, so the plan drops the noise fields and keeps the signal."""
    schema = decoupled.schema
    emb, module = _weights_trained(decoupled, CANDS, epochs=2, batch=512, val_batch=1024)
    lcb, mean = candidate_gains(emb, module.backbone, TensorBatches(decoupled.val, 1024),
                                with_mean=True)
    assert np.allclose(lcb[:, 0], mean[:, 0])
    step = np.maximum.accumulate(lcb, axis=1)[:, -1] - lcb[:, 0]
    ranks = [decoupled.meta["planted_ranks"][n] for n in schema.names]
    assert all(step[i] > 0 for i, r in enumerate(ranks) if r >= 4), (step, ranks)
    assert all(step[i] == 0 for i, r in enumerate(ranks) if r == 0), (step, ranks)
