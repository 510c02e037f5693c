"""The fused embedding path computes what the per-field path computes, with the same keys,
bytes and gradients; its per-field view shares the trained weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_layers import LAYERS as BASE
from test_layers import SCHEMA, _batch, _plan

from autodim.embeddings.fused import FusedEmbedding, fusable
from autodim.plan import build_embedding, encode_mask

LAYERS = {**BASE,
          # one width, all projecting / mixed project + pad (a sequence among them)
          "project_group": _plan(user={"dim": 3}, item={"dim": 3}, tags={"dim": 3}),
          # width 1 (uniform at high ratios): a broadcast multiply instead of the bmm
          "project_width1": _plan(user={"dim": 1}, item={"dim": 1}, tags={"dim": 1}),
          "project_pad_group": _plan(user={"dim": 2}, item={"dim": 2, "align": "pad"},
                                     tags={"dim": 2}),
          # two QR fields (one a sequence) and two MEmCom fields of one width
          "qr_group": _plan(user={"hashing": {"method": "qr", "buckets": 7}},
                            tags={"hashing": {"method": "qr", "buckets": 5}}),
          "memcom_group": _plan(user={"hashing": {"method": "memcom", "buckets": 5}, "dim": 4},
                                item={"hashing": {"method": "memcom", "buckets": 4}, "dim": 4}),
          # selected columns (non-prefix) beside projected and padded fields
          "select_group": _plan(user={"dim": 3, "align": "select", "columns": [6, 0, 3]},
                                item={"dim": 3, "align": "select", "columns": [1, 2, 7]},
                                tags={"dim": 3}),
          "select_pad_group": _plan(user={"dim": 3, "align": "select", "columns": [6, 0, 3]},
                                    item={"dim": 3, "align": "pad"}, tags={"dim": 3}),
          # hashed, row-pruned and element-pruned (a sequence) fields in one group
          "masked_group": _plan(
              user={"dim": 4, "align": "pad", "row_mask": {"kept": 21, "bits": encode_mask(
                  np.arange(50) < 21)}},
              item={"dim": 4, "hashing": {"method": "hash", "buckets": 7}},
              tags={"dim": 4, "align": "pad", "sparse": {
                  "nnz": int((m := np.random.default_rng(3).random((12, 4)) < 0.5).sum()),
                  "bits": encode_mask(m)}})}
FUSABLE = [n for n in sorted(LAYERS) if fusable(build_embedding(LAYERS[n]))]


def _pair(name: str, sparse_threshold: int = 1_000_000):
    torch.manual_seed(0)
    ref = build_embedding(LAYERS[name], sparse_threshold=sparse_threshold)
    torch.manual_seed(0)
    fused = build_embedding(LAYERS[name], sparse_threshold=sparse_threshold, fused=True)
    return ref, fused


def _padded_batch(n: int = 32) -> torch.Tensor:
    x = _batch(n)
    x[:5, 2:] = 0  # sequences that are all padding and partly padding
    x[5:10, 3:] = 0
    return x


def test_most_layers_fuse():
    assert {"full", "project_group", "project_pad_group", "hash", "sparse", "row_pruned",
            "masked_group", "select_group", "select_pad_group", "dropped", "memcom", "qr_group",
            "memcom_group"} <= set(FUSABLE)
    assert "mixed_project" not in FUSABLE  # three widths: nothing to fuse


@pytest.mark.parametrize("name", FUSABLE)
def test_outputs_keys_bytes_equal_the_per_field_path(name):
    ref, fused = _pair(name)
    assert isinstance(fused, FusedEmbedding) and fused.groups
    assert fused.num_bytes() == ref.num_bytes() == LAYERS[name].num_bytes()
    a, b = ref.state_dict(), fused.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x = _padded_batch()
    assert torch.allclose(fused(x), ref(x), atol=1e-6)


@pytest.mark.parametrize("name", FUSABLE)
def test_gradients_equal_the_per_field_path(name):
    ref, fused = _pair(name)
    x = _padded_batch()
    w = torch.randn(x.shape[0], SCHEMA.num_fields, 8)
    (ref(x) * w).sum().backward()
    (fused(x) * w).sum().backward()
    grads = {n: p.grad for n, p in ref.named_parameters()}
    names = {"plain": ("embedding.weight", None), "qr": ("quotient.weight", "remainder.weight"),
             "memcom": ("shared.weight", "scale.weight")}
    for g in fused.groups:
        first, second = names[g.family]
        for j, i in enumerate(g.field_index):
            lo, hi = g.bounds[j]
            torch.testing.assert_close(g.table.weight.grad[lo:hi],
                                       grads[f"fields.{i}.table.{first}"], atol=1e-6, rtol=1e-5)
            if second:
                lo, hi = g.bounds_b[j]
                torch.testing.assert_close(g.table_b.weight.grad[lo:hi],
                                           grads[f"fields.{i}.table.{second}"], atol=1e-6,
                                           rtol=1e-5)
        for n, j in enumerate(g.proj_local):
            torch.testing.assert_close(
                g.proj.grad[n], grads[f"fields.{g.field_index[j]}.align.linear.weight"],
                atol=1e-6, rtol=1e-5)


def test_state_dict_round_trips_both_ways():
    ref, fused = _pair("project_pad_group")
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p))
    fused.load_state_dict(ref.state_dict(), strict=True)  # per-field keys into fused
    x = _padded_batch()
    assert torch.allclose(fused(x), ref(x), atol=1e-6)
    _, other = _pair("project_pad_group")
    ref2 = other.fieldwise()
    ref2.load_state_dict(fused.state_dict(), strict=True)  # fused keys into per-field
    assert torch.allclose(ref2(x), ref(x), atol=1e-6)


def test_fieldwise_view_holds_the_trained_weights():
    ref, fused = _pair("full")
    opt = torch.optim.SGD(fused.parameters(), lr=1.0)
    x = _padded_batch()
    fused(x).pow(2).sum().backward()
    opt.step()
    per_field = fused.fieldwise()
    assert type(per_field).__name__ == "FieldwiseEmbedding"
    assert torch.allclose(per_field(x), fused(x), atol=1e-6)
    assert not torch.allclose(per_field(x), ref(x))  # it did train
    # views, not copies: one storage for the group
    g = fused.groups[0]
    w = per_field.fields[g.field_index[1]].table.embedding.weight
    assert w.untyped_storage().data_ptr() == g.table.weight.untyped_storage().data_ptr()


def test_large_fused_table_emits_sparse_gradients():
    _, fused = _pair("full", sparse_threshold=60)  # 50 + 30 + 12 rows fused > 60
    fused(_padded_batch()).sum().backward()
    assert fused.groups[0].table.weight.grad.is_sparse
    _, small = _pair("full", sparse_threshold=1000)
    small(_padded_batch()).sum().backward()
    assert not small.groups[0].table.weight.grad.is_sparse


@pytest.mark.parametrize("name", ["masked_group", "sparse", "row_pruned"])
def test_baked_layer_serves_the_same_outputs_and_exports(name):
    from autodim.export import compact_state_dict

    ref, fused = _pair(name)
    x = _padded_batch()
    before = compact_state_dict(fused)
    fused.eval().bake()
    assert any(g.baked for g in fused.groups) == (name != "row_pruned")
    assert torch.allclose(fused(x), ref(x), atol=1e-6)
    after = compact_state_dict(fused)
    assert before.keys() == after.keys() == compact_state_dict(ref).keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


@pytest.mark.parametrize("name", FUSABLE)
def test_eval_outputs_equal_the_per_field_path(name):
    """Serving reads (MEmCom's scale as embedding_bag weights, the one-gather path up to
    2048 rows, the groups beyond) give the per-field outputs."""
    ref, fused = _pair(name)
    ref.eval()
    fused.eval().bake()
    for n in (32, 3000):
        x = _padded_batch(n)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), ref(x), atol=1e-6, rtol=1e-5)


def test_loaded_model_is_fused_baked_and_equal(tmp_path):
    from autodim.export import build_model, load_model, save_weights

    plan = LAYERS["masked_group"]
    torch.manual_seed(0)
    model = build_model(plan, "fm").eval()
    path = save_weights(model, tmp_path / "w.safetensors", plan=plan, backbone="fm")
    plan.save(tmp_path / "plan.json")
    loaded = load_model(tmp_path / "plan.json", path)
    # masked tables are held in their stored form (kept rows + bitmap, CSR): one field per
    # family here, so nothing is left to fuse
    from autodim.embeddings.tables import CSRTable, KeptRowsTable

    kinds = {type(m.table) for m in loaded.embedding.fields}
    assert kinds == {KeptRowsTable, CSRTable, type(model.embedding.fields[1].table)}
    assert loaded.num_bytes() == plan.num_bytes()
    x = _padded_batch()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
    # and it saves back to the same compact file contents
    again = save_weights(loaded, tmp_path / "again.safetensors", plan=plan, backbone="fm")
    from autodim.export import load_weights

    a, b = load_weights(path)[0], load_weights(again)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_state_dict_follows_the_fused_tensors_after_they_are_replaced():
    # a device move (or any .data swap) gives the groups new storage: the per-field keys
    # must still read the current values
    _, fused = _pair("full")
    g = fused.groups[0]
    g.table.weight.data = g.table.weight.data + 1.0
    lo, hi = g.bounds[0]
    key = f"fields.{g.field_index[0]}.table.embedding.weight"
    assert torch.equal(fused.state_dict()[key], g.table.weight.data[lo:hi])


def test_serving_path_one_gather_for_every_width():
    from autodim.data.schema import Field, Schema
    from autodim.plan import DimensionPlan, FieldPlan

    schema = Schema([Field("a", vocab_size=50), Field("b", vocab_size=30),
                     Field("c", vocab_size=20), Field("d", vocab_size=9),
                     Field("e", vocab_size=7)])
    m = np.random.default_rng(5).random((9, 2)) < 0.5
    per_field = {"a": {"dim": 8}, "b": {"dim": 3},  # identity, projection
                 "c": {"dim": 3, "align": "select", "columns": [7, 1, 4]},
                 "d": {"dim": 2, "align": "pad", "sparse": {"nnz": int(m.sum()),
                                                           "bits": encode_mask(m)}},
                 "e": {"dim": 0}}
    for hashed in (False, True):
        fields = []
        for f in schema.fields:
            kw = dict(name=f.name, vocab_size=f.vocab_size, **per_field[f.name])
            if hashed and f.name == "a":
                kw["hashing"] = {"method": "hash", "buckets": 11}
            fields.append(FieldPlan(**kw))
        plan = DimensionPlan(fields=fields, D=8, schema_fingerprint=schema.fingerprint())
        torch.manual_seed(0)
        ref = build_embedding(plan).eval()
        torch.manual_seed(0)
        fused = build_embedding(plan, fused=True).eval().bake()
        assert fused._serve is not None and fused.rest == [4]  # the dropped field
        x = torch.stack([torch.randint(0, f.vocab_size, (64,)) for f in schema.fields], 1)
        # the last row of every field: its window runs into the next table or the zeros
        x[0] = torch.tensor([f.vocab_size - 1 for f in schema.fields])
        with torch.no_grad():
            assert torch.allclose(fused(x), ref(x), atol=1e-6)
            assert torch.allclose(fused(x[:1]), ref(x[:1]), atol=1e-6)
        assert fused.state_dict().keys() == ref.state_dict().keys()
        fused.train()
        assert fused._serve is None  # training never reads the serving copy of the maps
        with torch.no_grad():
            assert torch.allclose(fused(x), ref(x), atol=1e-6)


def test_width_one_sequence_reads_zero_for_padding():
    from autodim.data.schema import Field, Schema
    from autodim.plan import DimensionPlan

    schema = Schema([Field("a", vocab_size=10), Field("s", "sequence", vocab_size=6, width=1)])
    plan = DimensionPlan.full(schema, 4)
    torch.manual_seed(0)
    ref = build_embedding(plan)
    torch.manual_seed(0)
    fused = build_embedding(plan, fused=True)
    x = torch.tensor([[1, 0], [2, 3]])
    assert torch.allclose(fused(x), ref(x)) and float(fused(x)[0, 1].detach().abs().sum()) == 0.0


def _trained_and_served(plan, tmp_path):
    """A model of ``plan`` with N(0, 0.5) weights, and the same model as ``load_model``
    serves it from its saved weights."""
    from autodim.export import build_model, load_model, save_weights

    torch.manual_seed(0)
    model = build_model(plan, "fm")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    path = save_weights(model.eval(), tmp_path / "w.safetensors", plan=plan, backbone="fm")
    return model, load_model(plan, path)


@pytest.mark.parametrize("hashing", [{"user": {"method": "memcom", "buckets": 5}},
                                     {"user": {"method": "memcom", "buckets": 5},
                                      "item": {"method": "memcom", "buckets": 3}},
                                     {"user": {"method": "qr", "buckets": 7}}])
def test_served_product_groups_with_dense_stand_ins_equal_the_model(tmp_path, hashing):
    """load_model joins dense fields to a QR / MEmCom group of their width (a factor of 1);
    its reads (MEmCom as a weighted embedding_bag from 64 rows, products in place) give the
    trained model's outputs below and above that size."""
    model, served = _trained_and_served(_plan(**{k: {"hashing": v}
                                                 for k, v in hashing.items()}), tmp_path)
    assert not any(m.training for m in served.modules())  # the served read paths are on
    (group,) = served.embedding.groups
    assert group.family == hashing["user"]["method"] and group.partial_product
    for n in (16, 200):
        x = _padded_batch(n)
        with torch.inference_mode():
            torch.testing.assert_close(served.embedding(x), model.embedding(x),
                                       atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("hashing", [{"user": {"method": "memcom", "buckets": 5},
                                      "item": {"method": "memcom", "buckets": 3}},
                                     {"user": {"method": "qr", "buckets": 7},
                                      "item": {"method": "qr", "buckets": 4}}])
def test_small_served_batches_read_products_in_one_pass(tmp_path, hashing):
    """Up to 64 rows a served QR / MEmCom group takes both row indices from one index
    computation (QR: one gather from its two tables moved into one buffer, same bytes);
    outputs equal the trained model's, also after a move and a load (which rebuild it)."""
    from autodim.embeddings.fused import resident_bytes

    # (the sequence field pools: a width of its own, outside the product group)
    plan = _plan(tags={"dim": 4}, **{k: {"hashing": v} for k, v in hashing.items()})
    model, served = _trained_and_served(plan, tmp_path)
    groups = [g for g in served.embedding.groups if g.product]
    assert groups and all(g._small is not None for g in groups)
    qr = [g for g in groups if g.family == "qr"]
    for g in qr:  # one storage for both tables
        assert (g.table.weight.untyped_storage().data_ptr()
                == g.table_b.weight.untyped_storage().data_ptr())
    assert resident_bytes(served.embedding) - plan.num_bytes() < 8192
    calls = []
    for g in groups:
        read = g._read_small
        g._read_small = lambda local, read=read: calls.append(1) or read(local)
    emb, ref = served.embedding, model.embedding
    for moved in (False, True):
        if moved:  # a move copies every tensor; new weights are then loaded into the copies
            emb._apply(lambda t: t.clone())
            with torch.no_grad():
                for p in ref.parameters():
                    p.mul_(-1.5)
            emb.load_state_dict(ref.state_dict())
        for n in (1, 16, 64, 65):
            x = _padded_batch(n)
            with torch.inference_mode():
                torch.testing.assert_close(emb(x), ref(x), atol=1e-6, rtol=1e-5)
    assert len(calls) == 2 * 3 * len(groups)  # 1, 16 and 64 rows, before and after
