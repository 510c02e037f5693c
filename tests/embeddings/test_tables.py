"""The serving forms of masked tables read exactly what the training forms read, from
the stored (compact) tensors only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autodim.embeddings.tables import (
    CSRTable,
    KeptRowsTable,
    RowPrunedTable,
    SparseTable,
    kept_positions,
    kept_row_index,
    kept_row_search,
    rank_directory,
    row_pruned_bytes,
    sparse_table_bytes,
)


@pytest.mark.parametrize("n", [1, 7, 8, 255, 256, 257, 2000])
def test_rank_of_a_bitmap_is_the_kept_row(n):
    keep = np.random.default_rng(n).random(n) < 0.3
    keep[0] = True
    bits = torch.from_numpy(np.packbits(keep))
    block, prefix = rank_directory(bits)
    assert block.dtype == torch.int32 and prefix.dtype == torch.uint8
    assert block.numel() == -(-bits.numel() // 32) and prefix.numel() == bits.numel()
    t = KeptRowsTable(n, 1, int(keep.sum()))
    t.keep_bits = bits
    lut, block, prefix = t.index()
    ids = torch.arange(n)
    got = kept_row_index(ids, bits, lut, block, prefix, -1)
    want = torch.where(torch.from_numpy(keep), torch.from_numpy(np.cumsum(keep) - 1), -1)
    assert torch.equal(got.long(), want)
    # the search over the kept positions (small serving lookups) reads the same rows
    positions = kept_positions(bits)
    assert positions.dtype == torch.int32 and positions.numel() == keep.sum() + 1
    assert torch.equal(kept_row_search(ids, positions, -1).long(), want)
    assert torch.equal(kept_row_search(ids.view(-1, 1).flip(0), positions, -1).long(),
                       want.view(-1, 1).flip(0))


@pytest.mark.parametrize("shape", [(64,), (16, 5)])
def test_kept_rows_table_reads_what_the_row_pruned_table_reads(shape):
    torch.manual_seed(0)
    keep = torch.rand(300) < 0.4  # not a prefix: ranks matter
    dense = RowPrunedTable(300, 6, keep)
    served = KeptRowsTable.from_table(dense)
    assert set(served.state_dict()) == {"rows", "keep_bits"}
    kept = int(dense.keep.sum())
    assert served.num_bytes() == dense.num_bytes() == row_pruned_bytes(300, 6, kept)
    ids = torch.randint(0, 300, shape)
    assert torch.equal(served(ids), dense(ids))
    # pruned ids read the shared row 0
    pruned = (~dense.keep).nonzero()[:3, 0]
    assert torch.equal(served(pruned), dense.embedding.weight[[0, 0, 0]])


@pytest.mark.parametrize("dim", [5, 300])  # uint8 and int16 column indices
def test_csr_table_reads_what_the_sparse_table_reads(dim):
    torch.manual_seed(1)
    mask = torch.rand(40, dim) < 0.2
    mask[3] = False  # an empty row reads zeros
    dense = SparseTable(40, dim, mask)
    served = CSRTable.from_table(dense)
    assert served.col_index.dtype == (torch.uint8 if dim <= 256 else torch.int16)
    assert served.num_bytes() == dense.num_bytes() == sparse_table_bytes(40, dim, int(mask.sum()))
    ids = torch.cat([torch.randint(0, 40, (30,)), torch.tensor([3, 3])]).view(8, 4)
    assert torch.equal(served(ids), dense(ids))
    assert float(served(torch.tensor([3])).abs().sum()) == 0.0
