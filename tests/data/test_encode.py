"""Encoders: frequency-ordered ids, OOV handling, missing values, sequences, JSON round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from autodim.data.encode import (
    MISSING,
    CategoricalEncoder,
    FieldSpec,
    SequenceEncoder,
    encode_frame,
    fit_encoders,
    load_encoders,
    save_encoders,
)
from autodim.errors import DataError


def test_ids_follow_descending_frequency_ties_by_string():
    enc = CategoricalEncoder().fit(["b", "a", "d", "a", "b", "c", "a"])
    assert enc.vocab == ["a", "b", "c", "d"]  # a:3, b:2, then c/d tie -> string order
    assert enc.freqs.tolist() == [0, 3, 2, 1, 1]
    assert enc.transform(["a", "b", "c", "d"]).tolist() == [1, 2, 3, 4]
    assert enc.transform(["a"]).dtype == np.int64


def test_min_count_maps_rare_values_to_oov():
    enc = CategoricalEncoder().fit(["a", "a", "b", "b", "c", "d"], min_count=2)
    assert enc.vocab == ["a", "b"]
    assert enc.vocab_size == 3
    assert enc.freqs.tolist() == [2, 2, 2]  # index 0 counts the two dropped occurrences
    assert enc.transform(["c", "d", "a"]).tolist() == [0, 0, 1]


def test_missing_values_are_one_category_of_their_own():
    enc = CategoricalEncoder().fit(pd.Series(["x", None, "", np.nan, "x", "x", "x"],
                                           dtype=object))
    assert enc.vocab == ["x", MISSING]
    ids = enc.transform(pd.Series([None, "", float("nan"), "x", "new"], dtype=object))
    assert ids.tolist() == [2, 2, 2, 1, 0]


def test_int_and_float_columns_give_the_same_tokens():
    enc = CategoricalEncoder().fit(pd.Series([3, 3, 7]))
    # The same column read as float (because of a NaN) must still hit the same ids.
    assert enc.transform(pd.Series([3.0, 7.0, np.nan])).tolist() == [1, 2, 0]


def test_unseen_values_map_to_zero_after_save_and_load(tmp_path):
    train = pd.DataFrame({"u": ["a", "a", "b"], "tags": ["x y", "y", "z x"]})
    specs = [FieldSpec("u"), FieldSpec("tags", "sequence", separator=" ", max_len=3)]
    encoders, schema = fit_encoders(train, specs)
    path = save_encoders(tmp_path, encoders)
    assert path.name == "encoders.json"
    loaded = load_encoders(tmp_path)
    assert list(loaded) == ["u", "tags"]
    new = pd.DataFrame({"u": ["b", "never"], "tags": ["x q", "q q"]})
    ids = encode_frame(new, loaded)
    assert ids.shape == (2, schema.num_columns) == (2, 4)
    assert ids[:, 0].tolist() == [2, 0]
    assert ids[0, 1:].tolist() == [loaded["tags"].transform(["x"])[0, 0], 0, 0]
    assert ids[1, 1:].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(encode_frame(new, encoders), ids)


def test_sequence_padding_truncation_and_freqs():
    train = pd.Series(["a|b|c|d", "a", "b|a", None])
    enc = SequenceEncoder(separator="|", max_len=2).fit(train)
    assert enc.vocab == ["a", "b", MISSING, "c", "d"]
    assert enc.freqs.tolist() == [0, 3, 2, 1, 1, 1]  # counts all train tokens
    out = enc.transform(pd.Series(["a|b|c", "d", "", "zz|a"]))
    assert out.dtype == np.int64
    assert out.tolist() == [[1, 2], [5, 0], [3, 0], [0, 1]]


def test_sequence_default_max_len_is_p95_capped_at_32():
    short = SequenceEncoder().fit(["a b", "a", "a b c", "b"] * 5)
    assert short.max_len == 3
    long = SequenceEncoder().fit([" ".join(str(i) for i in range(50))] * 3)
    assert long.max_len == 32
    assert SequenceEncoder().fit([None, None]).max_len == 1


def test_fit_encoders_builds_the_schema():
    train = pd.DataFrame({"u": ["a", "b", "a"], "g": ["x|y", "y", None]})
    _, schema = fit_encoders(
        train, [{"name": "u"}, {"name": "g", "kind": "sequence", "separator": "|"}],
        meta={"source": "test"})
    assert schema.names == ["u", "g"]
    u, g = schema.fields
    assert (u.kind, u.vocab_size, u.width) == ("categorical", 3, 1)
    assert (g.kind, g.vocab_size, g.width) == ("sequence", 4, 2)
    assert u.freqs.tolist() == [0, 2, 1]
    assert schema.meta == {"source": "test"}


def test_encode_frame_names_missing_columns():
    encoders, _ = fit_encoders(pd.DataFrame({"u": ["a"]}), [FieldSpec("u")])
    with pytest.raises(DataError, match="'u'.*columns found: v"):
        encode_frame(pd.DataFrame({"v": ["a"]}), encoders)


def test_transform_is_vectorised_on_many_rows():
    rng = np.random.default_rng(0)
    values = pd.Series(rng.zipf(1.3, 200_000).astype(str))
    enc = CategoricalEncoder().fit(values)
    ids = enc.transform(values)
    # Frequency order: the most common value gets id 1 and counts are non-increasing.
    assert ids[values.to_numpy() == values.value_counts().index[0]][0] == 1
    assert np.all(np.diff(enc.freqs[1:]) <= 0)
    assert np.bincount(ids, minlength=enc.vocab_size).tolist() == enc.freqs.tolist()
