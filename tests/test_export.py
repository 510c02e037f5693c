"""Export: weights round trip, TorchRec and FuxiCTR configs, exporting study trials."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from autodim.data.datamodule import CTRDataModule
from autodim.errors import ConfigError
from autodim.export import (
    build_model,
    export_plan,
    fuxictr_feature_specs,
    load_model,
    load_weights,
    save_weights,
    torchrec_tables,
)
from autodim.plan import DimensionPlan, FieldPlan
from autodim.study.config import StudyConfig
from autodim.study.runner import run_study
from autodim.task import TrainConfig, train_plan

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.ERROR)


def _batch(data, n: int = 512) -> torch.Tensor:
    return torch.from_numpy(data.test.ids[:n]).long()


def _mixed_plan(schema) -> DimensionPlan:
    plan = DimensionPlan.from_dims(schema, 8, [2, 4, 8, 3, 0])
    fields = list(plan.fields)
    fields[3] = FieldPlan(name="f03", vocab_size=fields[3].vocab_size, dim=3,
                          hashing={"method": "memcom", "buckets": 50})
    return plan.replace(fields=fields)


def test_weights_round_trip_gives_identical_predictions(tmp_path, tiny_data):
    plan = _mixed_plan(tiny_data.schema)
    plan.validate()
    trained = train_plan(plan, CTRDataModule(tiny_data, batch_size=256),
                         config=TrainConfig(max_epochs=1, batch_size=256), test=False)
    trained.task.eval()
    path = save_weights(trained.task, tmp_path / "w.safetensors", plan=plan, backbone="fm")
    tensors, meta = load_weights(path)
    assert meta["backbone"] == "fm" and meta["num_bytes"] == str(plan.num_bytes())
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    paths = export_plan(plan, tmp_path / "exp", weights=path, backbone="fm")
    rebuilt = load_model(paths["plan"], paths["weights"])
    also = plan.build_model("fm", weights=paths["weights"])
    x = _batch(tiny_data)
    with torch.no_grad():
        want = trained.task(x)
        assert torch.equal(rebuilt(x), want)
        assert torch.equal(also(x), want)
    assert rebuilt.num_bytes() == plan.num_bytes()


def test_weights_that_do_not_fit_the_plan_are_refused(tmp_path, tiny_data):
    from autodim.errors import PlanError

    plan = DimensionPlan.full(tiny_data.schema, 8)
    path = save_weights(build_model(plan), tmp_path / "w.safetensors")
    other = DimensionPlan.from_dims(tiny_data.schema, 8, [2, 2, 2, 2, 2])
    with pytest.raises(PlanError, match=r"tensor 'embedding\.fields\.0\.align\.linear\.weight' "
                                        "is missing"):
        build_model(other, weights=path)


def test_torchrec_tables(tiny_data):
    plan = _mixed_plan(tiny_data.schema)
    out = torchrec_tables(plan)
    tables = {t["config"]["name"]: t for t in out["tables"]}
    assert set(tables) == {"t_f00", "t_f01", "t_f02", "t_f03_memcom_shared",
                           "t_f03_memcom_scale"}  # f04 is dropped (dim 0)
    cfg = {k: t["config"] for k, t in tables.items()}
    assert cfg["t_f00"]["embedding_dim"] == 2
    assert cfg["t_f00"]["num_embeddings"] == tiny_data.schema["f00"].vocab_size
    assert cfg["t_f03_memcom_shared"]["num_embeddings"] == 50
    assert cfg["t_f03_memcom_shared"]["embedding_dim"] == 3
    assert cfg["t_f03_memcom_scale"]["embedding_dim"] == 1
    assert all(c["feature_names"] and c["pooling"] == "SUM" for c in cfg.values())
    assert {p["field"] for p in out["projections"]} == {"f00", "f01", "f03"}
    warning = " ".join(out["warnings"])
    assert "t_f00 (2)" in warning and "t_f03_memcom_shared (3)" in warning
    assert "t_f01" not in warning and "t_f03_memcom_scale" not in warning
    json.dumps(out)  # JSON-able


def test_fuxictr_feature_specs(tiny_data):
    plan = _mixed_plan(tiny_data.schema)
    out = fuxictr_feature_specs(plan)
    assert out["embedding_dim"] == 8
    assert out["use_features"] == ["f00", "f01", "f02", "f03"]
    specs = {s["name"]: s for s in out["feature_specs"]}
    assert specs["f01"] == {"name": "f01", "embedding_dim": 4,
                            "feature_encoder": "nn.Linear(4, 8, bias=False)"}
    # A sequence field pools before the linear map (FuxiCTR's list form).
    seq = plan.replace(fields=[FieldPlan("s", 30, 2, kind="sequence", width=4),
                               FieldPlan("t", 30, 8, kind="sequence", width=4)])
    s_specs = {s["name"]: s for s in fuxictr_feature_specs(seq)["feature_specs"]}
    assert s_specs["s"]["feature_encoder"] == ["layers.MaskedAveragePooling()",
                                               "nn.Linear(2, 8, bias=False)"]
    assert s_specs["t"]["feature_encoder"] == ["layers.MaskedAveragePooling()"]
    assert "feature_encoder" not in specs["f02"]  # already at D
    assert any("f03" in n and "memcom" in n for n in out["notes"])


# -- exporting study trials ------------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_study")
    space = {"candidate_dims": [1, 2, 4, 8],
             "methods": {"blackbox": {"params": {"n_candidates": 2, "max_batches": 4}}},
             "memcom": {"enabled": False}}
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    (folder / "s.yaml").write_text(yaml.safe_dump({
        "name": "s", "dataset": {"source": "synthetic:tiny", "rows": 3000}, "D": 8,
        "methods": "blackbox", "search_space": "space.yaml", "budget": "6x", "n_trials": 1,
        "baselines": ["uniform", "memcom"], "train": {"epochs": 1, "batch_size": 256},
        "search_train": {"epochs": 1, "batch_size": 256}, "output": "out"}))
    return run_study(StudyConfig.load(folder / "s.yaml"))


def test_export_study_trial_round_trip(study, tmp_path):
    n = study.best_under("6x")
    paths = study.export(n, tmp_path / "exp")
    for key in ("plan", "weights", "model", "torchrec", "fuxictr"):
        assert Path(paths[key]).is_file(), key
    fx = yaml.safe_load(Path(paths["fuxictr"]).read_text())
    assert fx["embedding_dim"] == 8 and fx["feature_specs"]
    model = json.loads(Path(paths["model"]).read_text())
    assert model["backbone"] == "fm" and model["weights"] == "weights.safetensors"
    exported = load_model(paths["plan"], paths["weights"])
    original = study.model(n)
    x = torch.from_numpy(study_data_ids(study)).long()
    with torch.no_grad():
        assert torch.equal(exported(x), original(x))
    plan = DimensionPlan.load(paths["plan"])
    assert plan.metrics["val_auc"] == study.trial(n).user_attrs["val_auc"]


def test_export_trial_ships_the_encoders_or_says_why_not(study, tmp_path, monkeypatch):
    import autodim.data
    from autodim.errors import DataError

    n = study.best_under("6x")
    paths = study.export(n, tmp_path / "with")
    assert Path(paths["encoders"]).is_file()
    model = load_model(tmp_path / "with")
    ids = study_data_ids(study)
    with torch.no_grad():
        assert torch.equal(model(torch.from_numpy(ids).long()),
                           study.model(n)(torch.from_numpy(ids).long()))

    def gone(*a, **k):
        raise DataError("data.csv: no such file")

    monkeypatch.setattr(autodim.data, "load_data", gone)
    paths = study.export(n, tmp_path / "without")
    assert paths["encoders"] is None and (tmp_path / "without" / "weights.safetensors").is_file()
    assert any("data.csv: no such file" in w for w in paths["warnings"])


def study_data_ids(study):
    from autodim.data.synthetic import make_planted

    return make_planted("tiny", rows=3000).test.ids[:300]


def test_exporting_a_failed_trial_is_a_clear_error(study, tmp_path):
    trial = study.study.ask()
    trial.set_user_attr("fail_reason", "RuntimeError: boom")
    study.study.tell(trial, state=TrialState.FAIL)
    with pytest.raises(ConfigError, match=f"trial {trial.number} .* is FAIL .*boom"):
        study.export(trial.number, tmp_path / "x")
    with pytest.raises(ConfigError, match="no trial 12345"):
        study.export(12345, tmp_path / "x")


def test_masked_tables_are_saved_in_compact_form(tmp_path):
    """Sparse and row-pruned tables ship as CSR / kept rows + bitmap: the file's embedding
    tensors take exactly plan.num_bytes(), and loading restores identical predictions."""
    import numpy as np
    import torch
    from safetensors import safe_open

    from autodim.data.schema import Field, Schema
    from autodim.export import build_model, save_weights
    from autodim.plan import DimensionPlan, FieldPlan, encode_mask

    schema = Schema([Field("a", vocab_size=300), Field("b", vocab_size=200),
                     Field("c", vocab_size=50)])
    rng = np.random.default_rng(0)
    mask = rng.random((300, 8)) < 0.2
    keep = rng.random(200) < 0.3
    keep[0] = True
    plan = DimensionPlan(fields=[
        FieldPlan("a", 300, 8, sparse={"nnz": int(mask.sum()), "bits": encode_mask(mask)}),
        FieldPlan("b", 200, 4, align="pad",
                  row_mask={"kept": int(keep.sum()), "bits": encode_mask(keep)}),
        FieldPlan("c", 50, 3, align="select", columns=[0, 1, 2]),
    ], D=8, schema_fingerprint=schema.fingerprint())
    model = build_model(plan, "fm")
    path = save_weights(model, tmp_path / "w.safetensors", plan=plan, backbone="fm")
    with safe_open(str(path), framework="pt") as fh:
        emb = sum(fh.get_tensor(k).numel() * fh.get_tensor(k).element_size()
                  for k in fh.keys() if k.startswith("embedding."))
    assert emb == plan.num_bytes()
    again = build_model(plan, "fm", weights=path)
    ids = torch.randint(0, 50, (32, 3))
    model.eval()
    assert torch.allclose(model(ids), again(ids))
