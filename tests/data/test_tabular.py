"""CSV / Parquet + YAML spec: loading, and every bad input named in the error message."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from autodim.data.tabular import load_table
from autodim.errors import DataError

SPEC = {"label": "clicked",
        "fields": [{"name": "user", "min_count": 2},
                   {"name": "tags", "kind": "sequence", "separator": "|", "max_len": 3},
                   "item"],
        "split": {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 1}}


def frame(rows=50):
    rng = np.random.default_rng(0)
    tags = np.array(["a|b", "b", "c|a|b|d", "", "d"], dtype=object)
    return pd.DataFrame({
        "user": rng.choice(["u1", "u2", "u3", "rare"], rows, p=[0.4, 0.3, 0.28, 0.02]),
        "item": rng.choice(["i1", "i2", None], rows),
        "tags": tags[rng.integers(0, 5, rows)],
        "clicked": rng.integers(0, 2, rows),
        "rating": rng.integers(1, 6, rows),
    })


def write_csv(tmp_path, df=None, name="clicks.csv", **kw):
    path = tmp_path / name
    (frame() if df is None else df).to_csv(path, index=False, **kw)
    return path


def test_csv_with_spec_file(tmp_path):
    path = write_csv(tmp_path)
    spec = tmp_path / "clicks.spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    data = load_table(path, spec)
    assert data.schema.names == ["user", "tags", "item"]
    assert data.schema["tags"].kind == "sequence" and data.schema["tags"].width == 3
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 10)
    assert data.schema.label == "clicked"
    item = data.schema["item"]
    assert item.vocab_size == 4  # i1, i2, missing (NaN is its own id, not an error) + OOV
    assert data.train.ids.dtype.kind == "i"


def test_parquet_and_label_rule(tmp_path):
    df = frame()
    path = tmp_path / "clicks.parquet"
    df.to_parquet(path)
    spec = {"label_rule": {"column": "rating", "threshold": 4}, "fields": ["user", "item"],
            "split": {"train": 0.8, "val": 0.1, "test": 0.1}}
    data = load_table(path, spec)
    from autodim.data.dataset import random_split_indices

    idx = random_split_indices(len(df), (0.8, 0.1, 0.1), 0)
    for split, ix in zip((data.train, data.val, data.test), idx):
        np.testing.assert_array_equal(split.labels,
                                      (df["rating"].iloc[ix] >= 4).to_numpy(np.float32))


def test_train_val_test_files(tmp_path):
    df = frame(60)
    for name, part in (("a.csv", df[:40]), ("b.csv", df[40:50]), ("c.csv", df[50:])):
        part.to_csv(tmp_path / name, index=False)
    spec = {"label": "clicked", "fields": ["user"],
            "files": {"train": "a.csv", "val": "b.csv", "test": "c.csv"}}
    data = load_table(tmp_path, spec)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 10)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        load_table(tmp_path / "nope.csv", SPEC)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: empty file"):
        load_table(tmp_path / "empty.csv", SPEC)
    (tmp_path / "head.csv").write_text("user,item,tags,clicked\n")
    with pytest.raises(DataError, match=r"head\.csv: no data rows"):
        load_table(tmp_path / "head.csv", SPEC)


def test_missing_label_column(tmp_path):
    path = write_csv(tmp_path, frame().drop(columns="clicked"))
    with pytest.raises(DataError, match=r"clicks\.csv: label column 'clicked' not found.*"
                                        r"columns found: user, item, tags, rating"):
        load_table(path, SPEC)


def test_label_values_must_be_binary(tmp_path):
    df = frame()
    df.loc[7, "clicked"] = 3
    path = write_csv(tmp_path, df)
    with pytest.raises(DataError, match=r"clicks\.csv: label column 'clicked'.*row 8 \(line 9\)"
                                        r" has '3'"):
        load_table(path, SPEC)


def test_spec_field_not_in_file(tmp_path):
    path = write_csv(tmp_path)
    spec = dict(SPEC, fields=["user", "usr_age"])
    with pytest.raises(DataError, match=r"clicks\.csv: field 'usr_age' not found.*"
                                        r"columns found: user, item, tags, clicked, rating"):
        load_table(path, spec)


def test_wrong_delimiter_is_diagnosed(tmp_path):
    path = write_csv(tmp_path, sep=";")
    with pytest.raises(DataError, match=r"single column 'user;item;tags;clicked;rating'; "
                                        r"is the delimiter right\?"):
        load_table(path, SPEC)


def test_unknown_spec_keys_suggest_the_closest(tmp_path):
    path = write_csv(tmp_path)
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(dict(SPEC, delimeter=",")))
    with pytest.raises(DataError, match=r"s\.yaml: unknown key 'delimeter'; did you mean "
                                        r"'delimiter'\?"):
        load_table(path, spec_file)
    bad_field = dict(SPEC, fields=[{"name": "user", "min_cnt": 2}])
    with pytest.raises(DataError, match=r"fields\[0\]: unknown key 'min_cnt'; did you mean "
                                        r"'min_count'\?"):
        load_table(path, bad_field)
    with pytest.raises(DataError, match=r"unknown kind 'sequense'; did you mean 'sequence'"):
        load_table(path, dict(SPEC, fields=[{"name": "tags", "kind": "sequense"}]))


def test_non_utf8_bytes_name_the_offset(tmp_path):
    path = tmp_path / "latin.csv"
    body = b"user,item,tags,clicked\nu1,i1,a,1\n" + b"u\xe9,i2,b,0\n"
    path.write_bytes(body)
    offset = body.index(b"\xe9")
    with pytest.raises(DataError, match=rf"latin\.csv: not valid UTF-8 at byte offset "
                                        rf"{offset} \(line 3\)"):
        load_table(path, SPEC)


def test_nan_in_categorical_is_a_category(tmp_path):
    df = frame()
    df.loc[:9, "user"] = None
    data = load_table(write_csv(tmp_path, df), dict(SPEC, split={"train": 0.8, "val": 0.1,
                                                                 "test": 0.1}))
    from autodim.data.dataset import random_split_indices

    train_rows = random_split_indices(len(df), (0.8, 0.1, 0.1), 0)[0]
    user = data.train.ids[train_rows < 10, 0]
    assert len(user) > 1 and len(set(user.tolist())) == 1 and user[0] > 0
