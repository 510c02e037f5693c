"""DimensionPlan: validation errors name what is wrong; JSON round trip; schema checks."""

from __future__ import annotations

import json

import pytest

from autodim.data.schema import Field, Schema
from autodim.errors import PlanError
from autodim.plan import DimensionPlan, FieldPlan

SCHEMA = Schema([Field("user", vocab_size=100), Field("item", vocab_size=40)])


def _dict(**changes):
    d = DimensionPlan.from_dims(SCHEMA, 8, {"user": 4, "item": 8}).to_dict()
    d.update(changes)
    return d


def test_round_trip_and_provenance(tmp_path):
    plan = DimensionPlan.from_dims(SCHEMA, 8, {"user": 4, "item": 8}, seed=3,
                                   searcher={"name": "x", "settings": {"a": 1}})
    path = plan.save(tmp_path / "p.json")
    again = DimensionPlan.load(path)
    assert again.dims == {"user": 4, "item": 8}
    assert again.seed == 3 and again.searcher["settings"] == {"a": 1}
    d = json.loads(path.read_text())
    assert d["version"] == 2 and d["num_bytes"] == plan.num_bytes()
    assert d["versions"]["torch"] and d["created"]
    assert d["schema_fingerprint"] == SCHEMA.fingerprint()


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d["fields"][0].update(dim=-1), "'user': dim must be an integer >= 0"),
    (lambda d: d["fields"][0].update(dim=9), "'user': dim 9 exceeds the common dim D=8"),
    (lambda d: d["fields"][1].update(hashing={"method": "memcom", "buckets": 40}),
     "'item': 40 hashing buckets >= vocab_size 40"),
    (lambda d: d["fields"][1].update(hashing={"method": "zip", "buckets": 4}),
     "hashing method must be one of"),
    (lambda d: d["fields"][0].update(colour="red"), "unknown key(s) ['colour']"),
    (lambda d: d["fields"][0].pop("dim"), "lacks ['dim']"),
    (lambda d: d.update(num_bytes=123), "num_bytes says 123"),
    (lambda d: d["fields"][0].update(align="stretch"), "align must be one of"),
    (lambda d: d["fields"][0].update(align="select", columns=[1, 1, 2, 3]), "distinct"),
])
def test_bad_plans_are_rejected_with_a_clear_message(mutate, message):
    d = _dict()
    mutate(d)
    with pytest.raises(PlanError) as err:
        DimensionPlan.from_dict(d, source="p.json")
    assert message in str(err.value)
    assert str(err.value).startswith("p.json")


def test_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(PlanError, match="bad.json: not valid JSON"):
        DimensionPlan.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(PlanError, match="no such plan file"):
        DimensionPlan.load(tmp_path / "nope.json")


def test_plan_for_another_schema_is_rejected():
    plan = DimensionPlan.from_dims(SCHEMA, 8, {"user": 4})
    other = Schema([Field("user", vocab_size=101), Field("item", vocab_size=40)])
    with pytest.raises(PlanError, match="another schema"):
        plan.check_schema(other)
    renamed = Schema([Field("member", vocab_size=100), Field("item", vocab_size=40)])
    with pytest.raises(PlanError, match="do not match"):
        plan.check_schema(renamed)
    plan.check_schema(SCHEMA)


def test_unknown_field_in_from_dims():
    with pytest.raises(PlanError, match="unknown field"):
        DimensionPlan.from_dims(SCHEMA, 8, {"usr": 4})


def test_combining_hashing_and_groups_is_rejected():
    fp = FieldPlan("user", 100, 4, hashing={"method": "hash", "buckets": 5},
                   frequency_groups=[{"rows": 100, "dim": 4}])
    with pytest.raises(PlanError, match="cannot be combined"):
        fp.validate(8)


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    plan = DimensionPlan.from_dims(SCHEMA, 8, {"user": 4})
    path = plan.save(tmp_path / "p.json")
    before = path.read_text()
    real_write = type(path).write_text

    def half_then_crash(self, text, *a, **k):
        real_write(self, text[: len(text) // 2], *a, **k)
        raise OSError("disk full")

    monkeypatch.setattr(type(path), "write_text", half_then_crash)
    with pytest.raises(OSError):
        DimensionPlan.from_dims(SCHEMA, 8, {"user": 2}).save(path)
    monkeypatch.undo()
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]
