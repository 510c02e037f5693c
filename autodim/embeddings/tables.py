"""Storage for one field's rows: ``ids[...] -> Tensor[..., d]`` plus exact byte accounting.

Every table reports ``num_bytes()`` as the bytes of what a serving system must store for
it: each parameter and index at its dtype. Dense tables count their tensors; masked tables
count their compact (sparse / bitmap) form, because the dense mask used for training is
not what is shipped.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "FLOAT_BYTES", "tensor_bytes", "FieldTable", "DenseTable", "HashTable", "QRTable",
    "MEmComTable", "RowPrunedTable", "SparseTable", "sparse_table_bytes", "row_pruned_bytes",
    "col_index_bytes",
]

FLOAT_BYTES = 4  # float32 storage everywhere


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _emb_bytes(emb: nn.Module) -> int:
    """A lookup's stored bytes: float32 weights, or a quantized table's own count."""
    return emb.num_bytes() if hasattr(emb, "num_bytes") else tensor_bytes(emb.weight)


def col_index_bytes(dim: int) -> int:
    """Bytes of one column index in a sparse row: uint8 up to 256 columns, else int16."""
    return 1 if dim <= 256 else 2


def sparse_table_bytes(rows: int, dim: int, nnz: int) -> int:
    """CSR storage: float32 values, one column index per value, int32 row pointers."""
    return nnz * (FLOAT_BYTES + col_index_bytes(dim)) + (rows + 1) * 4


def row_pruned_bytes(rows: int, dim: int, kept: int) -> int:
    """Kept rows at float32 plus a one-bit-per-id bitmap that maps pruned ids to row 0."""
    return kept * dim * FLOAT_BYTES + math.ceil(rows / 8)


def _embedding(rows: int, dim: int, sparse: bool, init_std: float) -> nn.Embedding:
    emb = nn.Embedding(rows, dim, sparse=sparse)
    nn.init.normal_(emb.weight, std=init_std)
    return emb


class FieldTable(nn.Module):
    """Base class: ``dim`` output columns, ``forward(ids) -> [..., dim]``, ``num_bytes()``."""

    dim: int

    def num_bytes(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class DenseTable(FieldTable):
    """A plain ``rows x dim`` table."""

    def __init__(self, rows: int, dim: int, *, sparse: bool = False, init_std: float = 0.01):
        super().__init__()
        self.rows, self.dim = rows, dim
        self.embedding = _embedding(rows, dim, sparse, init_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)

    def num_bytes(self) -> int:
        return _emb_bytes(self.embedding)


class HashTable(FieldTable):
    """Naive hashing trick: id ``i`` reads row ``i mod m``.

    Ids are assigned in descending training frequency, so ``i mod m`` gives the ``m`` most
    frequent ids buckets of their own; a random hash would let hot ids collide.
    """

    def __init__(self, rows: int, buckets: int, dim: int, *, sparse: bool = False,
                 init_std: float = 0.01):
        super().__init__()
        self.rows, self.buckets, self.dim = rows, buckets, dim
        self.embedding = _embedding(buckets, dim, sparse, init_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(torch.remainder(ids, self.buckets))

    def num_bytes(self) -> int:
        return _emb_bytes(self.embedding)


class QRTable(FieldTable):
    """Quotient-remainder trick (Shi et al., KDD 2020), multiplicative combination:
    ``e(i) = Q[i // m] * R[i mod m]``, which is unique for every id."""

    def __init__(self, rows: int, buckets: int, dim: int, *, sparse: bool = False,
                 init_std: float = 0.01):
        super().__init__()
        self.rows, self.buckets, self.dim = rows, buckets, dim
        self.quotient = _embedding(math.ceil(rows / buckets), dim, sparse, 1.0)
        nn.init.uniform_(self.quotient.weight, 0.5, 1.5)  # near-1 so products start ~R
        self.remainder = _embedding(buckets, dim, sparse, init_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.quotient(torch.div(ids, self.buckets, rounding_mode="floor"))
                * self.remainder(torch.remainder(ids, self.buckets)))

    def num_bytes(self) -> int:
        return tensor_bytes(self.quotient.weight) + tensor_bytes(self.remainder.weight)


class MEmComTable(FieldTable):
    """MEmCom (Pansare et al., MLSys 2022): ``e(i) = U[h(i) mod m] * w[i]``.

    ``U`` is ``m x dim``; ``w`` holds one trainable scalar per id, initialised to 1, so two
    ids sharing a bucket can still differ in scale. Bytes: ``(m*dim + n) * 4``.
    """

    def __init__(self, rows: int, buckets: int, dim: int, *, sparse: bool = False,
                 init_std: float = 0.01):
        super().__init__()
        self.rows, self.buckets, self.dim = rows, buckets, dim
        self.shared = _embedding(buckets, dim, sparse, init_std)
        self.scale = nn.Embedding(rows, 1, sparse=sparse)
        nn.init.ones_(self.scale.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.shared(torch.remainder(ids, self.buckets)) * self.scale(ids)

    def num_bytes(self) -> int:
        return _emb_bytes(self.shared) + _emb_bytes(self.scale)


class RowPrunedTable(FieldTable):
    """A table whose pruned rows all read the shared OOV row 0 (OptEmbed-style row pruning).

    ``keep`` is a bool buffer over ids; training keeps a dense table (pruned rows receive no
    gradient), serving stores only the kept rows plus a bitmap (see :func:`row_pruned_bytes`).
    """

    def __init__(self, rows: int, dim: int, keep: torch.Tensor, *, sparse: bool = False,
                 init_std: float = 0.01):
        super().__init__()
        self.rows, self.dim = rows, dim
        keep = keep.to(torch.bool).clone()
        keep[0] = True  # the shared OOV row is always stored
        self.register_buffer("keep", keep)
        self.embedding = _embedding(rows, dim, sparse, init_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(torch.where(self.keep[ids], ids, torch.zeros_like(ids)))

    def num_bytes(self) -> int:
        return row_pruned_bytes(self.rows, self.dim, int(self.keep.sum()))


class SparseTable(FieldTable):
    """An element-wise pruned table (PEP, magnitude pruning): weights times a fixed mask.

    Counted as CSR storage of the surviving values (see :func:`sparse_table_bytes`).
    """

    def __init__(self, rows: int, dim: int, mask: torch.Tensor, *, sparse: bool = False,
                 init_std: float = 0.01):
        super().__init__()
        self.rows, self.dim = rows, dim
        self.register_buffer("mask", mask.to(torch.bool).clone())
        self.embedding = _embedding(rows, dim, sparse, init_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids) * self.mask[ids]

    def num_bytes(self) -> int:
        return sparse_table_bytes(self.rows, self.dim, int(self.mask.sum()))
