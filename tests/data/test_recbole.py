"""RecBole atomic files: typed headers, joins, token_seq fields, labels from ratings."""

from __future__ import annotations

import os

import numpy as np
import pytest

from autodim.data.recbole import load_recbole
from autodim.errors import DataError


def write_toy(folder, name="toy", *, rows=60, label_col=False):
    """A small dataset in RecBole's format: .inter (+ optional label), .user, .item."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    head = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    head += "\tlabel:float" if label_col else ""
    lines = [head]
    for i in range(rows):
        u, it, r = rng.integers(1, 6), rng.integers(1, 9), rng.integers(1, 6)
        extra = f"\t{int(r >= 3)}" if label_col else ""
        lines.append(f"{u}\t{it}\t{r}\t{880000000 + i}{extra}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    users = ["user_id:token\tage:token\tgender:token"]
    users += [f"{u}\t{20 + u}\t{'MF'[u % 2]}" for u in range(1, 5)]  # user 5 has no row
    (folder / f"{name}.user").write_text("\n".join(users) + "\n")
    items = ["item_id:token\ttitle:token_seq\tyear:token\tclass:token_seq"]
    genres = ["Action Comedy", "Drama", "", "Action", "Comedy Drama Horror", "Drama",
              "Action", "Horror"]
    items += [f"{i}\tMovie \"{i}\"\t{1990 + i % 3}\t{genres[i - 1]}" for i in range(1, 9)]
    (folder / f"{name}.item").write_text("\n".join(items) + "\n")
    return folder


def test_typed_headers_join_and_fields(tmp_path):
    data = load_recbole(write_toy(tmp_path / "toy"), drop=["title"], rename={"class": "genres"})
    assert data.schema.names == ["user_id", "item_id", "age", "gender", "year", "genres"]
    genres = data.schema["genres"]
    assert genres.kind == "sequence" and genres.width >= 1
    assert data.schema["gender"].kind == "categorical"
    # Genres vocabulary: 4 genres + the missing token (an empty cell) + OOV row 0.
    assert genres.vocab_size <= 6
    assert sum(len(s) for s in data.splits().values()) == 60
    assert data.train.ids.shape[1] == data.schema.num_columns
    assert data.schema.meta["source"] == "recbole"
    assert data.schema.meta["label"] == "rating >= 4.0"


def test_label_from_rating_threshold(tmp_path):
    folder = write_toy(tmp_path / "toy")
    data = load_recbole(folder, label_threshold=3.0, split=(1.0, 0.0, 0.0))
    ratings = np.loadtxt(folder / "toy.inter", skiprows=1, usecols=2)
    assert len(data.train) == 60
    assert data.train.labels.dtype == np.float32
    # The train split keeps file order (sorted indices).
    np.testing.assert_array_equal(data.train.labels, (ratings >= 3).astype(np.float32))


def test_title_is_a_sequence_field_unless_dropped(tmp_path):
    data = load_recbole(write_toy(tmp_path / "toy"))
    assert "title" in data.schema.names and "class" in data.schema.names


def test_explicit_label_column_wins(tmp_path):
    folder = write_toy(tmp_path / "toy", label_col=True)
    data = load_recbole(folder, split=(1.0, 0.0, 0.0))
    assert data.schema.meta["label"] == "label column"
    assert "label" not in data.schema.names and "rating" not in data.schema.names
    ratings = np.loadtxt(folder / "toy.inter", skiprows=1, usecols=2)
    np.testing.assert_array_equal(data.train.labels, (ratings >= 3).astype(np.float32))


def test_user_without_profile_gets_missing_not_error(tmp_path):
    data = load_recbole(write_toy(tmp_path / "toy", rows=200), split=(1.0, 0.0, 0.0))
    age = data.train.ids[:, data.schema.index("age")]
    assert (age > 0).all()  # user 5's missing age is a category of its own, not OOV


def test_bad_header_and_bad_label_are_named(tmp_path):
    folder = write_toy(tmp_path / "toy")
    (folder / "toy.user").write_text("user_id\tage:token\n1\t20\n")
    with pytest.raises(DataError, match=r"toy\.user.*'user_id'"):
        load_recbole(folder)
    folder = write_toy(tmp_path / "toy2", label_col=True)
    text = (folder / "toy.inter").read_text().splitlines()
    text[3] = text[3].rsplit("\t", 1)[0] + "\t2"
    (folder / "toy.inter").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"toy\.inter: line 4: label 2\.0"):
        load_recbole(folder)


def test_folder_without_inter_file(tmp_path):
    with pytest.raises(DataError, match="exactly one RecBole .inter"):
        load_recbole(tmp_path)


def test_split_is_seeded(tmp_path):
    folder = write_toy(tmp_path / "toy")
    a, b = load_recbole(folder, seed=3), load_recbole(folder, seed=3)
    np.testing.assert_array_equal(a.val.ids, b.val.ids)
    assert (len(a.train), len(a.val), len(a.test)) == (48, 6, 6)


@pytest.mark.realdata
def test_movielens_100k():
    folder = os.environ.get("AUTODIM_ML100K")
    if not folder:
        pytest.skip("AUTODIM_ML100K is not set (run fetch-ml100k DEST and point it there)")
    data = load_recbole(folder)
    assert data.schema.names == ["user_id", "item_id", "age", "gender", "occupation",
                                 "zip_code", "release_year", "genres"]
    assert data.schema["genres"].kind == "sequence"
    assert sum(len(s) for s in data.splits().values()) == 100_000
    assert 0.5 < data.meta["positive_rate"] < 0.6
    assert data.schema["gender"].vocab_size == 3
