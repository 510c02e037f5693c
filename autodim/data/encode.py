"""Per-field encoders: raw values -> integer ids, fitted on the training split only.

Ids are assigned ``1..n`` in *descending* train frequency (ties broken by the value's
string form), so id order is frequency order: frequency groups and hashing (``i mod m``)
rely on it. Id 0 is the out-of-vocabulary row: values seen fewer than ``min_count`` times
in train and values never seen. A missing value (NaN, None, empty string) is a category of
its own (token :data:`MISSING`), never an error.

Encoders round-trip through JSON-able dicts (:func:`save_encoders` writes ``encoders.json``
beside a data cache), so :func:`encode_frame` can encode new rows at inference time.

Example:
    >>> enc = CategoricalEncoder().fit(["a", "b", "a", None], min_count=1)
    >>> enc.vocab, enc.transform(["a", "b", "zzz", float("nan")]).tolist()
    (['a', '__missing__', 'b'], [1, 3, 0, 2])
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autodim._io import atomic_write_json
from autodim.data.schema import Field, FieldKind, Schema
from autodim.errors import DataError

__all__ = [
    "MISSING",
    "CategoricalEncoder",
    "Encoder",
    "FieldSpec",
    "SequenceEncoder",
    "TokenCounter",
    "encode_frame",
    "encoder_from_dict",
    "factorize",
    "fit_encoders",
    "load_encoders",
    "save_encoders",
    "to_tokens",
]

MISSING = "__missing__"
ENCODERS_FILE = "encoders.json"


def to_tokens(values: Any) -> pd.Series:
    """Canonical string tokens of a column (positional index 0..N-1).

    Missing values become :data:`MISSING`; integral floats print as integers so that a
    column read as ``float`` (because it has NaNs) and one read as ``int`` give the same
    tokens. Encoders call this on the *distinct* values only (see :func:`factorize`).
    """
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    s = s.reset_index(drop=True)
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        out = pd.Series(np.full(len(v), MISSING, dtype=object))
        integral = np.isfinite(v) & (v == np.floor(v)) & (np.abs(v) < 2**62)
        out[integral] = v[integral].astype(np.int64).astype(str)
        other = ~integral & ~np.isnan(v)
        if other.any():
            out[other] = v[other].astype(str)
        return out
    arr = s.to_numpy(dtype=object, na_value=None, copy=True)
    missing = pd.isna(arr)
    arr[missing] = ""
    if pd.api.types.infer_dtype(arr, skipna=False) != "string":
        arr = arr.astype(str).astype(object)  # ints, bools, mixed objects: their str()
    missing |= arr == ""
    arr[missing] = MISSING
    return pd.Series(arr, dtype=object)


def factorize(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, tokens)``: ``int64[N]`` codes into the canonical tokens of distinct values.

    Work per row is one hash in C; everything string-related runs on the distinct values
    only. Two distinct raw values may share a token (``None`` and ``""``).
    """
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    codes, uniques = pd.factorize(s, use_na_sentinel=False)
    tokens = to_tokens(pd.Series(uniques, dtype=s.dtype)).to_numpy(dtype=object)
    return codes.astype(np.int64, copy=False), tokens


def _counts(codes: np.ndarray, tokens: np.ndarray,
            weights: np.ndarray | None = None) -> pd.Series:
    """``token -> count`` for coded values (duplicate tokens merged)."""
    counts = np.bincount(codes, weights=weights, minlength=len(tokens)).astype(np.int64)
    series = pd.Series(counts, index=pd.Index(tokens, dtype=object))
    if series.index.has_duplicates:
        series = series.groupby(level=0, sort=False).sum()
    return series


class TokenCounter:
    """Token counts accumulated chunk by chunk (for loaders that stream their input).

    Chunk counts are merged into the total only once they outnumber it, so each count is
    re-hashed O(log chunks) times rather than once per chunk.
    """

    def __init__(self) -> None:
        self._total = pd.Series(dtype=np.int64, index=pd.Index([], dtype=object))
        self._pending: list[pd.Series] = []
        self._n_pending = 0

    def add(self, values: Any) -> None:
        """Count one chunk of raw values."""
        part = _counts(*factorize(values))
        self._pending.append(part)
        self._n_pending += len(part)
        if self._n_pending > max(len(self._total), 1 << 18):
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            both = pd.concat([self._total, *self._pending])
            self._total = both.groupby(level=0, sort=False).sum().astype(np.int64)
            self._pending, self._n_pending = [], 0

    def counts(self) -> pd.Series:
        """``token -> count`` over everything added."""
        self._merge()
        return self._total


def _vocab_from_counts(counts: pd.Series, min_count: int) -> tuple[list[str], np.ndarray]:
    """Frequency-ordered vocabulary (count >= min_count) and freqs (index 0 = OOV count)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if min_count < 1:
        raise DataError(f"min_count must be >= 1, got {min_count}")
    table = pa.table({"token": pa.array(counts.index.astype(str).to_numpy(dtype=object),
                                        type=pa.large_string()),
                      "count": pa.array(counts.to_numpy(dtype=np.int64))})
    # Arrow sorts strings by UTF-8 bytes, i.e. by code point, as Python's str order does;
    # and in C++, where sorting millions of Python strings would take minutes.
    order = pc.sort_indices(table, sort_keys=[("count", "descending"),
                                              ("token", "ascending")]).to_numpy()
    count = table["count"].to_numpy()[order]
    keep = count >= min_count
    tokens = table["token"].take(pa.array(order[keep])).to_pylist()
    freqs = np.concatenate([[count[~keep].sum()], count[keep]]).astype(np.int64)
    return tokens, freqs


class CategoricalEncoder:
    """One id per row.

    Args:
        min_count: Values seen fewer times in train map to id 0.

    Attributes:
        vocab: Tokens of ids ``1..n`` (frequency order); ``None`` until fitted.
        freqs: ``int64[vocab_size]`` train counts; ``freqs[0]`` counts OOV occurrences.
    """

    kind: FieldKind = "categorical"

    def __init__(self, *, min_count: int = 1) -> None:
        self.min_count = min_count
        self.vocab: list[str] | None = None
        self.freqs: np.ndarray | None = None
        self._index: pd.Index | None = None

    # -- fitting -----------------------------------------------------------------------
    def fit(self, values: Any, min_count: int | None = None) -> CategoricalEncoder:
        """Fit on the training values; ``min_count`` overrides the constructor's."""
        return self.fit_counts(_counts(*factorize(values)), min_count)

    def fit_counts(self, counts: pd.Series, min_count: int | None = None
                   ) -> CategoricalEncoder:
        """Fit from precomputed ``token -> count`` (see :class:`TokenCounter`)."""
        if min_count is not None:
            self.min_count = int(min_count)
        self._set(*_vocab_from_counts(counts, self.min_count))
        return self

    def _set(self, vocab: list[str], freqs: np.ndarray) -> None:
        self.vocab, self.freqs = vocab, np.asarray(freqs, dtype=np.int64)
        self._index = pd.Index(vocab, dtype=object)

    # -- use ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Embedding rows, row 0 (OOV) included."""
        return len(self._fitted()) + 1

    @property
    def width(self) -> int:
        return 1

    def _fitted(self) -> list[str]:
        if self.vocab is None:
            raise DataError("encoder used before fit()")
        return self.vocab

    def encode_tokens(self, tokens: Any) -> np.ndarray:
        """Ids of canonical tokens (see :func:`to_tokens`); unknown -> 0."""
        self._fitted()
        assert self._index is not None
        # get_indexer is one hash lookup per value in C; -1 (unknown) + 1 = OOV id 0.
        return self._index.get_indexer(np.asarray(tokens, dtype=object)).astype(np.int64) + 1

    def transform(self, values: Any) -> np.ndarray:
        """``int64[N]`` ids of raw values."""
        codes, tokens = factorize(values)
        return self.encode_tokens(tokens)[codes]

    def to_field(self, name: str) -> Field:
        return Field(name, "categorical", self.vocab_size, 1, self.freqs)

    # -- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "min_count": self.min_count, "vocab": self._fitted(),
                "freqs": np.asarray(self.freqs).tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CategoricalEncoder:
        enc = cls(min_count=int(d.get("min_count", 1)))
        enc._set(list(d["vocab"]), np.asarray(d["freqs"], dtype=np.int64))
        return enc


class SequenceEncoder:
    """Several ids per row: a cell split on ``separator``, padded/truncated to ``max_len``.

    Tokens share one frequency-ordered vocabulary; 0 is both padding and OOV. A missing or
    empty cell is the one-token sequence ``[MISSING]`` (a category of its own), so no row is
    all padding. Cells are split once per *distinct* cell, then gathered per row.

    Args:
        separator: Token separator (RecBole ``token_seq`` uses a space).
        max_len: Padded width; ``None`` = 95th percentile of train lengths, capped at 32.
        min_count: Tokens seen fewer times in train map to 0.
    """

    kind: FieldKind = "sequence"
    MAX_DEFAULT_LEN = 32

    def __init__(self, *, separator: str = " ", max_len: int | None = None,
                 min_count: int = 1) -> None:
        self.separator = separator
        self.max_len = max_len
        self.min_count = min_count
        self._cat = CategoricalEncoder(min_count=min_count)

    @property
    def vocab(self) -> list[str] | None:
        return self._cat.vocab

    @property
    def freqs(self) -> np.ndarray | None:
        return self._cat.freqs

    @property
    def vocab_size(self) -> int:
        return self._cat.vocab_size

    @property
    def width(self) -> int:
        if self.max_len is None:
            raise DataError("encoder used before fit()")
        return self.max_len

    def _split(self, cells: np.ndarray) -> pd.Series:
        """Tokens of each distinct cell, indexed by the cell's position, in order."""
        n = len(cells)
        # Missing cells become "" (-> the missing token below) rather than being split:
        # a separator such as "_" would otherwise cut MISSING itself into tokens.
        cells = np.where(cells == MISSING, "", cells).astype(object)
        parts = pd.Series(cells, dtype=object).str.split(self.separator, regex=False)
        tokens = parts.explode().astype(str).str.strip()
        tokens = tokens[tokens != ""]
        # A cell of only separators has no tokens left: give it the missing token.
        empty = np.setdiff1d(np.arange(n), tokens.index.unique().to_numpy())
        if len(empty):
            tokens = pd.concat([tokens, pd.Series(MISSING, index=empty, dtype=object)])
            tokens = tokens.sort_index(kind="stable")
        return tokens

    def fit(self, values: Any, min_count: int | None = None) -> SequenceEncoder:
        """Fit vocabulary, frequencies (over all train tokens) and default ``max_len``."""
        if min_count is not None:
            self.min_count = int(min_count)
        codes, cells = factorize(values)
        rows_per_cell = np.bincount(codes, minlength=len(cells))
        tokens = self._split(cells)
        cell_of_token = tokens.index.to_numpy(dtype=np.int64)
        if self.max_len is None:
            cell_len = np.bincount(cell_of_token, minlength=len(cells))
            p95 = float(np.percentile(cell_len[codes], 95)) if len(codes) else 1.0
            self.max_len = int(min(self.MAX_DEFAULT_LEN, max(1, int(np.ceil(p95)))))
        if self.max_len < 1:
            raise DataError(f"max_len must be >= 1, got {self.max_len}")
        tok_codes, tok_uniques = pd.factorize(tokens.to_numpy(dtype=object))
        counts = _counts(tok_codes.astype(np.int64), np.asarray(tok_uniques, dtype=object),
                         weights=rows_per_cell[cell_of_token])
        self._cat.fit_counts(counts, self.min_count)
        return self

    def transform(self, values: Any) -> np.ndarray:
        """``int64[N, max_len]`` ids, left-aligned, 0-padded."""
        width = self.width
        codes, cells = factorize(values)
        tokens = self._split(cells)
        tok_codes, tok_uniques = pd.factorize(tokens.to_numpy(dtype=object))
        ids = self._cat.encode_tokens(tok_uniques)[tok_codes]
        cell = tokens.index.to_numpy(dtype=np.int64)
        # Position of each token within its cell (tokens are grouped by cell, in order).
        pos = tokens.groupby(level=0, sort=False).cumcount().to_numpy()
        keep = pos < width
        per_cell = np.zeros((len(cells), width), dtype=np.int64)
        per_cell[cell[keep], pos[keep]] = ids[keep]
        return per_cell[codes]

    def to_field(self, name: str) -> Field:
        return Field(name, "sequence", self.vocab_size, self.width, self.freqs)

    def to_dict(self) -> dict[str, Any]:
        d = self._cat.to_dict()
        d.update(kind=self.kind, separator=self.separator, max_len=self.width)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SequenceEncoder:
        enc = cls(separator=d.get("separator", " "), max_len=int(d["max_len"]),
                  min_count=int(d.get("min_count", 1)))
        enc._cat = CategoricalEncoder.from_dict(d)
        return enc


Encoder = CategoricalEncoder | SequenceEncoder


def encoder_from_dict(d: Mapping[str, Any]) -> Encoder:
    """Rebuild an encoder saved with ``to_dict``."""
    kind = d.get("kind")
    if kind == "categorical":
        return CategoricalEncoder.from_dict(d)
    if kind == "sequence":
        return SequenceEncoder.from_dict(d)
    raise DataError(f"unknown encoder kind {kind!r}")


@dataclass
class FieldSpec:
    """How to encode one column.

    Attributes:
        name: Column name (and field name).
        kind: ``"categorical"`` or ``"sequence"``.
        min_count: Values seen fewer times in train map to id 0.
        separator: Token separator (sequence fields only).
        max_len: Padded length (sequence fields only; ``None`` = automatic).
    """

    name: str
    kind: FieldKind = "categorical"
    min_count: int = 1
    separator: str = " "
    max_len: int | None = None

    def make_encoder(self) -> Encoder:
        if self.kind == "categorical":
            return CategoricalEncoder(min_count=self.min_count)
        if self.kind == "sequence":
            return SequenceEncoder(separator=self.separator, max_len=self.max_len,
                                   min_count=self.min_count)
        raise DataError(f"field {self.name!r}: unknown kind {self.kind!r} "
                        f"(use 'categorical' or 'sequence')")


def fit_encoders(train_df: pd.DataFrame,
                 field_specs: Iterable[FieldSpec | Mapping[str, Any]],
                 *, label: str = "label", meta: Mapping[str, Any] | None = None,
                 ) -> tuple[dict[str, Encoder], Schema]:
    """Fit one encoder per field on the training rows and build the :class:`Schema`.

    Args:
        train_df: Training rows only (fitting on val/test would leak).
        field_specs: :class:`FieldSpec` objects or dicts with the same keys.
        label: Label name recorded in the schema.
        meta: Schema metadata (source, settings).

    Returns:
        ``(encoders by field name, in field order; schema with vocab sizes and freqs)``.
    """
    encoders: dict[str, Encoder] = {}
    for spec in field_specs:
        spec = spec if isinstance(spec, FieldSpec) else FieldSpec(**spec)
        if spec.name not in train_df.columns:
            raise DataError(f"field {spec.name!r} is not a column; columns: "
                            f"{', '.join(map(str, train_df.columns))}")
        encoders[spec.name] = spec.make_encoder().fit(train_df[spec.name])
    schema = Schema([enc.to_field(name) for name, enc in encoders.items()], label=label,
                    meta=dict(meta or {}))
    return encoders, schema


def encode_frame(df: pd.DataFrame, encoders: Mapping[str, Encoder],
                 dtype: Any = np.int64) -> np.ndarray:
    """Encode a frame's columns into the id matrix ``[N, sum of widths]`` (schema order).

    Unseen values map to 0, so this is also the inference-time path.
    """
    missing = [name for name in encoders if name not in df.columns]
    if missing:
        raise DataError(f"columns {missing} are missing; columns found: "
                        f"{', '.join(map(str, df.columns))}")
    width = sum(enc.width for enc in encoders.values())
    out = np.empty((len(df), width), dtype=dtype)
    col = 0
    for name, enc in encoders.items():
        ids = enc.transform(df[name])
        out[:, col:col + enc.width] = ids.reshape(len(df), enc.width)
        col += enc.width
    return out


def save_encoders(folder: str | Path, encoders: Mapping[str, Encoder]) -> Path:
    """Write ``encoders.json`` (field order preserved) atomically; returns its path."""
    path = Path(folder) / ENCODERS_FILE
    atomic_write_json(path, {"version": 1,
                             "fields": [{"name": n, **e.to_dict()} for n, e in encoders.items()]})
    return path


def load_encoders(folder_or_file: str | Path) -> dict[str, Encoder]:
    """Read ``encoders.json`` (a folder holding it, or the file itself)."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / ENCODERS_FILE
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return {f["name"]: encoder_from_dict(f) for f in d["fields"]}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed encoders file ({exc!r})") from None

