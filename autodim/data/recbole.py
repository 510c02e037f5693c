"""RecBole atomic files (``<name>.inter`` plus optional ``.user`` / ``.item``).

Each file is tab-separated with typed header cells (``user_id:token``, ``rating:float``,
``genre:token_seq``). The ``.user`` file is joined on ``user_id`` and the ``.item`` file on
``item_id``; every ``token`` column becomes a categorical field and every ``token_seq``
column a sequence field (space-separated). Float columns are not fields: ``rating`` is the
label source (label = rating >= threshold) unless the ``.inter`` file has a ``label``
column already.

Example:
    >>> data = load_recbole("/path/to/ml-100k")  # doctest: +SKIP
    >>> data.schema.names  # doctest: +SKIP
    ['user_id', 'item_id', 'age', 'gender', 'occupation', 'zip_code', 'release_year', 'genres']
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autodim.data.dataset import CTRData, Split, check_sanity, random_split_indices
from autodim.data.encode import Encoder, FieldSpec, encode_frame, fit_encoders
from autodim.errors import DataError

__all__ = ["DATASET_DEFAULTS", "build_recbole", "load_recbole", "recbole_files"]

TYPES = ("token", "token_seq", "float", "float_seq")
# Per-dataset column clean-up used when the caller passes no drop/rename: MovieLens' titles
# are free text (one-off tokens, not a feature), and its "class" column holds the genres.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "ml-100k": {"drop": ("movie_title",), "rename": {"class": "genres"}},
}


def recbole_files(folder: str | Path) -> dict[str, Path]:
    """The dataset's files: ``{"inter": ..., "user": ..., "item": ...}`` (those present)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    inters = sorted(folder.glob("*.inter"))
    if len(inters) != 1:
        found = ", ".join(p.name for p in inters) or "none"
        raise DataError(f"{folder}: expected exactly one RecBole .inter file, found {found}")
    stem = inters[0].stem
    files = {"inter": inters[0]}
    for ext in ("user", "item"):
        p = folder / f"{stem}.{ext}"
        if p.exists():
            files[ext] = p
    return files


def _read_atomic(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read one atomic file; returns the frame (bare column names) and name -> type."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
    types: dict[str, str] = {}
    dtypes: dict[str, Any] = {}
    for cell in header:
        name, sep, typ = cell.rpartition(":")
        if not sep or not name or typ not in TYPES:
            raise DataError(f"{path}: header cell {cell!r} is not 'name:type' with type in "
                            f"{TYPES}")
        types[name] = typ
        dtypes[cell] = "float64" if typ == "float" else str
    try:
        # QUOTE_NONE: titles may contain quotes; "" (empty) is the only missing marker so a
        # token such as "NA" stays a token.
        df = pd.read_csv(path, sep="\t", dtype=dtypes, quoting=csv.QUOTE_NONE,
                         keep_default_na=False, na_values=[""], encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason})") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot parse ({exc})") from None
    df.columns = list(types)
    return df, types


def _join(inter: pd.DataFrame, other: pd.DataFrame, key: str, path: Path,
          suffix: str) -> pd.DataFrame:
    if key not in inter.columns or key not in other.columns:
        return inter  # nothing to join on: the side file describes another key
    dup = other[key].duplicated()
    if dup.any():
        raise DataError(f"{path}: {key} {other[key][dup].iloc[0]!r} appears more than once")
    return inter.merge(other, on=key, how="left", suffixes=("", suffix))


def build_recbole(folder: str | Path, *, min_count: int = 1,
                  split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                  label_threshold: float = 4.0, max_seq_len: int | None = None,
                  drop: Sequence[str] | None = None, rename: Mapping[str, str] | None = None,
                  ) -> tuple[CTRData, dict[str, Encoder]]:
    """:func:`load_recbole`, also returning the fitted encoders (for the cache)."""
    folder = Path(folder).resolve()
    files = recbole_files(folder)
    name = files["inter"].stem
    defaults = DATASET_DEFAULTS.get(name, {})
    drop = tuple(defaults.get("drop", ()) if drop is None else drop)
    rename = dict(defaults.get("rename", {}) if rename is None else rename)

    df, types = _read_atomic(files["inter"])
    order = list(df.columns)  # field order: .inter, then .user, then .item columns
    for ext, key in (("user", "user_id"), ("item", "item_id")):
        if ext in files:
            side, side_types = _read_atomic(files[ext])
            before = set(df.columns)
            df = _join(df, side, key, files[ext], f"_{ext}")
            for col in df.columns:
                if col not in before:
                    order.append(col)
                    types[col] = side_types.get(col, side_types.get(col[: -len(ext) - 1], ""))

    # Label: an explicit 0/1 label column wins over thresholding the rating.
    if "label" in df.columns:
        lab = pd.to_numeric(df["label"], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isin(lab, (0.0, 1.0))
        label_rule = "label column"
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{files['inter']}: line {i + 2}: label {float(lab[i])} is not 0 or 1")
    elif "rating" in df.columns:
        rating = df["rating"].to_numpy(dtype=np.float64)
        if np.isnan(rating).any():
            i = int(np.flatnonzero(np.isnan(rating))[0])
            raise DataError(f"{files['inter']}: line {i + 2}: rating is missing")
        lab = (rating >= label_threshold).astype(np.float64)
        label_rule = f"rating >= {label_threshold}"
    else:
        raise DataError(f"{files['inter']}: no 'label' or 'rating' column to make labels "
                        f"from; columns: {', '.join(df.columns)}")
    labels = lab.astype(np.float32)

    unknown = [c for c in (*drop, *rename) if c not in df.columns]
    if unknown:
        raise DataError(f"{folder}: columns to drop/rename {unknown} do not exist; "
                        f"columns: {', '.join(df.columns)}")
    specs = []
    for col in order:
        kind = {"token": "categorical", "token_seq": "sequence"}.get(types.get(col, ""))
        if kind is None or col in drop or col == "label":
            continue
        specs.append(FieldSpec(rename.get(col, col), kind, min_count=min_count,
                               separator=" ", max_len=max_seq_len))
    df = df.rename(columns=rename)
    if not specs:
        raise DataError(f"{folder}: no token or token_seq columns to use as fields")

    tr, va, te = random_split_indices(len(df), tuple(split), seed)  # type: ignore[arg-type]
    meta = {"source": "recbole", "dataset": name, "path": str(folder),
            "files": sorted(p.name for p in files.values()), "min_count": min_count,
            "split": list(split), "seed": seed, "label": label_rule,
            "max_seq_len": max_seq_len, "drop": list(drop), "rename": rename}
    encoders, schema = fit_encoders(df.iloc[tr], specs, label="label", meta=meta)
    parts = {}
    for part, idx in (("train", tr), ("val", va), ("test", te)):
        # int32 ids (as the synthetic data): half the memory and cache of int64.
        parts[part] = Split(encode_frame(df.iloc[idx], encoders, dtype=np.int32), labels[idx])
    data_meta = dict(meta, rows={k: len(v) for k, v in parts.items()},
                     positive_rate=float(labels.mean()) if len(labels) else 0.0)
    data = CTRData(schema, meta=data_meta, **parts)
    check_sanity(data, str(folder))
    return data, encoders


def load_recbole(folder: str | Path, *, min_count: int = 1,
                 split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                 label_threshold: float = 4.0, max_seq_len: int | None = None,
                 drop: Sequence[str] | None = None, rename: Mapping[str, str] | None = None,
                 ) -> CTRData:
    """Load a RecBole dataset folder into encoded train/val/test splits.

    Args:
        folder: Folder holding ``<name>.inter`` (and optionally ``<name>.user/.item``).
        min_count: Values seen fewer times in train map to id 0.
        split: Train/val/test fractions of the interaction rows (seeded random split).
        seed: Split seed.
        label_threshold: Label = ``rating >= label_threshold`` (when there is no ``label``
            column).
        max_seq_len: Padded length of sequence fields (``None`` = automatic).
        drop: Columns not to use as fields (default for ``ml-100k``: ``movie_title``).
        rename: Column renames (default for ``ml-100k``: ``class`` -> ``genres``).

    Returns:
        The encoded dataset; encoders are fitted on the train rows only.

    Example:
        >>> data = load_recbole("~/.cache/autodim/ml-100k")  # doctest: +SKIP
    """
    data, _ = build_recbole(Path(folder).expanduser(), min_count=min_count, split=split,
                            seed=seed, label_threshold=label_threshold,
                            max_seq_len=max_seq_len, drop=drop, rename=rename)
    return data
