"""Precision: byte accounting, fake quantization, range search, packed tables and kernels."""

import copy
import json

import pytest
import torch

from autodim.data.schema import Field, Schema
from autodim.embeddings.quant import (
    FakeQuantEmbedding,
    QuantizedEmbedding,
    pack_codes,
    pack_model,
    range_search,
    row_bytes,
    table_bytes,
    unpack_codes,
)
from autodim.errors import PlanError
from autodim.plan import DimensionPlan

SCHEMA = Schema([Field("u", vocab_size=1000), Field("i", vocab_size=300),
                 Field("c", vocab_size=20)])


def _ids(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, f.vocab_size, (n,), generator=g)
                        for f in SCHEMA.fields], 1)


def _plan(bits, scale="row", train="qat", memcom=True, scalars="int8"):
    plan = DimensionPlan.from_dims(SCHEMA, 8, {"u": 5, "i": 8, "c": 3})
    for f in plan.fields:
        f.precision = {"bits": bits, "scale": scale, "train": train}
    if memcom:
        plan.fields[0].hashing = {"method": "memcom", "buckets": 100}
        plan.fields[0].precision["scalars"] = scalars
    plan.validate()
    return plan


def test_table_bytes_formula():
    assert table_bytes(10, 5, None) == 200
    assert table_bytes(10, 5, {"bits": 16}) == 100
    assert table_bytes(10, 5, {"bits": 8}) == 10 * (5 + 4)
    assert table_bytes(10, 5, {"bits": 4}) == 10 * (3 + 4)
    assert table_bytes(10, 5, {"bits": 4, "scale": "field"}) == 10 * 3 + 4
    assert table_bytes(10, 5, {"bits": 2}) == 10 * (2 + 4)
    assert table_bytes(10, 9, {"bits": 1, "scale": "field"}) == 10 * 2 + 4


@pytest.mark.parametrize("bits", [32, 16, 8, 4, 2, 1])
@pytest.mark.parametrize("scale", ["row", "field"])
@pytest.mark.parametrize("train", ["qat", "ptq"])
def test_plan_module_and_packed_bytes_agree_and_outputs_match(bits, scale, train):
    plan = _plan(bits, scale, train)
    emb = plan.build()
    with torch.no_grad():
        for p in emb.parameters():
            p.mul_(30)  # spread the weights so quantization is visible
    emb.eval()
    ids = _ids()
    a = emb(ids)
    packed = pack_model(copy.deepcopy(emb))
    assert plan.num_bytes() == emb.num_bytes() == packed.num_bytes()
    stored = sum(b.numel() * b.element_size() for m in packed.fields
                 for b in m.state_dict().values())
    assert stored == plan.num_bytes()  # the packed tensors are exactly what is counted
    torch.testing.assert_close(packed(ids), a, atol=1e-5, rtol=1e-5)
    if bits < 32:
        assert not any(isinstance(m, FakeQuantEmbedding) for m in packed.modules())


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
def test_fake_quant_has_few_levels_per_row_and_straight_through_grad(bits):
    emb = FakeQuantEmbedding(50, 16, {"bits": bits})
    ids = torch.arange(50)
    out = emb(ids)
    levels = max(len(torch.unique(r)) for r in out.detach())
    assert levels <= 2 ** bits
    out.sum().backward()
    assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0
    if bits <= 4:  # the learned step (LSQ) gets a gradient too
        assert emb.lsq.weight.grad is not None and emb.lsq.weight.grad.abs().sum() > 0


def test_learned_step_lowers_quantization_error():
    torch.manual_seed(0)
    w = torch.randn(200, 16)
    w[:, 0] *= 8  # an outlier column: min/max wastes most levels on it
    emb = FakeQuantEmbedding(200, 16, {"bits": 2})
    with torch.no_grad():
        emb.weight.copy_(w)
    emb.weight.requires_grad_(False)
    opt = torch.optim.Adam(emb.lsq.parameters(), lr=0.05)
    ids = torch.arange(200)
    first = None
    for _ in range(100):
        opt.zero_grad()
        err = ((emb(ids) - w) ** 2).mean()
        first = first if first is not None else float(err.detach())
        err.backward()
        opt.step()
    assert float(err) < 0.8 * first


def test_range_search_beats_minmax_and_matches_fbgemm():
    torch.manual_seed(0)
    w = torch.randn(300, 16)
    w[torch.arange(300), torch.randint(0, 16, (300,))] *= 6  # one outlier per row
    lo, hi = range_search(w, 4)
    mm_lo, mm_hi = w.min(1).values, w.max(1).values
    from autodim.embeddings.quant import _l2
    ours = float(_l2(w, lo, hi, 15).sum())
    minmax = float(_l2(w, mm_lo, mm_hi, 15).sum())
    assert ours < 0.9 * minmax
    fb = torch.ops.quantized.embedding_bag_4bit_prepack(w, optimized_qparams=True)
    fb_err = float(((torch.ops.quantized.embedding_bag_4bit_unpack(fb) - w) ** 2).sum())
    assert ours <= 1.1 * fb_err


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
def test_pack_unpack_roundtrip(bits):
    q = torch.randint(0, 2 ** bits, (7, 11), dtype=torch.uint8)
    packed = pack_codes(q, bits)
    assert packed.shape == (7, -(-11 * bits // 8))
    assert torch.equal(unpack_codes(packed, bits, 11).to(torch.uint8), q)


@pytest.mark.parametrize("bits,dim", [(4, 6), (2, 8)])
def test_kernel_layout_matches_torch_prepack(bits, dim):
    torch.manual_seed(1)
    w = torch.randn(20, dim)
    fb = getattr(torch.ops.quantized, f"embedding_bag_{bits}bit_prepack")(w)
    nb = dim * bits // 8
    sb = fb[:, nb:].contiguous().view(torch.float16)
    qe = QuantizedEmbedding(20, dim, {"bits": bits})
    qe.load_state_dict({"codes": fb[:, :nb].clone(), "scale": sb[:, 0].clone(),
                        "offset": sb[:, 1].clone()})
    ids = torch.tensor([[3], [0], [19]])
    ref = getattr(torch.ops.quantized, f"embedding_bag_{bits}bit_unpack")(fb)[ids[:, 0]]
    torch.testing.assert_close(qe(ids)[:, 0], ref)


@pytest.mark.parametrize("bits,scale", [(8, "row"), (4, "row"), (4, "field"), (2, "row"),
                                        (2, "field"), (1, "row"), (1, "field")])
def test_packed_table_state_roundtrips_and_resident_bytes_are_counted(bits, scale):
    """An 8-, 4-, 2- or 1-bit table holds its codes, scales and offsets in the kernels' own
    layout, one buffer (the stored tensors and a prepacked copy used to be both held):
    resident bytes are the stored ones for row-scaled 4 / 2 / 1 bits; 8 bits (float32
    scales) and field scales (repeated on every row) add 4 bytes a row. The state dict gives
    back exactly the loaded tensors. A field-scaled 1-bit table holds its stored bytes plus
    its byte table (256 x 8 float32), whatever its rows."""
    from autodim.embeddings.fused import resident_bytes

    torch.manual_seed(0)
    rows, dim = 40, 7
    n = rows if scale == "row" else 1
    q = torch.randint(0, 2 ** bits, (rows, dim), dtype=torch.uint8)
    st = {"codes": pack_codes(q, bits), "scale": (torch.rand(n) + 0.5).half(),
          "offset": torch.randn(n).half()}
    qe = QuantizedEmbedding(rows, dim, {"bits": bits, "scale": scale})
    qe.load_state_dict(st)
    back = qe.state_dict()
    assert list(back) == ["codes", "scale", "offset"]
    for k, v in st.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    stored = table_bytes(rows, dim, qe.precision)
    assert qe.num_bytes() == stored
    qe(torch.arange(rows))
    resident = resident_bytes(qe)
    if bits == 1 and scale == "field":
        assert resident == stored + 256 * 8 * 4
    else:  # one buffer: a row's codes, then its scale and offset (float32 at 8 bits)
        assert resident == rows * (row_bytes(dim, bits) + (8 if bits == 8 else 4))
        if bits < 8 and scale == "row":
            assert resident == stored
    with pytest.raises(RuntimeError, match="codes"):
        qe.load_state_dict({**st, "codes": st["codes"][:-1]})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        qe.load_state_dict({**st, "extra": st["scale"]})


def test_precision_json_roundtrip_and_version1_reads_as_float32():
    plan = _plan(4, "field")
    back = DimensionPlan.from_json(plan.to_json())
    assert back.num_bytes() == plan.num_bytes() and back.fields[1].bits == 4
    d = json.loads(DimensionPlan.from_dims(SCHEMA, 8, {"u": 5}).to_json())
    d["version"] = 1
    old = DimensionPlan.from_dict(d)
    assert all(f.bits == 32 for f in old.fields)


@pytest.mark.parametrize("change, message", [
    (lambda f: f.update(precision={"bits": 3}), "bits 3 not allowed"),
    (lambda f: f.update(precision={"bits": 4, "scale": "col"}), "scale 'col'"),
    (lambda f: f.update(precision={"bits": 8, "dtype": "float16"}), "only for 16 bits"),
    (lambda f: f.update(precision={"bits": 4, "scalars": "int8"}), "not hashed with memcom"),
    (lambda f: f.update(precision={"bits": 4}, hashing={"method": "qr", "buckets": 10}),
     "qr hashing"),
])
def test_precision_validation_names_the_field(change, message):
    d = json.loads(DimensionPlan.from_dims(SCHEMA, 8, {"u": 5}).to_json())
    change(d["fields"][1])
    d.pop("num_bytes")
    with pytest.raises(PlanError, match=rf"field 'i'.*{message}"):
        DimensionPlan.from_dict(d)


def test_frequency_groups_compose_with_precision():
    plan = DimensionPlan.from_dims(SCHEMA, 8, {"u": 8})
    plan.fields[0].frequency_groups = [{"rows": 100, "dim": 8}, {"rows": 900, "dim": 2}]
    plan.fields[0].precision = {"bits": 4}
    plan.validate()
    emb = plan.build()
    assert emb.num_bytes() == plan.num_bytes() == pack_model(copy.deepcopy(emb)).num_bytes()
    assert plan.fields[0].num_bytes(8) == 100 * (4 + 4) + 900 * (1 + 4) + 2 * 8 * 4


def test_export_file_bytes_equal_num_bytes_and_load_model_matches(tmp_path):
    from safetensors import safe_open

    from autodim.export import build_model, load_model, save_weights, torchrec_tables

    plan = _plan(4, "row", "qat")
    plan.fields[2].precision = {"bits": 8}
    plan.fields[1].precision = {"bits": 16, "dtype": "bfloat16"}
    model = build_model(plan, "fm")
    with torch.no_grad():
        for p in model.embedding.parameters():
            p.mul_(30)
    model.eval()
    ids = _ids()
    qat_out = model(ids)
    path = save_weights(model, tmp_path / "w.safetensors", plan=plan, backbone="fm")
    with safe_open(str(path), "pt") as f:
        emb_bytes = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size()
                        for k in f.keys() if k.startswith("embedding."))
    assert emb_bytes == plan.num_bytes()
    loaded = load_model(plan, path)
    assert any(isinstance(m, QuantizedEmbedding) for m in loaded.modules())
    # Stated tolerance: the packed model reads the same codes, scales and offsets.
    torch.testing.assert_close(loaded(ids), qat_out, atol=1e-5, rtol=1e-5)
    types = {t["config"]["name"]: t["config"]["data_type"]
             for t in torchrec_tables(plan)["tables"]}
    assert types == {"t_u_memcom_shared": "INT4", "t_u_memcom_scale": "INT8",
                     "t_i": "BF16", "t_c": "INT8"}


def test_served_packed_fields_of_one_dim_and_precision_read_one_buffer(tmp_path):
    """A served model reads the packed fields of one dim and precision with ONE kernel call
    from one buffer (dense and hashed tables, row and field scales, a sequence field, fields
    that project, pad or select), 16-bit fields of one dim with one gather; its outputs
    equal the per-field packed model's, nothing is held twice, the state dict is the
    per-field one, and tensors loaded into it are what it reads."""
    from autodim.embeddings.fused import FusedEmbedding, _PackedGroup, resident_bytes
    from autodim.export import build_model, load_model, save_weights

    schema = Schema([Field("a", vocab_size=500), Field("b", vocab_size=300),
                     Field("s", vocab_size=40, kind="sequence", width=3),
                     Field("c", vocab_size=60), Field("e", vocab_size=90),
                     Field("f", vocab_size=70), Field("g", vocab_size=50),
                     Field("h", vocab_size=80), Field("k", vocab_size=30, kind="sequence",
                                                      width=2)])
    plan = DimensionPlan.from_dims(schema, 8, {"a": 4, "b": 4, "s": 4, "c": 4, "e": 8,
                                               "f": 8, "g": 3, "h": 4, "k": 4})
    prec = {"a": {"bits": 4}, "b": {"bits": 4, "scale": "field"}, "s": {"bits": 4},
            "c": {"bits": 4}, "e": {"bits": 2}, "f": {"bits": 2, "scale": "field"},
            "g": {"bits": 1}, "h": {"bits": 16}, "k": {"bits": 16}}
    for f in plan.fields:
        f.precision = prec[f.name]
    plan.fields[1].hashing = {"method": "hash", "buckets": 50}
    plan.fields[3].align = "pad"
    plan.fields[5].align, plan.fields[5].columns = "select", [0, 1, 2, 3, 4, 5, 6, 7]
    plan.validate()
    model = build_model(plan, "fm")
    with torch.no_grad():
        for p in model.embedding.parameters():
            p.normal_(0, 0.5)
    path = save_weights(model.eval(), tmp_path / "w.safetensors", plan=plan, backbone="fm")
    served = load_model(plan, path)
    emb = served.embedding
    assert isinstance(emb, FusedEmbedding)
    packed = [g for g in emb.groups if isinstance(g, _PackedGroup)]
    assert sorted((g.dim, g.bits, len(g.field_index)) for g in packed) == [
        (3, 1, 1), (4, 4, 4), (4, 16, 2), (8, 2, 2)]
    fieldwise = emb.fieldwise()  # the per-field packed modules, views of the groups
    before = {k: v.clone() for k, v in fieldwise.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    ids = torch.stack([torch.randint(0, f.vocab_size, (33,), generator=g)
                       for f in schema.fields for _ in range(f.width)], 1)
    ids[0, 2:5] = 0  # a sequence of padding only
    ids[1, 3:5] = 0
    ids[2, -2:] = 0
    with torch.inference_mode():
        torch.testing.assert_close(emb(ids), fieldwise(ids), rtol=0, atol=1e-6)
    for grp in packed:  # each field's buffer is a view of its group's: no second copy
        for i in grp.field_index:
            q = fieldwise.fields[i].table.embedding
            own = q.weight if q.bits == 16 else q.packed
            assert own.untyped_storage().data_ptr() == grp.packed.untyped_storage().data_ptr()
    tables = sum(t.numel() * t.element_size() for t in fieldwise.buffers())
    params = sum(p.numel() * p.element_size() for p in fieldwise.parameters())
    assert tables + params < resident_bytes(emb) <= tables + params + 1024
    state = emb.state_dict()
    assert sorted(state) == sorted(fieldwise.state_dict())
    assert not any(k.startswith("groups.") for k in state)
    assert all(torch.equal(state[k], v) for k, v in before.items())
    new = {k: (v.flip(0) if k.endswith(("codes", "weight")) and v.dim() == 2 and
               not k.endswith("linear.weight") else v) for k, v in state.items()}
    old_out = emb(ids)
    emb.load_state_dict(new)
    assert not torch.allclose(emb(ids), old_out)
    with torch.inference_mode():
        fresh = build_model(plan, "fm")
        from autodim.embeddings.quant import packed_skeleton

        packed_skeleton(fresh)
        fresh.embedding.load_state_dict(new)
        torch.testing.assert_close(emb(ids), fresh.embedding(ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 1])
@pytest.mark.parametrize("scale", ["row", "field"])
def test_low_bit_read_equals_unpacking_and_follows_loaded_tensors(bits, scale):
    """2-bit tables read through fbgemm's kernel, 1-bit ones through ``read_unpacked``, both
    from the buffer they are loaded into, so a read never serves the old scale."""
    torch.manual_seed(0)
    rows, dim = 30, 7
    qe = QuantizedEmbedding(rows, dim, {"bits": bits, "scale": scale})
    n = rows if scale == "row" else 1

    def state(k):
        q = torch.randint(0, 2 ** bits, (rows, dim), dtype=torch.uint8)
        return {"codes": pack_codes(q, bits), "scale": (torch.rand(n) + k).half(),
                "offset": (torch.randn(n) - k).half()}

    ids = torch.randint(0, rows, (9, 2))
    for k in (0.5, 3.0):
        st = state(k)
        qe.load_state_dict(st)
        q = unpack_codes(st["codes"], bits, dim).float()
        ref = q * st["scale"].float()[:, None] + st["offset"].float()[:, None]
        torch.testing.assert_close(qe(ids), ref[ids])


def _hybrid_plan():
    """20 fields of several dims and precisions (identity, padding, projection and one-wide
    projection, a hashed field, 16 bits, pooling groups, a float32 group): ``(schema, plan)``."""
    # (name, vocabulary, dim, precision); pairs of one dim and precision are one group
    spec = [("a", 500, 8, {"bits": 4}), ("b", 300, 4, {"bits": 2, "scale": "field"}),
            ("s", 40, 8, {"bits": 8}), ("c", 60, 4, {"bits": 2}), ("e", 90, 1, {"bits": 4}),
            ("p", 70, 4, {"bits": 8}), ("h", 80, 8, {"bits": 16}), ("a2", 30, 8, {"bits": 4}),
            ("e2", 20, 1, {"bits": 4}), ("p2", 25, 4, {"bits": 8}), ("h2", 35, 8, {"bits": 16}),
            ("s2", 45, 8, {"bits": 8}), ("z", 50, 4, None), ("z2", 40, 4, None),
            # pooling groups that project (16 bits), project one-wide, pad
            ("t", 33, 4, {"bits": 16}), ("t2", 21, 4, {"bits": 16}),
            ("q", 27, 1, {"bits": 2}), ("q2", 23, 1, {"bits": 2}),
            ("r", 31, 4, {"bits": 4}), ("pr", 29, 4, {"bits": 4}),
            # field scales, alone in a group and beside row scales, pooling, 1 bit
            ("fa", 61, 6, {"bits": 4, "scale": "field"}),
            ("fb", 62, 6, {"bits": 4, "scale": "field"}),
            ("fs", 41, 2, {"bits": 2, "scale": "field"}),
            ("fp", 43, 2, {"bits": 2}),
            ("f1", 47, 8, {"bits": 1, "scale": "field"}),
            ("f2", 45, 8, {"bits": 1, "scale": "field"}),
            ("g1", 48, 8, {"bits": 1}),
            # 1 bit, field scales (codes and byte tables): pooling, and pooling with mixed
            # aligns (the group's own read)
            ("c2s", 36, 2, {"bits": 1, "scale": "field"}),
            ("c1s", 37, 4, {"bits": 1, "scale": "field"}),
            ("c1q", 39, 4, {"bits": 1, "scale": "field"}),
            # one value a row, one field scale: coded too (a one-wide projection)
            ("e3", 52, 1, {"bits": 4, "scale": "field"}),
            ("e4", 53, 1, {"bits": 8, "scale": "field"})]
    schema = Schema([Field(n, vocab_size=v, **({"kind": "sequence", "width": 3}
                                               if n in ("s", "s2", "t", "q", "r", "fs",
                                                        "c2s", "c1s") else {}))
                     for n, v, _, _ in spec])
    plan = DimensionPlan.from_dims(schema, 8, {n: d for n, _, d, _ in spec})
    for f, (_, _, _, prec) in zip(plan.fields, spec):
        f.precision = prec
        if f.name.startswith("p") or f.name in ("r", "fs", "fp", "c2s", "c1s"):
            f.align = "pad"
    plan.fields[1].hashing = {"method": "hash", "buckets": 50}
    next(f for f in plan.fields if f.name == "fa").hashing = {"method": "hash", "buckets": 40}
    plan.validate()
    return schema, plan


def _served_hybrid(tmp_path):
    """``(schema, plan, model)``: the hybrid plan's model with random embeddings, saved and
    loaded back as a serving process gets it (eval mode)."""
    from autodim.export import build_model, load_model, save_weights

    schema, plan = _hybrid_plan()
    model = build_model(plan, "fm")
    with torch.no_grad():
        for p in model.embedding.parameters():
            p.normal_(0, 0.5)
    path = save_weights(model.eval(), tmp_path / "w.safetensors", plan=plan, backbone="fm")
    return schema, plan, load_model(plan, path).eval()


def test_served_hybrid_groups_share_one_column_gather(tmp_path):
    """A served model of several packed groups (dims and bits per field: identity, padding,
    projection and a one-wide projection, a hashed field, 16 bits, a pooling group) reads
    them from ONE field-major gather of the ids, beside a float32 group, and assembles
    every group in field order; outputs equal the per-field packed model's at 1,
    5 and 300 rows, also after a move that copies every tensor and a load of new weights."""
    from autodim.embeddings.fused import FusedEmbedding
    from autodim.export import build_model, load_model, save_weights

    schema, plan, emb = _served_hybrid(tmp_path)
    emb = emb.embedding
    assert isinstance(emb, FusedEmbedding) and not emb.rest
    shared, calls, order, field_major = emb._calls
    # (align, pools, 1-bit field-scaled codes)
    kinds = sorted((item[5], item[7] is not None, item[8] is not None) for item in shared[3])
    assert kinds == [("identity", False, False), ("identity", False, False),
                     ("identity", False, False), ("identity", False, True),
                     ("identity", True, False), ("outer", False, False),
                     ("outer", False, True), ("outer", False, True), ("outer", True, False),
                     ("pad", False, False), ("pad", True, False), ("pad", True, False),
                     ("pad", True, True), ("project", False, False),
                     ("project", False, False), ("project", True, False)], kinds
    assert shared[2] is not None  # the hashed field's modulus
    # the float32 group and a 1-bit group of mixed aligns, then the field order
    assert len(calls) == 2 and order is not None
    assert field_major  # half the fields come out of non-pooling packed groups
    fieldwise = emb.fieldwise()

    def check():
        g = torch.Generator().manual_seed(5)
        for n in (1, 5, 300):
            ids = torch.stack([torch.randint(0, f.vocab_size, (n,), generator=g)
                               for f in schema.fields for _ in range(f.width)], 1)
            ids[0, 2:5] = 0  # a sequence of padding only
            with torch.inference_mode():
                out = emb(ids)
                assert out.is_contiguous()
                torch.testing.assert_close(out, fieldwise(ids), rtol=0, atol=1e-6)

    check()
    emb._calls = (*emb._calls[:3], False)  # the batch-major assembly gives the same
    emb._apply(lambda t: t.clone())  # a move: every tensor is a new one
    state = emb.state_dict()
    # new codes and weights; a field scale doubled
    new = {k: (v.flip(0) if v.dim() == 2 and v.shape[0] > 1 else
               v * 2 if k.endswith(".scale") and v.numel() == 1 else v)
           for k, v in state.items()}
    ones = torch.ones(2, sum(f.width for f in schema.fields), dtype=torch.long)
    old = emb(ones)
    emb.load_state_dict(new)
    assert not torch.allclose(emb(ones), old)
    fieldwise = emb.fieldwise()
    torch.testing.assert_close(fieldwise.state_dict(), emb.state_dict())
    check()
    # against a model that never held the old tensors (a stale cache is caught here)
    from autodim.embeddings.quant import packed_skeleton

    fresh = packed_skeleton(build_model(plan, "fm")).embedding
    fresh.load_state_dict(new)
    x = torch.stack([torch.randint(0, f.vocab_size, (40,)) for f in schema.fields
                     for _ in range(f.width)], 1)
    with torch.inference_mode():
        torch.testing.assert_close(emb(x), fresh(x), rtol=0, atol=1e-6)

    # one group of one precision reads batch-major, as the group itself does
    one = DimensionPlan.from_dims(SCHEMA, 8, {"u": 8, "i": 8, "c": 8})
    for f in one.fields:
        f.precision = {"bits": 4}
    one.validate()
    model = build_model(one, "fm")
    path = save_weights(model.eval(), tmp_path / "one.safetensors", plan=one, backbone="fm")
    emb = load_model(one, path).embedding
    assert emb._calls[0] is None and len(emb._calls[1]) == 1
    with torch.inference_mode():
        out = emb(_ids(7))
        assert out.is_contiguous()
        torch.testing.assert_close(out, emb.fieldwise()(_ids(7)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_unpacked_read_equals_the_kernel(bits):
    """``read_unpacked`` (devices without torch's kernel: CUDA has no 2-bit one, and no 8- or
    4-bit one for rows that are not a multiple of 4 bytes) computes what the CPU kernel
    computes: rows of several widths, bags of 0 to 5 rows, with and without weights."""
    from autodim.embeddings.quant import _scale_pair, read_packed, read_unpacked

    g = torch.Generator().manual_seed(bits)
    for dim in (1, 3, 5, 8, 13, 16):
        table = QuantizedEmbedding(50, dim, {"bits": bits})
        packed, nb = table._buffers["packed"], table.row_bytes
        packed[:, :nb] = torch.randint(0, 256, (50, nb), generator=g, dtype=torch.uint8)
        packed[:, nb:] = _scale_pair(torch.rand(50, generator=g) + 0.1,
                                     torch.randn(50, generator=g), bits)
        rows = torch.randint(0, 50, (12,), generator=g)
        weights = torch.rand(12, generator=g)
        for offsets in (torch.tensor([0, 0, 1, 4, 4, 7]), torch.arange(12)):
            for w in (None, weights):
                got = read_unpacked(packed, bits, dim, rows, offsets, w)
                assert got.shape == (offsets.numel(), dim)
                torch.testing.assert_close(got, read_packed(packed, bits, dim, rows, offsets, w),
                                           rtol=1e-6, atol=1e-6)


def test_served_models_read_without_the_kernels_and_follow_a_move(tmp_path, monkeypatch):
    """Where torch has no kernel for the tables' device, a served hybrid model (packed groups,
    pooling, hashing, 16 bits) and its per-field form read through ``read_unpacked`` with the
    same outputs; a packed table moved to another device reads there (its cached offsets and
    the 1-bit byte table follow the move: ``meta`` stands in for a GPU)."""
    from autodim.embeddings import quant

    schema, plan, served = _served_hybrid(tmp_path)
    g = torch.Generator().manual_seed(3)
    batches = [torch.stack([torch.randint(0, f.vocab_size, (n,), generator=g)
                            for f in schema.fields for _ in range(f.width)], 1)
               for n in (1, 5, 300)]
    with torch.inference_mode():
        want = [(served(x), served.embedding.fieldwise()(x)) for x in batches]
    calls = []
    unpacked = quant.read_unpacked
    monkeypatch.setattr(quant, "kernel_reads", lambda packed, bits: False)
    monkeypatch.setattr(quant, "read_unpacked", lambda *a: calls.append(1) or unpacked(*a))
    with torch.inference_mode():
        for x, (out, per_field) in zip(batches, want):
            # float32 rounding: the kernel sums a bag in its own order
            torch.testing.assert_close(served(x), out, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(served.embedding.fieldwise()(x), per_field,
                                       rtol=1e-5, atol=1e-5)
    assert calls
    monkeypatch.undo()

    for bits in (8, 1):
        table = QuantizedEmbedding(40, 5, {"bits": bits})
        ids = torch.randint(0, 40, (6, 2))
        with torch.inference_mode():
            table(ids)  # caches on the CPU
            table.to("meta")
            out = table(ids.to("meta"))
        assert out.device.type == "meta" and out.shape == (6, 2, 5)
    x = batches[1]
    with torch.inference_mode():
        groups = [(g, g(x).shape) for g in served.embedding.groups]  # caches on the CPU
        out = served.to("meta")(x.to("meta"))
        assert out.device.type == "meta" and out.shape == want[1][0].shape
        for g, shape in groups:  # each group on its own (the unserved path) reads there too
            assert g(x.to("meta")).shape == shape
    # the cached one-id-a-bag offsets follow the rows' device (meta kernels check no device)
    cpu = quant.one_id_per_bag(None, torch.zeros(4, dtype=torch.long))
    assert quant.one_id_per_bag(cpu, torch.zeros(4, dtype=torch.long, device="meta")
                                ).device.type == "meta"


def test_memcom_int8_scalars_hold_one_byte_an_id(tmp_path):
    """MEmCom's int8 scalars (one field scale, one value a row) serve as their codes and a
    256-value table: 1 byte an id resident, not 9 (a code byte and a repeated float32 pair
    in the kernels' layout); reads equal the stored codes times the scale plus the offset,
    and a served MEmCom model holds its plan's bytes plus a constant."""
    from autodim.embeddings.fused import resident_bytes
    from autodim.embeddings.quant import scalar_precision
    from autodim.export import build_model, load_model, save_weights

    rows = 1000
    qe = QuantizedEmbedding(rows, 1, scalar_precision({"bits": 4, "scalars": "int8"}))
    st = {"codes": torch.randint(0, 256, (rows, 1), dtype=torch.uint8),
          "scale": torch.tensor([0.01]).half(), "offset": torch.tensor([-1.0]).half()}
    qe.load_state_dict(st)
    assert qe.coded and resident_bytes(qe) == rows + 4 + 256 * 4
    ids = torch.randint(0, rows, (7, 3))
    ref = st["codes"].float() * st["scale"].float() + st["offset"].float()
    torch.testing.assert_close(qe(ids), ref[ids].squeeze(-1).unsqueeze(-1).view(7, 3, 1))

    plan = _plan(4, memcom=True, scalars="int8")
    model = build_model(plan, "fm")
    path = save_weights(model.eval(), tmp_path / "w.safetensors", plan=plan, backbone="fm")
    served = load_model(plan, path)
    extra = resident_bytes(served.embedding) - plan.num_bytes()
    assert 0 <= extra < 4 * SCHEMA.fields[0].vocab_size, extra  # scalars not repeated
