"""Loading a model for serving: masked tables are held in their stored (compact) form, the
outputs equal the trained model's, and resident memory is the plan's bytes plus a
constant that does not grow with the vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autodim.data.schema import Field, Schema
from autodim.embeddings.fused import FusedEmbedding, rank_bytes, resident_bytes
from autodim.embeddings.tables import CSRTable, KeptRowsTable, RowPrunedTable, SparseTable
from autodim.export import build_model, load_model, load_weights, save_weights
from autodim.plan import DimensionPlan, FieldPlan, encode_mask

D = 8


def _schema(scale: int) -> Schema:
    return Schema([Field("user", vocab_size=50 * scale), Field("item", vocab_size=30 * scale),
                   Field("city", vocab_size=20 * scale),
                   Field("tags", "sequence", vocab_size=12 * scale, width=4)])


def _rows(n: int, rng) -> dict:
    keep = rng.random(n) < 0.4
    keep[0] = True
    return {"row_mask": {"kept": int(keep.sum()), "bits": encode_mask(keep)}}


def _entries(n: int, d: int, rng) -> dict:
    m = rng.random((n, d)) < 0.3
    return {"sparse": {"nnz": int(m.sum()), "bits": encode_mask(m)}}


def _plan(kind: str, scale: int = 1) -> DimensionPlan:
    """Plans with masks: every field row-pruned / element-pruned (one group each, a
    sequence among them), and mixes with dense, hashed, projected, selected and dropped
    fields."""
    schema = _schema(scale)
    rng = np.random.default_rng(7)
    n = {f.name: f.vocab_size for f in schema.fields}
    per = {
        "row_pruned": {f: {"dim": 4, "align": "pad", **_rows(n[f], rng)} for f in n},
        "sparse": {f: {"dim": 4, "align": "pad", **_entries(n[f], 4, rng)} for f in n},
        "mixed": {"user": {"dim": 4, **_rows(n["user"], rng)},  # projected
                  "item": {"dim": 4, "align": "select", "columns": [7, 0, 5, 2],
                           **_entries(n["item"], 4, rng)},
                  "city": {"dim": 4, "align": "pad", "hashing": {"method": "hash",
                                                                 "buckets": 7 * scale}},
                  "tags": {"dim": 0}},
        "row_prefix": {f: {"dim": 4, "align": "pad", "row_mask": {
            "kept": k, "bits": encode_mask(np.arange(n[f]) < k)}}
            for f, k in zip(n, (1, 8 * scale, 13 * scale, 5 * scale))},
        "sparse_dropped": {"user": {"dim": 4, **_entries(n["user"], 4, rng)},
                           "item": {"dim": 0},
                           "city": {"dim": 4, "align": "pad", **_entries(n["city"], 4, rng)},
                           "tags": {"dim": 4, "align": "pad", **_entries(n["tags"], 4, rng)}},
        "masked_pairs": {"user": {"dim": 4, "align": "pad", **_rows(n["user"], rng)},
                         "item": {"dim": 4, "align": "pad", **_rows(n["item"], rng)},
                         "city": {"dim": 8, **_entries(n["city"], 8, rng)},
                         "tags": {"dim": 8, **_entries(n["tags"], 8, rng)}},
    }[kind]
    fields = [FieldPlan(name=f.name, vocab_size=f.vocab_size, kind=f.kind, width=f.width,
                        **{"dim": D, **per[f.name]}) for f in schema.fields]
    plan = DimensionPlan(fields=fields, D=D, schema_fingerprint=schema.fingerprint())
    plan.validate()
    return plan


def _batch(plan: DimensionPlan, n: int = 1024) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randint(0, f.vocab_size, (n, f.width), generator=g)
                   for f in plan.fields], 1)
    x[:5, -3:] = 0  # sequences partly padding
    x[5:9, -4:] = 0  # and all padding
    return x


def _saved_and_loaded(plan, tmp_path):
    torch.manual_seed(0)
    model = build_model(plan, "fm").eval()
    path = save_weights(model, tmp_path / "w.safetensors", plan=plan, backbone="fm")
    plan.save(tmp_path / "plan.json")
    return model, path, load_model(tmp_path / "plan.json", path)


KINDS = ["row_pruned", "row_prefix", "sparse", "sparse_dropped", "mixed", "masked_pairs"]


@pytest.mark.parametrize("kind", KINDS)
def test_loaded_masked_model_equals_the_trained_one(kind, tmp_path):
    plan = _plan(kind)
    model, path, loaded = _saved_and_loaded(plan, tmp_path)
    for m in loaded.modules():
        assert not isinstance(m, (RowPrunedTable, SparseTable)), m  # no dense rows + mask
    served = [m for m in loaded.modules() if isinstance(m, (KeptRowsTable, CSRTable))]
    if isinstance(loaded.embedding, FusedEmbedding):
        served += [m for m in loaded.embedding.fieldwise().modules()
                   if isinstance(m, (KeptRowsTable, CSRTable))]
    assert served
    assert loaded.num_bytes() == plan.num_bytes()
    x = _batch(plan)
    with torch.no_grad():
        want = model(x)
        for bs in (1, 3, 64, len(x)):  # the small-batch and the group paths
            got = torch.cat([loaded(x[i:i + bs]) for i in range(0, len(x), bs)])
            assert torch.allclose(got, want, atol=1e-6), bs
    # saving the loaded model gives the same file contents
    again = save_weights(loaded, tmp_path / "again.safetensors", plan=plan, backbone="fm")
    a, b = load_weights(path)[0], load_weights(again)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", KINDS)
def test_resident_bytes_are_plan_bytes_plus_a_constant(kind, tmp_path):
    """resident = num_bytes + rank directories (a stated formula of the bitmap bytes) +
    metadata that does not grow with the vocabulary (per-column offsets, maps)."""
    extra = {}
    for scale in (1, 40):
        plan = _plan(kind, scale)
        folder = tmp_path / str(scale)
        folder.mkdir()
        _, _, loaded = _saved_and_loaded(plan, folder)
        emb = loaded.embedding
        resident = resident_bytes(emb)
        assert resident >= plan.num_bytes()
        extra[scale] = resident - plan.num_bytes() - rank_bytes(emb)
        if kind == "row_prefix":
            assert rank_bytes(emb) == 0  # kept ids 0..k-1 are their own rows: no rank
        elif any(f.row_mask for f in plan.fields):
            bitmap = sum(-(-f.vocab_size // 8) for f in plan.fields if f.row_mask)
            assert rank_bytes(emb) >= bitmap  # a rank entry per bitmap byte
            assert rank_bytes(emb) <= 2 * bitmap + 4 * 4096
        else:
            assert rank_bytes(emb) == 0
    # (the CSR groups' entry counter arange(L), L <= D the most entries of a row, may grow)
    assert 0 <= extra[40] - extra[1] <= 8 * D and 0 <= extra[1] < 8192, extra
    # and below what the dense rows alone would take (40x the vocabulary)
    assert resident_bytes(emb) < sum(f.vocab_size * f.dim * 4 for f in plan.fields)


@pytest.mark.parametrize("method", ["qr", "memcom"])
def test_dense_fields_join_the_product_group_when_served(method, tmp_path):
    """A QR / MEmCom plan's dense fields of the same width are served in the product group
    (a row of ones as their second factor): one group, the same outputs and file."""
    schema = _schema(1)
    hashed = {"user": 7, "tags": 5}
    fields = [FieldPlan(name=f.name, vocab_size=f.vocab_size, kind=f.kind, width=f.width,
                        dim=4, align="pad" if f.name == "item" else "project",
                        hashing={"method": method, "buckets": hashed[f.name]}
                        if f.name in hashed else None)
              for f in schema.fields]
    plan = DimensionPlan(fields=fields, D=D, schema_fingerprint=schema.fingerprint())
    model, path, loaded = _saved_and_loaded(plan, tmp_path)
    groups = loaded.embedding.groups
    assert [g.family for g in groups] == [method] and not loaded.embedding.rest
    x = _batch(plan)
    with torch.no_grad():
        for bs in (1, 64, len(x)):
            got = torch.cat([loaded(x[i:i + bs]) for i in range(0, len(x), bs)])
            assert torch.allclose(got, model(x), atol=1e-6), bs
    again = save_weights(loaded, tmp_path / "again.safetensors", plan=plan, backbone="fm")
    a, b = load_weights(path)[0], load_weights(again)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the dense weights are shared with the group, not copied
    assert resident_bytes(loaded.embedding) - plan.num_bytes() < 8192
