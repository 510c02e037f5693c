"""load_data: dispatch on the source, the on-disk cache, and its crash safety."""

from __future__ import annotations

import functools
import gzip
import shutil
import time

import numpy as np
import pytest
import yaml

from autodim.data import CTRData, load_data, sources
from autodim.errors import DataError

SPEC = {"label": "clicked", "fields": ["user", {"name": "tags", "kind": "sequence"}, "item"]}


def write_toy(folder, rows=40):
    """A tiny RecBole dataset: .inter and .item (with a token_seq column)."""
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\trating:float"]
    inter += [f"{i % 7}\t{i % 5}\t{1 + i % 5}" for i in range(rows)]
    (folder / "toy.inter").write_text("\n".join(inter) + "\n")
    item = ["item_id:token\tgenre:token_seq"] + [f"{i}\tg{i % 2} g{i % 3}" for i in range(5)]
    (folder / "toy.item").write_text("\n".join(item) + "\n")
    return folder


def write_csv(tmp_path, name="clicks.csv", rows=40):
    lines = ["user,item,tags,clicked"]
    lines += [f"u{i % 4},i{i % 6},a|b{i % 3},{i % 2}" for i in range(rows)]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def criteo_lines(rows):
    return ["\t".join([str(i % 2), *[str(i % 9)] * 13, *[f"{i % 11:08x}"] * 26])
            for i in range(rows)]


def write(path, lines):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def cache(tmp_path):
    return tmp_path / "cache"


def count_calls(monkeypatch, name):
    """Wrap a builder in ``sources`` so the test can count how often it runs."""
    calls = []
    real = getattr(sources, name)

    @functools.wraps(real)  # keeps the signature load_data checks options against
    def wrapper(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sources, name, wrapper)
    return calls


def test_second_load_reads_the_cache(tmp_path, cache, monkeypatch):
    folder = write_toy(tmp_path / "toy")
    calls = count_calls(monkeypatch, "build_recbole")
    first = load_data(folder, cache_dir=cache, seed=2)
    t = time.perf_counter()
    second = load_data(str(folder), cache_dir=cache, seed=2)
    assert time.perf_counter() - t < 1.0
    assert len(calls) == 1
    assert isinstance(second.train.ids, np.memmap)
    np.testing.assert_array_equal(first.test.ids, second.test.ids)
    assert second.schema.names == first.schema.names
    np.testing.assert_array_equal(second.schema["item_id"].freqs, first.schema["item_id"].freqs)
    entry = next(cache.iterdir())
    assert {"meta.json", "schema.json", "freqs.npz", "encoders.json",
            "train_ids.npy"} <= {p.name for p in entry.iterdir()}
    # Other options or refresh=True rebuild.
    load_data(folder, cache_dir=cache, seed=3)
    load_data(folder, cache_dir=cache, seed=2, refresh=True)
    assert len(calls) == 3


def test_changed_file_misses_the_cache(tmp_path, cache, monkeypatch):
    path = write(tmp_path / "day.tsv", criteo_lines(80))
    calls = count_calls(monkeypatch, "build_criteo")
    load_data(path, cache_dir=cache)
    write(path, criteo_lines(90))
    assert sum(len(s) for s in load_data(path, cache_dir=cache).splits().values()) == 90
    assert len(calls) == 2


def test_cache_without_marker_is_rebuilt(tmp_path, cache, monkeypatch):
    path = write_csv(tmp_path)
    (tmp_path / "clicks.spec.yaml").write_text(yaml.safe_dump(SPEC))
    calls = count_calls(monkeypatch, "build_table")
    load_data(path, cache_dir=cache)
    entry = next(cache.iterdir())
    (entry / "meta.json").unlink()  # as if killed before the marker was written
    (entry / "train_ids.npy").write_bytes(b"garbage")
    data = load_data(path, cache_dir=cache)
    assert len(calls) == 2
    assert (entry / "meta.json").exists()
    assert CTRData.load(entry).train.ids.shape == data.train.ids.shape
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temp folders left


def test_dispatch_by_suffix(tmp_path, cache):
    path = write_csv(tmp_path, name="t.csv")
    with pytest.raises(DataError, match=r"t\.csv: a table needs a field spec.*t\.csv\.yaml"):
        load_data(path, cache_dir=cache)
    (tmp_path / "t.csv.yaml").write_text(yaml.safe_dump(SPEC))
    assert load_data(path, cache_dir=cache).schema.names == ["user", "tags", "item"]
    spec = dict(SPEC, fields=["user"])
    assert load_data(path, cache_dir=cache, spec=spec).schema.names == ["user"]
    gz = write(tmp_path / "c.gz", criteo_lines(40))
    assert load_data(gz, cache_dir=cache).schema.num_fields == 39
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match=r"unrecognised file type '\.json'"):
        load_data(tmp_path / "x.json", cache_dir=cache)
    with pytest.raises(DataError, match=r"folder has no RecBole \.inter file"):
        load_data(tmp_path / "cache", cache_dir=cache)


def test_unknown_source_and_option(tmp_path, cache):
    with pytest.raises(DataError, match=r"'no-such-data'.*Accepted: 'synthetic'"):
        load_data("no-such-data", cache_dir=cache)
    folder = write_toy(tmp_path / "toy")
    with pytest.raises(DataError, match=r"unknown data option 'min_cont'; did you mean "
                                        r"'min_count'"):
        load_data(folder, cache_dir=cache, min_cont=2)


def test_movielens_name_without_files(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTODIM_DATA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"MovieLens-100K not found.*run fetch-ml100k DEST"):
        load_data("ml-100k")
    shutil.copytree(write_toy(tmp_path / "toy"), tmp_path / "home" / "ml-100k")
    data = load_data("movielens-100k", cache_dir=tmp_path / "cache")
    assert data.schema.meta["source"] == "recbole"


def test_synthetic_is_not_cached(tmp_path):
    data = load_data("synthetic:tiny", rows=500, seed=1, cache_dir=tmp_path / "cache")
    assert len(data.train) + len(data.val) + len(data.test) == 500
    assert not (tmp_path / "cache").exists()
