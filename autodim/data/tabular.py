"""CSV / Parquet files described by a YAML field spec (close to FuxiCTR's ``feature_cols``).

A spec (a YAML file or the same dict)::

    label: clicked            # 0/1 column; or give label_rule instead
    label_rule: {column: rating, threshold: 4}     # label = rating >= 4
    fields:
      - {name: user, kind: categorical, min_count: 2}
      - {name: tags, kind: sequence, separator: "|", max_len: 8}
      - item                  # shorthand for {name: item}
    split: {train: 0.8, val: 0.1, test: 0.1, seed: 0}
    # or: files: {train: a.csv, val: b.csv, test: c.csv}  (relative to the data file's folder)
    delimiter: ","

Every problem with the input is a :class:`~autodim.errors.DataError` naming the file and the
field, column or value at fault.

Example:
    >>> data = load_table("clicks.csv", "clicks.spec.yaml")  # doctest: +SKIP
"""

from __future__ import annotations

import codecs
import difflib
import gzip
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from autodim.data.dataset import CTRData, Split, check_sanity, random_split_indices
from autodim.data.encode import Encoder, FieldSpec, encode_frame, fit_encoders
from autodim.errors import DataError

__all__ = ["build_table", "load_table", "read_spec", "table_files"]

SPEC_KEYS = ("label", "label_rule", "fields", "split", "files", "delimiter")
FIELD_KEYS = ("name", "kind", "min_count", "separator", "max_len")
SPLIT_KEYS = ("train", "val", "test", "seed")
FILES_KEYS = ("train", "val", "test")
RULE_KEYS = ("column", "threshold")
KINDS = ("categorical", "sequence")
DEFAULT_SEPARATOR = "|"  # "Action|Comedy" is the usual multi-value cell in CSV files
MAX_LEN_LIMIT = 4096  # ids kept per sequence cell: the id matrix has max_len columns per row


def _number(value: Any, where: str, *, integer: bool = False, low: float | None = None,
            high: float | None = None, low_open: bool = False) -> int | float:
    """A spec value checked for type and range: bools, text and NaN are refused."""
    kind = "an integer" if integer else "a number"
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        value = float(value)
        ok = bool(np.isfinite(value)) and (not integer or value == int(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        rng = ""
        if low is not None or high is not None:
            lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
            hi = "" if high is None else f"<= {high:g}"
            rng = " " + " and ".join(x for x in (lo, hi) if x)
        raise DataError(f"{where} must be {kind}{rng}, got {value!r}")
    return int(value) if integer else value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or value == "":
        raise DataError(f"{where} must be a non-empty string, got {value!r}")
    return value
PARQUET_SUFFIXES = (".parquet", ".pq")


# -- the spec ---------------------------------------------------------------------------
def _check_keys(d: Any, valid: tuple[str, ...], where: str) -> None:
    if not isinstance(d, Mapping):
        raise DataError(f"{where}: expected a mapping, got {type(d).__name__}")
    for key in d:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"{where}: unknown key {key!r}{hint} (valid keys: "
                            f"{', '.join(valid)})")


def read_spec(spec: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Parse and validate a spec; returns ``(normalised spec, where it came from)``.

    The normalised spec has ``fields`` as :class:`FieldSpec` objects, ``split`` as
    ``{"fractions": (tr, va, te), "seed": s}`` and ``files`` as a dict or ``None``.
    """
    if isinstance(spec, Mapping):
        raw, where = dict(spec), "spec"
    else:
        where = str(spec)
        p = Path(spec).expanduser()
        if not p.is_file():
            raise DataError(f"{where}: spec file not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{where}: not valid UTF-8 at byte offset {exc.start}") from None
        except yaml.YAMLError as exc:  # one line: the problem and where, not the excerpt
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise DataError(f"{where}: not valid YAML{at} ({getattr(exc, 'problem', None) or exc})"
                            ) from None
        if raw is None:
            raise DataError(f"{where}: empty spec file")
    _check_keys(raw, SPEC_KEYS, where)

    if "label" not in raw and "label_rule" not in raw:
        raise DataError(f"{where}: give 'label' (a 0/1 column) or 'label_rule'")
    rule = raw.get("label_rule")
    if rule is not None:
        _check_keys(rule, RULE_KEYS, f"{where}: label_rule")
        if "column" not in rule or "threshold" not in rule:
            raise DataError(f"{where}: label_rule needs 'column' and 'threshold'")
        _number(rule["threshold"], f"{where}: label_rule threshold")
    label = str(raw.get("label", "label"))

    fields_raw = raw.get("fields")
    if not isinstance(fields_raw, list) or not fields_raw:
        raise DataError(f"{where}: 'fields' must be a non-empty list")
    fields = []
    for i, f in enumerate(fields_raw):
        if isinstance(f, str):
            f = {"name": f}
        _check_keys(f, FIELD_KEYS, f"{where}: fields[{i}]")
        if "name" not in f:
            raise DataError(f"{where}: fields[{i}] has no 'name'")
        kind = f.get("kind", "categorical")
        if kind not in KINDS:
            close = difflib.get_close_matches(str(kind), KINDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"{where}: field {f['name']!r}: unknown kind {kind!r}{hint}")
        at = f"{where}: field {f['name']!r}:"
        name = _text(f["name"], f"{where}: fields[{i}] name") if not isinstance(
            f["name"], (int, float)) or isinstance(f["name"], bool) else str(f["name"])
        fields.append(FieldSpec(
            name, kind, min_count=_number(f.get("min_count", 1), f"{at} min_count",
                                          integer=True, low=1),
            separator=_text(f.get("separator", DEFAULT_SEPARATOR), f"{at} separator"),
            max_len=None if f.get("max_len") is None else _number(
                f["max_len"], f"{at} max_len", integer=True, low=1, high=MAX_LEN_LIMIT)))

    label_col = str(rule["column"]) if rule is not None else label
    for f in fields:
        if f.name == label_col:
            raise DataError(f"{where}: field {f.name!r} is the label column; a model fed its "
                            f"own label learns nothing useful")
    if len({f.name for f in fields}) != len(fields):
        dup = next(f.name for i, f in enumerate(fields) if f.name in
                   {g.name for g in fields[:i]})
        raise DataError(f"{where}: field {dup!r} is listed twice")
    split = raw.get("split") or {}
    _check_keys(split, SPLIT_KEYS, f"{where}: split")
    # Every split must get rows: an empty val (or test) split has no AUC to stop on or report.
    fractions = tuple(_number(split.get(k, d), f"{where}: split {k}", low=0, high=1,
                              low_open=True) for k, d in zip(FILES_KEYS, (0.8, 0.1, 0.1)))
    if abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"{where}: split fractions {fractions} must sum to 1")
    seed = _number(split.get("seed", 0), f"{where}: split seed", integer=True, low=0)
    files = raw.get("files")
    if files is not None:
        _check_keys(files, FILES_KEYS, f"{where}: files")
        absent = [k for k in FILES_KEYS if k not in files]
        if absent:
            raise DataError(f"{where}: files needs train, val and test; missing {absent}")
    return {"label": label, "label_rule": rule, "fields": fields,
            "split": {"fractions": fractions, "seed": seed},
            "files": None if files is None else {k: str(files[k]) for k in FILES_KEYS},
            "delimiter": _text(raw.get("delimiter", ","), f"{where}: delimiter")}, where


def table_files(path: str | Path | None, spec: Mapping[str, Any]) -> dict[str, Path]:
    """The data files a (normalised) spec reads: ``{"all": path}`` or train/val/test."""
    if spec["files"] is None:
        if path is None:
            raise DataError("load_table: no data file given")
        return {"all": Path(path).expanduser().resolve()}
    base = Path.cwd() if path is None else Path(path).expanduser().resolve()
    base = base if base.is_dir() else base.parent
    return {k: (base / v).resolve() for k, v in spec["files"].items()}


# -- reading ----------------------------------------------------------------------------
def _first_bad_utf8(path: Path) -> tuple[int, int] | None:
    """``(byte offset, line)`` of the first invalid UTF-8 byte (decompressed for .gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with opener(path, "rb") as fh:
        while block := fh.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                # exc.start is relative to the decoder's pending bytes + this block.
                pending = len(exc.object) - len(block)
                bad = offset - pending + exc.start
                return bad, line + block[:max(0, exc.start - pending)].count(b"\n")
            offset += len(block)
            line += block.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return offset, line
    return None


def _short(text: str, limit: int = 60) -> str:
    """A header cell as shown in an error (a garbled header can be megabytes long)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _columns_error(path: Path, what: str, name: str, columns: list[str],
                   delimiter: str) -> DataError:
    if len(columns) == 1:
        return DataError(f"{path}: {what} {name!r} not found: the file has a single column "
                         f"{_short(columns[0])!r}; is the delimiter right? (delimiter: "
                         f"{delimiter!r})")
    close = difflib.get_close_matches(name, [c for c in columns if len(c) <= 1000], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    shown = [_short(c) for c in columns[:30]]
    more = f" (and {len(columns) - 30} more)" if len(columns) > 30 else ""
    return DataError(f"{path}: {what} {name!r} not found{hint}; columns found: "
                     f"{', '.join(shown)}{more}")


def _read(path: Path, spec: Mapping[str, Any]) -> pd.DataFrame:
    """Read the columns a spec needs; categorical/sequence columns as strings."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    rule = spec["label_rule"]
    label_col = str(rule["column"]) if rule else spec["label"]
    field_cols = [f.name for f in spec["fields"]]
    wanted = list(dict.fromkeys([label_col, *field_cols]))
    parquet = path.suffix.lower() in PARQUET_SUFFIXES
    delim = spec["delimiter"]
    try:
        if parquet:
            import pyarrow.parquet as pq

            columns = list(pq.read_schema(path).names)
        else:
            columns = [str(c) for c in pd.read_csv(path, sep=delim, nrows=0,
                                                   encoding="utf-8").columns]
    except UnicodeDecodeError:
        raise _utf8_error(path) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _truncated(path, exc) from None
    except (ValueError, OSError) as exc:  # parser and pyarrow errors derive from these
        raise DataError(f"{path}: cannot read ({exc})") from None
    what = "label_rule column" if rule else "label column"
    for name, kind in [(label_col, what), *((c, "field") for c in field_cols)]:
        if name not in columns:
            raise _columns_error(path, kind, name, columns, delim)
    if not parquet:
        _check_csv_shape(path, delim)
    if parquet:
        _check_parquet_types(path, spec, label_col)
    try:
        if parquet:
            df = _read_parquet(path, spec, wanted)
        else:
            df = pd.read_csv(path, sep=delim, usecols=wanted, dtype=str, encoding="utf-8")
    except UnicodeDecodeError:
        raise _utf8_error(path) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _truncated(path, exc) from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if len(df) == 0:
        raise DataError(f"{path}: no data rows (header only)")
    return df


def _check_parquet_types(path: Path, spec: Mapping[str, Any], label_col: str) -> None:
    """A list column is a sequence field's values; struct/map (and lists elsewhere) have no
    meaning as one id, so they are refused by name rather than stringified."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    kinds = {f.name: f.kind for f in spec["fields"]}
    for name in [label_col, *kinds]:
        t = schema.field(name).type
        nested = pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_union(t)
        is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
        if is_list and kinds.get(name) == "sequence" and not pa.types.is_nested(t.value_type):
            continue
        if nested or is_list:
            what = "label column" if name == label_col and name not in kinds else "field"
            how = ("declare it kind: sequence" if is_list and name in kinds else
                   "flatten it into plain columns first")
            raise DataError(f"{path}: {what} {name!r} is a Parquet {t} column; {how}")


def _read_parquet(path: Path, spec: Mapping[str, Any], wanted: list[str]) -> pd.DataFrame:
    """Read the columns; list cells of sequence fields become separator-joined text."""
    df = pd.read_parquet(path, columns=wanted)
    for f in spec["fields"]:
        col = df[f.name]
        if f.kind == "sequence" and len(col) and col.map(
                lambda v: isinstance(v, (list, np.ndarray))).any():
            sep = f.separator
            df[f.name] = col.map(lambda v, sep=sep: None if v is None else sep.join(
                str(x) for x in v))
    return df


def _truncated(path: Path, exc: BaseException) -> DataError:
    return DataError(f"{path}: truncated or corrupt compressed file ({type(exc).__name__}: "
                     f"{exc}); download or compress it again")


def _check_csv_shape(path: Path, delimiter: str) -> None:
    """A duplicate header name, or a row with more or fewer cells than the header: pandas
    would rename the one (``a.1``) and pad the other with empty cells without a word."""
    import csv
    import sys

    csv.field_size_limit(sys.maxsize)  # one huge cell is data, not a parse error
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter) if len(delimiter) == 1 else None
            if reader is None:
                return  # a multi-character (regex) delimiter: pandas' own parser decides
            header = next(reader, [])
            seen: set[str] = set()
            for name in header:
                if name in seen:
                    raise DataError(f"{path}: column {_short(name)!r} appears twice in the "
                                    f"header")
                seen.add(name)
            for row in reader:
                if row and len(row) != len(header):
                    raise DataError(f"{path}: line {reader.line_num} has {len(row)} cells, the "
                                    f"header has {len(header)} (ragged row)")
    except UnicodeDecodeError:
        raise _utf8_error(path) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _truncated(path, exc) from None
    except csv.Error as exc:
        raise DataError(f"{path}: cannot parse as CSV ({exc})") from None


def _utf8_error(path: Path) -> DataError:
    where = _first_bad_utf8(path)
    at = f" at byte offset {where[0]} (line {where[1]})" if where else ""
    return DataError(f"{path}: not valid UTF-8{at}; re-save the file as UTF-8")


def _row(i: int, parquet: bool) -> str:
    return f"row {i + 1}" if parquet else f"row {i + 1} (line {i + 2})"


def _labels(df: pd.DataFrame, path: Path, spec: Mapping[str, Any]) -> np.ndarray:
    """``float32`` 0/1 labels, from the label column or the label rule."""
    parquet = path.suffix.lower() in PARQUET_SUFFIXES
    rule = spec["label_rule"]
    col = str(rule["column"]) if rule else spec["label"]
    raw = df[col]
    num = raw.astype(np.float64) if pd.api.types.is_bool_dtype(raw.dtype) else pd.to_numeric(
        raw, errors="coerce")
    v = num.to_numpy(dtype=np.float64, na_value=np.nan)
    if rule:
        bad = np.isnan(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: label_rule column {col!r}: {_row(i, parquet)} has "
                            f"{raw.iloc[i]!r}, not a number")
        return (v >= float(rule["threshold"])).astype(np.float32)
    bad = ~np.isin(v, (0.0, 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = raw.iloc[i]
        value = "" if pd.isna(value) else value
        raise DataError(f"{path}: label column {col!r} must hold 0/1 (or give label_rule); "
                        f"{_row(i, parquet)} has {value!r}")
    return v.astype(np.float32)


# -- loading ----------------------------------------------------------------------------
def build_table(path: str | Path | None, spec: str | Path | Mapping[str, Any]
                ) -> tuple[CTRData, dict[str, Encoder]]:
    """:func:`load_table`, also returning the fitted encoders (for the cache)."""
    norm, where = read_spec(spec)
    files = table_files(path, norm)
    frames = {k: _read(p, norm) for k, p in files.items()}
    labels = {k: _labels(df, files[k], norm) for k, df in frames.items()}
    if "all" in frames:
        df, lab = frames.pop("all"), labels.pop("all")
        idx = random_split_indices(len(df), norm["split"]["fractions"], norm["split"]["seed"])
        for k, ix in zip(FILES_KEYS, idx):
            frames[k], labels[k] = df.iloc[ix], lab[ix]
    meta = {"source": "table", "files": {k: str(p) for k, p in files.items()},
            "spec": where, "label": norm["label"], "label_rule": norm["label_rule"],
            "fields": [vars(f) for f in norm["fields"]], "delimiter": norm["delimiter"]}
    if norm["files"] is None:
        meta["split"] = {"fractions": list(norm["split"]["fractions"]),
                         "seed": norm["split"]["seed"]}
    encoders, schema = fit_encoders(frames["train"], norm["fields"], label=norm["label"],
                                    meta=meta)
    parts = {k: Split(encode_frame(frames[k], encoders, dtype=np.int32), labels[k])
             for k in FILES_KEYS}
    all_labels = np.concatenate([labels[k] for k in FILES_KEYS])
    data_meta = dict(meta, rows={k: len(v) for k, v in parts.items()},
                     positive_rate=float(all_labels.mean()))
    data = CTRData(schema, meta=data_meta, **parts)
    check_sanity(data, str(path if path is not None else where))
    return data, encoders


def load_table(path: str | Path | None, spec: str | Path | Mapping[str, Any]) -> CTRData:
    """Load a CSV or Parquet file (or train/val/test files) described by a field spec.

    Args:
        path: The data file (``.csv``, ``.csv.gz``, ``.parquet``); with ``files:`` in the
            spec, the folder (or a file in the folder) the file names are relative to.
        spec: The YAML spec file, or the same content as a dict.

    Returns:
        The encoded dataset; encoders fitted on the train rows only.

    Raises:
        DataError: Missing/empty/non-UTF-8 file, unknown spec key, missing column or
            label values that are not 0/1; the message names the file and the culprit.

    Example:
        >>> spec = {"label": "clicked", "fields": ["user", "item"]}
        >>> data = load_table("clicks.csv", spec)  # doctest: +SKIP
    """
    data, _ = build_table(path, spec)
    return data
