"""Criteo TSV: bucketised integers, missing values, chunked reading, label checks."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from autodim.data.criteo import CAT_FIELDS, INT_FIELDS, bucketize, load_criteo
from autodim.errors import DataError


def criteo_lines(rows=300, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        ints = [("" if rng.random() < 0.2 else str(int(rng.integers(-2, 500))))
                for _ in INT_FIELDS]
        cats = [("" if rng.random() < 0.1 else f"{int(rng.zipf(1.5)) % 50:08x}")
                for _ in CAT_FIELDS]
        lines.append("\t".join([str(int(rng.random() < 0.3)), *ints, *cats]))
    return lines


def write(path, lines):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_bucketize_like_the_kaggle_winners():
    out = bucketize(np.array([-1, 0, 1, 2, 3, 100, np.nan]))
    assert out[:4].tolist() == [-1, 0, 1, 2]
    assert out[4] == math.floor(math.log(3) ** 2) and out[5] == math.floor(math.log(100) ** 2)
    assert np.isnan(out[6])


def test_fields_labels_and_missing_values(tmp_path):
    lines = criteo_lines()
    # Row 0: every integer 100 (bucket 21), every category empty.
    lines[0] = "\t".join(["1", *["100"] * 13, *[""] * 26])
    data = load_criteo(write(tmp_path / "day.tsv", lines), split=(1.0, 0.0, 0.0))
    assert data.schema.names == INT_FIELDS + CAT_FIELDS
    assert all(f.kind == "categorical" for f in data.schema.fields)
    assert len(data.train) == 300 and len(data.val) == 0
    labels = np.array([float(line.split("\t")[0]) for line in lines], dtype=np.float32)
    np.testing.assert_array_equal(data.train.labels, labels)
    row0 = data.train.ids[0]
    assert (row0 > 0).all()  # missing is a category of its own, never OOV in train
    i1 = data.train.ids[:, 0]
    raw = [line.split("\t")[1] for line in lines]
    same_bucket = [r != "" and int(r) > 2 and math.floor(math.log(int(r)) ** 2) == 21
                   for r in raw]
    assert (i1[same_bucket] == row0[0]).all()
    missing_i1 = [r == "" for r in raw]
    assert len(set(i1[missing_i1].tolist())) == 1 and i1[missing_i1][0] != row0[0]
    # Frequency order: freqs of ids 1..n are non-increasing in every field.
    for f in data.schema.fields:
        assert np.all(np.diff(f.freqs[1:]) <= 0)


def test_split_does_not_depend_on_chunking_and_gzip_works(tmp_path):
    lines = criteo_lines(500)
    a = load_criteo(write(tmp_path / "a.txt", lines), seed=4, chunksize=123)
    b = load_criteo(write(tmp_path / "a.txt.gz", lines), seed=4, chunksize=1000)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, name).ids, getattr(b, name).ids)
    assert 350 < len(a.train) < 450 and len(a.val) > 0 and len(a.test) > 0
    c = load_criteo(tmp_path / "a.txt", seed=5)
    assert len(c.train) != len(a.train) or not np.array_equal(c.train.ids, a.train.ids)


def test_min_count_and_max_rows(tmp_path):
    path = write(tmp_path / "a.tsv", criteo_lines(400))
    data = load_criteo(path, min_count=5, max_rows=250, chunksize=64)
    assert sum(len(s) for s in data.splits().values()) == 250
    c_fields = data.schema.fields[13:]
    full = load_criteo(path, max_rows=250)
    assert all(f.vocab_size <= g.vocab_size for f, g in zip(c_fields, full.schema.fields[13:]))
    assert all(f.freqs[1:].min() >= 5 for f in c_fields if f.vocab_size > 1)


def test_bad_label_names_line_and_value(tmp_path):
    lines = criteo_lines(50)
    lines[36] = "2" + lines[36][1:]
    with pytest.raises(DataError, match=r"a\.tsv: line 37: label '2' is not 0 or 1"):
        load_criteo(write(tmp_path / "a.tsv", lines), chunksize=10)
    with pytest.raises(DataError, match=r"line 1: label 'label'"):
        load_criteo(write(tmp_path / "h.tsv", ["label\tI1", *lines[:3]]))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_criteo(tmp_path / "nope.tsv")
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_criteo(tmp_path / "empty.tsv")
