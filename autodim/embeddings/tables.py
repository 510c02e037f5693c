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

from autodim.embeddings.gather import Embedding

__all__ = [
    "FLOAT_BYTES", "tensor_bytes", "FieldTable", "DenseTable", "HashTable", "QRTable",
    "MEmComTable", "RowPrunedTable", "SparseTable", "sparse_table_bytes", "row_pruned_bytes",
    "col_index_bytes", "KeptRowsTable", "CSRTable", "serving_tables", "rank_directory",
    "kept_row_index", "kept_positions", "kept_row_search", "csr_gather", "kept_lut_table",
    "KEPT_LUT_BYTES",
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


def _embedding(rows: int, dim: int, sparse: bool, init_std: float) -> Embedding:
    emb = Embedding(rows, dim, sparse=sparse)
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
        self.scale = Embedding(rows, 1, sparse=sparse)
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


# -- serving forms of the masked tables ------------------------------------------------------
# A loaded model holds masked tables in the form their ``num_bytes()`` counts (and the file
# stores): the kept rows plus the keep bitmap, or CSR. Lookups read those directly: a rank
# over the bitmap maps an id to its kept row, a CSR row is gathered entry by entry.

def _popcount8() -> torch.Tensor:
    b = torch.arange(256)
    return sum((b >> i) & 1 for i in range(8))


def kept_lut_table() -> torch.Tensor:
    """``lut[byte * 8 + k]``: for the id at bit ``k`` of ``byte`` (np.packbits order, bit 7
    first), the number of kept ids before it in that byte if it is kept, else -1."""
    b, k = torch.arange(256).unsqueeze(1), torch.arange(8).unsqueeze(0)
    before = _popcount8()[b >> (8 - k)]  # the k higher bits (k = 0: none)
    return torch.where(((b >> (7 - k)) & 1) == 1, before, -1).reshape(-1).to(torch.int16)


KEPT_LUT_BYTES = 256 * 8 * 2  # the int16 table above, one per bitmap owner


def rank_directory(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-level rank of a keep bitmap (uint8, np.packbits order): ``block`` (int32, kept
    ids before each 256-id block) and ``prefix`` (uint8, kept ids before each byte within
    its block: at most 31 * 8). ``ceil(n/256) * 4 + ceil(n/8)`` bytes for ``n`` ids."""
    counts = _popcount8().to(bits.device)[bits.long()]
    before = torch.cumsum(counts, 0) - counts
    block = before[::32]
    prefix = before - block.repeat_interleave(32)[: len(bits)]
    return block.to(torch.int32), prefix.to(torch.uint8)


def kept_row_index(pos: torch.Tensor, bits: torch.Tensor, lut: torch.Tensor,
                   block: torch.Tensor, prefix: torch.Tensor,
                   fallback: torch.Tensor | int) -> torch.Tensor:
    """The kept row of bit position ``pos`` (its rank among kept ids), or ``fallback``
    (the field's row 0, the shared OOV row) where the id was pruned."""
    byte = pos >> 3
    # lut read as [byte value, bit]: one two-index read instead of shifting and or-ing the
    # flat index (Criteo / 10, 26 fields: 237 against 269 us a lookup at 256 rows)
    t = lut.view(256, 8)[bits[byte].long(), pos & 7]
    return torch.where(t >= 0, block[byte >> 5] + prefix[byte] + t, fallback)


def kept_positions(bits: torch.Tensor) -> torch.Tensor:
    """The bit positions of the kept ids of a keep bitmap (np.packbits order), ascending,
    as int32, then one sentinel past every position: for :func:`kept_row_search`."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=bits.device)
    kept = ((bits.unsqueeze(1) >> shifts) & 1).reshape(-1).nonzero()[:, 0]
    end = torch.tensor([bits.numel() * 8], device=bits.device)
    return torch.cat([kept, end]).to(torch.int32)


def kept_row_search(pos: torch.Tensor, positions: torch.Tensor,
                    fallback: torch.Tensor | int) -> torch.Tensor:
    """:func:`kept_row_index` by binary search in :func:`kept_positions`: a kept id's row is
    where its position is found. Four operations instead of the rank's dozen, so it wins
    for small lookups and loses for large ones (each search reads ~log2(kept) entries)."""
    pos = pos.to(positions.dtype)  # (mixed dtypes convert the whole sequence each call)
    r = torch.searchsorted(positions, pos, out_int32=True)
    return torch.where(positions[r] == pos, r, fallback)


def csr_gather(ptr: torch.Tensor, value_offset: torch.Tensor | int, values: torch.Tensor,
               col_index: torch.Tensor, row_ptr: torch.Tensor, dim: int,
               entry_k: torch.Tensor | None = None, small: int = 8192) -> torch.Tensor:
    """Rows ``ptr`` of a CSR table as dense ``[*ptr.shape, dim]``: only the stored entries
    are read (one gather each for values and columns, one scatter), no dense mask.
    ``value_offset`` is added to every row's start (tables concatenated in one buffer).

    With ``entry_k = arange(L)`` (``L`` = the most entries a row has) and ``values`` /
    ``col_index`` ending in a zero padding entry, lookups of up to ``small`` entries read
    ``L`` entries a row (missing ones the padding) in a fixed number of operations; larger
    ones read the exact entries (the per-row counts decide how many).
    """
    start = row_ptr[ptr].long()
    counts = row_ptr[ptr + 1].long() - start
    start = start + value_offset
    if entry_k is not None and counts.numel() * entry_k.numel() <= small:
        k = entry_k.numel()
        entry = torch.where(entry_k < counts.unsqueeze(-1), start.unsqueeze(-1) + entry_k,
                            values.numel() - 1)  # [..., L], padding entry past the count
        out = values.new_zeros(*ptr.shape, dim)
        return out.scatter_add_(-1, col_index[entry].long(), values[entry]) if k else out
    counts, start = counts.reshape(-1), start.reshape(-1)
    n = counts.numel()
    out = values.new_zeros(n * dim)
    total = int(counts.sum())
    if total:
        bag = torch.repeat_interleave(counts, output_size=total)
        entry = (torch.arange(total, device=ptr.device)
                 + (start - (torch.cumsum(counts, 0) - counts))[bag])
        out[bag * dim + col_index[entry].long()] = values[entry]
    return out.view(*ptr.shape, dim)


class KeptRowsTable(FieldTable):
    """Serving form of a :class:`RowPrunedTable`: the kept ``rows`` (float32) and the
    ``keep_bits`` bitmap, exactly what :func:`row_pruned_bytes` counts; an id reads its
    rank among kept ids, a pruned id the shared row 0.

    The rank directory (:func:`rank_directory`, ``ceil(n/256)*4 + ceil(n/8)`` bytes) and the
    bit table (:data:`KEPT_LUT_BYTES`) are derived from the bitmap when it is set, never
    stored in a file; a fused group holds one for all its fields and drops the fields' own.
    """

    def __init__(self, num_ids: int, dim: int, kept: int):
        super().__init__()
        self.num_ids, self.dim = num_ids, dim
        self.register_buffer("rows", torch.zeros(kept, dim))
        self.register_buffer("keep_bits", torch.zeros(math.ceil(num_ids / 8), dtype=torch.uint8))
        self.drop_index()

    def drop_index(self) -> None:
        for name in ("rank_block", "rank_prefix", "kept_lut"):
            self.register_buffer(name, None, persistent=False)

    def index(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(bit table, rank blocks, rank prefixes), derived on first use."""
        if self.rank_block is None:
            self.rank_block, self.rank_prefix = rank_directory(self.keep_bits)
            self.kept_lut = kept_lut_table().to(self.keep_bits.device)
        return self.kept_lut, self.rank_block, self.rank_prefix

    @classmethod
    def from_table(cls, table: RowPrunedTable) -> "KeptRowsTable":
        import numpy as np

        keep = table.keep.detach().cpu()
        out = cls(table.rows, table.dim, int(keep.sum()))
        out.rows = table.embedding.weight.detach()[keep.to(table.embedding.weight.device)]
        out.keep_bits = torch.from_numpy(np.packbits(keep.numpy())).to(out.rows.device)
        out.index()
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(kept_row_index(ids, self.keep_bits, *self.index(), 0),
                                       self.rows)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.drop_index()  # derived from the old bitmap
        self.index()

    def num_bytes(self) -> int:
        return row_pruned_bytes(self.num_ids, self.dim, self.rows.shape[0])


class CSRTable(FieldTable):
    """Serving form of a :class:`SparseTable`: CSR ``values`` (float32), ``col_index``
    (uint8, int16 above 256 columns) and ``row_ptr`` (int32), exactly what
    :func:`sparse_table_bytes` counts; a lookup gathers the stored entries of its rows."""

    def __init__(self, num_ids: int, dim: int, nnz: int):
        super().__init__()
        self.num_ids, self.dim = num_ids, dim
        self.register_buffer("values", torch.zeros(nnz))
        self.register_buffer("col_index", torch.zeros(
            nnz, dtype=torch.uint8 if col_index_bytes(dim) == 1 else torch.int16))
        self.register_buffer("row_ptr", torch.zeros(num_ids + 1, dtype=torch.int32))

    @classmethod
    def from_table(cls, table: SparseTable) -> "CSRTable":
        mask, weight = table.mask, table.embedding.weight.detach()
        rows, cols = mask.nonzero(as_tuple=True)  # row-major, as CSR wants
        out = cls(table.rows, table.dim, len(rows))
        out.values = weight[rows, cols]
        out.col_index = cols.to(out.col_index.dtype)
        out.row_ptr = torch.cat([torch.zeros(1, dtype=torch.long, device=mask.device),
                                 mask.sum(1).cumsum(0)]).to(torch.int32)
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return csr_gather(ids, 0, self.values, self.col_index, self.row_ptr, self.dim)

    def num_bytes(self) -> int:
        return sparse_table_bytes(self.num_ids, self.dim, self.values.numel())


def serving_tables(model: nn.Module) -> nn.Module:
    """Replace every masked table of ``model`` by its serving form (in place; returns it):
    :class:`RowPrunedTable` -> :class:`KeptRowsTable`, :class:`SparseTable` ->
    :class:`CSRTable`. Outputs are unchanged; the dense rows and masks are released.
    Serving forms hold buffers, not parameters: they are for inference, not training."""
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if type(child) is RowPrunedTable:
                setattr(mod, name, KeptRowsTable.from_table(child))
            elif type(child) is SparseTable:
                setattr(mod, name, CSRTable.from_table(child))
    return model
