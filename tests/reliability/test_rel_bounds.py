"""Bounded parsing: YAML alias bombs and size, deep nesting (YAML/JSON), zlib bombs in plan
masks, linear-time plan validation, plan field types; AUC undefined for one-class labels;
bad backbone_kwargs."""

from __future__ import annotations

import base64
import json
import tracemalloc
import zlib

import numpy as np
import pytest
import yaml
from conftest import SPACE, run_cli, write_study

from autodim.data.schema import Field, Schema
from autodim.errors import ConfigError, DataError, PlanError
from autodim.plan import DimensionPlan, FieldPlan, encode_mask

BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
                 + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)])


# -- B5: YAML ------------------------------------------------------------------------------
def test_yaml_alias_bomb_in_a_search_space_is_refused(tmp_path, one_line_error):
    from autodim.study.config import load_study_config

    space = dict(SPACE)
    text = BOMB + "\n" + yaml.safe_dump(space) + "memcom_bomb: *a8\n"
    path = write_study(tmp_path)
    (tmp_path / "space.yaml").write_text(text)
    assert len(text) < 2000
    with pytest.raises(ConfigError, match="space.yaml: more than 1,000,000 values"):
        load_study_config(path)
    rc, _o, err = run_cli(["search", str(path), "--out-dir", str(tmp_path / "out")])
    one_line_error(rc, err, "space.yaml", "YAML aliases")
    assert not (tmp_path / "out" / "study.json").exists()


def test_yaml_alias_inside_a_param_is_refused(tmp_path):
    """The red team's case: the bomb as the value of a fixed parameter."""
    from autodim.study.config import load_study_config

    path = write_study(tmp_path)
    (tmp_path / "space.yaml").write_text(
        BOMB + "\ncandidate_dims: [1, 2, 4, 8]\nmethods:\n  blackbox:\n    params:\n"
        "      n_candidates: {type: fixed, value: *a8}\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_study_config(path)


@pytest.mark.parametrize("where", ["study", "space"])
def test_deeply_nested_yaml_is_one_line(where, tmp_path, one_line_error):
    path = write_study(tmp_path)
    deep = "[" * 50_000 + "]" * 50_000
    target = path if where == "study" else tmp_path / "space.yaml"
    target.write_text(deep)
    rc, _o, err = run_cli(["search", str(path), "--out-dir", str(tmp_path / "out")])
    one_line_error(rc, err, target.name)
    assert "RecursionError" not in err


def test_a_huge_yaml_document_is_refused_before_parsing(tmp_path):
    from autodim._io import MAX_YAML_BYTES, safe_yaml_load

    with pytest.raises(ConfigError, match="more than the"):
        safe_yaml_load("x: " + "a" * (MAX_YAML_BYTES + 1), "big.yaml")


def test_no_plain_yaml_safe_load_left_in_the_study_package():
    from pathlib import Path

    import autodim.study as pkg

    for p in Path(pkg.__file__).parent.glob("*.py"):
        assert "yaml.safe_load(" not in p.read_text(), p


# -- B6, B7 and field checks: plans --------------------------------------------------------
def _plan(n_fields: int = 2, vocab: int = 1000) -> DimensionPlan:
    schema = Schema([Field(f"f{i}", vocab_size=vocab) for i in range(n_fields)])
    return DimensionPlan.full(schema, D=4)


def _bomb_bits(n_bytes: int) -> str:
    z = zlib.compressobj(9)
    chunk = b"\xff" * (1 << 20)
    out = b"".join(z.compress(chunk) for _ in range(n_bytes >> 20)) + z.flush()
    return base64.b64encode(out).decode()


def test_zlib_bomb_in_a_row_mask_costs_no_memory(tmp_path):
    d = _plan().to_dict()
    d["fields"][0]["row_mask"] = {"bits": _bomb_bits(256 << 20), "kept": 1000}
    d.pop("num_bytes")
    text = json.dumps(d)
    assert len(text) < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(PlanError, match="row_mask bits are unreadable"):
            DimensionPlan.from_json(text, source="bomb.json")
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB to refuse a plan"


def test_a_good_row_mask_still_decodes():
    keep = np.zeros(1000, dtype=bool)
    keep[::3] = True
    d = _plan().to_dict()
    d["fields"][0]["row_mask"] = {"bits": encode_mask(keep), "kept": int(keep.sum())}
    d.pop("num_bytes")
    plan = DimensionPlan.from_dict(d)
    assert plan.fields[0].row_mask["kept"] == int(keep.sum())


class _CountingName(str):
    eq_calls = 0

    def __eq__(self, other):
        type(self).eq_calls += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_plan_validation_is_linear_in_the_number_of_fields():
    n = 3000
    plan = _plan(n_fields=n, vocab=10)
    for f in plan.fields:
        f.name = _CountingName(f.name)
    _CountingName.eq_calls = 0
    plan.validate()
    # a pairwise duplicate check makes ~n*n/2 comparisons; a set makes ~0 (distinct names)
    assert _CountingName.eq_calls < 10 * n, _CountingName.eq_calls


@pytest.mark.parametrize("key,value,match", [
    ("kind", "bogus", "kind must be"),
    ("width", -1, "width must be"),
    ("dim", True, "dim must be an integer"),
    ("vocab_size", 10.5, "vocab_size must be an integer"),
])
def test_inspect_refuses_bad_field_values(key, value, match, tmp_path, one_line_error):
    d = _plan().to_dict()
    d["fields"][0][key] = value
    d.pop("num_bytes")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    with pytest.raises(PlanError, match=match):
        DimensionPlan.load(path)
    rc, _o, err = run_cli(["inspect", str(path)])
    one_line_error(rc, err, "plan.json", match)


def test_deeply_nested_plan_json_is_one_line(tmp_path, one_line_error):
    path = tmp_path / "plan.json"
    path.write_text('{"fields": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(PlanError, match="nested too deeply"):
        DimensionPlan.load(path)


# -- B8: one-class labels ------------------------------------------------------------------
def test_auc_of_one_class_is_undefined_not_zero():
    import torch

    from autodim.metrics import auc_numpy, auc_torch, format_auc

    labels = torch.zeros(100)
    scores = torch.rand(100)
    assert np.isnan(float(auc_torch(scores, labels)))
    assert np.isnan(auc_numpy(labels.numpy(), scores.numpy()))
    assert format_auc(float("nan")) == "n/a" and format_auc(None) == "n/a"
    assert format_auc(0.73456) == "0.7346"
    both = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert float(auc_torch(torch.tensor([0.1, 0.9, 0.2, 0.8]), both)) == 1.0


def test_training_on_one_class_labels_is_an_error():
    from dataclasses import replace

    from autodim.data import load_data
    from autodim.data.datamodule import CTRDataModule
    from autodim.task import TrainConfig, train_plan

    ds = load_data("synthetic:tiny", rows=600)
    ds = replace(ds, train=replace(ds.train, labels=np.zeros_like(ds.train.labels)))
    plan = DimensionPlan.full(ds.schema, D=4)
    with pytest.raises(DataError, match="train split: every label is 0"):
        train_plan(plan, CTRDataModule(ds, batch_size=128),
                   config=TrainConfig(max_epochs=1, batch_size=128))


def test_evaluate_on_a_one_class_split_gives_nan():
    import torch

    from autodim.task import evaluate

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(1), torch.nn.Flatten(0))
    x = torch.randint(0, 5, (64, 3)).float()
    out = evaluate(model, [(x, torch.ones(64))])
    assert np.isnan(out["auc"])


def test_a_trial_line_shows_na_for_an_undefined_auc():
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from autodim.study.runner import trial_line

    t = SimpleNamespace(number=3, state=TrialState.COMPLETE,
                        user_attrs={"kind": "search", "method": "blackbox", "val_auc": 0.7,
                                    "test_auc": float("nan"), "bytes": 10, "compression": 2.0})
    line = trial_line(t)
    assert "test AUC n/a" in line and "0.0000" not in line


# -- bad backbone_kwargs -------------------------------------------------------------------
def test_bad_backbone_kwargs_is_one_line(tmp_path, one_line_error):
    path = write_study(tmp_path, backbone={"name": "fm", "no_such_option": 3})
    rc, _o, err = run_cli(["search", str(path), "--out-dir", str(tmp_path / "out")])
    one_line_error(rc, err, "backbone_kwargs", "no_such_option")
    assert not (tmp_path / "out" / "study.journal").exists()


def test_field_plan_validation_rejects_bool_dim_directly():
    with pytest.raises(PlanError):
        FieldPlan(name="a", vocab_size=5, dim=True).validate(4)
