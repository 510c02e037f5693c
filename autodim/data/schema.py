"""Schema: the fields of a dataset after encoding.

A field's ids occupy ``width`` consecutive columns of the id matrix: one for a categorical
field, ``max_len`` for a sequence field (padded with id 0 and mean-pooled). Row 0 of every
field's vocabulary is reserved for out-of-vocabulary values (categorical) or padding
(sequence).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from autodim._io import atomic_path, atomic_write_json
from autodim.errors import DataError

__all__ = ["Field", "Schema", "FieldKind"]

FieldKind = Literal["categorical", "sequence"]
SCHEMA_VERSION = 1


@dataclass
class Field:
    """One feature field.

    Args:
        name: Field name, unique within the schema.
        kind: ``"categorical"`` (one id per row) or ``"sequence"`` (several ids, mean-pooled).
        vocab_size: Number of embedding rows, row 0 (OOV / padding) included.
        width: Id columns the field occupies in a batch (1, or the padded sequence length).
        freqs: Per-id occurrence counts in the training split (length ``vocab_size``), or
            ``None`` when unknown.
    """

    name: str
    kind: FieldKind = "categorical"
    vocab_size: int = 1
    width: int = 1
    freqs: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("categorical", "sequence"):
            raise DataError(f"field {self.name!r}: unknown kind {self.kind!r}")
        if self.vocab_size < 1:
            raise DataError(f"field {self.name!r}: vocab_size must be >= 1, got {self.vocab_size}")
        if self.width < 1 or (self.kind == "categorical" and self.width != 1):
            raise DataError(f"field {self.name!r}: bad width {self.width} for kind {self.kind}")
        if self.freqs is not None:
            self.freqs = np.asarray(self.freqs, dtype=np.int64)
            if self.freqs.shape != (self.vocab_size,):
                raise DataError(
                    f"field {self.name!r}: freqs has shape {self.freqs.shape}, "
                    f"expected ({self.vocab_size},)"
                )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "vocab_size": self.vocab_size,
                "width": self.width}


@dataclass
class Schema:
    """The encoded fields of a dataset, the label name and free-form metadata."""

    fields: list[Field]
    label: str = "label"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise DataError(f"schema: duplicate field names {sorted(dup)}")
        if not self.fields:
            raise DataError("schema: no fields")

    # -- lookups -----------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def num_columns(self) -> int:
        """Width of the id matrix (sum of the fields' widths)."""
        return sum(f.width for f in self.fields)

    @property
    def total_rows(self) -> int:
        return sum(f.vocab_size for f in self.fields)

    def column_slices(self) -> list[slice]:
        """The id-matrix columns of each field, in field order."""
        out, start = [], 0
        for f in self.fields:
            out.append(slice(start, start + f.width))
            start += f.width
        return out

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def index(self, name: str) -> int:
        return self.names.index(name)

    # -- identity ----------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of what a plan depends on: names, kinds, vocabulary sizes, widths, label."""
        payload = json.dumps([self.label, [f.to_dict() for f in self.fields]], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    # -- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": SCHEMA_VERSION, "label": self.label,
                "fields": [f.to_dict() for f in self.fields], "meta": self.meta,
                "fingerprint": self.fingerprint()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "schema") -> "Schema":
        try:
            if d.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
                raise DataError(f"{source}: schema version {d.get('version')} is not supported")
            fields = [Field(name=f["name"], kind=f.get("kind", "categorical"),
                            vocab_size=int(f["vocab_size"]), width=int(f.get("width", 1)))
                      for f in d["fields"]]
            return cls(fields=fields, label=d.get("label", "label"), meta=dict(d.get("meta", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}: malformed schema ({exc!r})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, *, source: str = "schema") -> "Schema":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}: not valid JSON ({exc})") from None
        return cls.from_dict(d, source=source)

    def save(self, folder: str | Path) -> None:
        """Write ``schema.json`` and ``freqs.npz`` (per-id train frequencies) atomically."""
        folder = Path(folder)
        if all(f.freqs is not None for f in self.fields):
            with atomic_path(folder / "freqs.npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **{f"f{i}": f.freqs for i, f in enumerate(self.fields)})
        atomic_write_json(folder / "schema.json", self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> "Schema":
        folder = Path(folder)
        path = folder / "schema.json"
        if not path.exists():
            raise DataError(f"{path}: no such file")
        schema = cls.from_json(path.read_text(encoding="utf-8"), source=str(path))
        fpath = folder / "freqs.npz"
        if fpath.exists():
            import zipfile

            try:
                with np.load(fpath) as z:
                    for i, f in enumerate(schema.fields):
                        f.freqs = z[f"f{i}"].astype(np.int64)
            except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError) as exc:
                raise DataError(f"{fpath}: corrupt frequency file ({type(exc).__name__}: "
                                f"{exc})") from None
        return schema

    def subset(self, names: Sequence[str]) -> "Schema":
        return Schema([self[n] for n in names], label=self.label, meta=dict(self.meta))
