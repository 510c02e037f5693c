"""Precision in the CLI: inspect's bits column and bad precision entries."""

import json

from autodim.data.schema import Field, Schema
from autodim.plan import DimensionPlan


def _plan(bits, scale="row"):
    schema = Schema([Field("u", vocab_size=1000), Field("i", vocab_size=300),
                     Field("c", vocab_size=20)])
    plan = DimensionPlan.from_dims(schema, 8, {"u": 5, "i": 8, "c": 3})
    for f in plan.fields:
        f.precision = {"bits": bits, "scale": scale}
    plan.validate()
    return plan


def test_inspect_shows_bits_and_bytes_per_field(tmp_path, capsys):
    from autodim.cli import main

    plan = _plan(4, "field")
    path = plan.save(tmp_path / "plan.json")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "bits" in out.splitlines()[1] and "4/field" in out
    line = next(ln for ln in out.splitlines() if ln.lstrip().startswith("i "))
    assert f"{plan.fields[1].num_bytes(8):,}" in line


def test_bad_precision_in_a_plan_file_exits_2(tmp_path, capsys):
    from autodim.cli import main

    d = json.loads(_plan(4).to_json())
    d["fields"][2]["precision"]["bits"] = 5
    d.pop("num_bytes")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "field 'c'" in err and "bits 5" in err


def test_packed_model_pickles(tmp_path):
    import pickle

    import torch

    from autodim.embeddings.quant import pack_model

    emb = pack_model(_plan(4).build()).eval()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = emb(ids)
    back = pickle.loads(pickle.dumps(emb))
    torch.testing.assert_close(back(ids), out)
