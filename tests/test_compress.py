"""The compressor: dims x bits x hashing per field under the budget, and its study wiring."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autodim.baselines import baseline_plan
from autodim.compress import ModelLoss, ProxyLoss, compress_plan
from autodim.errors import BudgetError, ConfigError
from autodim.plan import DimensionPlan
from autodim.study.config import StudyConfig
from autodim.study.runner import run_study

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.mark.parametrize("ratio", [4, 10, 30])
def test_compressed_plan_fits_and_uses_every_axis_allowed(tiny_data, ratio):
    full = DimensionPlan.full(tiny_data.schema, 16)
    budget = full.num_bytes() // ratio
    plan, info = compress_plan(full, tiny_data.schema, budget, bits=(32, 16, 8, 4, 2),
                               ratios=(0.05, 0.2), scale=("row", "field"), scalars="int8",
                               min_rows=100)
    assert plan.num_bytes() <= budget
    assert plan.num_bytes() == plan.build().num_bytes()
    assert any(f.bits < 32 for f in plan.fields)
    # Exactness: no single-field change to a cheaper-loss option that still fits exists.
    assert info["bytes_after"] == plan.num_bytes()
    assert set(info["fields"]) == set(tiny_data.schema.names)


def test_axes_can_be_restricted(tiny_data):
    full = DimensionPlan.full(tiny_data.schema, 16)
    budget = full.num_bytes() // 4
    dims_only, _ = compress_plan(full, tiny_data.schema, budget, bits=(32,))
    assert all(f.bits == 32 and f.hashing is None for f in dims_only.fields)
    assert any(f.dim < 16 for f in dims_only.fields)
    bits_only, _ = compress_plan(full, tiny_data.schema, budget, bits=(32, 16, 8, 4, 2),
                                 dims=(16,))
    assert all(f.dim == 16 for f in bits_only.fields)
    assert any(f.bits < 32 for f in bits_only.fields)
    with pytest.raises(BudgetError):
        compress_plan(full, tiny_data.schema, 10, bits=(32,))


def test_knapsack_follows_the_estimated_losses(tiny_data):
    """A field whose measured loss is high keeps more bytes than one whose loss is nil."""
    full = DimensionPlan.full(tiny_data.schema, 8)

    class Fake(ProxyLoss):
        name = "fake"

        def narrow(self, fp, dim):
            return (8 - dim) * (10.0 if fp.name == "f01" else 0.0)

        def quant(self, fp, bits, scale):
            return (32 - bits) * (10.0 if fp.name == "f01" else 0.0)

    plan, _ = compress_plan(full, tiny_data.schema, full.num_bytes() // 3, bits=(32, 8, 4),
                            estimator=Fake(tiny_data.schema, 8))
    assert plan["f01"].dim == 8 and plan["f01"].bits == 32
    others = [n for n in tiny_data.schema.names if n != "f01"]
    assert sum(plan[n].num_bytes(8) for n in others) < sum(full[n].num_bytes(8) for n in others)


def test_model_loss_measures_each_axis(tiny_data, tiny_dm):
    from autodim.task import TrainConfig, train_plan

    full = DimensionPlan.full(tiny_data.schema, 8)
    model = train_plan(full, tiny_dm, config=TrainConfig(max_epochs=5, batch_size=256, lr=1e-2),
                       test=False).task
    est = ModelLoss(model, list(tiny_dm.val_dataloader()), tiny_data.schema, 8)
    fp = full["f02"]  # a signal field (rank 8)
    assert est.narrow(fp, 8) == 0.0
    assert est.narrow(fp, 0) > est.narrow(fp, 2) > est.narrow(fp, 4) >= 0.0
    assert est.quant(fp, 1, "row") > est.quant(fp, 8, "row") >= 0.0
    assert est.hash(fp, 5) > 0.0
    noise = full["f03"]  # a pure-noise field: dropping it costs (almost) nothing
    assert est.narrow(fp, 0) > 10 * est.narrow(noise, 0)
    # The model is left as it was.
    assert ModelLoss(model, list(tiny_dm.val_dataloader()), tiny_data.schema, 8).base == est.base


@pytest.mark.parametrize("name", ["quant", "mixed-precision"])
def test_precision_baselines_fit_and_keep_dims(tiny_data, name):
    full = DimensionPlan.full(tiny_data.schema, 16)
    for ratio in (2, 4, 10):
        budget = full.num_bytes() // ratio
        plan = baseline_plan(name, tiny_data.schema, 16, budget)
        assert plan.num_bytes() <= budget and all(f.dim == 16 for f in plan.fields)
        bits = [f.bits for f in plan.fields]
        if name == "quant":
            assert len(set(bits)) == 1
    mixed = baseline_plan("mixed-precision", tiny_data.schema, 16, full.num_bytes() // 4)
    rows = [f.vocab_size for f in mixed.fields]
    bits = [f.bits for f in mixed.fields]
    # The rule gives the smaller field at least the bits of the larger one.
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    assert [bits[i] for i in order] == sorted(bits, reverse=True)
    with pytest.raises(BudgetError, match="quant"):
        baseline_plan("quant", tiny_data.schema, 16, 100)


def test_compress_space_is_validated(tmp_path):
    from autodim.study.config import SearchSpace

    space = SearchSpace.from_dict({"compress": {"enabled": True, "bits": {
        "type": "categorical", "choices": ["32,8,4", "8,4,2"]}}})
    assert space.compress.enabled and space.compress.parse_bits("x", "8,4,2") == (8, 4, 2)
    with pytest.raises(ConfigError, match="compress.bits"):
        SearchSpace.from_dict({"compress": {"bits": "32,3"}})
    with pytest.raises(ConfigError, match="compress.train"):
        SearchSpace.from_dict({"compress": {"train": "fast"}})
    with pytest.raises(ConfigError, match="unknown key 'bitz'"):
        SearchSpace.from_dict({"compress": {"bitz": "8"}})
    assert (space.compress.estimate_on, space.compress.drop_fields) == ("train", "harmful")
    assert space.compress.refit and not SearchSpace.from_dict(
        {"compress": {"refit": False}}).compress.refit
    with pytest.raises(ConfigError, match="compress.refit"):
        SearchSpace.from_dict({"compress": {"refit": "sometimes"}})
    with pytest.raises(ConfigError, match="compress.estimate_on: 'test'"):
        SearchSpace.from_dict({"compress": {"estimate_on": "test"}})
    with pytest.raises(ConfigError, match="compress.drop_fields: 'all'"):
        SearchSpace.from_dict({"compress": {"drop_fields": "all"}})


@pytest.mark.slow
def test_study_with_the_compressor_and_distillation(tmp_path, tiny_data, monkeypatch):
    """A study with the model estimator; its field test is scripted to flag f04 on the full
    model (and nothing on the refit reference), so the refit path runs: the reference
    without f04 is trained once, cached beside the teacher, and the compressor drops f04."""
    import autodim.searchers._tables as tables

    tested = []

    def scripted(embed, backbone, batches, names, *, harmful=False):
        tested.append(embed)
        return (["f04"] if len(tested) == 1 else []), 0.5

    monkeypatch.setattr(tables, "field_removal_test", scripted)
    from tests.study.test_study import write_study

    space = {"candidate_dims": [1, 2, 4, 8],
             "methods": {"blackbox": {"params": {"n_candidates": 2, "epochs": 1,
                                                 "max_batches": 4}}},
             "memcom": {"inflate": 3.0, "ratio": 0.2, "min_rows": 100},
             "compress": {"enabled": True, "bits": {"type": "categorical",
                                                    "choices": ["32,16,8,4", "8,4,2"]},
                          "train": {"type": "categorical", "choices": ["qat", "ptq"]},
                          "estimator": "model", "distill": 0.5, "warm_start": True}}
    cfg = StudyConfig.load(write_study(tmp_path, space=space, baselines=["quant"], n_trials=2,
                                       budget="6x"))
    res = run_study(cfg, data=tiny_data)
    done = [t for t in res.study.get_trials(states=(TrialState.COMPLETE,))]
    search = [t for t in done if t.user_attrs["kind"] == "search"]
    assert search and all(t.user_attrs["feasible"] for t in done)
    assert all("compress.bits" in t.params for t in search)
    assert all(t.user_attrs["compress"]["estimator"] == "model" for t in search)
    assert all(t.user_attrs["compress"]["estimate_on"] == "train" for t in search)
    assert (res.folder / "teacher" / "weights.safetensors").is_file()
    # One estimator for the study: the field test ran on the teacher and on one reference.
    assert len(tested) == 2 and len(list(res.folder.glob("teacher/without-*/*.safetensors"))) == 1
    for t in search:
        assert t.user_attrs["compress"]["dropped"] == ["f04"]
        assert t.user_attrs["compress"]["refits"] == [{"without": ["f04"], "val_logloss": 0.5}]
        assert res.plan(t.number).dims["f04"] == 0
    for t in search:
        plan = res.plan(t.number)
        model = res.model(t.number)
        assert model.embedding.num_bytes() == plan.num_bytes()
        if any(f.bits < 32 for f in plan.fields):  # loaded back as packed tables
            from autodim.embeddings.fused import named_field_modules
            from autodim.embeddings.quant import QuantizedEmbedding

            assert any(isinstance(m, QuantizedEmbedding) for _, m in named_field_modules(model))


def test_the_estimator_measures_on_training_rows(tiny_data, tiny_dm):
    """``estimate_batches``: training rows by default (as many as the validation split
    holds), validation rows on request; on the rows a trained model fit, every option that
    hashes or narrows a field costs something (on validation rows it may not: the credit a
    retrained compact model does not get)."""
    import numpy as np

    from autodim.compress import estimate_batches
    from autodim.task import TrainConfig, train_plan

    val = list(tiny_dm.val_dataloader())
    n_val = sum(len(b[1]) for b in val)
    on_train = estimate_batches(tiny_dm)
    n = sum(len(b[1]) for b in on_train)
    assert n_val <= n < n_val + tiny_dm.batch_size
    def rows(a):
        return [r.tobytes() for r in np.asarray(a, dtype=np.int64)]

    train_rows, val_rows = set(rows(tiny_data.train.ids)), set(rows(tiny_data.val.ids))
    seen = [r for b in on_train for r in rows(b[0])]
    assert sum(r in train_rows for r in seen) == len(seen)
    assert sum(r in val_rows and r not in train_rows for r in seen) == 0
    on_val = estimate_batches(tiny_dm, "val")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(on_val, val))
    with pytest.raises(ValueError, match="on='test'"):
        estimate_batches(tiny_dm, "test")

    full = DimensionPlan.full(tiny_data.schema, 8)
    res = train_plan(full, tiny_dm, config=TrainConfig(max_epochs=3, lr=1e-2), test=False)
    est = ModelLoss(res.task.eval(), on_train, tiny_data.schema, 8)
    for fp in full.fields:
        assert est.narrow(fp, 1) > 0, fp.name
        if fp.vocab_size >= 100:
            assert est.hash(fp, fp.vocab_size // 2) > 0, fp.name


def test_the_compressor_drops_the_fields_the_ablation_test_finds_idle(tiny_data, tiny_dm):
    """Tiny planted data: f03 and f04 carry no signal. On the training rows the full model
    memorised them (every option that coarsens them costs something); the mean-ablation
    test on the validation rows finds them idle and the compressor drops them, spending the
    bytes on the signal fields instead."""
    from autodim.task import TrainConfig, train_plan

    full = DimensionPlan.full(tiny_data.schema, 8)
    res = train_plan(full, tiny_dm, config=TrainConfig(max_epochs=4, lr=1e-2, seed=0),
                     test=False)
    est = ModelLoss.from_datamodule(res.task.eval(), tiny_dm, tiny_data.schema, 8,
                                    drop_test="idle")
    noise = {n for n, r in tiny_data.meta["planted_ranks"].items() if r == 0}
    assert est.idle == noise
    # "harmful" (the default) flags only fields the model is better without: never signal.
    harmful = ModelLoss.from_datamodule(res.task.eval(), tiny_dm, tiny_data.schema, 8)
    assert harmful.idle <= noise
    # A field whose rows are made pure noise hurts the model: "harmful" flags it alone.
    import copy

    spoilt = copy.deepcopy(res.task).eval()
    k = tiny_data.schema.names.index("f04")
    with torch.no_grad():
        w = spoilt.embedding.fields[k].table.embedding.weight
        w.copy_(torch.randn_like(w) * 3 * w.std())
    assert ModelLoss.from_datamodule(spoilt, tiny_dm, tiny_data.schema, 8).idle == {"f04"}
    assert all(est.narrow(next(f for f in full.fields if f.name == n), 1) > 0 for n in noise)
    budget = full.num_bytes() // 6
    plan, info = compress_plan(full, tiny_data.schema, budget, bits=(32, 8, 4, 2),
                               estimator=est)
    assert sorted(info["dropped"]) == sorted(noise)
    assert {f.name for f in plan.fields if f.dim == 0} == noise
    kept, _ = compress_plan(full, tiny_data.schema, budget, bits=(32, 8, 4, 2),
                            estimator=est, drop_idle=False)
    assert all(f.dim > 0 for f in kept.fields)
    signal_bytes = sum(f.num_bytes(8) for f in plan.fields if f.name not in noise)
    assert signal_bytes > sum(f.num_bytes(8) for f in kept.fields if f.name not in noise)
    no_test = ModelLoss.from_datamodule(res.task.eval(), tiny_dm, tiny_data.schema, 8,
                                        drop_test=None)
    assert no_test.idle == set()


def test_refit_measures_on_a_reference_trained_without_the_flagged_fields(
        tiny_data, tiny_dm, monkeypatch):
    """``refit``: the reference is trained again without the flagged fields and tested
    again (a field flagged only there is added), up to ``max_refits`` times, and every
    option is measured on the last reference, not on the full model. The field test's
    verdicts are scripted (f04, then f03, then none); the models are trained."""
    import autodim.searchers._tables as tables
    from autodim.task import TrainConfig, evaluate, train_plan

    cfg = TrainConfig(max_epochs=3, lr=1e-2, seed=0)
    names = tiny_data.schema.names
    full = train_plan(DimensionPlan.full(tiny_data.schema, 8), tiny_dm, config=cfg,
                      test=False).task.eval()
    verdicts, tested = [], []

    def scripted(embed, backbone, batches, names, *, harmful=False):
        tested.append(embed)
        return (verdicts.pop(0) if verdicts else []), 0.5 + len(tested)

    monkeypatch.setattr(tables, "field_removal_test", scripted)
    calls, refs = [], []

    def refit(drop):
        calls.append(set(drop))
        plan = DimensionPlan.full(tiny_data.schema, 8, drop=drop)
        refs.append(train_plan(plan, tiny_dm, config=cfg, test=False).task.eval())
        return refs[-1]

    verdicts[:] = [["f04"], ["f03"], []]
    est = ModelLoss.from_datamodule(full, tiny_dm, tiny_data.schema, 8, refit=refit)
    assert calls == [{"f04"}, {"f03", "f04"}]
    assert tested == [full.embedding, refs[0].embedding, refs[1].embedding]
    assert est.idle == {"f03", "f04"} and est.val_logloss == 1.5
    assert est.refits == [{"without": ["f04"], "val_logloss": 2.5},
                          {"without": ["f03", "f04"], "val_logloss": 3.5}]
    assert est.model is refs[-1] and set(est._tables) == set(names) - {"f03", "f04"}
    # The options are the last reference's: equal to an estimator built on it alone.
    on_ref = ModelLoss(refs[-1], est.batches, tiny_data.schema, 8)
    on_full = ModelLoss(full, est.batches, tiny_data.schema, 8)
    assert est.base == evaluate(refs[-1], est.batches)["logloss"]
    f00 = DimensionPlan.full(tiny_data.schema, 8).fields[names.index("f00")]
    assert est.narrow(f00, 1) == on_ref.narrow(f00, 1) != on_full.narrow(f00, 1)
    # max_refits bounds the trainings; without refit the full model is measured.
    calls.clear()
    verdicts[:] = [["f04"], ["f03"], []]
    one = ModelLoss.from_datamodule(full, tiny_dm, tiny_data.schema, 8, refit=refit,
                                    max_refits=1)
    assert calls == [{"f04"}] and one.idle == {"f03", "f04"} and one.model is refs[-1]
    verdicts[:] = [["f04"]]
    plain = ModelLoss.from_datamodule(full, tiny_dm, tiny_data.schema, 8)
    assert plain.idle == {"f04"} and plain.refits == [] and plain.model is full


def test_distillation_pulls_towards_the_teacher(tiny_data, tiny_dm):
    from autodim.export import build_model
    from autodim.task import Distill

    full = DimensionPlan.full(tiny_data.schema, 4)
    teacher, student = build_model(full, "fm"), build_model(full, "fm")
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(0, 1.0)
    ids, labels = next(iter(tiny_dm.train_dataloader()))
    plain = student.loss(student(ids), labels)
    assert student.distill_loss(student(ids), ids) is None
    cb = Distill(teacher, weight=1.0, temperature=2.0)
    cb.on_fit_start(None, student)
    mixed = plain + student.distill_loss(student(ids), ids)
    assert float(mixed) > float(plain)  # the teacher disagrees with the untrained student
    assert "distill" not in dict(student.named_modules()) and not any(
        k.startswith("distill") for k in student.state_dict())
    # The soft term's minimum is the teacher itself: a student equal to it loses nothing more.
    cb2 = Distill(teacher, weight=1.0, temperature=2.0)
    cb2.on_fit_start(None, teacher)
    soft_self = float(teacher.distill_loss(teacher(ids), ids))
    t = torch.sigmoid(teacher(ids) / 2.0)
    entropy = float(torch.nn.functional.binary_cross_entropy(t, t)) * 4.0
    assert soft_self == pytest.approx(entropy, rel=1e-4)
    cb.on_fit_end(None, student)
    assert student.distill_loss(student(ids), ids) is None


def test_warm_start_reproduces_what_the_estimator_scored(tiny_data, tiny_dm):
    from dataclasses import replace

    from autodim.compress import warm_start_embedding
    from autodim.export import build_model

    full = DimensionPlan.full(tiny_data.schema, 8)
    teacher = build_model(full, "fm")
    with torch.no_grad():
        for p in teacher.embedding.parameters():
            p.normal_(0, 0.5)
    teacher.eval()
    ids, _ = next(iter(tiny_dm.val_dataloader()))
    same = warm_start_embedding(full, teacher, tiny_data.schema)
    torch.testing.assert_close(same(ids), teacher.embedding(ids))
    # f02 narrowed to 3 dims (projection), f04 hashed with MEmCom: the warm start equals the
    # table the estimator substitutes (rank-3 SVD; heaviest-id rows times LSQ scalars).
    plan = full.replace(fields=[replace(f, dim=3) if f.name == "f02" else
                                replace(f, hashing={"method": "memcom", "buckets": 50})
                                if f.name == "f04" else f for f in full.fields])
    warm = warm_start_embedding(plan, teacher, tiny_data.schema)
    est = ModelLoss(teacher, [(ids, torch.zeros(len(ids)))], tiny_data.schema, 8)
    E = est._tables["f02"][1]
    U, S, Vh = torch.linalg.svd(E, full_matrices=False)
    k = tiny_data.schema.names.index("f02")
    col = ids[:, k:k + 1]
    torch.testing.assert_close(warm.fields[k](col), ((U[:, :3] * S[:3]) @ Vh[:3])[col[:, 0]],
                               atol=1e-5, rtol=1e-4)
    assert warm.num_bytes() == plan.num_bytes()


def test_warm_start_of_a_field_with_fewer_rows_than_its_dim():
    """A 3-row field narrowed to dim 6 has 3 singular directions: they start the table and
    projection, the other 3 keep their fresh initialisation (a study trial crashed here)."""
    from dataclasses import replace

    from autodim.compress import warm_start_embedding
    from autodim.data.synthetic import make_planted
    from autodim.export import build_model

    data = make_planted("planted", rows=500, seed=0, cardinalities=[3, 40], ranks=[1, 2])
    full = DimensionPlan.full(data.schema, 8)
    teacher = build_model(full, "fm").eval()
    plan = full.replace(fields=[replace(full.fields[0], dim=6), full.fields[1]])
    warm = warm_start_embedding(plan, teacher, data.schema)
    E = teacher.embedding.fields[0].table.embedding.weight.detach()
    _, _, Vh = torch.linalg.svd(E, full_matrices=False)
    proj = warm.fields[0].align.linear.weight.detach().T  # [6, 8]
    torch.testing.assert_close(proj[:3], Vh[:3])
    assert proj[3:].abs().sum() > 0 and warm.fields[0].table.embedding.weight[:, 3:].abs().sum() > 0
