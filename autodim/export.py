"""Ship a compact model: weights (safetensors), the plan, TorchRec and FuxiCTR configs.

What an export folder holds (:func:`export_plan`):

- ``plan.json``: the :class:`~autodim.plan.DimensionPlan` (``autodim inspect`` reads it).
- ``weights.safetensors``: every tensor of the compact model (embedding + backbone),
  tensors only; :func:`load_model` rebuilds the model from the plan and loads them.
- ``model.json``: backbone name and settings, ``D``, bytes (what :func:`load_model` needs).
- ``torchrec.json``: a list of ``EmbeddingBagConfig`` entries (name, embedding_dim,
  num_embeddings, feature_names, pooling) plus the per-field projections TorchRec has no
  table for, and warnings (TorchRec's fused kernels want dims that are multiples of 4).
- ``fuxictr.yaml``: a FuxiCTR model-config block (``embedding_dim`` + ``feature_specs``
  with a per-feature ``embedding_dim`` and a ``feature_encoder`` lifting it to ``D``).

Example:
    >>> from autodim.data.synthetic import make_planted
    >>> from autodim.plan import DimensionPlan
    >>> plan = DimensionPlan.from_dims(make_planted("tiny", rows=500).schema, 8, [2, 4, 8, 1, 1])
    >>> [t["embedding_dim"] for t in torchrec_tables(plan)["tables"]]
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

from autodim._io import atomic_path, atomic_write_json, atomic_write_text
from autodim.errors import ConfigError, PlanError

__all__ = ["save_weights", "load_weights", "weights_metadata", "build_model", "load_model",
           "torchrec_tables", "torchrec_configs", "fuxictr_feature_specs", "export_plan",
           "export_trial", "WEIGHTS_FORMAT"]

WEIGHTS_FORMAT = "autodim.weights"


# -- weights ----------------------------------------------------------------------------
def save_weights(model, path: str | os.PathLike, *, plan=None, backbone: str | None = None,
                 backbone_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Write a model's tensors (its ``state_dict``) as safetensors, atomically.

    Args:
        model: A :class:`~autodim.task.CTRTask` (or any module).
        path: Target file.
        plan, backbone, backbone_kwargs: Recorded in the file's metadata (strings only), so
            a weights file says what it belongs to.
    """
    from safetensors.torch import save_file

    # Copies: safetensors refuses tensors that share storage, and views of bigger tensors.
    tensors = {k: v.detach().cpu().contiguous().clone()
               for k, v in compact_state_dict(model).items()}
    meta = {"format": WEIGHTS_FORMAT, "version": "1"}
    if backbone is not None:
        meta["backbone"] = backbone
        meta["backbone_kwargs"] = json.dumps(dict(backbone_kwargs or {}), sort_keys=True)
    if plan is not None:
        meta.update(D=str(plan.D), num_bytes=str(plan.num_bytes()),
                    schema_fingerprint=plan.schema_fingerprint)
    path = Path(path)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def compact_state_dict(model) -> dict[str, Any]:
    """The model's tensors in the form a server stores: masked tables as what their
    ``num_bytes()`` counts, not as the dense tensors used for training.

    - :class:`~autodim.embeddings.tables.SparseTable`: CSR ``values`` (float32),
      ``col_index`` (uint8, or int16 above 256 columns), ``row_ptr`` (int32).
    - :class:`~autodim.embeddings.tables.RowPrunedTable`: the kept ``rows`` and a
      ``keep_bits`` bitmap (one bit per id).

    Every other tensor is saved as is, so the file's tensor bytes equal
    ``plan.num_bytes()`` plus the backbone. :func:`expand_state_dict` inverts it.
    """
    import numpy as np
    import torch

    from autodim.embeddings.quant import FakeQuantEmbedding
    from autodim.embeddings.tables import RowPrunedTable, SparseTable

    state = dict(model.state_dict())
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(mod, FakeQuantEmbedding):
            # Quantized tables ship packed: codes, float16 scales and offsets (or float16).
            for key in [k for k in state if k.startswith(prefix)]:
                state.pop(key)
            state.update({prefix + k: v for k, v in mod.export().items()})
        elif isinstance(mod, SparseTable):
            weight = state.pop(prefix + "embedding.weight")
            mask = state.pop(prefix + "mask")
            rows, cols = mask.nonzero(as_tuple=True)  # row-major, as CSR wants
            index_dtype = torch.uint8 if mod.dim <= 256 else torch.int16
            state[prefix + "values"] = weight[rows, cols]
            state[prefix + "col_index"] = cols.to(index_dtype)
            state[prefix + "row_ptr"] = torch.cat(
                [torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)]).to(torch.int32)
        elif isinstance(mod, RowPrunedTable):
            weight = state.pop(prefix + "embedding.weight")
            keep = state.pop(prefix + "keep")
            state[prefix + "rows"] = weight[keep]
            state[prefix + "keep_bits"] = torch.from_numpy(np.packbits(keep.cpu().numpy()))
    return state


def expand_state_dict(model, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Turn :func:`compact_state_dict` tensors back into ``model``'s training layout."""
    import numpy as np
    import torch

    from autodim.embeddings.tables import RowPrunedTable, SparseTable

    state = dict(tensors)
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(mod, SparseTable) and prefix + "values" in state:
            values = state.pop(prefix + "values")
            cols = state.pop(prefix + "col_index").long()
            counts = state.pop(prefix + "row_ptr").long().diff()
            rows = torch.repeat_interleave(torch.arange(mod.rows), counts)
            weight = torch.zeros(mod.rows, mod.dim, dtype=values.dtype)
            mask = torch.zeros(mod.rows, mod.dim, dtype=torch.bool)
            weight[rows, cols] = values
            mask[rows, cols] = True
            state[prefix + "embedding.weight"], state[prefix + "mask"] = weight, mask
        elif isinstance(mod, RowPrunedTable) and prefix + "rows" in state:
            kept = state.pop(prefix + "rows")
            bits = state.pop(prefix + "keep_bits").numpy()
            keep = torch.from_numpy(np.unpackbits(bits)[: mod.rows].astype(bool))
            # Pruned rows are never read (they map to row 0); zeros stand in for them.
            weight = torch.zeros(mod.rows, mod.dim, dtype=kept.dtype)
            weight[keep] = kept
            state[prefix + "embedding.weight"], state[prefix + "keep"] = weight, keep
    return state


def load_weights(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` from a safetensors file (or a ``.pt`` state dict, read with
    ``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such weights file")
    if path.suffix in (".pt", ".pth", ".bin"):
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickled code or a corrupt file: refuse it
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError(f"{path}: refused: not a plain tensor state dict "
                              f"({type(exc).__name__}: {first[:200]}); weights are loaded "
                              "with weights_only=True, so pickled code never runs") from None
        if not isinstance(state, dict):
            raise ConfigError(f"{path}: not a state dict (got {type(state).__name__})")
        return dict(state), {}
    from safetensors import safe_open

    try:
        tensors, meta = {}, {}
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    except Exception as exc:  # noqa: BLE001 - a corrupt file is a user-facing error
        raise ConfigError(f"{path}: not a readable safetensors file ({exc})") from None
    return tensors, meta


def weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors weights file, without reading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - a corrupt file is a user-facing error
        raise ConfigError(f"{path}: not a readable safetensors file ({exc})") from None


def build_model(plan, backbone: str = "fm", *, backbone_kwargs: Mapping[str, Any] | None = None,
                weights: str | os.PathLike | Mapping[str, Any] | None = None):
    """The compact model a plan describes (embedding + backbone), optionally with weights.

    Returns:
        A :class:`~autodim.task.CTRTask`; ``model(ids) -> logits``. In eval mode when
        weights are given.

    Example:
        >>> from autodim.data.synthetic import make_planted
        >>> from autodim.plan import DimensionPlan
        >>> plan = DimensionPlan.full(make_planted("tiny", rows=500).schema, 4)
        >>> build_model(plan, "fm").num_bytes() == plan.num_bytes()
        True
    """
    from autodim.models import create_backbone
    from autodim.task import CTRTask

    embedding = plan.build()
    model = CTRTask(embedding, create_backbone(backbone, len(plan.fields), plan.D,
                                               **dict(backbone_kwargs or {})))
    if weights is not None:
        from autodim.embeddings.quant import packed_skeleton

        packed_skeleton(model)  # quantized fields load as packed inference tables
        state = load_weights(weights)[0] if isinstance(weights, (str, os.PathLike)) else weights
        try:
            model.load_state_dict(expand_state_dict(model, state), strict=True)
        except RuntimeError as exc:
            raise PlanError(f"the weights do not fit this plan/backbone "
                            f"({str(exc).splitlines()[0]})") from None
        model.eval()
    return model


def load_model(plan, weights: str | os.PathLike, *, backbone: str | None = None,
               backbone_kwargs: Mapping[str, Any] | None = None):
    """Rebuild an exported model: ``plan`` (object or JSON path) + weights file. The
    backbone defaults to the one recorded in the weights' metadata."""
    from autodim.plan import DimensionPlan

    if isinstance(plan, (str, os.PathLike)):
        plan = DimensionPlan.load(plan)
    tensors, meta = load_weights(weights)
    if backbone is None:
        backbone = meta.get("backbone", "fm")
        if backbone_kwargs is None and meta.get("backbone_kwargs"):
            backbone_kwargs = json.loads(meta["backbone_kwargs"])
    return build_model(plan, backbone, backbone_kwargs=backbone_kwargs, weights=tensors)


# -- serving configs ----------------------------------------------------------------------
def _table(name: str, rows: int, dim: int, feature: str, pooling: str, note: str | None = None,
           precision: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from autodim.embeddings.quant import torchrec_data_type

    entry = {"name": name, "embedding_dim": int(dim), "num_embeddings": int(rows),
             "feature_names": [feature], "pooling": pooling,
             "data_type": torchrec_data_type(precision)}
    if note:
        entry["note"] = note
    return entry


def torchrec_tables(plan) -> dict[str, Any]:
    """TorchRec ``EmbeddingBagConfig`` entries for a plan, as JSON-able dicts.

    One table per stored table: plain fields map 1:1; frequency groups give one table per
    group; MEmCom gives a shared ``m x d`` table plus an ``n x 1`` scale table (multiply
    the two lookups); QR gives quotient and remainder tables; hashing an ``m``-row table.
    Dropped fields (dim 0) have no table. ``projections`` lists the ``d x D`` matrices that
    lift a field to the common dim (not TorchRec tables: apply them after the lookup).

    :func:`torchrec_configs` turns the entries into real ``EmbeddingBagConfig`` objects.
    """
    import math

    from autodim.embeddings.quant import scalar_precision

    tables, projections, warnings = [], [], []
    for fp in plan.fields:
        pooling = "MEAN" if fp.kind == "sequence" else "SUM"
        name = f"t_{fp.name}"
        if fp.dim == 0 and not fp.frequency_groups:
            continue
        if fp.frequency_groups:
            for k, g in enumerate(fp.frequency_groups):
                if g["dim"] > 0:
                    tables.append(_table(f"{name}_g{k}", g["rows"], g["dim"], fp.name, pooling,
                                         "rows of this frequency group only (ids sorted by "
                                         "training frequency, remapped to the group)",
                                         fp.precision))
        elif fp.hashing is not None:
            m, method = fp.hashing["buckets"], fp.hashing["method"]
            if method == "memcom":
                tables.append(_table(f"{name}_memcom_shared", m, fp.dim, fp.name, pooling,
                                     f"look up id mod {m}; multiply by {name}_memcom_scale",
                                     fp.precision))
                tables.append(_table(f"{name}_memcom_scale", fp.vocab_size, 1, fp.name, pooling,
                                     "one scalar per id (MEmCom)", scalar_precision(fp.precision)))
            elif method == "qr":
                tables.append(_table(f"{name}_quotient", math.ceil(fp.vocab_size / m), fp.dim,
                                     fp.name, pooling, f"look up id // {m}"))
                tables.append(_table(f"{name}_remainder", m, fp.dim, fp.name, pooling,
                                     f"look up id mod {m}; multiply with the quotient"))
            else:
                tables.append(_table(name, m, fp.dim, fp.name, pooling, f"look up id mod {m}",
                                     fp.precision))
        elif fp.row_mask is not None:
            tables.append(_table(name, int(fp.row_mask["kept"]), fp.dim, fp.name, pooling,
                                 "kept rows only; pruned ids read the OOV row (remap ids with "
                                 "the plan's row_mask)"))
        else:
            note = ("element-sparse in the plan; stored dense here" if fp.sparse is not None
                    else None)
            tables.append(_table(name, fp.vocab_size, fp.dim, fp.name, pooling, note,
                                 fp.precision))
        dims = ([g["dim"] for g in fp.frequency_groups] if fp.frequency_groups else [fp.dim])
        for d in dims:
            if 0 < d < plan.D or fp.align == "select":
                projections.append({"field": fp.name, "from_dim": d, "to_dim": plan.D,
                                    "align": fp.align, **({"columns": fp.columns}
                                                          if fp.columns else {})})
    odd = [f"{t['name']} ({t['embedding_dim']})" for t in tables
           if t["embedding_dim"] % 4 and not t["name"].endswith("_memcom_scale")]
    for t in tables:
        if t["embedding_dim"] % 4 and not t["name"].endswith("_memcom_scale"):
            t["warning"] = "embedding_dim is not a multiple of 4"
    if odd:
        warnings.append(f"{len(odd)} TorchRec table(s) have an embedding_dim that is not a "
                        f"multiple of 4, which TorchRec's fused FBGEMM kernels need (pad them, "
                        f"or search with candidate dims that are): {', '.join(odd)}")
    return {"format": "autodim.torchrec", "D": plan.D, "tables": tables,
            "projections": projections, "warnings": warnings}


def torchrec_configs(plan) -> list[Any]:
    """``torchrec.EmbeddingBagConfig`` objects for a plan (needs ``torchrec`` installed)."""
    try:
        from torchrec import DataType, EmbeddingBagConfig, PoolingType
    except ImportError:
        raise ConfigError("torchrec is not installed; torchrec_tables(plan) gives the same "
                          "configs as JSON-able dicts") from None
    return [EmbeddingBagConfig(name=t["name"], embedding_dim=t["embedding_dim"],
                               num_embeddings=t["num_embeddings"],
                               feature_names=t["feature_names"],
                               pooling=PoolingType[t["pooling"]],
                               data_type=DataType[t["data_type"]])
            for t in torchrec_tables(plan)["tables"]]


def fuxictr_feature_specs(plan) -> dict[str, Any]:
    """A FuxiCTR model-config block: ``embedding_dim`` (= ``D``) and ``feature_specs``
    giving each kept feature its own ``embedding_dim`` and a ``feature_encoder`` back to
    ``D``. Dropped fields are left out of ``use_features``. FuxiCTR has no hashed or
    pruned tables: such fields are exported at their dim with a note."""
    specs, notes, used = [], [], []
    for fp in plan.fields:
        if fp.dim == 0:
            notes.append(f"{fp.name}: dropped (dim 0)")
            continue
        used.append(fp.name)
        spec: dict[str, Any] = {"name": fp.name, "embedding_dim": int(fp.dim)}
        if fp.dim < plan.D:
            spec["feature_encoder"] = (f"nn.Linear({fp.dim}, {plan.D}, bias=False)"
                                       if fp.align == "project"
                                       else f"nn.ZeroPad1d((0, {plan.D - fp.dim}))")
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


# -- export folders -----------------------------------------------------------------------
def export_plan(plan, out_dir: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                backbone: str = "fm", backbone_kwargs: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
    """Write a plan's export folder (see the module docstring).

    Returns:
        ``{"plan": path, "weights": path | None, "model": path, "torchrec": path,
        "fuxictr": path, "warnings": [...]}``.
    """
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"plan": plan.save(out / "plan.json")}
    if weights is not None:
        with atomic_path(out / "weights.safetensors") as tmp:
            shutil.copyfile(weights, tmp)
        paths["weights"] = out / "weights.safetensors"
    else:
        paths["weights"] = None
    atomic_write_json(out / "model.json", {
        "format": "autodim.model", "backbone": backbone,
        "backbone_kwargs": dict(backbone_kwargs or {}), "D": plan.D,
        "num_bytes": plan.num_bytes(), "compression": round(plan.compression(), 4),
        "metrics": plan.metrics, "plan": "plan.json",
        "weights": "weights.safetensors" if weights is not None else None,
        "load": "autodim.export.load_model('plan.json', 'weights.safetensors')"})
    paths["model"] = out / "model.json"
    tr = torchrec_tables(plan)
    atomic_write_json(out / "torchrec.json", tr)
    paths["torchrec"] = out / "torchrec.json"
    fx = fuxictr_feature_specs(plan)
    notes = fx.pop("notes")
    header = "# FuxiCTR model config block from autodim (paste under your model's settings)\n"
    header += "".join(f"# note: {n}\n" for n in notes)
    atomic_write_text(out / "fuxictr.yaml", header + yaml.safe_dump(fx, sort_keys=False))
    paths["fuxictr"] = out / "fuxictr.yaml"
    unmapped = [n.split(":")[0] for n in notes if "no FuxiCTR equivalent" in n]
    paths["warnings"] = tr["warnings"] + ([
        f"FuxiCTR has no hashed tables: {', '.join(unmapped)} exported as plain tables (see "
        "the notes in fuxictr.yaml)"] if unmapped else [])
    return paths


def export_trial(result, number: int, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Export a complete trial of a study (a failed or pruned trial is a clear error)."""
    result._complete(number)  # noqa: SLF001 - raises the user-facing error for other states
    plan = result.plan(number)
    weights = result.weights_path(number)
    meta = weights_metadata(weights)
    kwargs = json.loads(meta["backbone_kwargs"]) if meta.get("backbone_kwargs") else {}
    return export_plan(plan, out_dir, weights=weights, backbone=meta.get("backbone", "fm"),
                       backbone_kwargs=kwargs)
