"""One field end to end: table lookup, mean pooling over a sequence, alignment to ``D``."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from autodim.embeddings.tables import FieldTable, tensor_bytes

__all__ = ["Align", "Project", "Select", "FieldEmbedding", "FrequencyGroupEmbedding",
           "DroppedField", "mean_pool"]


def mean_pool(vectors: torch.Tensor, ids: torch.Tensor, is_sequence: bool) -> torch.Tensor:
    """``[B, w, d] -> [B, d]``. Sequences average their non-padding (id != 0) entries."""
    if not is_sequence:
        return vectors[:, 0]
    mask = (ids != 0).unsqueeze(-1).to(vectors.dtype)
    return (vectors * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class Align(nn.Module):
    """Identity alignment (the field's dim already equals ``D``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def num_bytes(self) -> int:
        return 0


class Project(Align):
    """A learned ``d x D`` matrix (no bias), as in mixed-dimension embeddings (MDE)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def num_bytes(self) -> int:
        return tensor_bytes(self.linear.weight)


class Select(Align):
    """Places the ``d`` stored columns at ``columns`` of a ``D``-wide zero vector.

    ``pad`` alignment is ``Select`` of the first ``d`` columns and stores no index; an
    arbitrary column set stores its int64 column index (counted).
    """

    def __init__(self, columns: Sequence[int], out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        cols = torch.as_tensor(list(columns), dtype=torch.long)
        self.is_prefix = bool(torch.equal(cols, torch.arange(len(cols))))
        # A prefix needs no index (a slice does it), so it is neither stored nor counted.
        self.register_buffer("columns", cols, persistent=not self.is_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_prefix:
            return nn.functional.pad(x, (0, self.out_dim - x.shape[-1]))
        out = x.new_zeros(*x.shape[:-1], self.out_dim)
        return out.index_copy(-1, self.columns, x)

    def num_bytes(self) -> int:
        return 0 if self.is_prefix else tensor_bytes(self.columns)


class FieldEmbedding(nn.Module):
    """``ids[B, w] -> [B, D]``: table lookup, pool (sequence fields), align."""

    def __init__(self, table: FieldTable, align: Align, *, is_sequence: bool = False):
        super().__init__()
        self.table, self.align, self.is_sequence = table, align, is_sequence

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Pool before aligning: the projection is linear, so this is exact and cheaper.
        return self.align(mean_pool(self.table(ids), ids, self.is_sequence))

    def num_bytes(self) -> int:
        return self.table.num_bytes() + self.align.num_bytes()


class FrequencyGroupEmbedding(nn.Module):
    """Rows split into contiguous id ranges (ids are in descending frequency order), each
    range with its own dim and its own alignment to ``D`` (AutoEmb / MDE frequency groups)."""

    def __init__(self, groups: Sequence[tuple[int, FieldEmbedding]], out_dim: int, *,
                 is_sequence: bool = False):
        super().__init__()
        self.out_dim, self.is_sequence = out_dim, is_sequence
        bounds, start = [], 0
        for rows, _ in groups:
            bounds.append((start, start + rows))
            start += rows
        self.bounds = bounds
        self.groups = nn.ModuleList([g for _, g in groups])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        out = torch.zeros(flat.shape[0], self.out_dim, device=ids.device)
        for (lo, hi), group in zip(self.bounds, self.groups):
            pos = ((flat >= lo) & (flat < hi)).nonzero(as_tuple=True)[0]
            if pos.numel():
                # Each group sees local ids; sequence pooling happens below, after alignment.
                out = out.index_copy(0, pos, group(flat[pos].unsqueeze(1) - lo))
        out = out.view(*ids.shape, self.out_dim)
        return mean_pool(out, ids, self.is_sequence)

    def num_bytes(self) -> int:
        return sum(g.num_bytes() for g in self.groups)


class DroppedField(nn.Module):
    """A field with dim 0: contributes a zero vector and costs nothing."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim = out_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.new_zeros(ids.shape[0], self.out_dim, dtype=torch.float32)

    def num_bytes(self) -> int:
        return 0
