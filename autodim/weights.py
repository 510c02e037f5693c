"""Weights of a compact model: safetensors files in compact form, checked on load.

``save_weights`` writes every tensor of the model (masked tables in compact form, quantized
tables packed), so the embedding tensors' bytes equal ``plan.num_bytes()``;
``build_model(plan, backbone, weights=...)`` rebuilds the model a plan describes and loads
weights after checking them against the plan. This sits below :mod:`autodim.export` (which
ships folders) so that :meth:`DimensionPlan.build_model` can use it without an import cycle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from autodim._io import atomic_path
from autodim.errors import ConfigError, PlanError

__all__ = ["save_weights", "load_weights", "weights_metadata", "build_model", "check_weights",
           "compact_state_dict", "expand_state_dict", "WEIGHTS_FORMAT"]


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
    from autodim.embeddings.fused import named_field_modules
    from autodim.embeddings.quant import FakeQuantEmbedding
    from autodim.embeddings.tables import (
        CSRTable,
        KeptRowsTable,
        RowPrunedTable,
        SparseTable,
    )

    state = dict(model.state_dict())
    for name, mod in named_field_modules(model):  # fused layers: their per-field modules
        prefix = f"{name}." if name else ""
        if isinstance(mod, FakeQuantEmbedding):
            # Quantized tables ship packed: codes, float16 scales and offsets (or float16).
            for key in [k for k in state if k.startswith(prefix)]:
                state.pop(key)
            state.update({prefix + k: v for k, v in mod.export().items()})
        elif isinstance(mod, (SparseTable, RowPrunedTable)):
            # the serving form (CSR / kept rows + bitmap) is the stored form
            state.pop(prefix + "embedding.weight")
            state.pop(prefix + ("mask" if isinstance(mod, SparseTable) else "keep"))
            form = CSRTable if isinstance(mod, SparseTable) else KeptRowsTable
            state.update({prefix + k: v for k, v in form.from_table(mod).state_dict().items()})
    return state


def expand_state_dict(model, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Turn :func:`compact_state_dict` tensors back into ``model``'s training layout."""
    import numpy as np
    import torch

    from autodim.embeddings.fused import named_field_modules
    from autodim.embeddings.tables import RowPrunedTable, SparseTable

    state = dict(tensors)
    for name, mod in named_field_modules(model):  # fused layers: their per-field modules
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
        if isinstance(weights, (str, os.PathLike)):
            state, meta = load_weights(weights)
            _load_state(model, plan, state, meta, str(weights))
        else:
            _load_state(model, plan, weights, {}, "weights")
    return model


def _load_state(model, plan, state: Mapping[str, Any], meta: Mapping[str, str],
                source: str) -> None:
    """Load checked weights into a freshly built model and put it in its serving layout:
    quantized fields as packed tables, masked tables in their stored (compact) form, plain
    fields fused."""
    from autodim.embeddings.fused import FusedEmbedding, fusable
    from autodim.embeddings.quant import packed_skeleton
    from autodim.embeddings.tables import serving_tables

    packed_skeleton(model)  # quantized fields load as packed inference tables
    check_weights(plan, state, meta, source=source, model=model)
    try:
        model.load_state_dict(expand_state_dict(model, state), strict=True)
    except RuntimeError as exc:
        raise PlanError(f"{source}: the weights do not fit this plan/backbone "
                        f"({str(exc).splitlines()[0]})") from None
    # serving layout: masked tables in their stored form (kept rows + bitmap, CSR), then
    # one table per width and family
    serving_tables(model)
    if fusable(model.embedding, serving=True):
        model.embedding = FusedEmbedding(model.embedding, serving=True).bake()
    # Evaluation mode last: the modules built just above start in training mode, which
    # turned off the served read paths (one gather, baked masks, MEmCom as a bag).
    model.eval()


def check_weights(plan, tensors: Mapping[str, Any], meta: Mapping[str, str], *,
                  source: str = "weights", model=None) -> None:
    """Refuse weights that do not belong to ``plan`` (one-line :class:`PlanError`s).

    Checks, in order: the file's metadata (schema fingerprint, ``D``, bytes) against the
    plan; the tensors against what the model expects (the first missing, extra or
    wrongly-shaped tensor is named); no NaN or infinite value in any float tensor.
    """
    import torch

    for key, want in (("schema_fingerprint", plan.schema_fingerprint), ("D", str(plan.D)),
                      ("num_bytes", str(plan.num_bytes()))):
        have = meta.get(key)
        if have is not None and want and str(have) != str(want):
            raise PlanError(f"{source}: the weights were saved for another plan ({key} "
                            f"{have}, this plan has {want})")
    if model is not None:
        expected = {k: tuple(v.shape) for k, v in compact_state_dict(model).items()}
        missing = [k for k in expected if k not in tensors]
        extra = [k for k in tensors if k not in expected]
        if missing:
            raise PlanError(f"{source}: tensor {missing[0]!r} is missing"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                            + f"; the plan/backbone expects {len(expected)} tensors")
        if extra:
            raise PlanError(f"{source}: unexpected tensor {extra[0]!r}"
                            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                            + "; the weights belong to another plan or backbone")
        for k, shape in expected.items():
            if tuple(tensors[k].shape) != shape:
                raise PlanError(f"{source}: tensor {k!r} has shape "
                                f"{list(tensors[k].shape)}, the plan expects {list(shape)}")
    for k, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            what = "NaN" if bool(torch.isnan(t).any()) else "infinite"
            raise PlanError(f"{source}: tensor {k!r} holds {what} values; refusing to load "
                            "(a diverged or corrupt model)")
