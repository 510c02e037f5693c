"""A shipped model scores raw rows: the export carries the fitted encoders, so CSV/Parquet/
RecBole rows, DataFrames and dicts are encoded exactly as the cached training ids were."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from autodim.data import load_data
from autodim.data.datamodule import CTRDataModule
from autodim.data.dataset import random_split_indices
from autodim.errors import AutodimError
from autodim.export import export_plan, load_model, save_weights
from autodim.plan import DimensionPlan, FieldPlan
from autodim.task import TrainConfig, train_plan

torch.set_num_threads(1)

SPEC = {"label": "clicked", "fields": ["user", "item",
                                       {"name": "tags", "kind": "sequence", "max_len": 3}]}


def _write_csv(path, n: int = 2000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 150, n), rng.integers(0, 60, n)
    tags = ["|".join(rng.choice(list("abcdefg"), rng.integers(1, 4), replace=False))
            for _ in range(n)]
    df = pd.DataFrame({"user": [f"u{u}" for u in users], "item": items, "tags": tags,
                       "clicked": ((users % 3 == 0) ^ (items % 2 == 0)).astype(int)})
    df.to_csv(path, index=False)
    return df


def _ship(data, folder, tmp_path):
    """Train a mixed plan (MEmCom user, projected item, padded sequence) one epoch, export."""
    plan = DimensionPlan.from_dims(data.schema, 8, [4, 8, 2])
    fields = list(plan.fields)
    fields[0] = FieldPlan(**{**fields[0].to_dict(),
                             "hashing": {"method": "memcom", "buckets": 40}})
    fields[2] = FieldPlan(**{**fields[2].to_dict(), "align": "pad"})
    plan = plan.replace(fields=fields)
    plan.validate()
    trained = train_plan(plan, CTRDataModule(data, batch_size=256),
                         config=TrainConfig(max_epochs=1, batch_size=256), test=False)
    trained.task.eval()
    w = save_weights(trained.task, tmp_path / "w.safetensors", plan=plan, backbone="fm")
    export_plan(plan, folder, weights=w, backbone="fm", data=data)
    return trained.task


def _scores(task, ids) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(task(torch.from_numpy(np.asarray(ids)).long())).numpy()


@pytest.fixture(scope="module")
def shipped_csv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_csv")
    df = _write_csv(tmp / "clicks.csv")
    data = load_data(tmp / "clicks.csv", spec=SPEC)
    task = _ship(data, tmp / "shipped", tmp)
    return tmp, df, data, task


def test_raw_csv_rows_score_as_the_cached_ids(shipped_csv):
    tmp, df, data, task = shipped_csv
    assert (tmp / "shipped" / "encoders.json").is_file()
    model = load_model(tmp / "shipped")
    test_rows = random_split_indices(len(df), (0.8, 0.1, 0.1), 0)[2]
    raw = pd.read_csv(tmp / "clicks.csv", dtype=str).iloc[test_rows]
    np.testing.assert_array_equal(model.encode(raw), data.test.ids)
    np.testing.assert_allclose(model.predict(raw), _scores(task, data.test.ids), atol=1e-6)
    # The file itself (every row), dicts and a typed DataFrame give the same ids.
    every = model.encode(tmp / "clicks.csv")
    np.testing.assert_array_equal(every[test_rows], data.test.ids)
    dicts = df.iloc[test_rows[:20]].to_dict("records")  # item as int, not str
    np.testing.assert_array_equal(model.encode(dicts), data.test.ids[:20])
    df.iloc[test_rows].to_parquet(tmp / "rows.parquet")
    np.testing.assert_array_equal(model.encode(tmp / "rows.parquet"), data.test.ids)


def test_unseen_values_map_to_the_oov_id(shipped_csv):
    tmp, df, data, _ = shipped_csv
    model = load_model(tmp / "shipped")
    known_user = df["user"].iloc[0]
    ids = model.encode([{"user": "never-seen", "item": 999, "tags": "zz|a"},
                        {"user": known_user, "item": None, "tags": None}])
    assert ids[0, 0] == 0 and ids[0, 1] == 0  # unseen categorical values -> row 0
    assert ids[0, 2] == 0 and ids[0, 3] > 0   # unseen token -> 0, "a" keeps its id
    assert ids[1, 0] > 0
    scores = model.predict([{"user": "never-seen", "item": 999, "tags": "zz"}])
    assert scores.shape == (1,) and 0 < scores[0] < 1
    with pytest.raises(AutodimError, match=r"lack field column\(s\) \['tags'\]"):
        model.predict([{"user": "u1", "item": 3}])


def test_predict_command_writes_the_scores(shipped_csv, capsys):
    from autodim.cli import main

    tmp, df, data, task = shipped_csv
    out = tmp / "scores.csv"
    assert main(["predict", str(tmp / "shipped"), str(tmp / "clicks.csv"), "--out",
                 str(out)]) == 0
    scores = pd.read_csv(out)["score"].to_numpy()
    assert len(scores) == len(df)
    test_rows = random_split_indices(len(df), (0.8, 0.1, 0.1), 0)[2]
    np.testing.assert_allclose(scores[test_rows], _scores(task, data.test.ids), atol=2e-6)
    capsys.readouterr()
    assert main(["predict", str(tmp / "shipped"), str(tmp / "clicks.csv")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "score" and len(printed) == len(df) + 1


def test_predict_errors_are_one_line(shipped_csv, tmp_path):
    from autodim.cli import main

    tmp, *_ = shipped_csv
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item\nu1,3\n")
    for argv, part in ((["predict", str(tmp_path), str(bad)], "not an export folder"),
                       (["predict", str(tmp / "shipped"), str(bad)], "lack field column"),
                       (["predict", str(tmp / "shipped"), str(tmp_path / "nope.csv")],
                        "no such file"),
                       (["predict", str(tmp / "shipped"), str(bad), "--out", str(tmp_path)],
                        "is a folder")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
        line = err.getvalue().strip()
        assert rc == 2 and line.startswith("error: ") and "\n" not in line, line
        assert part in line, line


def _recbole_folder(folder, n: int = 1500, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir()
    users, items = rng.integers(1, 80, n), rng.integers(1, 40, n)
    with open(folder / "toy.inter", "w") as fh:
        fh.write("user_id:token\titem_id:token\trating:float\n")
        for u, i in zip(users, items):
            fh.write(f"{u}\t{i}\t{1 + (u * i) % 5}\n")
    with open(folder / "toy.user", "w") as fh:
        fh.write("user_id:token\tage:token\n")
        for u in range(1, 80):
            fh.write(f"{u}\t{u % 7}\n")
    with open(folder / "toy.item", "w") as fh:
        fh.write("item_id:token\tclass:token_seq\n")
        for i in range(1, 40):
            fh.write(f"{i}\t{'g' + str(i % 5)} {'h' + str(i % 3)}\n")


def test_raw_recbole_rows_score_as_the_cached_ids(tmp_path):
    folder = tmp_path / "toy"
    _recbole_folder(folder)
    data = load_data(folder, rename={"class": "genres"})
    assert data.schema.names == ["user_id", "item_id", "age", "genres"]
    plan = DimensionPlan.from_dims(data.schema, 4, [4, 2, 1, 2])
    w = save_weights(plan.build_model("fm"), tmp_path / "w.safetensors", plan=plan)
    export_plan(plan, tmp_path / "shipped", weights=w, data=data)
    model = load_model(tmp_path / "shipped")
    test_rows = random_split_indices(1500, (0.8, 0.1, 0.1), 0)[2]
    # The folder (joined with .user/.item, renamed) and the .inter file alone.
    np.testing.assert_array_equal(model.encode(folder)[test_rows], data.test.ids)
    np.testing.assert_array_equal(model.encode(folder / "toy.inter")[test_rows],
                                  data.test.ids)
    # A request in the training's column names, genres given as RecBole writes them.
    row = {"user_id": "5", "item_id": "7", "age": "5", "genres": "g2 h1"}
    ids = model.encode([row])
    assert (ids > 0).all()


def test_export_without_encoders_says_so_and_scores_ids(tmp_path, tiny_data):
    plan = DimensionPlan.full(tiny_data.schema, 4)
    w = save_weights(plan.build_model("fm"), tmp_path / "w.safetensors", plan=plan)
    paths = export_plan(plan, tmp_path / "shipped", weights=w)
    assert paths["encoders"] is None and any("encoders" in x for x in paths["warnings"])
    model = load_model(tmp_path / "shipped")
    with pytest.raises(AutodimError, match="no encoders.json"):
        model.predict([{"f00": 1}])
    # Synthetic data ships "ids" encoders: integer ids pass through, the rest reads row 0.
    export_plan(plan, tmp_path / "ids", weights=w, data=tiny_data)
    enc = json.loads((tmp_path / "ids" / "encoders.json").read_text())
    assert {f["kind"] for f in enc["fields"]} == {"ids"}
    model = load_model(tmp_path / "ids")
    rows = pd.DataFrame(np.asarray(tiny_data.test.ids[:50]), columns=tiny_data.schema.names)
    np.testing.assert_array_equal(model.encode(rows), tiny_data.test.ids[:50])
    odd = model.encode([{n: v for n, v in zip(tiny_data.schema.names,
                                              [-1, 10**9, "x", 1.5, 2])}])
    assert odd.tolist() == [[0, 0, 0, 0, 2]]


def test_raw_criteo_rows_are_bucketised_as_in_training(tmp_path):
    from autodim.data.criteo import CAT_FIELDS, INT_FIELDS

    rng = np.random.default_rng(0)
    lines = []
    for _ in range(300):
        ints = ["" if rng.random() < 0.2 else str(int(rng.integers(-2, 500)))
                for _ in INT_FIELDS]
        cats = ["" if rng.random() < 0.1 else f"{int(rng.zipf(1.5)) % 50:08x}"
                for _ in CAT_FIELDS]
        lines.append("\t".join([str(int(rng.random() < 0.3)), *ints, *cats]))
    path = tmp_path / "day.tsv"
    path.write_text("\n".join(lines) + "\n")
    data = load_data(path, split=(1.0, 0.0, 0.0))
    plan = DimensionPlan.full(data.schema, 2)
    w = save_weights(plan.build_model("lr"), tmp_path / "w.safetensors", plan=plan,
                     backbone="lr")
    export_plan(plan, tmp_path / "shipped", weights=w, backbone="lr", data=data)
    model = load_model(tmp_path / "shipped")
    np.testing.assert_array_equal(model.encode(path), data.train.ids)
    # Rows without the label column, and a request with raw (unbucketised) integers.
    (tmp_path / "nolabel.tsv").write_text("\n".join(x.split("\t", 1)[1] for x in lines))
    np.testing.assert_array_equal(model.encode(tmp_path / "nolabel.tsv"), data.train.ids)
    first = lines[0].split("\t")[1:]
    row = {c: (float(v) if v else None) for c, v in zip(INT_FIELDS, first[:13])}
    row.update({c: (v or None) for c, v in zip(CAT_FIELDS, first[13:])})
    np.testing.assert_array_equal(model.encode([row])[0], data.train.ids[0])


@pytest.mark.realdata
def test_movielens_rows_score_as_the_cached_ids(tmp_path):
    """MovieLens-100K's own files (joined .user/.item, 'class' renamed to genres) through
    a shipped model give the cached test ids and scores."""
    import os

    folder = os.environ.get("AUTODIM_ML100K")
    if not folder:
        pytest.skip("AUTODIM_ML100K is not set (run fetch-ml100k DEST and point it there)")
    data = load_data(folder)
    plan = DimensionPlan.full(data.schema, 4)
    model = plan.build_model("fm").eval()
    w = save_weights(model, tmp_path / "w.safetensors", plan=plan)
    export_plan(plan, tmp_path / "shipped", weights=w, data=data)
    shipped = load_model(tmp_path / "shipped")
    test_rows = random_split_indices(len(data.train) + len(data.val) + len(data.test),
                                     (0.8, 0.1, 0.1), 0)[2]
    np.testing.assert_array_equal(shipped.encode(folder)[test_rows], data.test.ids)
    np.testing.assert_allclose(shipped.predict(folder)[test_rows[:500]],
                               _scores(model, data.test.ids[:500]), atol=1e-6)
