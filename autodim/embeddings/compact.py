"""The embedding layer every model consumes: ``ids[B, T] -> Tensor[B, F, D]``."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from autodim.data.schema import Schema

__all__ = ["FieldwiseEmbedding"]


class FieldwiseEmbedding(nn.Module):
    """One module per field, each mapping its id columns to ``[B, D]``; stacked to
    ``[B, F, D]``. Compact layers (mixed dims, hashing, pruning) differ only in the field
    modules, so every backbone and every training loop works with all of them.

    Args:
        schema: The fields, in batch column order.
        out_dim: The common output dim ``D``.
        field_modules: One module per field with ``forward(ids[B, w]) -> [B, D]`` and
            ``num_bytes()``.
    """

    def __init__(self, schema: Schema, out_dim: int, field_modules: Sequence[nn.Module]):
        super().__init__()
        if len(field_modules) != schema.num_fields:
            raise ValueError(f"{len(field_modules)} field modules for {schema.num_fields} fields")
        self.schema, self.out_dim = schema, out_dim
        self.fields = nn.ModuleList(field_modules)
        self._slices = [(s.start, s.stop) for s in schema.column_slices()]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(ids[:, lo:hi]) for m, (lo, hi) in zip(self.fields, self._slices)],
                           dim=1)

    def num_bytes(self) -> int:
        return sum(m.num_bytes() for m in self.fields)

    def field_bytes(self) -> dict[str, int]:
        return {f.name: m.num_bytes() for f, m in zip(self.schema.fields, self.fields)}
