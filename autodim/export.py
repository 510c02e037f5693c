"""Ship a compact model: weights (safetensors), the plan, TorchRec and FuxiCTR configs.

What an export folder holds (:func:`export_plan`; written whole or not at all):

- ``plan.json``: the :class:`~autodim.plan.DimensionPlan` (``autodim inspect`` reads it).
- ``weights.safetensors``: every tensor of the compact model (embedding + backbone),
  tensors only; :func:`load_model` rebuilds the model from the plan and loads them.
- ``model.json``: backbone name and settings, ``D``, bytes (what :func:`load_model` needs).
- ``encoders.json``: the fitted encoders (value -> id per field, unseen -> 0, sequence
  separator and length) and how the source's raw rows are read, so
  ``load_model(folder).predict(rows)`` and ``autodim predict`` score raw rows.
- ``torchrec.json``: one ``EmbeddingBagConfig`` (or unpooled ``EmbeddingConfig``) per
  table, each with a feature of its own whose id transform is stated, how a field's tables
  combine, the projections TorchRec has no table for, the weight key of every tensor, and
  warnings (TorchRec's fused kernels want dims that are multiples of 4).
- ``fuxictr.yaml``: a FuxiCTR model-config block (``embedding_dim`` + ``feature_specs``
  with a per-feature ``embedding_dim`` and a ``feature_encoder`` lifting it to ``D``;
  sequence fields pool first), and ``fuxictr_feature_map.json`` for FuxiCTR's FeatureMap.

Example:
    >>> from autodim.data.synthetic import make_planted
    >>> from autodim.plan import DimensionPlan
    >>> plan = DimensionPlan.from_dims(make_planted("tiny", rows=500).schema, 8, [2, 4, 8, 1, 1])
    >>> [t["config"]["embedding_dim"] for t in torchrec_tables(plan)["tables"]]
    [2, 4, 8, 1, 1]
    >>> fuxictr_feature_specs(plan)["feature_specs"][0]["feature_encoder"]
    'nn.Linear(2, 8, bias=False)'
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from autodim._io import atomic_write_json, atomic_write_text
from autodim.errors import ConfigError
from autodim.weights import (  # noqa: F401  (re-exported: the export API predates weights.py)
    WEIGHTS_FORMAT,
    _load_state,
    build_model,
    check_weights,
    compact_state_dict,
    expand_state_dict,
    load_weights,
    save_weights,
    weights_metadata,
)

__all__ = ["save_weights", "load_weights", "weights_metadata", "build_model", "load_model",
           "torchrec_tables", "torchrec_configs", "fuxictr_feature_specs", "export_plan",
           "export_trial", "WEIGHTS_FORMAT", "check_weights", "fuxictr_feature_map",
           "shipped_encoders", "RowEncoder", "ShippedModel", "load_shipped"]

def load_model(plan, weights: str | os.PathLike | None = None, *,
               backbone: str | None = None, backbone_kwargs: Mapping[str, Any] | None = None):
    """Rebuild an exported model.

    ``load_model(folder)`` opens an export folder as a :class:`ShippedModel` (the model,
    its plan and its encoders: ``.predict(rows)`` scores raw rows). ``load_model(plan,
    weights)`` (plan object or JSON path + weights file) gives the bare
    :class:`~autodim.task.CTRTask`. The backbone defaults to the one recorded in the
    weights' metadata.
    """
    from autodim.plan import DimensionPlan

    if weights is None:
        if isinstance(plan, (str, os.PathLike)) and Path(plan).is_dir():
            return load_shipped(plan)
        raise ConfigError(f"load_model({plan!r}): give an export folder, or a plan and its "
                          "weights file")
    if isinstance(plan, (str, os.PathLike)):
        plan = DimensionPlan.load(plan)
    tensors, meta = load_weights(weights)
    if backbone is None:
        backbone = meta.get("backbone", "fm")
        if backbone_kwargs is None and meta.get("backbone_kwargs"):
            backbone_kwargs = json.loads(meta["backbone_kwargs"])
    model = build_model(plan, backbone, backbone_kwargs=backbone_kwargs)
    _load_state(model, plan, tensors, meta, str(weights))
    return model


# -- serving configs ----------------------------------------------------------------------
# TorchRec's config classes and the fields they take (torchrec/modules/embedding_configs.py:
# BaseEmbeddingConfig, EmbeddingBagConfig adds ``pooling``); a table's ``config`` holds only
# these keys, so ``EmbeddingBagConfig(**config)`` (enums converted) builds it.
TORCHREC_POOLED, TORCHREC_UNPOOLED = "EmbeddingBagConfig", "EmbeddingConfig"


def _table(name: str, rows: int, dim: int, feature: str, pooling: str | None,
           weight: str, field: str, note: str | None = None,
           precision: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One TorchRec table: its ``config`` (``EmbeddingBagConfig`` when pooled, else
    ``EmbeddingConfig``), the weight key in ``weights.safetensors`` and a note."""
    from autodim.embeddings.quant import torchrec_data_type

    config: dict[str, Any] = {"name": name, "embedding_dim": int(dim),
                              "num_embeddings": int(rows), "feature_names": [feature],
                              "data_type": torchrec_data_type(precision)}
    if pooling is not None:
        config["pooling"] = pooling
    entry = {"class": TORCHREC_POOLED if pooling is not None else TORCHREC_UNPOOLED,
             "config": config, "field": field, "weight": weight}
    if note:
        entry["note"] = note
    return entry


def torchrec_tables(plan) -> dict[str, Any]:
    """TorchRec table configs for a plan, as JSON-able dicts.

    Every table reads its own feature (one feature per table), and ``features`` says how
    each feature's ids are made from the field's autodim ids: ``mod m`` (the ``m``-row
    table of hashing, MEmCom's shared table, QR's remainder), ``floordiv m`` (QR's
    quotient), ``range`` (a frequency group's ids, minus its first id; other ids are left
    out) or ``remap`` (row pruning: the rank among kept ids; pruned ids read row 0).
    Sequence fields leave their padding id 0 out of the feature.

    ``combine`` says how a field's tables make its vector: MEmCom and QR multiply their two
    lookups *per id*; on a sequence field that product must come before pooling, so those
    tables are unpooled ``EmbeddingConfig`` entries (an ``EmbeddingCollection``) and the
    products are averaged afterwards. ``projections`` are the ``d x D`` maps that lift a
    field to ``D`` (not TorchRec tables: apply them after the lookup); every table and
    projection names its tensor in ``weights.safetensors`` (``weight``).

    :func:`torchrec_configs` turns the entries into real TorchRec config objects.
    """
    import math

    from autodim.embeddings.quant import scalar_precision

    tables, projections, features, combine, warnings = [], [], [], [], []

    def feature(name: str, field: str, transform: dict[str, Any] | None) -> str:
        features.append({"name": name, "field": field,
                         "transform": transform or {"op": "identity"},
                         **({"drop_ids": [0]} if seq else {})})
        return name

    for i, fp in enumerate(plan.fields):
        seq = fp.kind == "sequence"
        key = f"embedding.fields.{i}"
        # A bag of one id (categorical) pools to that id's vector; sequences average.
        pooling = "MEAN" if seq else "SUM"
        name = f"t_{fp.name}"
        if fp.dim == 0 and not fp.frequency_groups:
            continue
        if fp.frequency_groups:
            lo = 0
            for k, g in enumerate(fp.frequency_groups):
                hi = lo + g["rows"]
                if g["dim"] > 0:
                    f = feature(f"{fp.name}@g{k}", fp.name,
                                {"op": "range", "lo": lo, "hi": hi, "subtract": lo})
                    # SUM per group: the mean over all of a row's ids is taken after the
                    # groups' projections are added (see combine).
                    tables.append(_table(f"{name}_g{k}", g["rows"], g["dim"], f, "SUM",
                                         f"{key}.groups.{k}.table.embedding.weight", fp.name,
                                         f"ids {lo}..{hi - 1} of {fp.name} only",
                                         fp.precision))
                    if 0 < g["dim"] < plan.D:
                        projections.append({"field": fp.name, "table": f"{name}_g{k}",
                                            "from_dim": g["dim"], "to_dim": plan.D,
                                            "align": fp.align,
                                            **({"weight": f"{key}.groups.{k}.align.linear.weight"}
                                               if fp.align == "project" else {})})
                lo = hi
            combine.append({"field": fp.name, "op": "sum_groups",
                            "then": "divide by the number of non-padding ids" if seq else None})
        elif fp.hashing is not None:
            m, method = fp.hashing["buckets"], fp.hashing["method"]
            per_id = None if seq else pooling  # per-id products: no pooling before them
            if method == "memcom":
                f1 = feature(f"{fp.name}@mod{m}", fp.name, {"op": "mod", "m": m})
                f2 = feature(fp.name, fp.name, None)
                tables.append(_table(f"{name}_memcom_shared", m, fp.dim, f1, per_id,
                                     f"{key}.table.shared.weight", fp.name,
                                     precision=fp.precision))
                tables.append(_table(f"{name}_memcom_scale", fp.vocab_size, 1, f2, per_id,
                                     f"{key}.table.scale.weight", fp.name,
                                     "one scalar per id (MEmCom)", scalar_precision(fp.precision)))
                combine.append({"field": fp.name, "op": "multiply",
                                "tables": [f"{name}_memcom_shared", f"{name}_memcom_scale"],
                                "then": "mean over non-padding ids" if seq else None})
            elif method == "qr":
                f1 = feature(f"{fp.name}@div{m}", fp.name, {"op": "floordiv", "m": m})
                f2 = feature(f"{fp.name}@mod{m}", fp.name, {"op": "mod", "m": m})
                tables.append(_table(f"{name}_quotient", math.ceil(fp.vocab_size / m), fp.dim,
                                     f1, per_id, f"{key}.table.quotient.weight", fp.name))
                tables.append(_table(f"{name}_remainder", m, fp.dim, f2, per_id,
                                     f"{key}.table.remainder.weight", fp.name))
                combine.append({"field": fp.name, "op": "multiply",
                                "tables": [f"{name}_quotient", f"{name}_remainder"],
                                "then": "mean over non-padding ids" if seq else None})
            else:
                f1 = feature(f"{fp.name}@mod{m}", fp.name, {"op": "mod", "m": m})
                tables.append(_table(name, m, fp.dim, f1, pooling,
                                     f"{key}.table.embedding.weight", fp.name,
                                     precision=fp.precision))
        elif fp.row_mask is not None:
            f1 = feature(f"{fp.name}@kept", fp.name,
                         {"op": "remap", "by": "row_mask",
                          "rule": "rank of the id among kept ids (plan's row_mask bits); "
                                  "pruned ids -> 0", "bitmap": f"{key}.table.keep_bits"})
            tables.append(_table(name, int(fp.row_mask["kept"]), fp.dim, f1, pooling,
                                 f"{key}.table.rows", fp.name, "kept rows only, in id order"))
        else:
            f1 = feature(fp.name, fp.name, None)
            weight = (f"{key}.table.values" if fp.sparse is not None
                      else f"{key}.table.embedding.weight")
            note = ("element-sparse: weights.safetensors holds CSR values/col_index/row_ptr; "
                    "densify into a num_embeddings x embedding_dim table"
                    if fp.sparse is not None else None)
            tables.append(_table(name, fp.vocab_size, fp.dim, f1, pooling, weight, fp.name,
                                 note, fp.precision))
        if not fp.frequency_groups and (0 < fp.dim < plan.D or fp.align == "select"):
            proj = {"field": fp.name, "from_dim": fp.dim, "to_dim": plan.D, "align": fp.align}
            if fp.align == "project":
                proj["weight"] = f"{key}.align.linear.weight"
            if fp.columns:
                proj["columns"] = fp.columns
            projections.append(proj)
    odd = [f"{t['config']['name']} ({t['config']['embedding_dim']})" for t in tables
           if t["config"]["embedding_dim"] % 4 and not t["config"]["name"].endswith("_scale")]
    for t in tables:
        if t["config"]["embedding_dim"] % 4 and not t["config"]["name"].endswith("_scale"):
            t["warning"] = "embedding_dim is not a multiple of 4"
    if odd:
        warnings.append(f"{len(odd)} TorchRec table(s) have an embedding_dim that is not a "
                        f"multiple of 4, which TorchRec's fused FBGEMM kernels need (pad them, "
                        f"or search with candidate dims that are): {', '.join(odd)}")
    return {"format": "autodim.torchrec", "version": 2, "D": plan.D, "tables": tables,
            "features": features, "combine": combine,
            "projections": projections, "weights": "weights.safetensors",
            "weight_keys": {t["config"]["name"]: t["weight"] for t in tables},
            "warnings": warnings}


def torchrec_configs(plan) -> list[Any]:
    """TorchRec ``EmbeddingBagConfig`` / ``EmbeddingConfig`` objects for a plan (needs
    ``torchrec`` installed)."""
    try:
        from torchrec import EmbeddingBagConfig, EmbeddingConfig, PoolingType
        from torchrec.types import DataType
    except ImportError:
        raise ConfigError("torchrec is not installed; torchrec_tables(plan) gives the same "
                          "configs as JSON-able dicts") from None
    out = []
    for t in torchrec_tables(plan)["tables"]:
        kw = dict(t["config"], data_type=DataType[t["config"]["data_type"]])
        if t["class"] == TORCHREC_POOLED:
            out.append(EmbeddingBagConfig(**dict(kw, pooling=PoolingType[kw["pooling"]])))
        else:
            out.append(EmbeddingConfig(**kw))
    return out


def fuxictr_feature_specs(plan) -> dict[str, Any]:
    """A FuxiCTR model-config block: ``embedding_dim`` (= ``D``) and ``feature_specs``
    giving each kept feature its own ``embedding_dim`` and a ``feature_encoder`` back to
    ``D``. Sequence fields get the list form FuxiCTR 2.3 evaluates into an
    ``nn.Sequential``: ``layers.MaskedAveragePooling()`` first (a sequence's ``[B, L, d]``
    lookup must be pooled before it can be stacked with the other fields), then the linear
    map. Dropped fields are left out of ``use_features``. FuxiCTR has no hashed or pruned
    tables: such fields are exported at their dim with a note."""
    specs, notes, used = [], [], []
    for fp in plan.fields:
        if fp.dim == 0:
            notes.append(f"{fp.name}: dropped (dim 0)")
            continue
        used.append(fp.name)
        spec: dict[str, Any] = {"name": fp.name, "embedding_dim": int(fp.dim)}
        steps = ["layers.MaskedAveragePooling()"] if fp.kind == "sequence" else []
        if fp.dim < plan.D:
            steps.append(f"nn.Linear({fp.dim}, {plan.D}, bias=False)" if fp.align == "project"
                         else f"nn.ZeroPad1d((0, {plan.D - fp.dim}))")
        if len(steps) == 1 and fp.kind != "sequence":
            spec["feature_encoder"] = steps[0]
        elif steps:
            spec["feature_encoder"] = steps
        specs.append(spec)
        if fp.hashing:
            notes.append(f"{fp.name}: {fp.hashing['method']} hashing ({fp.hashing['buckets']} "
                         "buckets) has no FuxiCTR equivalent; exported as a plain table")
        if fp.frequency_groups:
            notes.append(f"{fp.name}: frequency groups exported at the largest group dim")
        if fp.row_mask or fp.sparse:
            notes.append(f"{fp.name}: pruned rows/entries exported as a dense table")
        if fp.align == "select" and fp.columns != list(range(fp.dim)):
            notes.append(f"{fp.name}: selected columns {fp.columns} exported as a prefix")
    return {"embedding_dim": plan.D, "use_features": used, "feature_specs": specs,
            "notes": notes}


def fuxictr_feature_map(plan, dataset_id: str = "autodim") -> dict[str, Any]:
    """A FuxiCTR ``feature_map.json`` for autodim's id space (id 0 = OOV; for sequences
    also the padding id, hence ``padding_idx: 0``), so FuxiCTR reads the ids autodim's
    encoders make (``autodim predict``'s encoding) without a FuxiCTR preprocessing run."""
    features = []
    for fp in plan.fields:
        spec: dict[str, Any] = {"source": "", "type": fp.kind, "vocab_size": fp.vocab_size,
                                "oov_idx": 0}
        if fp.kind == "sequence":
            spec.update(padding_idx=0, max_len=fp.width)
        features.append({fp.name: spec})
    return {"dataset_id": dataset_id, "num_fields": len(plan.fields),
            "total_features": sum(fp.vocab_size for fp in plan.fields),
            "input_length": sum(fp.width for fp in plan.fields), "labels": ["label"],
            "features": features}


# -- raw rows -> ids: the fitted encoders travel with the model -----------------------------
ENCODERS_NAME = "encoders.json"
ENCODERS_FORMAT = "autodim.encoders"


def shipped_encoders(data, *, cache_dir: str | os.PathLike | None = None
                     ) -> dict[str, Any] | None:
    """The ``encoders.json`` payload for a dataset: per field its fitted encoder (value ->
    id, ``min_count``, sequence separator and length; unseen values map to id 0) and how raw
    rows of the source are read. ``None`` when the dataset's encoders cannot be found (a
    cache that could not be written).

    Synthetic data has no raw values: its fields take their integer ids as they are.
    """
    from autodim.data.cache import default_cache_dir
    from autodim.data.encode import load_encoders

    meta = data.meta
    source = str(meta.get("source", ""))
    fields: list[dict[str, Any]]
    if source.startswith("synthetic"):
        fields = [{"name": f.name, "kind": "ids", "vocab_size": f.vocab_size, "width": f.width}
                  for f in data.schema.fields]
        reading: dict[str, Any] = {"source": "ids"}
    else:
        key = meta.get("cache_key")
        folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        if not key or not (folder / key / ENCODERS_NAME).is_file():
            return None
        encoders = load_encoders(folder / key)
        for f in data.schema.fields:
            enc = encoders.get(f.name)
            if enc is None or enc.vocab_size != f.vocab_size:
                raise ConfigError(f"{folder / key / ENCODERS_NAME}: encoders do not match "
                                  f"the data's field {f.name!r}")
        fields = [{"name": f.name, **encoders[f.name].to_dict()} for f in data.schema.fields]
        reading = {"source": source}
        if source == "recbole":
            reading.update(rename=dict(meta.get("rename") or {}))
        elif source == "table":
            reading.update(delimiter=meta.get("delimiter", ","))
        elif source == "criteo":
            from autodim.data.criteo import INT_FIELDS

            reading.update(bucketize=list(INT_FIELDS))
    return {"format": ENCODERS_FORMAT, "version": 1,
            "schema_fingerprint": data.schema.fingerprint(), "input": reading,
            "fields": fields}


class _IdsEncoder:
    """Fields of synthetic data: the raw value is the id; anything else reads row 0."""

    def __init__(self, vocab_size: int, width: int) -> None:
        self.vocab_size, self.width = int(vocab_size), int(width)

    def transform(self, values: Any) -> Any:
        import numpy as np
        import pandas as pd

        v = pd.to_numeric(pd.Series(values).reset_index(drop=True), errors="coerce")
        v = v.to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isfinite(v) & (v >= 0) & (v < self.vocab_size) & (v == np.floor(v))
        return np.where(ok, np.nan_to_num(v), 0).astype(np.int64)


class RowEncoder:
    """Turns raw rows (a CSV/Parquet/RecBole file, a DataFrame, dicts) into the id matrix
    a shipped model reads, with the encoders fitted at training time (``encoders.json``)."""

    def __init__(self, payload: Mapping[str, Any], *, source: str = ENCODERS_NAME) -> None:
        from autodim.data.encode import encoder_from_dict
        from autodim.errors import DataError

        if payload.get("format") != ENCODERS_FORMAT:
            raise ConfigError(f"{source}: not an autodim encoders file")
        self.source = source
        self.input = dict(payload.get("input") or {})
        self.schema_fingerprint = payload.get("schema_fingerprint", "")
        self.encoders: dict[str, Any] = {}
        try:
            for f in payload["fields"]:
                self.encoders[f["name"]] = (_IdsEncoder(f["vocab_size"], f["width"])
                                            if f["kind"] == "ids" else encoder_from_dict(f))
        except (KeyError, TypeError, ValueError, DataError) as exc:
            raise ConfigError(f"{source}: malformed encoders file ({exc})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> RowEncoder:
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return cls(payload, source=str(path))

    @property
    def field_names(self) -> list[str]:
        return list(self.encoders)

    def frame(self, rows: Any):
        """Raw rows as a DataFrame with one column per field (renames and Criteo's integer
        bucketing applied as at training time)."""
        import pandas as pd

        from autodim.errors import DataError

        if isinstance(rows, (str, os.PathLike)):
            df = self.read(rows)
        elif isinstance(rows, pd.DataFrame):
            df = rows
        elif isinstance(rows, Mapping):
            df = pd.DataFrame([rows])
        else:
            try:
                df = pd.DataFrame(list(rows))
            except (TypeError, ValueError) as exc:
                raise DataError(f"rows to score: expected a DataFrame, dicts or a file "
                                f"({exc})") from None
        rename = {k: v for k, v in (self.input.get("rename") or {}).items() if k in df.columns
                  and v not in df.columns}
        if rename:
            df = df.rename(columns=rename)
        bucket = [c for c in self.input.get("bucketize") or [] if c in df.columns]
        if bucket:
            from autodim.data.criteo import bucketize

            df = df.copy()
            for c in bucket:
                df[c] = bucketize(pd.to_numeric(df[c], errors="coerce").to_numpy())
        return df

    def read(self, path: str | os.PathLike):
        """Read a data file the way the training source was read."""
        import pandas as pd

        from autodim.errors import DataError

        path = Path(path).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        kind = self.input.get("source")
        name = path.name.lower()
        if path.is_dir() or name.endswith(".inter"):
            return _read_recbole_rows(path)
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if kind == "criteo" and not name.endswith((".csv", ".csv.gz")):
            from autodim.data.criteo import CAT_FIELDS, COLUMNS, INT_FIELDS

            first = pd.read_csv(path, sep="\t", header=None, nrows=1, dtype=str)
            names = COLUMNS if first.shape[1] == len(COLUMNS) else [*INT_FIELDS, *CAT_FIELDS]
            return pd.read_csv(path, sep="\t", header=None, names=names, dtype=str,
                               keep_default_na=False, na_values=[""], encoding="utf-8")
        try:
            # As the table loader reads: every column as text, pandas' default NA markers.
            return pd.read_csv(path, sep=self.input.get("delimiter", ","), dtype=str,
                               encoding="utf-8")
        except (UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"{path}: cannot read ({exc})") from None

    def encode(self, rows: Any):
        """``int64[N, T]`` ids of raw rows; values never seen in training map to id 0."""
        import numpy as np

        from autodim.errors import DataError

        df = self.frame(rows)
        missing = [n for n in self.encoders if n not in df.columns]
        if missing:
            raise DataError(f"rows to score lack field column(s) {missing}; columns found: "
                            f"{', '.join(map(str, df.columns)) or 'none'}")
        width = sum(e.width for e in self.encoders.values())
        out = np.empty((len(df), width), dtype=np.int64)
        col = 0
        for name, enc in self.encoders.items():
            out[:, col:col + enc.width] = np.asarray(enc.transform(df[name])).reshape(
                len(df), enc.width)
            col += enc.width
        return out


def _read_recbole_rows(path: Path):
    """A RecBole folder (or one ``.inter`` file) joined with its ``.user`` / ``.item``
    files, as the RecBole loader does."""
    from autodim.data.recbole import _join, _read_atomic
    from autodim.errors import DataError

    inter = path
    if path.is_dir():
        found = sorted(path.glob("*.inter"))
        if len(found) != 1:
            raise DataError(f"{path}: expected exactly one RecBole .inter file, found "
                            f"{len(found)}")
        inter = found[0]
    df, _ = _read_atomic(inter)
    for ext, key in (("user", "user_id"), ("item", "item_id")):
        side = inter.with_suffix(f".{ext}")
        if side.is_file():
            df = _join(df, _read_atomic(side)[0], key, side, f"_{ext}")
    return df


class ShippedModel:
    """A shipped model: the compact model, its plan and the encoders that turn raw rows
    into its ids. ``predict(rows)`` gives click probabilities; calling it on an id tensor
    gives logits, as the model does.

    Example:
        >>> model = load_model("shipped/")                                 # doctest: +SKIP
        >>> model.predict([{"user_id": "196", "item_id": "242", ...}])     # doctest: +SKIP
    """

    def __init__(self, model, plan, encoder: RowEncoder | None, folder: Path) -> None:
        self.model, self.plan, self.encoder, self.folder = model, plan, encoder, folder

    def __call__(self, ids):
        return self.model(ids)

    def __repr__(self) -> str:
        return (f"ShippedModel({str(self.folder)!r}, {len(self.plan.fields)} fields, "
                f"{self.plan.num_bytes():,} B)")

    def encode(self, rows: Any):
        if self.encoder is None:
            raise ConfigError(f"{self.folder}: no {ENCODERS_NAME} (exported without the "
                              "data's encoders), so raw rows cannot be encoded; pass ids")
        return self.encoder.encode(rows)

    def predict(self, rows: Any, *, batch_size: int = 65536):
        """Click probabilities (``float32[N]``) of raw rows: a file path, a DataFrame, a
        dict or a list of dicts with one value per field."""
        import numpy as np
        import torch

        ids = self.encode(rows)
        out = np.empty(len(ids), dtype=np.float32)
        self.model.eval()
        with torch.no_grad():
            for lo in range(0, len(ids), batch_size):
                x = torch.from_numpy(ids[lo:lo + batch_size])
                out[lo:lo + len(x)] = torch.sigmoid(self.model(x)).numpy()
        return out


def load_shipped(folder: str | os.PathLike) -> ShippedModel:
    """Open an export folder (``autodim export``'s output) as a :class:`ShippedModel`."""
    from autodim.plan import DimensionPlan

    folder = Path(folder)
    if not (folder / "plan.json").is_file() or not (folder / "weights.safetensors").is_file():
        raise ConfigError(f"{folder}: not an export folder (needs plan.json and "
                          "weights.safetensors; write one with autodim export)")
    plan = DimensionPlan.load(folder / "plan.json")
    model = load_model(plan, folder / "weights.safetensors")
    encoder = None
    if (folder / ENCODERS_NAME).is_file():
        encoder = RowEncoder.load(folder / ENCODERS_NAME)
        if plan.schema_fingerprint and encoder.schema_fingerprint not in (
                "", plan.schema_fingerprint):
            raise ConfigError(f"{folder / ENCODERS_NAME}: encoders belong to another schema "
                              f"({encoder.schema_fingerprint}, the plan's is "
                              f"{plan.schema_fingerprint})")
    return ShippedModel(model, plan, encoder, folder)


# -- export folders -----------------------------------------------------------------------
# What an export folder may hold (the CLI adds pareto.* beside a trial's files): an
# existing folder is replaced whole, so one holding anything else is refused.
EXPORT_NAMES = frozenset({"plan.json", "weights.safetensors", "model.json", ENCODERS_NAME,
                          "torchrec.json", "fuxictr.yaml", "fuxictr_feature_map.json",
                          "pareto.csv", "pareto.json", "pareto.html"})


def check_export_target(out: str | os.PathLike) -> None:
    """An export target must not exist, or be an empty folder or an earlier export (it is
    replaced whole); a file there (or on the way to it) is a one-line error."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"lies under the file {p}"
                raise ConfigError(f"export target {out} {what}; give a folder (it is "
                                  "created if missing)")
            break
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_NAMES)
        if other:
            shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5
                                             else "")
            raise ConfigError(f"export target {out} holds files that are not part of an "
                              f"autodim export ({shown}); an export replaces its folder "
                              "whole, so give a new or empty folder, or an earlier export")


def _install_folder(tmp: Path, out: Path) -> None:
    """Put a finished export folder at ``out``; an old folder there is replaced whole."""
    import uuid

    trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    if out.exists():
        os.replace(out, trash)  # renames: ``out`` is the old folder or the new one, whole
    try:
        os.replace(tmp, out)
    except OSError:
        if trash.exists() and not out.exists():
            os.replace(trash, out)  # put the old one back
        raise
    shutil.rmtree(trash, ignore_errors=True)


def export_plan(plan, out_dir: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                backbone: str = "fm", backbone_kwargs: Mapping[str, Any] | None = None,
                encoders: Mapping[str, Any] | None = None, data=None) -> dict[str, Any]:
    """Write a plan's export folder (see the module docstring).

    The folder is written beside the target under a temporary name and renamed into
    place when complete: a failed export (a full disk) leaves an older folder at the
    target exactly as it was, and never a mix of two exports.

    Args:
        encoders: An ``encoders.json`` payload (:func:`shipped_encoders`); or give
            ``data`` (the dataset the plan was trained on) to take it from there.

    Returns:
        ``{"plan": path, "weights": path | None, "model": path, "encoders": path | None,
        "torchrec": path, "fuxictr": path, "fuxictr_feature_map": path, "warnings": [...]}``.
    """
    import uuid

    import yaml

    out = Path(out_dir).expanduser()
    check_export_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if encoders is None and data is not None:
        encoders = shipped_encoders(data)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        warnings = _write_export(plan, tmp, weights, backbone, backbone_kwargs, encoders, yaml)
        _install_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    names = {"plan": "plan.json", "model": "model.json", "torchrec": "torchrec.json",
             "fuxictr": "fuxictr.yaml", "fuxictr_feature_map": "fuxictr_feature_map.json"}
    paths: dict[str, Any] = {k: out / v for k, v in names.items()}
    paths["weights"] = out / "weights.safetensors" if weights is not None else None
    paths["encoders"] = out / ENCODERS_NAME if encoders is not None else None
    paths["warnings"] = warnings
    return paths


def _write_export(plan, out: Path, weights, backbone, backbone_kwargs, encoders, yaml
                  ) -> list[str]:
    plan.save(out / "plan.json")
    if weights is not None:
        shutil.copyfile(weights, out / "weights.safetensors")
    if encoders is not None:
        atomic_write_json(out / ENCODERS_NAME, dict(encoders))
    atomic_write_json(out / "model.json", {
        "format": "autodim.model", "backbone": backbone,
        "backbone_kwargs": dict(backbone_kwargs or {}), "D": plan.D,
        "num_bytes": plan.num_bytes(), "compression": round(plan.compression(), 4),
        "metrics": plan.metrics, "plan": "plan.json",
        "weights": "weights.safetensors" if weights is not None else None,
        "encoders": ENCODERS_NAME if encoders is not None else None,
        "load": "autodim.load_model('<this folder>').predict(rows)"})
    tr = torchrec_tables(plan)
    atomic_write_json(out / "torchrec.json", tr)
    fx = fuxictr_feature_specs(plan)
    notes = fx.pop("notes")
    header = ("# FuxiCTR model config block from autodim (paste under your model's settings;\n"
              "# fuxictr_feature_map.json describes autodim's ids for FuxiCTR's FeatureMap)\n")
    header += "".join(f"# note: {n}\n" for n in notes)
    atomic_write_text(out / "fuxictr.yaml", header + yaml.safe_dump(fx, sort_keys=False))
    atomic_write_json(out / "fuxictr_feature_map.json", fuxictr_feature_map(plan))
    unmapped = [n.split(":")[0] for n in notes if "no FuxiCTR equivalent" in n]
    return tr["warnings"] + ([
        f"FuxiCTR has no hashed tables: {', '.join(unmapped)} exported as plain tables (see "
        "the notes in fuxictr.yaml)"] if unmapped else []) + ([] if encoders is not None else [
        f"no encoders were found for the data, so {ENCODERS_NAME} is not written: the shipped "
        "model scores ids, not raw rows"])


def export_trial(result, number: int, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Export a complete trial of a study (a failed or pruned trial is a clear error),
    with the encoders of the study's dataset (see :func:`shipped_encoders`)."""
    result._complete(number)  # noqa: SLF001 - raises the user-facing error for other states
    plan = result.plan(number)
    weights = result.weights_path(number)
    meta = weights_metadata(weights)
    kwargs = json.loads(meta["backbone_kwargs"]) if meta.get("backbone_kwargs") else {}
    from autodim.errors import AutodimError

    try:
        encoders, why = _study_encoders(result, plan), None
    except AutodimError as exc:  # data moved or changed: ship the model, say what is missing
        encoders, why = None, str(exc)
    paths = export_plan(plan, out_dir, weights=weights, backbone=meta.get("backbone", "fm"),
                        backbone_kwargs=kwargs, encoders=encoders)
    if why:
        paths["warnings"].append(f"the study's dataset could not be read for its encoders: "
                                 f"{why}")
    return paths


def _study_encoders(result, plan) -> dict[str, Any] | None:
    """The encoders of a study's dataset (loaded through the data cache)."""
    from autodim.data import load_data

    dataset = dict((result.manifest.get("config") or {}).get("dataset") or {})
    if "source" not in dataset:
        return None
    source = dataset.pop("source")
    data = load_data(source, **dataset)
    plan.check_schema(data.schema)
    return shipped_encoders(data, cache_dir=dataset.get("cache_dir"))
