"""The fused embedding path: fields that share a width read ONE table.

:class:`FusedEmbedding` computes exactly what a
:class:`~autodim.embeddings.compact.FieldwiseEmbedding` computes, with fewer, bigger operations:

- every float32 field with a dense, hashed (``id mod m``), row-pruned or element-pruned
  table (categorical or sequence) of dim ``d`` is a slice of one ``rows x d`` table; a batch
  is one gather (one ``embedding_bag`` with per-sample weights when a sequence field is
  averaged) instead of a Python loop of per-field modules, and one backward scatter;
- the fields of one group that project (MDE) do it in one batched matmul
  (``[n, B, d] x [n, d, D]``), fields that select columns (SSEDS) one scatter; prefix-padded
  fields pad once;
- QR and MEmCom fields of one width fuse their two tables each (two gathers for the group);
- every other field (frequency groups, dropped, non-float32 precision) keeps its own module;
  served, packed fields (8 / 4 / 2 / 1 bits, dense or hashed) of one dim and precision are one
  buffer read by one kernel call, 16-bit ones of one dim and dtype one half table
  (:class:`_PackedGroup`).

Served (``FusedEmbedding(..., serving=True)``, what :func:`autodim.weights.build_model` and
``load_model`` build): masked tables arrive in their stored form
(:class:`~autodim.embeddings.tables.KeptRowsTable`, :class:`~autodim.embeddings.tables.CSRTable`)
and group as the ``kept`` and ``csr`` families; dense fields of a QR / MEmCom plan's width
join the product group (second factor: a row of ones) and dropped fields join the biggest
plain / CSR group as a zero row, so a plan of one width is one group whose output needs no
concatenation or reordering.

It is built from a ``FieldwiseEmbedding`` and keeps it: the per-field parameters become
views of the fused tensors, so :meth:`FusedEmbedding.fieldwise` hands back the per-field
module holding the trained weights without a copy. ``state_dict`` keys are the per-field
ones (``fields.{i}.table.embedding.weight``, ``fields.{i}.align.linear.weight``), so
checkpoints and exports do not see the difference, and ``num_bytes()`` is the same sum.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from autodim.embeddings.compact import FieldwiseEmbedding
from autodim.embeddings.field import Align, DroppedField, FieldEmbedding, Project, Select
from autodim.embeddings.gather import Embedding, bag_sum
from autodim.embeddings.quant import (
    FakeQuantEmbedding,
    QuantizedEmbedding,
    one_id_per_bag,
    read_coded,
    read_packed,
)
from autodim.embeddings.tables import (
    KEPT_LUT_BYTES,
    CSRTable,
    DenseTable,
    FieldTable,
    HashTable,
    KeptRowsTable,
    MEmComTable,
    QRTable,
    RowPrunedTable,
    SparseTable,
    csr_gather,
    kept_lut_table,
    kept_positions,
    kept_row_index,
    kept_row_search,
    rank_directory,
)

__all__ = ["FusedEmbedding", "fusable", "named_field_modules", "resident_bytes", "rank_bytes"]


_TABLES = (DenseTable, HashTable, RowPrunedTable, SparseTable, QRTable, MEmComTable,
           KeptRowsTable, CSRTable)


def _family(table: nn.Module) -> str:
    """Tables of one family and width share a group: one table (``plain``), two whose
    rows multiply (``qr``: quotient x remainder; ``memcom``: shared row x per-id scale), or
    the serving forms of masked tables (``kept``: kept rows read through a rank of the keep
    bitmap; ``csr``: CSR entries gathered)."""
    return {QRTable: "qr", MEmComTable: "memcom", KeptRowsTable: "kept",
            CSRTable: "csr"}.get(type(table), "plain")


def _weights(table: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(first, second) weight of a table; the second is the multiplier of a product."""
    if type(table) is QRTable:
        return table.quotient.weight, table.remainder.weight
    if type(table) is MEmComTable:
        return table.shared.weight, table.scale.weight
    if type(table) is KeptRowsTable:
        return table.rows, None
    if type(table) is CSRTable:
        return table.values, None
    return table.embedding.weight, None


def _read(table: Embedding, rows: torch.Tensor) -> torch.Tensor:
    """``table(rows)`` without the module call where no gradient is taken (a serving
    batch of one row spends a few microseconds a call on the module machinery)."""
    if torch.is_grad_enabled():
        return table(rows)
    return nn.functional.embedding(rows, table.weight)


def _point_first(table: nn.Module, src: torch.Tensor, lo: int, hi: int) -> None:
    """Make ``table``'s first weight (see :func:`_weights`) a view of ``src[lo:hi]``."""
    view = src.data[lo:hi]
    if type(table) is KeptRowsTable:
        table.rows = view
        return
    param = nn.Parameter(view, requires_grad=src.requires_grad)
    if type(table) is QRTable:
        table.quotient.weight = param
    elif type(table) is MEmComTable:
        table.shared.weight = param
    else:
        table.embedding.weight = param


def _kind(module: nn.Module) -> str | None:
    """``identity`` / ``pad`` / ``project`` / ``select`` for a field the fused path can take,
    else None."""
    if type(module) is not FieldEmbedding or type(module.table) not in _TABLES:
        return None
    if any(p.dtype != torch.float32 for p in module.table.parameters()):
        return None  # other precisions keep their own module
    if any(isinstance(m, (FakeQuantEmbedding, QuantizedEmbedding)) for m in module.modules()):
        return None  # quantized fields (QAT or packed) keep their own module and byte count
    return _align_kind(module.align)


def _align_kind(align: nn.Module) -> str | None:
    if type(align) is Align:
        return "identity"
    if type(align) is Project:
        return "project"
    if type(align) is Select:
        return "pad" if align.is_prefix else "select"
    return None


def _packed_key(module: nn.Module) -> tuple[int, str] | None:
    """``(dim, "int<bits>")`` for a field whose dense or hashed table is packed in a kernel's
    layout (:class:`QuantizedEmbedding` at 8 / 4 / 2 / 1 bits), ``(dim, "int<bits>-coded")``
    for a coded one (field-scaled, 1 bit or one value a row: codes and a value table),
    ``(dim, "half-<dtype>")`` for a 16-bit one, else None: fields of one key serve through
    one read (:class:`_PackedGroup`)."""
    if type(module) is not FieldEmbedding or type(module.table) not in (DenseTable, HashTable):
        return None
    q = module.table.embedding
    if type(q) is not QuantizedEmbedding or q.bits > 16 or _align_kind(module.align) is None:
        return None
    if q.bits == 16:
        return (module.table.dim, f"half-{q.precision['dtype']}")
    return (module.table.dim, f"int{q.bits}" + ("-coded" if q.coded else ""))


def fusable(emb: nn.Module, *, serving: bool = False) -> bool:
    """Whether :class:`FusedEmbedding` would fuse anything of ``emb``: a
    ``FieldwiseEmbedding`` with at least two plain fields of one width (``serving``: or two
    packed fields of one width and precision)."""
    if not isinstance(emb, FieldwiseEmbedding) or isinstance(emb, FusedEmbedding):
        return False
    dims: dict[tuple[int, str], int] = defaultdict(int)
    for m in emb.fields:
        key = _packed_key(m) if serving else None
        if key is not None:
            dims[key] += 1
        elif _kind(m) is not None:
            dims[(m.table.dim, _family(m.table))] += 1
    return any(n > 1 for n in dims.values())


# Kept-rows lookups of up to this many ids search the kept positions instead of reading the
# rank directory (Criteo / 10, 26 fields, 331k kept rows of 3.4M: 14 against 38 us at one
# row, 25 against 47 at 16 rows, even at 64 rows; the rank wins beyond).
KEPT_SEARCH = 1024

# Lookups of up to this many (row, entry) slots read a fixed number of entries per row
# (see csr_gather); measured with benchmarks/inference.py.
CSR_SMALL = 8192


def _zero_field(dim: int, family: str, out_dim: int) -> FieldEmbedding:
    """A stand-in for a dropped field inside a serving group: one zero row that every id
    reads (a 1-bucket hash table, or a CSR table of one empty row)."""
    if family == "csr":
        table = CSRTable(1, dim, 0)
    else:
        table = HashTable(1, 1, dim)
        nn.init.zeros_(table.embedding.weight)
    return FieldEmbedding(table, Align() if dim == out_dim else Select(range(dim), out_dim))


def _product_field(field: FieldEmbedding, family: str) -> FieldEmbedding:
    """A dense field as a product table of its family whose second factor is one row of
    ones (same outputs; the dense weight is shared, not copied)."""
    t = field.table
    with torch.no_grad():
        if family == "qr":  # Q[i // 1] * R[i mod 1], R = ones
            table = QRTable.__new__(QRTable)
            FieldTable.__init__(table)
            table.rows, table.buckets, table.dim = t.rows, 1, t.dim
            table.quotient = t.embedding
            table.remainder = nn.Embedding(1, t.dim, _weight=torch.ones(1, t.dim))
            table.ones_factor = True
        else:  # U[i mod n] * w[i mod 1], w = 1
            table = MEmComTable.__new__(MEmComTable)
            FieldTable.__init__(table)
            table.rows, table.buckets, table.dim = 1, t.rows, t.dim
            table.shared = t.embedding
            table.scale = nn.Embedding(1, 1, _weight=torch.ones(1, 1))
            table.ones_factor = True
    return FieldEmbedding(table, field.align, is_sequence=field.is_sequence)


class _Group(nn.Module):
    """The fields of one width: one table, their columns, their alignment.

    Per column of the group: ``row = offset + (id mod m)`` (``m`` = buckets of a hashed
    field, the vocabulary otherwise; QR and MEmCom groups read two fused tables and multiply,
    as ``QRTable`` / ``MEmComTable`` do); row-pruned fields send pruned ids to their row 0
    (one bool per row, the ``keep`` of their table); element-pruned fields multiply by their
    mask (one bool per entry, the ``mask`` of their table). The per-field tensors become views of
    the group's, so the per-field modules and the group always hold the same values.
    """

    # the tensors of the serving small-batch read (products, kept rows), set up by bake()
    _small: tuple | None = None
    _bag_off: torch.Tensor | None = None  # the last batch's bag offsets (_bag_offsets)

    def __init__(self, members: list[tuple[int, FieldEmbedding, tuple[int, int]]],
                 out_dim: int, sparse_threshold: int):
        super().__init__()
        dim = members[0][1].table.dim
        self.dim, self.out_dim = dim, out_dim
        self.field_index = [i for i, _, _ in members]
        tables = [m.table for _, m, _ in members]
        self.family = _family(tables[0])
        firsts = [_weights(t)[0] for t in tables]
        sizes = [w.shape[0] for w in firsts]
        col_buffer, per_col = self._init_columns(members, sizes)
        buckets = [getattr(t, "buckets", 0) for t in tables]
        # first table's row: QR id // m; hashing and MEmCom id mod m; else the id itself
        self.divided = self.family == "qr"
        if self.divided:
            col_buffer("col_div", buckets)
        self.hashed = self.family == "memcom" or any(type(t) is HashTable for t in tables)
        if self.family == "csr" and any(t.num_ids == 1 for t in tables):
            # a dropped field's stand-in: every id reads its row 0 (min, cheaper than mod)
            col_buffer("col_max", [t.num_ids - 1 for t in tables])
        if self.hashed:
            col_buffer("col_modulus", sizes if self.family == "plain" else buckets)
        self.product = self.family in ("qr", "memcom")
        if self.product:  # second table's row: QR id mod m, MEmCom the id
            seconds = [_weights(t)[1] for t in tables]
            sizes_b = [w.shape[0] for w in seconds]
            self.bounds_b = [(int(s), int(s) + n) for s, n in zip(
                torch.tensor([0] + sizes_b[:-1]).cumsum(0), sizes_b)]
            col_buffer("col_offsets_b", [lo for lo, _ in self.bounds_b])
            # MEmCom stand-ins for dense fields have one scale (1.0) that every id reads
            self.scale_hashed = self.family == "memcom" and any(t.rows == 1 for t in tables)
            # Columns of real product fields (not the dense stand-ins, whose factor is 1):
            # from 64 rows a batch only they gather the second table (measured: the gather
            # and multiply of every column cost more than selecting these).
            ones = [getattr(t, "ones_factor", False) for t in tables]
            self.partial_product = any(ones) and not all(ones)
            if self.partial_product:
                real = torch.tensor([not o for o in ones]).repeat_interleave(per_col)
                self.register_buffer("prod_cols", real.nonzero()[:, 0], persistent=False)
            if self.family == "qr":
                col_buffer("col_modulus_b", buckets)
            elif self.scale_hashed:
                col_buffer("col_modulus_b", [t.rows for t in tables])
            if self.partial_product:
                # From 64 rows the int64 division / remainder is taken for the product
                # columns only: a stand-in's first row is its id (QR: id // 1; MEmCom: id
                # mod its vocabulary), and a MEmCom scale row is the id (one scale per id)
                # or the stand-in's one row: id * {1, 0} + offset, a multiply where the
                # remainder cost 4x more (Criteo / 10, 5 QR fields of 26, 4096 rows).
                pc = self.prod_cols
                first = self.col_div if self.divided else self.col_modulus
                self.register_buffer("pc_first", first[pc], persistent=False)
                self.register_buffer("pc_offsets", self.col_offsets[pc], persistent=False)
                self.register_buffer("pc_offsets_b", self.col_offsets_b[pc], persistent=False)
                if self.family == "qr":
                    self.register_buffer("pc_modulus_b", self.col_modulus_b[pc],
                                         persistent=False)
                else:
                    col_buffer("col_scale_id", [int(not o) for o in ones])
            with torch.no_grad():
                weight_b = torch.cat(seconds)
            self.table_b = Embedding(weight_b.shape[0], weight_b.shape[1],
                                     sparse=weight_b.shape[0] > sparse_threshold,
                                     _weight=weight_b)
        self.csr = self.family == "csr"
        self.kept = self.family == "kept"
        self._offsets: torch.Tensor | None = None  # one id per bag (serving MEmCom)
        with torch.no_grad():
            if self.csr:
                weight = torch.cat(firsts)
            else:
                # Copied field by field, each field's own tensor released as soon as it is
                # in (its module reads a view from here on; rebind() sets the final views):
                # building holds the table plus one field, not two tables (torch.cat: peak
                # RSS 1.9x the table at build).
                weight = firsts[0].new_empty(sum(sizes), dim)
                for j, (t, (lo, hi)) in enumerate(zip(tables, self.bounds)):
                    weight[lo:hi].copy_(firsts[j])
                    _point_first(t, weight, lo, hi)
                    firsts[j] = None
        if self.csr:  # values, columns and row pointers of every field, concatenated
            # one zero entry at the end: the padding entry of the small-batch gather
            self.register_buffer("values", torch.cat([weight, weight.new_zeros(1)]),
                                 persistent=False)
            col_index = torch.cat([t.col_index for t in tables])
            self.register_buffer("col_index", torch.cat([col_index, col_index.new_zeros(1)]),
                                 persistent=False)
            self.register_buffer("row_ptr", torch.cat([t.row_ptr for t in tables]),
                                 persistent=False)
            counts = torch.cat([t.row_ptr.diff() for t in tables])
            self.max_nnz = int(counts.max()) if counts.numel() else 0  # entries of a row
            self.csr_small = CSR_SMALL
            self.register_buffer("entry_k", torch.arange(self.max_nnz), persistent=False)
            ptr_sizes = [t.row_ptr.numel() for t in tables]
            ptr_starts = torch.tensor([0] + ptr_sizes[:-1]).cumsum(0)
            self.ptr_bounds = [(int(s), int(s) + n) for s, n in zip(ptr_starts, ptr_sizes)]
            col_buffer("col_ptr_off", ptr_starts.tolist())
            self.table = None
        else:
            self.table = Embedding(weight.shape[0], dim,
                                   sparse=weight.shape[0] > sparse_threshold, _weight=weight)
        if self.kept:
            self.table.weight.requires_grad_(False)
            # Ids are numbered by descending frequency, so a field often keeps a prefix of
            # them: then its kept row is the id itself (below the prefix) and no rank is read.
            kept_n = [t.rows.shape[0] for t in tables]
            self.prefix_only = all(_keeps_prefix(t) for t in tables)
            col_buffer("col_kept", kept_n)
            # one bitmap for the group (each field's starts at a byte), shared with the fields
            self.register_buffer("bits", torch.cat([t.keep_bits for t in tables]),
                                 persistent=False)
            byte_sizes = [t.keep_bits.numel() for t in tables]
            byte_starts = torch.tensor([0] + byte_sizes[:-1]).cumsum(0)
            self.bit_bounds = [(int(s), int(s) + n) for s, n in zip(byte_starts, byte_sizes)]
        if self.kept and not self.prefix_only:
            # the rank directory maps (bit offset + id) straight to the row in the
            # concatenated kept rows
            col_buffer("col_bitoff", (byte_starts * 8).tolist())
            block, prefix = rank_directory(self.bits)  # see KeptRowsTable
            self.register_buffer("rank_block", block, persistent=False)
            self.register_buffer("rank_prefix", prefix, persistent=False)
            self.register_buffer("kept_lut", kept_lut_table(), persistent=False)
            # and for small lookups the kept ids' positions (4 bytes a kept row), searched
            self.register_buffer("kept_pos", kept_positions(self.bits), persistent=False)
        self.row_pruned = any(type(t) is RowPrunedTable for t in tables)
        if self.row_pruned:
            self.register_buffer("keep", torch.cat([
                t.keep if type(t) is RowPrunedTable else torch.ones(n, dtype=torch.bool)
                for t, n in zip(tables, sizes)]), persistent=False)
        self.masked = any(type(t) is SparseTable for t in tables)
        if self.masked:
            self.register_buffer("mask", torch.cat([
                t.mask if type(t) is SparseTable else torch.ones(n, dim, dtype=torch.bool)
                for t, n in zip(tables, sizes)]), persistent=False)
        self.baked = False
        self._init_align([m for _, m, _ in members])

    def _init_columns(self, members: list[tuple[int, FieldEmbedding, tuple[int, int]]],
                      sizes: list[int]):
        """The group's columns of the id batch, each field's first row (``bounds``,
        ``col_offsets``) and the sequence bags; returns ``col_buffer(name, per-field
        values)``, which registers a per-column buffer, and the columns per field."""
        starts = torch.tensor([0] + sizes[:-1]).cumsum(0)
        self.bounds = [(int(s), int(s) + n) for s, n in zip(starts, sizes)]
        # A categorical field reads its first column only (as mean_pool does).
        widths = [hi - lo if m.is_sequence else 1 for _, m, (lo, hi) in members]
        cols = torch.cat([torch.arange(lo, lo + w) for (_, _, (lo, _)), w in zip(members, widths)])
        per_col = torch.tensor(widths)

        def col_buffer(name: str, values) -> None:
            self.register_buffer(name, torch.tensor(values).repeat_interleave(per_col),
                                 persistent=False)

        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("col_offsets", starts.repeat_interleave(per_col), persistent=False)
        # sequences pool (even of width 1: an all-padding row reads zeros, as mean_pool)
        self.pooled = any(m.is_sequence for _, m, _ in members)
        self.num_cols = int(sum(widths))
        if self.pooled:
            # (sample, field) bags: field j of a sample starts at column bag_starts[j] of the
            # group's columns; sequence columns are weighted by mask / count (mean over
            # non-padding ids, as mean_pool), others by 1.
            self.register_buffer("bag_starts", torch.tensor([0] + widths[:-1]).cumsum(0),
                                 persistent=False)
            col_buffer("col_not_seq", [not m.is_sequence for _, m, _ in members])
            col_buffer("col_bag", list(range(len(members))))
            self.register_buffer("same_bag", (self.col_bag[:, None] == self.col_bag).float(),
                                 persistent=False)
            # the columns after a bag's first and their bags (what _pool adds to the firsts)
            rest = [c for c in range(self.num_cols) if c not in set(self.bag_starts.tolist())]
            self.register_buffer("col_rest", torch.tensor(rest, dtype=torch.long),
                                 persistent=False)
            self.register_buffer("rest_bag", self.col_bag[self.col_rest], persistent=False)
        return col_buffer, per_col

    def _bag_weights(self, local: torch.Tensor) -> torch.Tensor:
        """``[B, columns]``: 1 for a categorical column, mask / count for a sequence one.

        Each column's count is one matmul with the symmetric 0/1 "same bag" matrix (exact:
        sums of a few ones), taken as ``same @ m.T`` (ML-100K, 11 columns: 18 against 85
        us at 4096 rows for ``m @ same``); the weights cost 118 / 18 / 10 us at 4096 / 256
        / 1 rows against 145 / 22 / 13 for a scatter of counts per bag and a gather back."""
        m = ((local != 0) | self.col_not_seq).to(torch.float32)  # fused tables are float32
        count = torch.mm(self.same_bag, m.t()).clamp_min_(1.0)
        return m / count.t()

    def _bag_offsets(self, B: int, device) -> torch.Tensor:
        """Where each (sample, field) bag starts in the flattened ``[B, columns]`` ids
        (cached for the last batch size: five operations a call otherwise)."""
        cached = self._bag_off
        if cached is None or cached.shape[0] != B * len(self.bounds) or cached.device != device:
            cached = self._bag_off = (torch.arange(B, device=device).unsqueeze(1)
                                      * self.num_cols + self.bag_starts).reshape(-1)
        return cached

    def _offsets_of(self, B: int, rows: torch.Tensor) -> torch.Tensor:
        """Bag offsets for the flattened ``[B, columns]`` row ids ``rows``: the (sample,
        field) bags when the group pools, else one id per bag (cached)."""
        if self.pooled:
            return self._bag_offsets(B, rows.device)
        self._offsets = one_id_per_bag(self._offsets, rows)
        return self._offsets

    def _pool(self, v: torch.Tensor, weights: torch.Tensor, own: bool = False) -> torch.Tensor:
        """``[B, columns, d]`` values -> ``[B, fields, d]``, weighted by ``weights``;
        ``own``: ``v`` is this call's buffer, weighted in place.

        Each bag's first column, then the others added to it (the same sums in the same
        order as adding every column to zeros): at 4096 rows (ML-100K, float16, genres of
        4 columns, one thread, tuned allocator) the served model took 1.11x the float32
        model's time against 1.34x with a weighted copy and an index_add into zeros, which
        write two more [B, columns, d] / [B, fields, d] buffers."""
        w = weights.unsqueeze(-1)
        v = v.mul_(w) if own else v * w
        out = v.index_select(1, self.bag_starts)
        if self.col_rest.numel():
            out.index_add_(1, self.rest_bag, v.index_select(1, self.col_rest))
        return out

    def _init_align(self, members: list[FieldEmbedding]) -> None:
        kinds = [_align_kind(m.align) for m in members]
        self.all_identity = all(k == "identity" for k in kinds)
        self.all_pad = all(k == "pad" for k in kinds)
        # Output parts, each a set of the group's fields: projected ones (one batched matmul
        # with the stacked d x D maps), selected ones (one scatter to their columns) and
        # padded/identity ones.
        by_kind = {k: [j for j, kk in enumerate(kinds) if kk == k]
                   for k in ("project", "select")}
        by_kind["pad"] = [j for j, k in enumerate(kinds) if k in ("pad", "identity")]
        self.proj_local = by_kind["project"]
        self.parts = [k for k in ("project", "select", "pad") if by_kind[k]]
        for k in self.parts:
            self.register_buffer(f"{k}_index", torch.tensor(by_kind[k], dtype=torch.long),
                                 persistent=False)
        self.register_buffer("part_order", torch.tensor(
            [j for k in self.parts for j in by_kind[k]]).argsort(), persistent=False)
        if by_kind["select"]:
            self.register_buffer("select_cols", torch.stack(
                [members[j].align.columns for j in by_kind["select"]]), persistent=False)
        if self.proj_local:
            with torch.no_grad():
                w = torch.stack([members[j].align.linear.weight
                                 for j in self.proj_local])  # [n, D, d]
            self.proj = nn.Parameter(w)
        else:
            self.proj = None

    def rebind(self, members: list[FieldEmbedding]) -> None:
        """Point the per-field modules' tensors at views of the fused tensors."""
        w = self.values if self.csr else self.table.weight

        def view(src: torch.Tensor, lo: int, hi: int) -> nn.Parameter:
            return nn.Parameter(src.data[lo:hi], requires_grad=src.requires_grad)

        for j, ((lo, hi), m) in enumerate(zip(self.bounds, members)):
            t = getattr(m, "table", None)
            if type(m) is DroppedField:
                continue  # a stand-in's zero row: nothing to share
            if type(t) is CSRTable:
                t.values = self.values[lo:hi]
                t.col_index = self.col_index[lo:hi]
                t.row_ptr = self.row_ptr[slice(*self.ptr_bounds[j])]
            else:
                _point_first(t, w, lo, hi)
            if type(t) is KeptRowsTable:
                t.keep_bits = self.bits[slice(*self.bit_bounds[j])]
                t.drop_index()  # the group's rank directory serves the field
            elif type(t) is QRTable:
                t.remainder.weight = view(self.table_b.weight, *self.bounds_b[j])
            elif type(t) is MEmComTable:
                t.scale.weight = view(self.table_b.weight, *self.bounds_b[j])
            elif type(t) is RowPrunedTable:
                t.keep = self.keep[lo:hi]
            elif type(t) is SparseTable:
                t.mask = self.mask[lo:hi]
        self._rebind_proj(members)

    def _rebind_proj(self, members: list[FieldEmbedding]) -> None:
        if self.proj is not None:
            for k, j in enumerate(self.proj_local):
                members[j].align.linear.weight = nn.Parameter(
                    self.proj.data[k], requires_grad=self.proj.requires_grad)

    @torch.no_grad()
    def bake(self) -> None:
        """For serving: zero the masked-out entries once, so a lookup needs no mask; set up
        the small-batch reads (:meth:`_read_small`)."""
        if self.masked and not self.baked:
            self.table.weight.mul_(self.mask)
            self.baked = True
        small = self.product or (self.kept and not self.prefix_only)
        if small and not self.pooled and self._small is None:
            self._setup_small()

    def _setup_small(self) -> None:
        """Both row indices of a QR / MEmCom column from one ``[2, columns]`` modulus and
        offset (QR: a divisor too); QR's two tables moved into one buffer (the tables
        become views of it, same bytes) so that one gather reads both rows. Kept rows:
        the search (:func:`kept_row_search`)."""
        if self.kept:
            self._small = ("kept", self.col_bitoff, self.kept_pos, self.col_offsets,
                           self.table.weight)
            return
        n = self.col_offsets.numel()
        big = torch.full((n,), 1 << 62, device=self.col_offsets.device)
        joint = flat_b = None
        if self.family == "qr":
            a, b = self.table.weight, self.table_b.weight
            joint = torch.cat([a.detach(), b.detach()])
            self.table.weight = nn.Parameter(joint[:len(a)], requires_grad=a.requires_grad)
            self.table_b.weight = nn.Parameter(joint[len(a):], requires_grad=b.requires_grad)
            # (id // m) mod 2^62 + offset; (id // 1) mod m + rows of Q + offset
            m = self.col_div
            div, mod = torch.stack([m, torch.ones_like(m)]), torch.stack([big, m])
            off = torch.stack([self.col_offsets, self.col_offsets_b + len(a)])
        else:  # MEmCom: id mod buckets + offset; id (mod 1 for a stand-in) + offset
            div = None
            mod = torch.stack([self.col_modulus, self.col_modulus_b
                               if self.scale_hashed else big])
            off = torch.stack([self.col_offsets, self.col_offsets_b])
            flat_b = self.table_b.weight.detach().view(-1)  # the scales, one per row
        for name, t in (("small_div", div), ("small_mod", mod), ("small_off", off)):
            self.register_buffer(name, t, persistent=False)
        # read by every small batch: plain references, not module attribute lookups
        self._small = (self.family, div, mod, off, joint, flat_b, self.table.weight)

    def _read_small(self, local: torch.Tensor) -> torch.Tensor | None:
        """Serving rows of a small batch, ``[B, n] -> [B, n, d]``, from plain references
        (no module attribute lookups, which cost a few microseconds a batch of one row),
        or None where the batch is too big for the kept-rows search. Products: each
        column's two row indices come from one ``[B, 2, n]`` index computation, QR reads
        both rows in one gather of the joint buffer, MEmCom its scales as plain elements:
        5 operations instead of 7 (the lookup at one row of Criteo / 10, 26 fields: QR
        14.9 against 20.9 us, MEmCom 13.0 against 19.2)."""
        if self._small[0] == "kept":
            _, bitoff, positions, offsets, weight = self._small
            if local.numel() > KEPT_SEARCH:
                return None
            rows = kept_row_search(local + bitoff, positions, offsets)
            return nn.functional.embedding(rows, weight)
        _, div, mod, off, joint, flat_b, weight = self._small
        rows = local.unsqueeze(1)
        if div is not None:
            rows = torch.div(rows, div, rounding_mode="floor")
        rows = torch.remainder(rows, mod).add_(off)
        if joint is not None:
            x = nn.functional.embedding(rows, joint)  # [B, 2, n, d]
            return torch.mul(x[:, 0], x[:, 1])
        return nn.functional.embedding(rows[:, 0], weight).mul_(flat_b[rows[:, 1]].unsqueeze(-1))

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self._small is not None:  # the references (and QR's joint buffer) moved apart
            with torch.no_grad():
                self._setup_small()
        return out

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids[B, T] -> [B, n, d]`` (pooled, not aligned)."""
        local = ids.index_select(1, self.cols)
        if (self._small is not None and ids.shape[0] <= 64 and not self.training
                and not torch.is_grad_enabled()):
            v = self._read_small(local)
            if v is not None:
                return v
        B = ids.shape[0]
        rows = local
        partial = self.product and self.partial_product and B > 64
        if partial:  # the division / remainder of the product columns only (see __init__)
            lp = local.index_select(1, self.prod_cols)
            first = (torch.div(lp, self.pc_first, rounding_mode="floor") if self.divided
                     else torch.remainder(lp, self.pc_first))
            rows = (local + self.col_offsets).index_copy_(1, self.prod_cols,
                                                          first + self.pc_offsets)
        elif self.divided:
            rows = torch.div(rows, self.col_div, rounding_mode="floor")
        if self.hashed and not partial:
            rows = torch.remainder(rows, self.col_modulus)
        if self.csr and hasattr(self, "col_max"):
            rows = torch.minimum(rows, self.col_max)
        if self.kept and self.prefix_only:  # kept ids are 0..k-1: the id is the row
            rows = torch.where(local < self.col_kept, local + self.col_offsets,
                               self.col_offsets)
        elif self.kept:  # the rank of the id among its field's kept ids, else the OOV row
            pos = local + self.col_bitoff
            if pos.numel() <= KEPT_SEARCH:
                rows = kept_row_search(pos, self.kept_pos, self.col_offsets)
            else:
                rows = kept_row_index(pos, self.bits, self.kept_lut, self.rank_block,
                                      self.rank_prefix, self.col_offsets)
        elif not (self.csr or partial):
            rows = rows + self.col_offsets
        if self.row_pruned:
            rows = torch.where(self.keep[rows], rows, self.col_offsets.expand_as(rows))
        # baked (zeros where masked): serving needs no mask; training still masks gradients
        use_mask = self.masked and not (self.baked and not self.training)
        # Serving MEmCom: U[i mod n] * s_i is one embedding_bag whose per-sample weight is
        # s_i, so the [B, n, d] product is never a second pass (Criteo/10 cardinalities,
        # batch 4096 x 26 ids: 1.4 ms against 8.4 ms for the gather and multiply); from 64
        # rows a batch, below which the extra calls cost more than the pass.
        scaled = self.family == "memcom" and B > 64 and not (use_mask or self.training)
        weights = self._bag_weights(local) if self.pooled else None
        if scaled:
            rows_b = (local * self.col_scale_id + self.col_offsets_b if partial
                      else self._rows_b(local))
            s = self.table_b.weight.view(-1).index_select(0, rows_b.reshape(-1))
            weights = s.view(B, -1) if weights is None else weights * s.view(B, -1)
        if scaled or (self.pooled and not (use_mask or self.product or self.csr)):
            # one embedding_bag: gather (+ mean, + MEmCom's scale)
            flat = rows.reshape(-1)
            out = bag_sum(self.table.weight, flat, self._offsets_of(B, flat),
                          weights.reshape(-1), sparse=self.table.sparse)
            return out.view(B, len(self.bounds), self.dim)
        if self.csr:  # only the stored entries are read
            v = csr_gather(rows + self.col_ptr_off, self.col_offsets, self.values,
                           self.col_index, self.row_ptr, self.dim, self.entry_k,
                           small=self.csr_small)
        else:
            v = _read(self.table, rows)
        # Without autograd the gathered rows are this call's own buffer: multiply in place
        # (a fresh [B, n, d] product per call is a second buffer for the allocator).
        own = not (torch.is_grad_enabled() and v.requires_grad)
        if partial:
            pc = self.prod_cols
            rows_b = torch.remainder(lp, self.pc_modulus_b) if self.family == "qr" else lp
            part, b = v.index_select(1, pc), _read(self.table_b, rows_b + self.pc_offsets_b)
            if own:
                v = v.index_copy_(1, pc, part.mul_(b))
            else:
                v = v.index_copy(1, pc, part * b)
        elif self.product:
            b = _read(self.table_b, self._rows_b(local))
            v = v.mul_(b) if own else v * b
        if use_mask:
            v = v.mul_(self.mask[rows]) if own else v * self.mask[rows]
        # gather, multiply/mask, then pool
        return self._pool(v, weights, own) if self.pooled else v

    def _rows_b(self, local: torch.Tensor) -> torch.Tensor:
        """Rows of the second table (QR's remainder, MEmCom's scale) for the local ids of
        every column."""
        hashed = self.family == "qr" or self.scale_hashed
        rows = torch.remainder(local, self.col_modulus_b) if hashed else local
        return rows + self.col_offsets_b

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids[B, T] -> [B, n, D]`` in the group's field order."""
        x = self.lookup(ids)
        if self.all_identity:
            return x
        if self.all_pad:
            return nn.functional.pad(x, (0, self.out_dim - self.dim))
        outs = []
        for k in self.parts:
            xk = x if len(self.parts) == 1 else x.index_select(1, getattr(self, f"{k}_index"))
            if k == "project" and self.dim == 1:
                # an outer product per field: a broadcast multiply, not a bmm of 1-deep
                # matrices (Criteo / 10, 26 fields: 19 against 148 us at 256 rows, 0.21
                # against 1.6 ms at 4096)
                outs.append(xk * self.proj[:, :, 0])
            elif k == "project":  # [n, B, d] x [n, d, D], one bmm (einsum costs more here)
                outs.append(torch.bmm(xk.transpose(0, 1), self.proj.transpose(1, 2))
                            .transpose(0, 1))
            elif k == "select":  # each stored column to its output column, zeros elsewhere
                cols = self.select_cols.unsqueeze(0).expand(xk.shape[0], -1, -1)
                outs.append(xk.new_zeros(xk.shape[0], xk.shape[1], self.out_dim)
                            .scatter_(2, cols, xk))
            else:
                outs.append(nn.functional.pad(xk, (0, self.out_dim - self.dim)))
        if len(outs) == 1:
            return outs[0]
        return torch.cat(outs, 1).index_select(1, self.part_order)


class _PackedGroup(_Group):
    """Serving only: the packed fields of one dim and precision (8 / 4 / 2 / 1 bits, dense or
    hashed tables) as ONE buffer in the kernel's layout and one kernel call a batch (an
    ``embedding_bag`` with per-sample weights when a sequence field is averaged), instead
    of a kernel call per field; 16-bit fields of one dim and dtype likewise as one half
    table, one gather and one cast; alignment as :class:`_Group`. The fields' buffers
    become views of the group's, so nothing is held twice and a state dict loaded into the
    fields is what the group reads."""

    family = "packed"
    masked = row_pruned = product = kept = False
    _rows_ar: torch.Tensor | None = None  # 0, 1, 2, ... for _pool_rows (cached)

    def __init__(self, members: list[tuple[int, FieldEmbedding, tuple[int, int]]],
                 out_dim: int):
        nn.Module.__init__(self)
        tables = [m.table for _, m, _ in members]
        first = tables[0].embedding
        self.dim, self.out_dim, self.bits = first.embedding_dim, out_dim, first.bits
        self.field_index = [i for i, _, _ in members]
        self.half = self.bits == 16
        # coded tables (field-scaled, 1 bit or one value a row): their codes one buffer,
        # their byte tables another (read_coded, each column from its own field's 256 rows)
        self.coded = not self.half and first.coded
        self.buffer = "weight" if self.half else "codes" if self.coded else "packed"
        sizes = [t.embedding.num_embeddings for t in tables]
        col_buffer, _ = self._init_columns(members, sizes)
        self.hashed = any(type(t) is HashTable for t in tables)
        if self.hashed:
            col_buffer("col_modulus", sizes)
        with torch.no_grad():
            packed = torch.cat([getattr(t.embedding, self.buffer) for t in tables])
            if self.coded:
                self.register_buffer("lut", torch.cat([t.embedding.lut for t in tables]),
                                     persistent=False)
                col_buffer("col_lut", [256 * j for j in range(len(tables))])
        self.register_buffer("packed", packed, persistent=False)
        self._offsets: torch.Tensor | None = None
        self.baked = False
        self._init_align([m for _, m, _ in members])
        self.rebind([m for _, m, _ in members])

    def rebind(self, members: list[FieldEmbedding]) -> None:
        for j, ((lo, hi), m) in enumerate(zip(self.bounds, members)):
            setattr(m.table.embedding, self.buffer, self.packed[lo:hi])
            if self.coded:  # a load into the field refreshes its byte table in place
                m.table.embedding.lut = self.lut[256 * j:256 * (j + 1)]
        self._rebind_proj(members)

    def _pool_rows(self, v: torch.Tensor, weights: torch.Tensor, B: int) -> torch.Tensor:
        """Widened rows ``[B * columns, d]`` (float32) -> ``[B, fields, d]``: one weighted
        ``embedding_bag`` over them in order, where weighting, picking each bag's first
        column and adding the others (:meth:`_pool`) are four passes (ML-100K, 16 bits,
        4096 rows: 257 against 329 us; the sums agree to float32 rounding, 5e-7)."""
        n, ar = v.shape[0], self._rows_ar
        if ar is None or ar.shape[0] < n or ar.device != v.device:
            ar = self._rows_ar = torch.arange(n, device=v.device)
        out = bag_sum(v, ar[:n], self._bag_offsets(B, v.device), weights.reshape(-1))
        return out.view(B, len(self.bounds), self.dim)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids[B, T] -> [B, n, d]`` (pooled, not aligned)."""
        local = ids.index_select(1, self.cols)
        rows = torch.remainder(local, self.col_modulus) if self.hashed else local
        B = ids.shape[0]
        weights = self._bag_weights(local) if self.pooled else None
        if self.coded:
            v = read_coded(self.packed, self.lut, rows + self.col_offsets, self.col_lut,
                           self.dim)
            return (self._pool_rows(v.reshape(-1, self.dim), weights, B) if self.pooled
                    else v)
        rows = (rows + self.col_offsets).reshape(-1)
        if self.half:  # gather, widen, then pool in float32 (as the per-field read)
            v = nn.functional.embedding(rows, self.packed).float()
            return self._pool_rows(v, weights, B) if self.pooled else v.view(B, -1, self.dim)
        out = read_packed(self.packed, self.bits, self.dim, rows, self._offsets_of(B, rows),
                          None if weights is None else weights.reshape(-1))
        return out.view(B, -1, self.dim)


class FusedEmbedding(FieldwiseEmbedding):
    """A :class:`FieldwiseEmbedding` whose plain fields share one table per width.

    Args:
        fieldwise: The per-field layer to fuse; its parameters become views of the fused
            ones (see :meth:`fieldwise`).
        sparse_threshold: A fused table with more rows than this emits sparse gradients
            (stepped by a row-wise optimiser, see :func:`autodim.task.make_optimizers`).
    """

    def __init__(self, fieldwise: FieldwiseEmbedding, *, sparse_threshold: int = 1_000_000,
                 serving: bool = False):
        # The per-field modules that are not fused stay in ``fields`` (same keys); fused
        # ones are replaced there by an empty placeholder.
        placeholders = []
        by_dim: dict[tuple[int, str], list[int]] = defaultdict(list)
        for i, m in enumerate(fieldwise.fields):
            key = _packed_key(m) if serving else None
            if key is not None:  # serving: packed fields of one dim and precision
                by_dim[key].append(i)
            elif _kind(m) is not None:
                by_dim[(m.table.dim, _family(m.table))].append(i)
        stand_in: dict[int, FieldEmbedding] = {}
        dropped = [i for i, m in enumerate(fieldwise.fields) if type(m) is DroppedField]
        products = [k for k in by_dim if k[1] in ("qr", "memcom")]
        if serving and products:
            # Serving only: dense fields of a product group's width join it as a product
            # with a row of ones (QR with one remainder bucket: Q[i] * 1; MEmCom with one
            # scale: U[i mod n] * 1), so the width is one group, not two to concatenate.
            for key in sorted(products, key=lambda k: -len(by_dim[k])):
                plain = (key[0], "plain")
                dense = [i for i in by_dim.get(plain, [])
                         if type(fieldwise.fields[i].table) is DenseTable]
                if not dense:
                    continue
                for i in dense:
                    stand_in[i] = _product_field(fieldwise.fields[i], key[1])
                by_dim[key] = sorted(by_dim[key] + dense)
                by_dim[plain] = [i for i in by_dim[plain] if i not in dense]
                if not by_dim[plain]:
                    del by_dim[plain]
        hosts = [k for k in by_dim if k[1] in ("plain", "csr")]
        if serving and dropped and hosts:
            # Serving only (a trainable zero row would not stay zero): dropped fields join
            # the biggest plain / CSR group as a column that reads a zero row, so the group
            # writes the whole [B, F, D] output and nothing is concatenated or reordered.
            host = max(hosts, key=lambda k: len(by_dim[k]))
            for i in dropped:
                stand_in[i] = _zero_field(host[0], host[1], fieldwise.out_dim)
            by_dim[host] = sorted(by_dim[host] + dropped)  # field order: no reordering
        # every field the path can take joins a group (a width of its own is a group of one)
        fused = {i for members in by_dim.values() for i in members}
        for i, m in enumerate(fieldwise.fields):
            placeholders.append(nn.Identity() if i in fused else m)
        super().__init__(fieldwise.schema, fieldwise.out_dim, placeholders)
        object.__setattr__(self, "_fieldwise", fieldwise)  # not a submodule: no double params
        self.fused_fields = sorted(fused)
        groups = []
        for (_, family), members in sorted(by_dim.items()):
            triples = [(i, stand_in.get(i, fieldwise.fields[i]), self._slices[i])
                       for i in members]
            groups.append(_PackedGroup(triples, self.out_dim)
                          if family.startswith(("int", "half"))
                          else _Group(triples, self.out_dim, sparse_threshold))
        self.groups = nn.ModuleList(groups)
        self.rest = [i for i in range(len(placeholders)) if i not in fused]
        order = [i for g in self.groups for i in g.field_index] + self.rest
        self.register_buffer("order", torch.tensor(order).argsort(), persistent=False)
        self.single = (len(self.groups) == 1 and not self.rest
                       and self.groups[0].field_index == sorted(self.groups[0].field_index))
        self._serve: dict | None = None
        self._calls: tuple | None = None  # what a served call runs (_served_calls)
        self._bag_ids: torch.Tensor | None = None  # offsets of one id a bag (cached)
        self._fm_index: torch.Tensor | None = None  # the last batch's output rows (cached)
        self._rebind()
        self._register_state_dict_hook(FusedEmbedding._to_fieldwise_keys)
        self._register_load_state_dict_pre_hook(FusedEmbedding._from_fieldwise_keys,
                                                 with_module=True)
        self.register_load_state_dict_post_hook(FusedEmbedding._not_missing)

    def _rebind(self) -> None:
        for g in self.groups:
            g.rebind([self._fieldwise.fields[i] for i in g.field_index])

    def fieldwise(self) -> FieldwiseEmbedding:
        """The per-field layer with this layer's current weights (views, no copy)."""
        self._rebind()
        return self._fieldwise

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # The one-gather path (see bake) against the groups' own gathers, x the full model,
        # Criteo cardinalities / 10, FM, 1 thread, 55 interleaved rounds, default / tuned
        # allocator (mde: 12 widths; select: 3), since its gather is field-major:
        #   rows            1024         2048         4096
        #   mde    serve  1.02 / 0.98  1.00 / 1.07  1.28 / 1.03
        #          groups 1.55 / 1.33  1.39 / 1.61  1.66 / 1.50
        #   select serve  1.02 / 0.95  0.99 / 1.08  1.38 / 1.05
        #          groups 1.13 / 0.91  1.15 / 1.13  1.26 / 1.18
        # (batch-major it lost to the groups beyond 2048 rows), so it serves every batch.
        if not self.training:
            if self._serve is not None:
                return self._serve_forward(ids)
            if self._calls is not None:
                return self._served_groups(ids)
        if self.single:
            return self.groups[0](ids)
        parts = [g(ids) for g in self.groups]
        parts += [self.fields[i](ids[:, lo:hi]).unsqueeze(1)
                  for i in self.rest for lo, hi in [self._slices[i]]]
        return torch.cat(parts, 1).index_select(1, self.order)

    def num_bytes(self) -> int:
        return self._fieldwise.num_bytes()

    def field_bytes(self) -> dict[str, int]:
        return self._fieldwise.field_bytes()

    def bake(self) -> "FusedEmbedding":
        """Prepare for serving; outputs unchanged. Returns self.

        Masks are baked into the weights (see :meth:`_Group.bake`). When every field is a
        categorical field of a plain group (dense, hashed or element-pruned tables), all
        groups' rows are moved into ONE flat buffer (the tables become views of it) and an
        eval-mode batch is one row gather of ``[F, B]`` windows of ``d_max`` elements (a
        strided view of the buffer; positions beyond a field's width are multiplied by zero)
        and one batched ``[F, B, d_max] x [F, d_max, D]`` map
        (identity, projection or column placement per field), whatever the number of
        widths (measured in :meth:`forward`). ``train()`` turns that path off again (the map
        copies the projections).
        """
        for g in self.groups:
            g.bake()
        self._serve = None
        self._calls = self._served_calls()
        dropped = [i for i in self.rest if type(self.fields[i]) is DroppedField]
        if (len(self.groups) < 2 or len(dropped) < len(self.rest)  # one width: one gather
                or any(g.family != "plain" or g.row_pruned or g.pooled for g in self.groups)):
            return self
        with torch.no_grad():
            sizes = [g.table.weight.numel() for g in self.groups]
            d_max = max(g.dim for g in self.groups)
            # the tables, then d_max zeros: the window a dropped field reads, and the end
            # of the last row's window
            flat = torch.zeros(sum(sizes) + d_max, dtype=self.groups[0].table.weight.dtype,
                               device=self.groups[0].table.weight.device)
            start = 0
            F, D = len(self._slices), self.out_dim
            # dropped fields keep width 0 and the start of the trailing zeros (a zero window)
            base = torch.full((F,), sum(sizes), dtype=torch.long)
            width = torch.zeros(F, dtype=torch.long)
            modulus = torch.ones(F, dtype=torch.long)  # dropped fields: any id, stride 0
            maps = torch.zeros(F, d_max, D, dtype=flat.dtype)
            for g, n in zip(self.groups, sizes):
                seg = flat[start:start + n]
                seg.copy_(g.table.weight.reshape(-1))
                g.table.weight = nn.Parameter(seg.view(g.table.weight.shape),
                                              requires_grad=g.table.weight.requires_grad)
                for j, i in enumerate(g.field_index):
                    if type(self._fieldwise.fields[i]) is DroppedField:
                        continue  # a stand-in: width 0 reads the zero element
                    lo, hi = g.bounds[j]
                    base[i], width[i], modulus[i] = start + lo * g.dim, g.dim, hi - lo
                    align = self._fieldwise.fields[i].align
                    eye = torch.eye(g.dim, D, dtype=flat.dtype)
                    if type(align) is Project:
                        maps[i, :g.dim] = align.linear.weight.t()
                    elif type(align) is Select and not align.is_prefix:
                        maps[i, torch.arange(g.dim), align.columns] = 1
                    else:
                        maps[i, :g.dim] = eye
                start += n
            self._rebind()
        # Row r of field f starts at element base[f] + r * width[f] of the flat buffer. A
        # window view (row p = elements p .. p + d_max - 1, a strided view, no copy) lets
        # ONE row gather read every field's row, whatever its width: the positions past a
        # field's width hold the next row's values (or the trailing zeros), which the map
        # multiplies by its zero rows (weights are finite: training stops on a non-finite
        # loss). Dropped fields read the zero window at the end.
        window = flat.as_strided((flat.numel() - d_max + 1, d_max), (1, 1))
        self._serve = dict(window=window, cols=torch.tensor([lo for lo, _ in self._slices]),
                           modulus_t=modulus[:, None], maps=maps, width_t=width[:, None],
                           base_t=base[:, None], hashed=any(g.hashed for g in self.groups))
        return self

    def _served_calls(self) -> tuple | None:
        """What a served call of a layer whose fields are all in groups runs (``None``
        otherwise): ``(shared, calls, order, field_major)``.

        ``shared`` reads the packed groups (8 / 4 / 2 / 1 / 16 bits; aligned by identity,
        padding or projection) from ONE field-major column gather of the ids
        (``[columns, B]``, hashed and offset at once). A group that does not pool reads a
        contiguous slice of it, its kernel output is ``[n, B, d]`` and its projection one
        bmm with no transposes; a pooling group reads its slice transposed (its bags are
        contiguous per sample). ``calls`` are the other groups' forwards, called without
        the module call; ``order`` puts the fields back in place (``None``: they already
        are); ``field_major``: the parts are assembled field-major (most fields are).
        ML-100K hybrid plans of two and four groups, 256 rows: the module calls and lookups
        alone were 7 and 10 us of 90 and 124 us an embedding call."""
        if self.rest:
            return None
        items, cols, offsets, moduli, fields, calls = [], [], [], [], [], []
        hashed = False
        for g in self.groups:
            kind = None
            if type(g) is _PackedGroup:
                kind = ("identity" if g.all_identity else "pad" if g.all_pad
                        else "project" if g.parts == ["project"] else None)
            if kind is None:
                calls.append(g)
                continue
            c0 = sum(c.numel() for c in cols)
            cols.append(g.cols)
            offsets.append(g.col_offsets)
            moduli.append(g.col_modulus if g.hashed else torch.full_like(g.cols, 1 << 62))
            hashed = hashed or g.hashed
            w = None
            if kind == "project":  # views of the group's maps: loads in place reach them
                kind, w = (("outer", g.proj[:, :, 0].detach().unsqueeze(1)) if g.dim == 1
                           else ("project", g.proj.detach().transpose(1, 2)))  # [n, 1|d, D]
            items.append((c0, c0 + g.cols.numel(), g.packed, g.bits, g.dim, kind, w,
                          g if g.pooled else None,
                          (g.lut, g.col_lut) if g.coded else None))
            fields += g.field_index
        if len(items) == 1 and not calls:  # one group: its own batch-major read, no copy
            return None, (self.groups[0].forward,), None if self.single else self.order, False
        # assembled field-major when most fields come out field-major (see _served_groups)
        field_major = 2 * sum(c1 - c0 for c0, c1, *_, pooling, _ in items
                              if pooling is None) >= len(self.order)
        fields += [i for g in calls for i in g.field_index]
        shared = None
        if items:
            shared = (torch.cat(cols), torch.cat(offsets)[:, None],
                      torch.cat(moduli)[:, None] if hashed else None, tuple(items))
        # field order already when the (distinct) field indices come sorted: decided on the
        # host, so a move to any device (also ``meta``) needs no read of a device tensor
        order = (None if fields == sorted(fields)
                 else torch.tensor(fields, device=self.order.device).argsort())
        return shared, tuple(g.forward for g in calls), order, field_major

    def _served_groups(self, ids: torch.Tensor) -> torch.Tensor:
        shared, calls, order, field_major = self._calls
        parts = []
        if shared is not None:
            cols, offsets, moduli, items = shared
            B = ids.shape[0]
            raw = ids.t().index_select(0, cols)  # [columns, B]
            rows = (raw if moduli is None else torch.remainder(raw, moduli)) + offsets
            for c0, c1, packed, bits, dim, kind, w, pooling, coded in items:
                if pooling is not None:  # bags of one sample's columns: batch-major
                    weights = pooling._bag_weights(raw[c0:c1].t())
                    if coded is not None:  # bytes read from the fields' value tables
                        v = read_coded(packed, coded[0], rows[c0:c1].t(), coded[1], dim)
                        v = pooling._pool_rows(v.reshape(-1, dim), weights, B)
                    elif bits == 16:
                        r = rows[c0:c1].t().reshape(-1)
                        v = pooling._pool_rows(nn.functional.embedding(r, packed).float(),
                                               weights, B)
                    else:
                        r = rows[c0:c1].t().reshape(-1)
                        v = read_packed(packed, bits, dim, r, pooling._bag_offsets(B, r.device),
                                        weights.reshape(-1)).view(B, -1, dim)
                    v = v.transpose(0, 1)  # [n, B, d], a view
                elif coded is not None:  # [n, B, d]
                    v = read_coded(packed, coded[0], rows[c0:c1], coded[1][:, None], dim)
                else:
                    r = rows[c0:c1].view(-1)
                    if bits == 16:
                        v = nn.functional.embedding(r, packed).float()
                    else:  # one id a bag: a prefix of one cached 0, 1, 2, ...
                        n, ar = r.shape[0], self._bag_ids
                        if ar is None or ar.shape[0] < n or ar.device != r.device:
                            ar = self._bag_ids = torch.arange(n, device=r.device)
                        v = read_packed(packed, bits, dim, r, ar[:n], None)
                    v = v.view(c1 - c0, B, dim)  # field-major: [n, B, d]
                if kind == "project":
                    v = torch.bmm(v, w)
                elif kind == "outer":
                    v = v * w
                elif kind == "pad":
                    v = nn.functional.pad(v, (0, self.out_dim - dim))
                parts.append(v if field_major else v.transpose(0, 1))
        if not field_major:  # one batch-major concatenation, then the field order
            parts += [f(ids) for f in calls]
            out = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            return out if order is None else out.index_select(1, order)
        # Mostly field-major parts: ONE concatenation [F, B, D] (the other groups' outputs
        # as field-major views), then one row gather that puts row (field f, sample b) at
        # b * F + f: [B, F, D] in field order (ML-100K hybrid 40x, 256 / 4096 rows: 23 / 276
        # against 32 / 374 us for a batch-major concatenation and a reordering; hybrid 10x,
        # whose fields are mostly in a pooling group, lost: 1.18 against 1.09x at 4096).
        parts += [f(ids).transpose(0, 1) for f in calls]
        x = torch.cat(parts, 0)
        F, D = x.shape[0], x.shape[2]
        index = self._fm_index
        if index is None or index.shape[0] != B * F or index.device != x.device:
            pos = (torch.arange(F, device=x.device) if order is None else order).to(torch.int32)
            index = self._fm_index = (pos * B + torch.arange(B, dtype=torch.int32,
                                                             device=x.device)[:, None]).view(-1)
        return x.view(F * B, D).index_select(0, index).view(B, F, D)

    def _serve_forward(self, ids: torch.Tensor) -> torch.Tensor:
        sv = self._serve
        # gathered field-major ([F, B, d_max]), the layout bmm reads, so it copies nothing
        local = ids.t().index_select(0, sv["cols"])
        if sv["hashed"]:
            local = torch.remainder(local, sv["modulus_t"])
        x = nn.functional.embedding(local * sv["width_t"] + sv["base_t"], sv["window"])
        return torch.bmm(x, sv["maps"]).transpose(0, 1)  # [B, F, D]

    def train(self, mode: bool = True):
        if mode:
            self._serve = self._calls = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._serve = None  # a device or dtype move leaves the flat buffer behind
        if self._calls is not None:  # (and the order buffer)
            out = super()._apply(fn, recurse)
            self._calls = self._served_calls()
            return out
        return super()._apply(fn, recurse)

    # -- state dict keys: the per-field ones ------------------------------------------------
    # The per-field modules' tensors are views of the groups', so the per-field state dict
    # IS the fused state; loading into those views writes into the groups in place.
    @staticmethod
    def _to_fieldwise_keys(module, state, prefix, local_metadata):
        module._rebind()  # after a device move the old views point at the old storage
        for key in [k for k in state if k.startswith(prefix + "groups.")]:
            del state[key]
        for i in module.fused_fields:
            module._fieldwise.fields[i].state_dict(destination=state,
                                                   prefix=f"{prefix}fields.{i}.")
        return state

    def _from_fieldwise_keys(self, state, prefix, local_metadata, strict, missing_keys,
                             unexpected_keys, error_msgs):
        self._rebind()
        for i in self.fused_fields:
            head = f"{prefix}fields.{i}."
            sub = {k[len(head):]: state.pop(k) for k in [k for k in state if k.startswith(head)]}
            result = self._fieldwise.fields[i].load_state_dict(sub, strict=False)
            missing_keys.extend(head + k for k in result.missing_keys)
            unexpected_keys.extend(head + k for k in result.unexpected_keys)
        self._load_prefix = prefix

    @staticmethod
    def _not_missing(module, incompatible) -> None:
        """The groups' own tensors were written through the per-field views: not missing."""
        head = getattr(module, "_load_prefix", "") + "groups."
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys
                                        if not k.startswith(head)]


def named_field_modules(model: nn.Module):
    """``model.named_modules()``, plus the per-field modules a :class:`FusedEmbedding`
    fused, under the names they have in its state dict (``...fields.{i}...``)."""
    for name, mod in model.named_modules():
        yield name, mod
        if isinstance(mod, FusedEmbedding):
            prefix = f"{name}." if name else ""
            per_field = mod.fieldwise()
            for i in mod.fused_fields:
                for sub, m in per_field.fields[i].named_modules(prefix=f"{prefix}fields.{i}"):
                    yield sub, m


def _keeps_prefix(table: KeptRowsTable) -> bool:
    """Whether the table keeps exactly the ids ``0 .. k-1``."""
    k, bits = table.rows.shape[0], table.keep_bits
    full, rest = divmod(k, 8)
    if not bool((bits[:full] == 255).all()):
        return False
    tail = bits[full:]
    want = torch.zeros_like(tail)
    if rest:
        want[0] = (0xFF << (8 - rest)) & 0xFF
    return bool(torch.equal(tail, want))


def resident_bytes(module: nn.Module) -> int:
    """Bytes of every distinct tensor storage ``module`` holds: parameters and buffers
    (persistent or not), the per-field modules a fused layer keeps, its serving copies
    (flat rows, maps). Views of one storage count once, a view of a bigger storage counts
    all of it (what stays in memory); cached offsets (a few bytes per id of the last batch)
    are scratch."""
    tensors = list(module.parameters()) + list(module.buffers())
    for m in module.modules():
        if isinstance(m, FusedEmbedding):
            per_field = m.fieldwise()
            tensors += list(per_field.parameters()) + list(per_field.buffers())
            tensors += [v for v in (m._serve or {}).values() if torch.is_tensor(v)]
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def rank_bytes(module: nn.Module) -> int:
    """Bytes of the rank directories and bit tables ``module`` holds for its kept-rows
    tables (derived from the keep bitmaps at load, not stored in files): per bitmap of
    ``b`` bytes ``ceil(b/32) * 4 + b``, plus :data:`KEPT_LUT_BYTES`; a fused group also
    holds its kept ids' positions, ``4 * (kept + 1)``."""
    def one(bits: torch.Tensor) -> int:
        return -(-bits.numel() // 32) * 4 + bits.numel() + KEPT_LUT_BYTES

    total = 0
    for m in module.modules():
        if isinstance(m, _Group) and m.kept and not m.prefix_only:
            total += one(m.bits) + m.kept_pos.numel() * 4
        elif isinstance(m, KeptRowsTable) and m.rank_block is not None:
            total += one(m.keep_bits)
    return total
