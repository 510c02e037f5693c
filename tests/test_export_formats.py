"""Serving formats: the TorchRec config checked field by field against TorchRec's own config
classes (and replayed on the weights), the FuxiCTR config loaded in real FuxiCTR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from autodim.data.schema import Field, Schema
from autodim.export import build_model, export_plan, load_weights, save_weights, torchrec_tables
from autodim.plan import DimensionPlan, FieldPlan, encode_mask

torch.set_num_threads(1)

# TorchRec does not import next to this CPU torch build (its fbgemm_gpu wheel is built for
# other torch versions), so its definitions are encoded here. From
# github.com/meta-pytorch/torchrec, torchrec/modules/embedding_configs.py (commit 1d8ac81):
# the dataclass fields of BaseEmbeddingConfig; EmbeddingBagConfig adds `pooling`,
# EmbeddingConfig adds nothing. PoolingType is SUM/MEAN/NONE; DataType (torchrec/types.py)
# is FP32/FP16/BF16/INT64/INT32/INT8/UINT8/INT4/INT2/NFP8.
BASE_EMBEDDING_CONFIG = {
    "num_embeddings": int, "embedding_dim": int,  # the two fields without a default
    "name": str, "data_type": "DataType", "feature_names": list, "weight_init_max": float,
    "weight_init_min": float, "num_embeddings_post_pruning": int, "init_fn": "callable",
    "need_pos": bool, "input_dim": int, "total_num_buckets": int, "use_virtual_table": bool,
    "virtual_table_eviction_policy": "policy", "enable_embedding_update": bool,
}
TORCHREC_CLASSES = {"EmbeddingBagConfig": {**BASE_EMBEDDING_CONFIG, "pooling": "PoolingType"},
                    "EmbeddingConfig": dict(BASE_EMBEDDING_CONFIG)}
REQUIRED = ("num_embeddings", "embedding_dim")
POOLING_TYPES = ("SUM", "MEAN", "NONE")
DATA_TYPES = ("FP32", "FP16", "BF16", "INT64", "INT32", "INT8", "UINT8", "INT4", "INT2",
              "NFP8")

N = 60


def _mixed_plan() -> DimensionPlan:
    """Every kind of table, on categorical and sequence fields."""
    seq = {"kind": "sequence", "width": 3}
    rng = np.random.default_rng(0)
    keep = rng.random(N) < 0.5
    keep[0] = True
    mask = rng.random((N, 4)) < 0.4
    fields = [
        FieldPlan("plain", N, 8),
        FieldPlan("proj", N, 4),
        FieldPlan("pad", N, 2, align="pad"),
        FieldPlan("hash", N, 4, hashing={"method": "hash", "buckets": 7}),
        FieldPlan("memcom", N, 4, hashing={"method": "memcom", "buckets": 9}),
        FieldPlan("qr", N, 4, hashing={"method": "qr", "buckets": 8}),
        FieldPlan("seq_memcom", N, 4, hashing={"method": "memcom", "buckets": 9}, **seq),
        FieldPlan("seq_qr", N, 4, hashing={"method": "qr", "buckets": 8}, **seq),
        FieldPlan("seq_proj", N, 2, **seq),
        FieldPlan("pruned", N, 4, row_mask={"kept": int(keep.sum()), "bits": encode_mask(keep)}),
        FieldPlan("groups", N, 4, frequency_groups=[{"rows": 20, "dim": 4},
                                                    {"rows": 40, "dim": 2}]),
        FieldPlan("seq_groups", N, 4, frequency_groups=[{"rows": 20, "dim": 4},
                                                        {"rows": 40, "dim": 0}], **seq),
        FieldPlan("sparse", N, 4, sparse={"nnz": int(mask.sum()), "bits": encode_mask(mask)}),
        FieldPlan("dropped", N, 0),
    ]
    schema = Schema([Field(f.name, f.kind, N, f.width) for f in fields])
    plan = DimensionPlan(fields=fields, D=8, schema_fingerprint=schema.fingerprint())
    plan.validate()
    return plan


def _ids(plan, rows: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, N, (rows, sum(f.width for f in plan.fields)), generator=g)
    ids[:4] = 0  # OOV / all-padding rows
    return ids


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("formats")
    plan = _mixed_plan()
    model = build_model(plan, "fm")
    with torch.no_grad():  # non-trivial values everywhere (MEmCom scales start at 1)
        for p in model.parameters():
            p.uniform_(-1, 1)
    model.eval()
    w = save_weights(model, tmp / "w.safetensors", plan=plan, backbone="fm")
    paths = export_plan(plan, tmp / "shipped", weights=w)
    return plan, model, paths


def test_torchrec_configs_match_torchrec_definitions(exported):
    plan, _, paths = exported
    import json

    out = json.loads(paths["torchrec"].read_text())
    assert out == torchrec_tables(plan)
    for t in out["tables"]:
        fields = TORCHREC_CLASSES[t["class"]]
        cfg = t["config"]
        assert set(cfg) <= set(fields), set(cfg) - set(fields)
        assert all(k in cfg for k in REQUIRED)
        assert isinstance(cfg["num_embeddings"], int) and cfg["num_embeddings"] >= 1
        assert isinstance(cfg["embedding_dim"], int) and cfg["embedding_dim"] >= 1
        assert isinstance(cfg["name"], str) and cfg["name"]
        assert cfg["data_type"] in DATA_TYPES
        assert isinstance(cfg["feature_names"], list) and len(cfg["feature_names"]) == 1
        if t["class"] == "EmbeddingBagConfig":
            assert cfg["pooling"] in POOLING_TYPES
        else:
            assert "pooling" not in cfg
    names = [t["config"]["name"] for t in out["tables"]]
    assert len(set(names)) == len(names)
    # One feature per table: no two tables read the same feature.
    feats = [t["config"]["feature_names"][0] for t in out["tables"]]
    assert len(set(feats)) == len(feats)
    assert {f["name"] for f in out["features"]} == set(feats)
    assert "t_dropped" not in names


def test_hashed_tables_state_their_id_transform(exported):
    plan, _, paths = exported
    out = torchrec_tables(plan)
    tables = {t["config"]["name"]: t for t in out["tables"]}
    feats = {f["name"]: f for f in out["features"]}

    def transform(table):
        return feats[tables[table]["config"]["feature_names"][0]]["transform"]

    assert transform("t_memcom_memcom_shared") == {"op": "mod", "m": 9}
    assert tables["t_memcom_memcom_shared"]["config"]["num_embeddings"] == 9
    assert transform("t_memcom_memcom_scale") == {"op": "identity"}
    assert tables["t_memcom_memcom_scale"]["config"]["num_embeddings"] == N
    assert transform("t_qr_quotient") == {"op": "floordiv", "m": 8}
    assert tables["t_qr_quotient"]["config"]["num_embeddings"] == math.ceil(N / 8)
    assert transform("t_qr_remainder") == {"op": "mod", "m": 8}
    assert transform("t_hash") == {"op": "mod", "m": 7}
    # Per-id products on sequence fields: unpooled tables, multiplied, then averaged.
    for name in ("t_seq_memcom_memcom_shared", "t_seq_memcom_memcom_scale",
                 "t_seq_qr_quotient", "t_seq_qr_remainder"):
        assert tables[name]["class"] == "EmbeddingConfig", name
    combine = {c["field"]: c for c in out["combine"]}
    assert combine["seq_memcom"]["op"] == "multiply" and "mean" in combine["seq_memcom"]["then"]
    assert tables["t_memcom_memcom_shared"]["class"] == "EmbeddingBagConfig"


def test_every_weight_key_is_in_the_weights_file(exported):
    plan, _, paths = exported
    tensors, _ = load_weights(paths["weights"])
    out = torchrec_tables(plan)
    assert out["weight_keys"] == {t["config"]["name"]: t["weight"] for t in out["tables"]}
    for t in out["tables"]:
        assert t["weight"] in tensors, t["weight"]
        if t["weight"].endswith(".weight"):
            cfg = t["config"]
            assert list(tensors[t["weight"]].shape) == [cfg["num_embeddings"],
                                                        cfg["embedding_dim"]], t["weight"]
    for p in out["projections"]:
        if "weight" in p:
            assert list(tensors[p["weight"]].shape) == [p["to_dim"], p["from_dim"]]


def _replay(out, tensors, plan, ids) -> torch.Tensor:
    """What a TorchRec server computes from torchrec.json alone: per feature the stated id
    transform, per table its lookup and pooling, per field the combine rule and projection."""
    tables_of = {}
    for t in out["tables"]:
        tables_of.setdefault(t["field"], []).append(t)
    feats = {f["name"]: f for f in out["features"]}
    combine = {c["field"]: c for c in out["combine"]}
    proj_of = {}
    for p in out["projections"]:
        proj_of[(p["field"], p.get("table"))] = p
    starts = np.cumsum([0] + [f.width for f in plan.fields])
    result = []
    for i, fp in enumerate(plan.fields):
        x = ids[:, starts[i]:starts[i + 1]]
        D = plan.D
        if fp.name not in tables_of:
            result.append(torch.zeros(len(ids), D))
            continue

        def lookup(t, x=x):
            f = feats[t["config"]["feature_names"][0]]
            tr = f["transform"]
            keep = torch.ones_like(x, dtype=torch.bool)
            if f.get("drop_ids"):
                keep &= x != 0
            if tr["op"] == "mod":
                y = x % tr["m"]
            elif tr["op"] == "floordiv":
                y = x // tr["m"]
            elif tr["op"] == "range":
                keep &= (x >= tr["lo"]) & (x < tr["hi"])
                y = (x - tr["subtract"]).clamp(0, tr["hi"] - tr["lo"] - 1)
            elif tr["op"] == "remap":
                kept = torch.from_numpy(np.unpackbits(
                    tensors[tr["bitmap"]].numpy())[:N].astype(bool))
                rank = torch.cumsum(kept.long(), 0) - 1
                y = torch.where(kept[x], rank[x], torch.zeros_like(x))
            else:
                y = x
            w = tensors[t["weight"]]
            if t["weight"].endswith(".values"):  # CSR, densified
                base = t["weight"][: -len("values")]
                cols = tensors[base + "col_index"].long()
                rows = torch.repeat_interleave(torch.arange(N), tensors[base + "row_ptr"].long()
                                               .diff())
                dense = torch.zeros(N, t["config"]["embedding_dim"])
                dense[rows, cols] = w
                w = dense
            vec = w[y] * keep.unsqueeze(-1)  # [B, w, d]
            pooling = t["config"].get("pooling")
            if pooling == "SUM":
                return vec.sum(1), keep
            if pooling == "MEAN":
                return vec.sum(1) / keep.sum(1, keepdim=True).clamp_min(1), keep
            return vec, keep  # unpooled

        def lift(v, p, D=D):
            if p is None:
                return v
            if "weight" in p:
                return v @ tensors[p["weight"]].T
            return torch.nn.functional.pad(v, (0, D - v.shape[-1]))

        c = combine.get(fp.name)
        if c is None:
            (t,) = tables_of[fp.name]
            v, _ = lookup(t)
            result.append(lift(v, proj_of.get((fp.name, None))))
        elif c["op"] == "multiply":
            (a, ka), (b, _) = (lookup(t) for t in tables_of[fp.name])
            v = a * b
            if v.dim() == 3:  # unpooled: product per id, then the mean over kept ids
                v = v.sum(1) / ka.sum(1, keepdim=True).clamp_min(1)
            result.append(lift(v, proj_of.get((fp.name, None))))
        else:  # sum_groups
            total, count = 0, (x != 0).sum(1, keepdim=True).clamp_min(1)
            for t in tables_of[fp.name]:
                v, _ = lookup(t)
                total = total + lift(v, proj_of.get((fp.name, t["config"]["name"])))
            result.append(total / count if c.get("then") else total)
    return torch.stack(result, 1)


def test_torchrec_config_replayed_on_the_weights_gives_the_model(exported):
    plan, model, paths = exported
    tensors, _ = load_weights(paths["weights"])
    ids = _ids(plan)
    with torch.no_grad():
        want = model.embedding(ids)
    got = _replay(torchrec_tables(plan), tensors, plan, ids)
    for i, fp in enumerate(plan.fields):
        torch.testing.assert_close(got[:, i], want[:, i], msg=fp.name)


def test_fuxictr_loads_the_export_for_every_field_kind(tmp_path):
    """Real FuxiCTR 2.3 builds its embedding layer from fuxictr.yaml + the feature map, and,
    with autodim's tables and projections copied in, gives autodim's field vectors."""
    pytest.importorskip("fuxictr")
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.layers import FeatureEmbedding

    seq = {"kind": "sequence", "width": 4}
    fields = [FieldPlan("c_full", N, 8), FieldPlan("c_proj", N, 2),
              FieldPlan("c_pad", N, 4, align="pad"), FieldPlan("s_proj", N, 2, **seq),
              FieldPlan("s_full", N, 8, **seq), FieldPlan("s_pad", N, 4, align="pad", **seq),
              FieldPlan("gone", N, 0)]
    schema = Schema([Field(f.name, f.kind, N, f.width) for f in fields])
    plan = DimensionPlan(fields=fields, D=8, schema_fingerprint=schema.fingerprint())
    model = build_model(plan, "fm").eval()
    w = save_weights(model, tmp_path / "w.safetensors", plan=plan)
    paths = export_plan(plan, tmp_path / "shipped", weights=w)
    params = yaml.safe_load(paths["fuxictr"].read_text())
    fmap = FeatureMap("autodim", str(tmp_path / "shipped"))
    fmap.load(str(paths["fuxictr_feature_map"]), params)
    layer = FeatureEmbedding(fmap, params["embedding_dim"])
    assert list(fmap.features) == ["c_full", "c_proj", "c_pad", "s_proj", "s_full", "s_pad"]
    with torch.no_grad():
        for i, fp in enumerate(plan.fields):
            if fp.dim == 0:
                continue
            mod = model.embedding.fields[i]
            table = layer.embedding_layer.embedding_layers[fp.name]
            table.weight.copy_(mod.table.embedding.weight)
            if fp.kind == "sequence":
                table.weight[0] = 0  # padding_idx: FuxiCTR pools over non-zero vectors
            encoders = layer.embedding_layer.feature_encoders
            enc = encoders[fp.name] if fp.name in encoders else None
            linear = [m for m in (enc.modules() if enc is not None else [])
                      if isinstance(m, torch.nn.Linear)]
            if fp.align == "project" and fp.dim < plan.D:
                linear[0].weight.copy_(mod.align.linear.weight)
            else:
                assert not linear
        ids = _ids(plan, seed=3)
        ids[:, 3:] = torch.where(ids[:, 3:] == 0, 1, ids[:, 3:])  # real tokens only ...
        ids[5, 3 + 2:3 + 4] = 0  # ... but one padded sequence
        starts = np.cumsum([0] + [f.width for f in fields])
        X = {fp.name: (ids[:, starts[i]] if fp.kind == "categorical"
                       else ids[:, starts[i]:starts[i + 1]])
             for i, fp in enumerate(fields) if fp.dim > 0}
        got = layer(X)
        want = model.embedding(ids)[:, :6]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fuxictr_config_has_no_bare_linear_on_sequences(exported):
    plan, _, paths = exported
    fx = yaml.safe_load(paths["fuxictr"].read_text())
    kinds = {f.name: f.kind for f in plan.fields}
    for spec in fx["feature_specs"]:
        if kinds[spec["name"]] == "sequence":
            assert spec["feature_encoder"][0] == "layers.MaskedAveragePooling()", spec
