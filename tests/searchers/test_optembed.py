"""OptEmbed: the STE, the threshold regulariser, the budget-constrained evolution, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autodim.data.datamodule import CTRDataModule
from autodim.searchers import SearchTask, create_searcher
from autodim.searchers._optembed import (
    OptEmbedEmbedding,
    OptEmbedSearcher,
    binary_step,
    candidate_bytes,
    crossover,
    evolve,
    mutate,
    rank_candidates,
    shrink_until_feasible,
)
from autodim.task import TrainConfig


def _task(data, *, budget: int | None = None, seed: int = 0, D: int = 8) -> SearchTask:
    return SearchTask(data=CTRDataModule(data, batch_size=256, seed=seed), D=D,
                      budget_bytes=budget, candidate_dims=(1, 2, 4, 8),
                      train=TrainConfig(max_epochs=2, batch_size=256, lr=3e-3, seed=seed),
                      seed=seed)


# -- stage 1: supernet ----------------------------------------------------------------------

def test_long_tail_ste_slope():
    x = torch.tensor([-2.0, -0.7, -0.2, 0.0, 0.1, 0.3, 0.5, 1.0, 1.5], requires_grad=True)
    y = binary_step(x)
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    y.sum().backward()
    expected = [0.0, 0.4, 1.2, 2.0, 1.6, 0.8, 0.4, 0.4, 0.0]  # 2-4|x|, 0.4, 0
    assert torch.allclose(x.grad, torch.tensor(expected))


@pytest.mark.parametrize("level,oov", [("field", "oov"), ("field", "zero"), ("feature", "oov")])
def test_ste_gradient_reaches_thresholds_and_embeddings(tiny_data, level, oov):
    schema = tiny_data.schema
    torch.manual_seed(0)
    emb = OptEmbedEmbedding(schema, 8, [1, 2, 4, 8], threshold_level=level, oov=oov)
    ids = torch.from_numpy(tiny_data.train.ids[:64]).long()
    out = emb(ids)
    assert out.shape == (64, schema.num_fields, 8)
    (out * torch.randn_like(out)).sum().backward()
    t_grad, w_grad = emb.threshold.grad, emb.table.embedding.weight.grad
    rows = schema.total_rows
    assert t_grad.shape == ((rows,) if level == "feature" else (schema.num_fields,))
    assert w_grad.shape == (rows, 8)
    assert t_grad.abs().sum() > 0 and torch.isfinite(t_grad).all()
    assert w_grad.abs().sum() > 0
    if level == "field":
        assert (t_grad != 0).all(), "every field's threshold gets a gradient"


def test_random_prefix_in_training_full_width_in_eval(tiny_data):
    torch.manual_seed(0)
    emb = OptEmbedEmbedding(tiny_data.schema, 8, [1, 2, 4, 8])
    ids = torch.from_numpy(tiny_data.train.ids[:512]).long()
    width = (emb(ids) != 0).sum(-1)  # nonzero columns = the sampled prefix
    assert set(width.unique().tolist()) <= {1, 2, 4, 8}
    assert len(width.unique()) == 4, "per-sample, per-field draws cover every level"
    emb.eval()
    assert ((emb(ids) != 0).sum(-1) == 8).all()


def test_raising_alpha_prunes_more_rows(tiny_data):
    pruned = []
    for alpha in (0.0, 1e-3, 1e-1):
        searcher = create_searcher("optembed", supernet_epochs=2, threshold_lr=0.01,
                                   alpha=alpha, generations=1, eval_batches=1)
        pruned.append(sum(searcher.search(_task(tiny_data)).history["pruned_rows"].values()))
    assert pruned[0] < pruned[1] <= pruned[2], pruned


# -- stage 2: evolution ---------------------------------------------------------------------

def _toy_costs(F: int = 6, L: int = 5) -> np.ndarray:
    # Field f at level k costs (k + 1) * (f + 1) * 100 bytes.
    return np.array([[(k + 1) * (f + 1) * 100 for k in range(L)] for f in range(F)])


def test_infeasible_candidates_never_win():
    costs = _toy_costs()
    budget = int(costs[:, 2].sum())  # the all-max candidate is far over budget
    fitness = lambda c: float(sum(c))  # noqa: E731 - more bytes, more "AUC"
    rng = np.random.default_rng(0)
    res = evolve(fitness, costs, budget, rng, generations=12, mutation_num=8,
                 crossover_num=8, topk=6, mutation_prob=0.5, repair=False)
    over = {c: f for c, f in res.fitness.items() if candidate_bytes(c, costs) > budget}
    assert over, "the crafted case must evaluate over-budget candidates"
    assert max(over.values()) > res.best_fitness, "the best-AUC candidate is over budget"
    assert candidate_bytes(res.best, costs) <= budget
    assert res.best_bytes == candidate_bytes(res.best, costs)
    feasible = [f for c, f in res.fitness.items() if candidate_bytes(c, costs) <= budget]
    assert res.best_fitness == max(feasible), "the best feasible candidate ever seen is kept"
    for g in res.generations:
        assert g["best_bytes"] is None or g["best_bytes"] <= budget


def test_ranking_puts_every_feasible_candidate_first():
    scored = [((0,), 0.9, 500), ((1,), 0.6, 90), ((2,), 0.99, 101), ((3,), 0.7, 100)]
    ranked = rank_candidates(scored, budget=100)
    assert [c for c, _, _ in ranked] == [(3,), (1,), (2,), (0,)]


def test_repaired_search_stays_feasible():
    costs = _toy_costs()
    budget = int(costs[:, 1].sum())
    res = evolve(lambda c: float(sum(c)), costs, budget, np.random.default_rng(1),
                 generations=8, mutation_num=6, crossover_num=6, topk=4, repair=True)
    assert all(candidate_bytes(c, costs) <= budget for c in res.fitness)
    assert all(g["feasible"] == 12 for g in res.generations)


def test_shrink_until_feasible_and_copies():
    costs = _toy_costs()
    rng = np.random.default_rng(0)
    start = [4] * 6
    out = shrink_until_feasible(start, costs, int(costs[:, 1].sum()), rng)
    assert start == [4] * 6
    assert candidate_bytes(out, costs) <= int(costs[:, 1].sum())


def test_mutation_and_crossover_leave_parents_untouched():
    rng = np.random.default_rng(0)
    parent = [0, 1, 2, 3, 4, 0]
    kept = list(parent)
    child = mutate(parent, 5, 1.0, rng)
    assert parent == kept
    assert all(c != p for c, p in zip(child, parent)), "prob 1 changes every field"
    assert set(mutate([0] * 200, 5, 1.0, rng)) == {1, 2, 3, 4}, "every other level reachable"
    assert set(mutate([4] * 200, 5, 1.0, rng)) == {0, 1, 2, 3}, "the smallest level too"
    a, b = [0, 0, 0, 0], [1, 1, 1, 1]
    a0, b0 = list(a), list(b)
    points = set()
    for _ in range(200):
        c = crossover(a, b, rng)
        p = c.index(1)
        assert c == tuple(a[:p] + b[p:]) and 1 <= p <= 3, "point over fields, both parents mix"
        points.add(p)
    assert points == {1, 2, 3}
    assert a == a0 and b == b0


def test_evolution_is_seeded():
    costs = _toy_costs()
    budget = int(costs[:, 2].sum())
    fit = lambda c: float(np.sin(np.arange(1, 7) @ np.array(c)))  # noqa: E731
    runs = [evolve(fit, costs, budget, np.random.default_rng(7), generations=6) for _ in range(2)]
    assert runs[0].generations == runs[1].generations
    assert runs[0].best == runs[1].best


# -- the searcher end to end ----------------------------------------------------------------

def test_fixed_seed_reproduces_the_search(tiny_data):
    from autodim.budget import full_bytes

    budget = int(full_bytes(tiny_data.schema, 8) / 6)
    settings = dict(OptEmbedSearcher.quick_settings, threshold_lr=0.01, alpha=1e-2)
    a, b = (create_searcher("optembed", **settings).search(_task(tiny_data, budget=budget,
                                                                  seed=5)) for _ in range(2))
    assert a.plan.to_dict()["fields"] == b.plan.to_dict()["fields"]
    assert a.history["generations"] == b.history["generations"]
    assert a.history["thresholds"] == b.history["thresholds"]
    assert a.history["pruned_rows"] == b.history["pruned_rows"]


def test_plan_bytes_row_masks_and_warm_start(tiny_data):
    from autodim.budget import full_bytes

    budget = int(full_bytes(tiny_data.schema, 8) / 6)
    settings = dict(OptEmbedSearcher.quick_settings, threshold_lr=0.01, alpha=1e-2)
    res = create_searcher("optembed", **settings).search(_task(tiny_data, budget=budget))
    plan = res.plan
    assert plan.num_bytes() == res.history["best"]["bytes"] <= budget
    assert all(f.align == "project" for f in plan.fields)  # the default
    assert any(f.row_mask for f in plan.fields), "alpha=1e-2 prunes rows on tiny data"
    for f in plan.fields:
        if f.row_mask:
            assert f.row_mask["kept"] == f.vocab_size - res.history["pruned_rows"][f.name]
    emb = plan.build()
    missing, unexpected = emb.load_state_dict(res.warm_start, strict=False)
    assert not unexpected
    assert emb.num_bytes() == plan.num_bytes()
    gens = res.history["generations"]
    assert [g["gen"] for g in gens] == list(range(len(gens)))
    assert set(gens[0]) >= {"gen", "best_auc", "mean_auc", "best_bytes", "feasible"}


def _sequence_data(n: int = 3000):
    from autodim.data.dataset import CTRData, Split
    from autodim.data.schema import Field, Schema

    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.integers(1, 50, size=(n, 1)), rng.integers(0, 30, size=(n, 3))], 1)
    labels = (rng.random(n) < 0.5 * (ids[:, 0] % 2) + 0.2).astype(np.float32)
    schema = Schema([Field("c", vocab_size=50),
                     Field("s", kind="sequence", vocab_size=30, width=3)])
    cut = [0, int(0.8 * n), int(0.9 * n), n]
    return CTRData(schema, *(Split(ids[a:b], labels[a:b]) for a, b in zip(cut, cut[1:])))


def test_supernet_subnet_equals_the_compact_model_it_describes():
    """What the evolution scores (a prefix of the pruned supernet rows) is exactly what the
    plan's compact embedding computes with those weights, sequence fields included."""
    from autodim.plan import DimensionPlan, encode_mask

    data = _sequence_data()
    torch.manual_seed(0)
    emb = OptEmbedEmbedding(data.schema, 8, [1, 2, 4, 8], oov="oov")
    with torch.no_grad():
        emb.threshold.fill_(0.11)  # prunes a good share of the N(0, 0.01) rows
    emb.eval()
    keep = emb.keep_masks()
    assert all(0 < (~k).sum() < len(k) - 1 for k in keep)
    dims = {"c": 2, "s": 4}
    plan = DimensionPlan.from_dims(data.schema, 8, dims, align="pad")
    for fp, k in zip(plan.fields, keep):
        fp.row_mask = {"kept": int(k.sum()), "bits": encode_mask(k)}
    plan.validate()
    compact = plan.build()
    weight = emb.table.embedding.weight.detach()
    compact.load_state_dict({f"fields.{i}.table.embedding.weight":
                             weight[int(o):int(o) + fp.vocab_size, :fp.dim]
                             for i, (fp, o) in enumerate(zip(plan.fields, emb.offsets))},
                            strict=False)
    ids = torch.from_numpy(data.val.ids).long()
    prefix = torch.zeros(2, 8)
    prefix[0, :2], prefix[1, :4] = 1, 1
    with torch.no_grad():
        assert torch.allclose(emb.lookup(ids) * prefix, compact(ids), atol=1e-7)


def test_search_with_a_sequence_field_fits_the_budget():
    from autodim.budget import full_bytes

    data = _sequence_data()
    budget = int(full_bytes(data.schema, 8) / 3)
    settings = dict(OptEmbedSearcher.quick_settings, threshold_lr=0.01, alpha=1e-2)
    res = create_searcher("optembed", **settings).search(_task(data, budget=budget))
    assert res.plan.num_bytes() == res.plan.build().num_bytes() <= budget


class _RowLossScorer:
    """Per-row log loss of a candidate: field 0 carries signal, field 1 only noise."""

    def __init__(self, n: int = 4000):
        g = torch.Generator().manual_seed(0)
        self.signal = torch.rand(n, generator=g, dtype=torch.float64) * 0.2 + 0.05
        self.noise = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 1e-3

    def row_losses(self, cand, mean_field=None):
        # Mean ablation of a field removes what its identity says, as dim 0 would.
        cand = tuple(0 if f == mean_field else k for f, k in enumerate(cand))
        loss = torch.full_like(self.signal, 0.69)
        if cand[0] > 0:
            loss = loss - self.signal
        if cand[1] > 0:
            loss = loss + self.noise
        return loss


def test_fill_regrows_no_field_the_test_drops():
    """The budget fill takes an upgrade of a noise field whenever it does not lower the
    fitness; the filled candidate is tested again, so the plan ends with the noise field at
    0 and the fill spent on the signal field."""
    from autodim.searchers._optembed import drop_and_fill

    class Scorer(_RowLossScorer):
        def __call__(self, cand):  # AUC: grows with the signal dim, a hair with the noise dim
            return 0.7 + 0.01 * cand[0] + 1e-6 * cand[1]

    levels = [0, 1, 2, 4]
    costs = np.array([[0, 10, 20, 40], [0, 10, 20, 40]])
    cand, fit, dropped, steps, _ = drop_and_fill(Scorer(), costs, 60, (1, 0), 0.71, levels)
    assert cand == (3, 0) and dropped == [1], (cand, dropped, steps)
    assert any(s["to"][1] > 0 for s in steps)  # the fill did grow the noise field once


def test_drop_uninformative_drops_only_fields_without_signal():
    from autodim.searchers._optembed import drop_uninformative

    scorer = _RowLossScorer()
    cand, dropped = drop_uninformative(scorer, (2, 3), [0, 1, 2, 4])
    assert (cand, dropped) == ((2, 0), [1])
    # Without 0 among the levels nothing can be dropped.
    assert drop_uninformative(scorer, (2, 3), [1, 2, 4]) == ((2, 3), [])
