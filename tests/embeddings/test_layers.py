"""Conformance suite for embedding layers: every kind a plan can describe maps a batch to
``[B, F, D]``, reports bytes equal to the plan's, and trains (gradients reach its tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autodim.data.schema import Field, Schema
from autodim.plan import DimensionPlan, FieldPlan, build_embedding, encode_mask

D = 8
SCHEMA = Schema([Field("user", vocab_size=50), Field("item", vocab_size=30),
                 Field("tags", "sequence", vocab_size=12, width=4)])


def _plan(**per_field) -> DimensionPlan:
    fields = []
    for f in SCHEMA.fields:
        kw = dict(name=f.name, vocab_size=f.vocab_size, dim=D, kind=f.kind, width=f.width)
        kw.update(per_field.get(f.name, {}))
        fields.append(FieldPlan(**kw))
    plan = DimensionPlan(fields=fields, D=D, schema_fingerprint=SCHEMA.fingerprint())
    plan.validate()
    return plan


rng = np.random.default_rng(0)
LAYERS = {
    "full": _plan(),
    "mixed_project": _plan(user={"dim": 2}, item={"dim": 5}),
    "mixed_pad": _plan(user={"dim": 2, "align": "pad"}, tags={"dim": 3, "align": "pad"}),
    "mixed_select": _plan(user={"dim": 3, "align": "select", "columns": [6, 0, 3]}),
    "dropped": _plan(item={"dim": 0}),
    "hash": _plan(user={"hashing": {"method": "hash", "buckets": 7}}),
    "qr": _plan(user={"hashing": {"method": "qr", "buckets": 7}, "dim": 4}),
    "memcom": _plan(user={"hashing": {"method": "memcom", "buckets": 5}},
                    tags={"hashing": {"method": "memcom", "buckets": 3}}),
    "frequency_groups": _plan(user={"dim": 8, "frequency_groups": [
        {"rows": 10, "dim": 8}, {"rows": 15, "dim": 2}, {"rows": 25, "dim": 0}]},
        tags={"dim": 4, "frequency_groups": [{"rows": 5, "dim": 4}, {"rows": 7, "dim": 1}]}),
    "row_pruned": _plan(user={"dim": 4, "align": "pad",
                              "row_mask": {"kept": 21, "bits": encode_mask(
                                  np.arange(50) < 21)}}),
    "sparse": _plan(item={"sparse": {"nnz": int((m := rng.random((30, D)) < 0.3).sum()),
                                     "bits": encode_mask(m)}}),
}


def _batch(n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    cols = [torch.randint(0, f.vocab_size, (n, f.width), generator=g) for f in SCHEMA.fields]
    return torch.cat(cols, dim=1)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_shape_bytes_and_gradients(name):
    plan = LAYERS[name]
    emb = build_embedding(plan)
    out = emb(_batch())
    assert out.shape == (16, SCHEMA.num_fields, D)
    assert emb.num_bytes() == plan.num_bytes()
    assert emb.field_bytes() == plan.field_bytes()
    out.pow(2).sum().backward()
    trained = [p for p in emb.parameters() if p.grad is not None]
    assert trained, "no parameter received a gradient"


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_json_round_trip_keeps_bytes(name):
    plan = LAYERS[name]
    again = DimensionPlan.from_json(plan.to_json())
    assert again.num_bytes() == plan.num_bytes()
    assert again.to_dict()["fields"] == plan.to_dict()["fields"]


def test_full_bytes_are_rows_times_D_times_4():
    assert LAYERS["full"].num_bytes() == (50 + 30 + 12) * D * 4


def test_projection_costs_d_times_D():
    plan = LAYERS["mixed_project"]
    assert plan.field_bytes()["user"] == 50 * 2 * 4 + 2 * D * 4


def test_memcom_is_shared_row_times_per_id_scalar():
    emb = build_embedding(LAYERS["memcom"])
    table = emb.fields[0].table
    assert torch.all(table.scale.weight == 1.0)  # w initialised to 1
    ids = torch.tensor([[3], [8]])  # 3 and 8 share bucket 3 of 5
    with torch.no_grad():
        table.scale.weight[8] = 2.0
    v = table(ids)
    assert torch.allclose(v[1], 2 * v[0])
    assert LAYERS["memcom"].field_bytes()["user"] == (5 * D + 50) * 4


def test_hash_reads_row_i_mod_m():
    emb = build_embedding(LAYERS["hash"])
    t = emb.fields[0].table
    assert torch.equal(t(torch.tensor([[2]])), t(torch.tensor([[9]])))


def test_qr_gives_distinct_vectors_for_colliding_ids():
    emb = build_embedding(LAYERS["qr"])
    t = emb.fields[0].table
    assert not torch.allclose(t(torch.tensor([[2]])), t(torch.tensor([[9]])))


def test_select_places_columns_and_zeros_elsewhere():
    emb = build_embedding(LAYERS["mixed_select"])
    out = emb(_batch())[:, 0]
    zero_cols = [c for c in range(D) if c not in (6, 0, 3)]
    assert torch.all(out[:, zero_cols] == 0)
    assert torch.all(out[:, [6, 0, 3]].abs().sum(0) > 0)


def test_sequence_fields_mean_pool_non_padding_ids():
    emb = build_embedding(LAYERS["full"])
    table = emb.fields[2].table.embedding.weight
    ids = torch.zeros(1, SCHEMA.num_columns, dtype=torch.long)
    ids[0, 2:6] = torch.tensor([3, 5, 0, 0])
    out = emb(ids)[0, 2]
    assert torch.allclose(out, (table[3] + table[5]) / 2)


def test_pruned_rows_read_the_oov_row():
    emb = build_embedding(LAYERS["row_pruned"])
    t = emb.fields[0].table
    assert torch.equal(t(torch.tensor([[40]])), t(torch.tensor([[0]])))
    assert not torch.equal(t(torch.tensor([[5]])), t(torch.tensor([[0]])))


def test_dropped_field_outputs_zeros_and_costs_nothing():
    emb = build_embedding(LAYERS["dropped"])
    assert torch.all(emb(_batch())[:, 1] == 0)
    assert LAYERS["dropped"].field_bytes()["item"] == 0


def test_frequency_groups_use_their_own_dims():
    plan = LAYERS["frequency_groups"]
    emb = build_embedding(plan)
    ids = torch.zeros(1, SCHEMA.num_columns, dtype=torch.long)
    ids[0, 0] = 40  # third group: dim 0
    assert torch.all(emb(ids)[0, 0] == 0)
    assert plan.field_bytes()["user"] == 10 * 8 * 4 + 15 * 2 * 4 + 2 * D * 4


def test_large_tables_get_sparse_gradients():
    emb = build_embedding(LAYERS["full"], sparse_threshold=40)
    out = emb(_batch())
    out.sum().backward()
    user = emb.fields[0].table.embedding.weight
    item = emb.fields[1].table.embedding.weight
    assert user.grad.is_sparse and not item.grad.is_sparse
