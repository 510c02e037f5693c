"""Exports are whole or absent; weights that do not belong to the plan are refused by name."""

from __future__ import annotations

import contextlib
import errno
import io

import pytest
import torch
from safetensors.torch import save_file

import autodim.export as export_mod
from autodim.errors import PlanError
from autodim.export import export_plan, load_model, load_weights, save_weights
from autodim.plan import DimensionPlan

torch.set_num_threads(1)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("fail_at", ["weights.safetensors", "encoders.json", "torchrec.json",
                                     "fuxictr_feature_map.json"])
def test_a_failed_export_leaves_the_old_folder_as_it_was(tmp_path, tiny_data, monkeypatch,
                                                         fail_at):
    old = DimensionPlan.full(tiny_data.schema, 4)
    w_old = save_weights(old.build_model("fm"), tmp_path / "old.safetensors", plan=old)
    out = tmp_path / "shipped"
    export_plan(old, out, weights=w_old, data=tiny_data)
    before = _snapshot(out)
    assert {str(p) for p in before} >= {"plan.json", "weights.safetensors", "encoders.json",
                                        "model.json", "torchrec.json", "fuxictr.yaml"}

    new = DimensionPlan.from_dims(tiny_data.schema, 4, [1, 2, 4, 1, 1])
    w_new = save_weights(new.build_model("fm"), tmp_path / "new.safetensors", plan=new)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    # A full disk midway: the write of one file raises after the others were written.
    real_json, real_copy = export_mod.atomic_write_json, export_mod.shutil.copyfile
    if fail_at == "weights.safetensors":
        monkeypatch.setattr(export_mod.shutil, "copyfile", disk_full)
    else:
        monkeypatch.setattr(export_mod, "atomic_write_json", lambda path, obj: (
            disk_full() if str(path).endswith(fail_at) else real_json(path, obj)))
    with pytest.raises(OSError) as info:
        export_plan(new, out, weights=w_new, data=tiny_data)
    assert info.value.errno == errno.ENOSPC
    assert _snapshot(out) == before  # not one file of the new export
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".shipped")] == []
    monkeypatch.setattr(export_mod, "atomic_write_json", real_json)
    monkeypatch.setattr(export_mod.shutil, "copyfile", real_copy)
    export_plan(new, out, weights=w_new, data=tiny_data)  # and a later export replaces it
    assert DimensionPlan.load(out / "plan.json").dims == new.dims


def _cli(argv):
    from autodim.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(argv))
    return rc, err.getvalue().strip()


def test_export_to_a_file_is_a_one_line_error(tmp_path, tiny_data):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    for argv in (["export", str(tmp_path), "--trial", "0", "--out", str(target)],
                 ["export", str(tmp_path), "--trial", "0", "--out", str(target / "sub")],
                 ["search", str(tmp_path / "s.yaml"), "--out-dir", str(target)]):
        rc, line = _cli(argv)
        assert rc == 2 and line.startswith("error: ") and "\n" not in line, line
        assert str(target) in line and "Traceback" not in line, line
    plan = DimensionPlan.full(tiny_data.schema, 4)
    with pytest.raises(Exception, match="is a file"):
        export_plan(plan, target)
    assert target.read_text() == "keep me"


def test_a_folder_with_other_files_is_never_replaced(tmp_path, tiny_data):
    plan = DimensionPlan.full(tiny_data.schema, 4)
    mine = tmp_path / "my_project"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match=r"holds files that are not part of an autodim export "
                                        r"\(notes\.txt\)"):
        export_plan(plan, mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    rc, line = _cli(["export", str(tmp_path), "--trial", "0", "--out", str(mine)])
    assert rc == 2 and "notes.txt" in line and "\n" not in line
    export_plan(plan, tmp_path / "empty")  # new, empty or earlier-export folders are fine
    export_plan(plan, tmp_path / "empty")


# -- weights checked against the plan ----------------------------------------------------
@pytest.fixture()
def saved(tmp_path, tiny_data):
    plan = DimensionPlan.from_dims(tiny_data.schema, 8, [2, 4, 8, 8, 8])
    path = save_weights(plan.build_model("fm"), tmp_path / "w.safetensors", plan=plan,
                        backbone="fm")
    return plan, path


def _rewrite(path, tensors, meta):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def test_weights_metadata_of_another_plan_are_refused(saved, tiny_data, tmp_path):
    plan, path = saved
    tensors, meta = load_weights(path)
    for key, value, shown in (("schema_fingerprint", "0123456789abcdef", "schema_fingerprint"),
                              ("D", "16", "D 16"), ("num_bytes", "12345", "num_bytes 12345")):
        bad = tmp_path / f"bad_{key}.safetensors"
        _rewrite(bad, tensors, {**meta, key: value})
        with pytest.raises(PlanError, match=f"saved for another plan \\({shown}") as info:
            load_model(plan, bad)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("fault,message", [
    ("shape", "tensor 'embedding.fields.0.table.embedding.weight' has shape"),
    ("missing", "tensor 'embedding.fields.1.align.linear.weight' is missing"),
    ("extra", "unexpected tensor 'embedding.fields.9.table.embedding.weight'"),
    ("nan", "tensor 'embedding.fields.2.table.embedding.weight' holds NaN values"),
    ("inf", "tensor 'backbone.linear.weight' holds infinite values"),
])
def test_bad_tensors_are_named(saved, tmp_path, fault, message):
    plan, path = saved
    tensors, meta = load_weights(path)
    if fault == "shape":
        w = tensors["embedding.fields.0.table.embedding.weight"]
        tensors["embedding.fields.0.table.embedding.weight"] = w[:-1]
    elif fault == "missing":
        del tensors["embedding.fields.1.align.linear.weight"]
    elif fault == "extra":
        tensors["embedding.fields.9.table.embedding.weight"] = torch.zeros(3, 2)
    elif fault == "nan":
        tensors["embedding.fields.2.table.embedding.weight"][5, 1] = float("nan")
    else:
        keys = [k for k in tensors if k.startswith("backbone.") and k.endswith("weight")]
        tensors[keys[0]].view(-1)[0] = float("inf")
        message = message.replace("backbone.linear.weight", keys[0])
    bad = tmp_path / "bad.safetensors"
    _rewrite(bad, tensors, meta)
    with pytest.raises(PlanError) as info:
        load_model(plan, bad)
    assert message in str(info.value) and str(bad) in str(info.value)
    assert "\n" not in str(info.value)
