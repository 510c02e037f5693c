"""The DimensionPlan: the one artifact every searcher returns and every exporter reads.

A plan says, per field, how many dimensions it gets (``dim``, 0 = dropped), how the field
reaches the common dim ``D`` (``project``: a learned ``d x D`` matrix; ``pad``/``select``:
its stored columns placed among zeros), and optionally frequency groups, hashing (MEmCom,
naive hash, QR), a row mask (pruned rows share the OOV row) or an element mask (sparse
table), and a ``precision`` (bits per weight and scale granularity, see
:mod:`autodim.embeddings.quant`; version-1 plans have none and read as float32).
``plan.num_bytes()`` is computed from the plan alone and equals the ``num_bytes()``
of the module ``build_embedding(plan)`` returns.

Example:
    >>> from autodim.data.schema import Field, Schema
    >>> from autodim.plan import DimensionPlan
    >>> schema = Schema([Field("user", vocab_size=100), Field("item", vocab_size=50)])
    >>> plan = DimensionPlan.full(schema, D=8)
    >>> plan.num_bytes()
    4800
    >>> build_embedding(plan).num_bytes()
    4800
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np
import torch

from autodim._io import atomic_write_text, safe_json_loads
from autodim.data.schema import Field, Schema
from autodim.embeddings.compact import FieldwiseEmbedding
from autodim.embeddings.field import (
    Align,
    DroppedField,
    FieldEmbedding,
    FrequencyGroupEmbedding,
    Project,
    Select,
)
from autodim.embeddings.quant import (
    ALLOWED_BITS,
    HALF_DTYPES,
    SCALAR_DTYPES,
    SCALE_GRANULARITIES,
    TRAIN_MODES,
    apply_precision,
    normalize_precision,
    scalar_bytes,
    table_bytes,
)
from autodim.embeddings.tables import (
    FLOAT_BYTES,
    DenseTable,
    HashTable,
    MEmComTable,
    QRTable,
    RowPrunedTable,
    SparseTable,
    row_pruned_bytes,
    sparse_table_bytes,
)
from autodim.errors import PlanError

__all__ = ["FieldPlan", "DimensionPlan", "build_embedding", "encode_mask", "decode_mask",
           "PLAN_VERSION", "HASHING_METHODS", "ALIGNMENTS"]

PLAN_VERSION = 2
#: Versions this autodim reads (version 1 had no ``precision``: every weight float32).
READ_VERSIONS = (1, 2)
PRECISION_KEYS = ("bits", "scale", "train", "dtype", "scalars")
PLAN_FORMAT = "autodim.plan"
HASHING_METHODS = ("memcom", "hash", "qr")
ALIGNMENTS = ("project", "pad", "select")


def encode_mask(mask: np.ndarray | torch.Tensor) -> str:
    """Bool array -> base64(zlib(packbits)), the compact JSON form of masks in plans."""
    arr = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    return base64.b64encode(zlib.compress(np.packbits(arr.ravel()).tobytes(), 9)).decode()


def decode_mask(text: str, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    # Decompress no more than the packed length the shape needs (+1 byte to tell "too long"
    # apart): a zlib bomb in a plan then costs at most that, never gigabytes.
    limit = (n + 7) // 8
    inflater = zlib.decompressobj()
    raw_bytes = inflater.decompress(base64.b64decode(text), limit + 1)
    if len(raw_bytes) > limit:
        raise ValueError(f"mask decompresses to more than the {limit} bytes {n} bits need")
    raw = np.frombuffer(raw_bytes, dtype=np.uint8)
    bits = np.unpackbits(raw)
    if len(bits) < n or len(bits) - n >= 8:
        raise ValueError(f"mask has {len(bits)} bits, expected {n}")
    return bits[:n].astype(bool).reshape(shape)


@dataclass
class FieldPlan:
    """The plan for one field. See the module docstring for the meaning of each entry."""

    name: str
    vocab_size: int
    dim: int
    kind: str = "categorical"
    width: int = 1
    align: str = "project"
    columns: list[int] | None = None
    frequency_groups: list[dict[str, int]] | None = None
    hashing: dict[str, Any] | None = None
    row_mask: dict[str, Any] | None = None
    sparse: dict[str, Any] | None = None
    precision: dict[str, Any] | None = None

    @property
    def bits(self) -> int:
        return int((self.precision or {}).get("bits", 32))

    # -- validation ---------------------------------------------------------------------
    def validate(self, D: int) -> None:
        where = f"field {self.name!r}"
        # bool is an int in Python: `dim: true` must not be read as 1.
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 0:
            raise PlanError(f"{where}: dim must be an integer >= 0, got {self.dim!r}")
        if self.dim > D:
            raise PlanError(f"{where}: dim {self.dim} exceeds the common dim D={D}")
        if (not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool)
                or self.vocab_size < 1):
            raise PlanError(f"{where}: vocab_size must be an integer >= 1, got "
                            f"{self.vocab_size!r}")
        if self.kind not in ("categorical", "sequence"):
            raise PlanError(f"{where}: kind must be 'categorical' or 'sequence', got "
                            f"{self.kind!r}")
        if not isinstance(self.width, int) or isinstance(self.width, bool) or self.width < 1:
            raise PlanError(f"{where}: width must be an integer >= 1, got {self.width!r}")
        if self.align not in ALIGNMENTS:
            raise PlanError(f"{where}: align must be one of {ALIGNMENTS}, got {self.align!r}")
        if self.align == "select":
            cols = self.columns
            if cols is None or len(cols) != self.dim:
                raise PlanError(f"{where}: 'select' needs {self.dim} columns, got {cols!r}")
            if len(set(cols)) != len(cols) or any(not 0 <= c < D for c in cols):
                raise PlanError(f"{where}: columns must be distinct and in [0, {D}), got {cols}")
        elif self.columns is not None:
            raise PlanError(f"{where}: 'columns' is only allowed with align 'select'")
        extras = [k for k in ("frequency_groups", "hashing", "row_mask", "sparse")
                  if getattr(self, k) is not None]
        if len(extras) > 1:
            raise PlanError(f"{where}: {' and '.join(extras)} cannot be combined")
        if self.frequency_groups is not None:
            groups = self.frequency_groups
            if not groups:
                raise PlanError(f"{where}: frequency_groups is empty")
            for g in groups:
                if set(g) != {"rows", "dim"} or g["rows"] < 1 or not 0 <= g["dim"] <= D:
                    raise PlanError(f"{where}: bad frequency group {g} (rows >= 1, 0 <= dim <= D)")
            total = sum(g["rows"] for g in groups)
            if total != self.vocab_size:
                raise PlanError(f"{where}: frequency groups cover {total} rows, "
                                f"vocab_size is {self.vocab_size}")
            if self.dim != max(g["dim"] for g in groups):
                raise PlanError(f"{where}: dim must equal the largest group dim")
            if self.align == "select":
                raise PlanError(f"{where}: frequency groups use 'project' or 'pad' alignment")
        if self.hashing is not None:
            h = self.hashing
            if h.get("method") not in HASHING_METHODS:
                raise PlanError(f"{where}: hashing method must be one of {HASHING_METHODS}, "
                                f"got {h.get('method')!r}")
            m = h.get("buckets")
            if not isinstance(m, int) or m < 1:
                raise PlanError(f"{where}: hashing buckets must be an integer >= 1, got {m!r}")
            if m >= self.vocab_size:
                raise PlanError(f"{where}: {m} hashing buckets >= vocab_size {self.vocab_size}; "
                                "hashing would not save anything")
        if self.precision is not None:
            self._validate_precision(where)
        if self.row_mask is not None:
            keep = self._decode("row_mask", (self.vocab_size,))
            if int(keep.sum()) != self.row_mask.get("kept"):
                raise PlanError(f"{where}: row_mask says kept={self.row_mask.get('kept')} but "
                                f"its bits keep {int(keep.sum())} rows")
        if self.sparse is not None:
            mask = self._decode("sparse", (self.vocab_size, self.dim))
            if int(mask.sum()) != self.sparse.get("nnz"):
                raise PlanError(f"{where}: sparse says nnz={self.sparse.get('nnz')} but its "
                                f"bits keep {int(mask.sum())} values")

    def _validate_precision(self, where: str) -> None:
        p = self.precision
        if not isinstance(p, dict):
            raise PlanError(f"{where}: precision must be an object, got {p!r}")
        bad = sorted(set(p) - set(PRECISION_KEYS))
        if bad:
            raise PlanError(f"{where}: precision has unknown key(s) {bad}; valid: "
                            f"{', '.join(PRECISION_KEYS)}")
        bits = p.get("bits", 32)
        if bits not in ALLOWED_BITS or isinstance(bits, bool):
            raise PlanError(f"{where}: precision bits {bits!r} not allowed (one of "
                            f"{', '.join(map(str, ALLOWED_BITS))})")
        for key, allowed in (("scale", SCALE_GRANULARITIES), ("train", TRAIN_MODES),
                             ("scalars", SCALAR_DTYPES), ("dtype", tuple(HALF_DTYPES))):
            if key in p and p[key] not in allowed:
                raise PlanError(f"{where}: precision {key} {p[key]!r} not allowed (one of "
                                f"{', '.join(allowed)})")
        if "dtype" in p and bits != 16:
            raise PlanError(f"{where}: precision dtype is only for 16 bits, bits is {bits}")
        method = (self.hashing or {}).get("method")
        if "scalars" in p and method != "memcom":
            raise PlanError(f"{where}: precision scalars are MEmCom's per-id scalars; the "
                            "field is not hashed with memcom")
        quantized = bits != 32 or p.get("scalars", "float32") != "float32"
        # Refused combinations: QR (two multiplied tables), row masks and element masks
        # (their compact storage forms are float32 CSR / kept rows) stay float32.
        for key, on in (("qr hashing", method == "qr"), ("row_mask", self.row_mask is not None),
                        ("sparse", self.sparse is not None)):
            if quantized and on:
                raise PlanError(f"{where}: precision {bits} bits cannot be combined with "
                                f"{key} (quantized fields are dense, frequency-grouped, "
                                "hash- or memcom-hashed)")

    def _decode(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        entry = getattr(self, key)
        try:
            return decode_mask(entry["bits"], shape)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a plan error
            raise PlanError(f"field {self.name!r}: {key} bits are unreadable ({exc})") from None

    # -- bytes --------------------------------------------------------------------------
    def num_bytes(self, D: int) -> int:
        """Bytes of everything this field stores (tables, scalars, indices, projections)."""
        p = self.precision
        if self.frequency_groups is not None:
            return sum(table_bytes(g["rows"], g["dim"], p) + self._align_bytes(g["dim"], D)
                       for g in self.frequency_groups)
        if self.dim == 0:
            return 0
        n, d = self.vocab_size, self.dim
        if self.hashing is not None:
            m = self.hashing["buckets"]
            method = self.hashing["method"]
            if method == "hash":
                table = table_bytes(m, d, p)
            elif method == "qr":
                table = (math.ceil(n / m) + m) * d * FLOAT_BYTES
            else:  # memcom: shared m x d table + one scalar per id
                table = table_bytes(m, d, p) + scalar_bytes(n, p)
        elif self.row_mask is not None:
            table = row_pruned_bytes(n, d, int(self.row_mask["kept"]))
        elif self.sparse is not None:
            table = sparse_table_bytes(n, d, int(self.sparse["nnz"]))
        else:
            table = table_bytes(n, d, p)
        return table + self._align_bytes(d, D)

    def _align_bytes(self, d: int, D: int) -> int:
        if d == 0 or d == D and self.align != "select":
            return 0
        if self.align == "project":
            return d * D * FLOAT_BYTES
        if self.align == "select" and self.columns != list(range(d)):
            return d * 8  # int64 column index
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class DimensionPlan:
    """Per-field dimensions (and compression) for a schema, plus provenance.

    Attributes:
        fields: One :class:`FieldPlan` per schema field, in schema order.
        D: Common output dim of the embedding layer.
        schema_fingerprint: :meth:`Schema.fingerprint` of the data it was searched on.
        searcher: ``{"name": ..., "settings": {...}}`` of what produced it.
        seed, budget_bytes: The search's seed and byte budget (``None`` if none).
        metrics: Validation/test metrics seen at search time.
        versions, created: Package versions and creation time (filled on save).
    """

    fields: list[FieldPlan]
    D: int
    schema_fingerprint: str = ""
    searcher: dict[str, Any] = field(default_factory=lambda: {"name": "manual", "settings": {}})
    seed: int | None = None
    budget_bytes: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dims(cls, schema: Schema, D: int, dims: dict[str, int] | Sequence[int], *,
                  align: str = "project", **meta: Any) -> "DimensionPlan":
        """A plain mixed-dimension plan from per-field dims (a dict by name or a list)."""
        if not isinstance(dims, dict):
            dims = dict(zip(schema.names, dims, strict=True))
        unknown = set(dims) - set(schema.names)
        if unknown:
            raise PlanError(f"unknown field(s) {sorted(unknown)}; schema has {schema.names}")
        fields = []
        for f in schema.fields:
            d = int(dims.get(f.name, D))
            fields.append(FieldPlan(name=f.name, vocab_size=f.vocab_size, dim=d, kind=f.kind,
                                    width=f.width, align=align,
                                    columns=list(range(d)) if align == "select" else None))
        plan = cls(fields=fields, D=D, schema_fingerprint=schema.fingerprint(), **meta)
        plan.validate()
        return plan

    @classmethod
    def full(cls, schema: Schema, D: int, *, drop: Collection[str] = (),
             **meta: Any) -> "DimensionPlan":
        """Every field at ``D`` (the fields in ``drop`` at 0: left out)."""
        meta.setdefault("searcher", {"name": "full", "settings": {}})
        return cls.from_dims(schema, D, {n: 0 if n in drop else D for n in schema.names},
                             **meta)

    # -- queries ----------------------------------------------------------------------------
    @property
    def dims(self) -> dict[str, int]:
        return {f.name: f.dim for f in self.fields}

    def __getitem__(self, name: str) -> FieldPlan:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def field_bytes(self) -> dict[str, int]:
        return {f.name: f.num_bytes(self.D) for f in self.fields}

    def num_bytes(self) -> int:
        return sum(self.field_bytes().values())

    def full_bytes(self) -> int:
        """Bytes of the uncompressed ``D``-wide table over the same vocabularies."""
        return sum(f.vocab_size for f in self.fields) * self.D * FLOAT_BYTES

    def compression(self) -> float:
        nb = self.num_bytes()
        return self.full_bytes() / nb if nb else math.inf

    def schema(self) -> Schema:
        """The schema shape the plan was made for (names, kinds, sizes; no frequencies)."""
        return Schema([Field(f.name, f.kind, f.vocab_size, f.width) for f in self.fields])

    def summary(self) -> list[dict[str, Any]]:
        """One row per field: name, rows, dim, align, compression, bytes, share of total."""
        total = max(1, self.num_bytes())
        rows = []
        for f in self.fields:
            nb = f.num_bytes(self.D)
            extra = "-"
            if f.hashing:
                extra = f"{f.hashing['method']}({f.hashing['buckets']})"
            elif f.frequency_groups:
                extra = "groups " + "/".join(f"{g['rows']}x{g['dim']}" for g in f.frequency_groups)
            elif f.row_mask:
                extra = f"rows kept {f.row_mask['kept']}"
            elif f.sparse:
                extra = f"nnz {f.sparse['nnz']}"
            p = normalize_precision(f.precision)
            bits = (f"{p['bits']}" + (f"/{p['scale']}" if p["bits"] < 16 else "")
                    + (f" {p['dtype']}" if p["bits"] == 16 else ""))
            rows.append({"field": f.name, "rows": f.vocab_size, "dim": f.dim, "align": f.align,
                         "bits": bits, "compression": extra, "bytes": nb, "share": nb / total})
        return rows

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        if not isinstance(self.D, int) or self.D < 1:
            raise PlanError(f"D must be an integer >= 1, got {self.D!r}")
        seen: set[str] = set()
        dup = sorted({f.name for f in self.fields if f.name in seen or seen.add(f.name)})
        if dup:
            raise PlanError(f"duplicate field(s) {dup}")
        if not self.fields:
            raise PlanError("plan has no fields")
        for f in self.fields:
            f.validate(self.D)

    def check_schema(self, schema: Schema) -> None:
        """Raise :class:`PlanError` unless the plan fits ``schema`` (names, order, sizes)."""
        if self.schema_fingerprint and self.schema_fingerprint == schema.fingerprint():
            return
        for fp, f in zip(self.fields, schema.fields):
            if fp.name != f.name:
                break
            if fp.vocab_size != f.vocab_size or fp.width != f.width or fp.kind != f.kind:
                raise PlanError(f"plan field {fp.name!r} has vocab_size {fp.vocab_size}, the "
                                f"data has {f.vocab_size}: the plan was made for another schema")
        else:
            if len(self.fields) == schema.num_fields:
                return
        raise PlanError(f"plan fields {[f.name for f in self.fields]} do not match the data's "
                        f"fields {schema.names} (schema fingerprint {self.schema_fingerprint!r} "
                        f"vs {schema.fingerprint()!r}): the plan was made for another schema")

    # -- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT, "version": PLAN_VERSION, "D": self.D,
            "schema_fingerprint": self.schema_fingerprint,
            "dtype": "float32" if all(f.precision is None for f in self.fields) else "mixed",
            "num_bytes": self.num_bytes(), "full_bytes": self.full_bytes(),
            "compression": round(self.compression(), 4), "budget_bytes": self.budget_bytes,
            "searcher": self.searcher, "seed": self.seed, "metrics": self.metrics,
            "versions": self.versions or _versions(), "created": self.created or _now(),
            "fields": [f.to_dict() for f in self.fields],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_json_default)

    def save(self, path: str | Path) -> Path:
        """Write the plan JSON atomically (a kill never leaves a half-written plan)."""
        path = Path(path)
        atomic_write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "plan") -> "DimensionPlan":
        if not isinstance(d, dict):
            raise PlanError(f"{source}: a plan must be a JSON object")
        if d.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise PlanError(f"{source}: format {d.get('format')!r} is not {PLAN_FORMAT!r}")
        if d.get("version") not in READ_VERSIONS:
            raise PlanError(f"{source}: plan version {d.get('version')!r} is not supported "
                            f"(this autodim reads versions "
                            f"{', '.join(map(str, READ_VERSIONS))})")
        if d.get("version") == 1 and any(isinstance(fd, dict) and "precision" in fd
                                         for fd in d.get("fields") or []):
            raise PlanError(f"{source}: a version-1 plan has no precision (version 2 does)")
        known = {f for f in FieldPlan.__dataclass_fields__}
        fields = []
        for i, fd in enumerate(d.get("fields") or []):
            if not isinstance(fd, dict):
                raise PlanError(f"{source}: fields[{i}] is not an object")
            bad = set(fd) - known
            if bad:
                raise PlanError(f"{source}: fields[{i}] ({fd.get('name')!r}) has unknown "
                                f"key(s) {sorted(bad)}")
            missing = {"name", "vocab_size", "dim"} - set(fd)
            if missing:
                raise PlanError(f"{source}: fields[{i}] lacks {sorted(missing)}")
            fields.append(FieldPlan(**fd))
        try:
            plan = cls(fields=fields, D=d.get("D"),
                       schema_fingerprint=d.get("schema_fingerprint", ""),
                       searcher=d.get("searcher") or {"name": "manual", "settings": {}},
                       seed=d.get("seed"), budget_bytes=d.get("budget_bytes"),
                       metrics=d.get("metrics") or {}, versions=d.get("versions") or {},
                       created=d.get("created", ""))
            plan.validate()
        except PlanError as exc:
            raise PlanError(f"{source}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise PlanError(f"{source}: malformed plan ({exc})") from None
        stored = d.get("num_bytes")
        if stored is not None and stored != plan.num_bytes():
            raise PlanError(f"{source}: num_bytes says {stored} but the fields add up to "
                            f"{plan.num_bytes()} (hand-edited?)")
        return plan

    @classmethod
    def from_json(cls, text: str, *, source: str = "plan") -> "DimensionPlan":
        try:
            d = safe_json_loads(text, source, error=PlanError)
        except json.JSONDecodeError as exc:
            raise PlanError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(d, source=source)

    @classmethod
    def load(cls, path: str | Path) -> "DimensionPlan":
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"{path}: no such plan file")
        return cls.from_json(path.read_text(encoding="utf-8"), source=str(path))

    def replace(self, **changes: Any) -> "DimensionPlan":
        return replace(self, **changes)

    def build(self, *, sparse_threshold: int = 1_000_000, fused: bool = False
              ) -> FieldwiseEmbedding:
        return build_embedding(self, sparse_threshold=sparse_threshold, fused=fused)

    def build_model(self, backbone: str = "fm", *, backbone_kwargs: dict[str, Any] | None = None,
                    weights: Any = None):
        """The compact model (this plan's embedding + a backbone), optionally with trained
        weights (a safetensors path or a state dict); see :func:`autodim.weights.build_model`.

        Example:
            >>> plan = DimensionPlan.full(Schema([Field("user", vocab_size=100)]), D=8)
            >>> plan.build_model("fm").num_bytes()
            3200
        """
        from autodim.weights import build_model

        return build_model(self, backbone, backbone_kwargs=backbone_kwargs, weights=weights)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("autodim", "torch", "lightning", "optuna", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _align(fp: FieldPlan, d: int, D: int) -> Align:
    if d == D and fp.align != "select":
        return Align()
    if fp.align == "project":
        return Project(d, D)
    return Select(fp.columns if fp.align == "select" else range(d), D)


def _table(fp: FieldPlan, sparse_threshold: int):
    table = _float_table(fp, sparse_threshold)
    return apply_precision(table, fp.precision) if fp.precision is not None else table


def _float_table(fp: FieldPlan, sparse_threshold: int):
    n, d = fp.vocab_size, fp.dim
    sparse = n > sparse_threshold
    if fp.hashing is not None:
        cls = {"memcom": MEmComTable, "hash": HashTable, "qr": QRTable}[fp.hashing["method"]]
        return cls(n, fp.hashing["buckets"], d, sparse=sparse)
    if fp.row_mask is not None:
        keep = torch.from_numpy(decode_mask(fp.row_mask["bits"], (n,)))
        return RowPrunedTable(n, d, keep, sparse=sparse)
    if fp.sparse is not None:
        mask = torch.from_numpy(decode_mask(fp.sparse["bits"], (n, d)))
        return SparseTable(n, d, mask, sparse=sparse)
    return DenseTable(n, d, sparse=sparse)


def build_embedding(plan: DimensionPlan, *, sparse_threshold: int = 1_000_000,
                    fused: bool = False) -> FieldwiseEmbedding:
    """Turn a plan into an embedding module whose ``num_bytes()`` equals ``plan.num_bytes()``.

    Tables with more than ``sparse_threshold`` rows produce sparse gradients (to be stepped
    by a row-wise optimiser, see :class:`autodim.task.CTRTask`). ``fused``: fields that share
    a width read one table (:class:`~autodim.embeddings.fused.FusedEmbedding`, same outputs,
    keys and bytes) when the plan has such fields.
    """
    plan.validate()
    D = plan.D
    modules = []
    for fp in plan.fields:
        seq = fp.kind == "sequence"
        if fp.frequency_groups is not None:
            groups = []
            for g in fp.frequency_groups:
                sub = replace(fp, vocab_size=g["rows"], dim=g["dim"], frequency_groups=None)
                if g["dim"] == 0:
                    groups.append((g["rows"], DroppedField(D)))
                else:
                    groups.append((g["rows"], FieldEmbedding(_table(sub, sparse_threshold),
                                                             _align(sub, g["dim"], D))))
            modules.append(FrequencyGroupEmbedding(groups, D, is_sequence=seq))
        elif fp.dim == 0:
            modules.append(DroppedField(D))
        else:
            modules.append(FieldEmbedding(_table(fp, sparse_threshold), _align(fp, fp.dim, D),
                                          is_sequence=seq))
    emb = FieldwiseEmbedding(plan.schema(), D, modules)
    if fused:
        from autodim.embeddings.fused import FusedEmbedding, fusable

        if fusable(emb):
            return FusedEmbedding(emb, sparse_threshold=sparse_threshold)
    return emb
