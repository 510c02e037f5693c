"""Bad data inputs: each is a one-line DataError naming the file/field, or a rebuilt cache."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pandas as pd
import pytest

from autodim.data import load_data
from autodim.data.tabular import load_table
from autodim.errors import DataError


def _csv(tmp_path, n=60, name="clicks.csv"):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user": rng.integers(0, 8, n).astype(str),
                       "item": rng.integers(0, 5, n).astype(str),
                       "clicked": rng.integers(0, 2, n)})
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


SPEC = {"label": "clicked", "fields": ["user", "item"]}


@pytest.mark.parametrize("change, match", [
    ({"split": {"train": float("nan")}}, "split train must be a number"),
    ({"split": {"seed": "abc"}}, "split seed must be an integer"),
    ({"split": {"train": 0.9, "val": 0, "test": 0.1}}, "split val must be a number > 0"),
    ({"label_rule": {"column": "clicked", "threshold": "high"}}, "threshold must be a number"),
    ({"delimiter": ""}, "delimiter must be a non-empty string"),
    ({"fields": [{"name": "user", "kind": "sequence", "separator": ""}]},
     "separator must be a non-empty string"),
    ({"fields": [{"name": "user", "kind": "sequence", "max_len": 1e9}]},
     "max_len must be an integer >= 1 and <= 4096"),
    ({"fields": [{"name": "user", "min_count": True}]}, "min_count must be an integer"),
])
def test_spec_values_of_the_wrong_type_or_range(tmp_path, change, match):
    spec = dict(SPEC, **change)
    if "label_rule" in change:
        spec.pop("label")
    with pytest.raises(DataError, match=match) as err:
        load_table(_csv(tmp_path), spec)
    assert "\n" not in str(err.value)


def _cache_entry(tmp_path):
    path = _csv(tmp_path, 200)
    cache = tmp_path / "cache"
    data = load_data(path, spec=SPEC, cache_dir=cache)
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return path, cache, entry, data


@pytest.mark.parametrize("damage", ["label7", "id_range", "id_negative", "freqs_truncated",
                                    "freqs_garbage", "labels_truncated"])
def test_corrupt_cache_entries_are_rebuilt(tmp_path, damage):
    path, cache, entry, good = _cache_entry(tmp_path)
    if damage.startswith("label"):
        if damage == "label7":
            lab = np.load(entry / "train_labels.npy")
            lab[3] = 7
            np.save(entry / "train_labels.npy", lab)
        else:
            raw = (entry / "train_labels.npy").read_bytes()
            (entry / "train_labels.npy").write_bytes(raw[:60])
    elif damage.startswith("id"):
        ids = np.load(entry / "train_ids.npy")
        ids[5, 1] = 10_000 if damage == "id_range" else -3
        np.save(entry / "train_ids.npy", ids)
    else:
        raw = (entry / "freqs.npz").read_bytes()
        (entry / "freqs.npz").write_bytes(raw[: len(raw) // 2] if damage == "freqs_truncated"
                                          else b"not a zip file at all")
    with pytest.warns(UserWarning, match="rebuilding"):
        again = load_data(path, spec=SPEC, cache_dir=cache)
    np.testing.assert_array_equal(np.asarray(again.train.ids), np.asarray(good.train.ids))
    np.testing.assert_array_equal(again.train.labels, good.train.labels)
    assert all(f.freqs is not None for f in again.schema.fields)


def test_relative_and_absolute_paths_share_one_cache_entry(tmp_path, monkeypatch):
    path = _csv(tmp_path)
    spec = tmp_path / "clicks.spec.yaml"
    spec.write_text("label: clicked\nfields: [user, item]\n")
    cache = tmp_path / "cache"
    load_data(path, spec=spec, cache_dir=cache)
    monkeypatch.chdir(tmp_path)
    load_data("clicks.csv", spec="clicks.spec.yaml", cache_dir=cache)
    load_data(os.path.join("..", tmp_path.name, "clicks.csv"), cache_dir=cache)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1


def test_truncated_gzip_is_one_line(tmp_path):
    path = _csv(tmp_path, 5000)
    gz = tmp_path / "clicks.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes())[:-200])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        load_table(gz, SPEC)
    assert str(gz) in str(err.value)


def test_single_class_labels_are_an_error(tmp_path):
    path = _csv(tmp_path)
    df = pd.read_csv(path)
    df["clicked"] = 0
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match="every training label is 0") as err:
        load_table(path, SPEC)
    assert str(path) in str(err.value)


def test_field_whose_every_id_is_oov(tmp_path):
    spec = {"label": "clicked", "fields": ["user", {"name": "item", "min_count": 10_000}]}
    with pytest.raises(DataError, match="field 'item': every training value is out of vocab"):
        load_table(_csv(tmp_path), spec)


def test_label_used_as_a_field(tmp_path):
    with pytest.raises(DataError, match="field 'clicked' is the label column"):
        load_table(_csv(tmp_path), {"label": "clicked", "fields": ["user", "clicked"]})


@pytest.mark.parametrize("bad_line, match", [
    ("3,4", "line 5 has 2 cells, the header has 3"),
    ("3,4,1,9", "line 5 has 4 cells, the header has 3"),
])
def test_ragged_csv_row(tmp_path, bad_line, match):
    path = _csv(tmp_path)
    lines = path.read_text().splitlines()
    lines[4] = bad_line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=match):
        load_table(path, SPEC)


def test_duplicate_header(tmp_path):
    path = _csv(tmp_path)
    lines = path.read_text().splitlines()
    lines[0] = "user,item,user,clicked"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="column 'user' appears twice"):
        load_table(path, SPEC)


def _criteo_lines(n=300):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ints = [str(rng.integers(0, 50)) if rng.random() > 0.2 else "" for _ in range(13)]
        cats = [f"{rng.integers(0, 20):08x}" if rng.random() > 0.2 else "" for _ in range(26)]
        out.append("\t".join([str(rng.integers(0, 2)), *ints, *cats]))
    return out


def test_short_criteo_row(tmp_path):
    from autodim.data.criteo import load_criteo

    lines = _criteo_lines()
    path = tmp_path / "day.txt"
    path.write_text("\n".join(lines) + "\n")
    load_criteo(path)  # well-formed: fine (empty cells included)
    lines[6] = "\t".join(lines[6].split("\t")[:-3])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 7 has 37 tab-separated cells, expected 40"):
        load_criteo(path)


def test_truncated_criteo_gzip(tmp_path):
    from autodim.data.criteo import load_criteo

    gz = tmp_path / "day.gz"
    gz.write_bytes(gzip.compress(("\n".join(_criteo_lines(3000)) + "\n").encode())[:-300])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_criteo(gz)


def test_parquet_list_and_struct_columns(tmp_path):
    n = 60
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"user": rng.integers(0, 8, n).astype(str),
                       "tags": [[f"t{k}" for k in range(i % 3 + 1)] for i in range(n)],
                       "where": [{"city": "a", "zip": i % 4} for i in range(n)],
                       "clicked": rng.integers(0, 2, n)})
    path = tmp_path / "clicks.parquet"
    df.to_parquet(path)
    # a list column is a sequence field: the same ids as the "|"-joined CSV cell
    spec = {"label": "clicked", "fields": ["user", {"name": "tags", "kind": "sequence"}],
            "split": {"train": 0.8, "val": 0.1, "test": 0.1}}
    data = load_table(path, spec)
    csv = tmp_path / "clicks.csv"
    df.assign(tags=df["tags"].map("|".join)).drop(columns="where").to_csv(csv, index=False)
    np.testing.assert_array_equal(np.asarray(data.train.ids),
                                  np.asarray(load_table(csv, spec).train.ids))
    with pytest.raises(DataError, match="field 'tags' is a Parquet list.*kind: sequence"):
        load_table(path, {"label": "clicked", "fields": ["user", "tags"]})
    with pytest.raises(DataError, match="field 'where' is a Parquet struct.*flatten"):
        load_table(path, {"label": "clicked", "fields": ["user", "where"]})
