"""The training gathers: same values and gradients as torch's embedding ops, through the
index_add backward on the CPU, and used by the tables that train."""

from __future__ import annotations

import torch
from test_layers import SCHEMA, _batch, _plan
from torch import nn

from autodim.embeddings.gather import Embedding, bag_sum, gather
from autodim.plan import build_embedding


def _grad_fns(t: torch.Tensor) -> set[str]:
    """Names of every node in ``t``'s backward graph."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo += [f for f, _ in fn.next_functions]
    return {type(f).__name__ for f in seen}


def test_embedding_matches_torch_values_and_gradients():
    torch.manual_seed(0)
    ours = Embedding(300, 7)
    ref = nn.Embedding(300, 7, _weight=ours.weight.detach().clone())
    ids = torch.randint(0, 300, (64, 5))
    ids[:, 0] = 3  # many repeats of one row
    g = torch.randn(64, 5, 7)
    out = ours(ids)
    assert "_GatherBackward" in _grad_fns(out)  # the index_add backward, not torch's
    assert torch.equal(out, ref(ids))
    out.backward(g)
    ref(ids).backward(g)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-6, rtol=1e-6)


def test_sparse_and_no_grad_keep_torch_ops():
    sparse = Embedding(50, 3, sparse=True)
    ids = torch.randint(0, 50, (8, 2))
    sparse(ids).sum().backward()
    assert sparse.weight.grad.is_sparse
    dense = Embedding(50, 3)
    with torch.no_grad():
        assert dense(ids).grad_fn is None
    assert "_GatherBackward" not in _grad_fns(
        gather(dense.weight.detach().requires_grad_(False), ids) + 0)


def test_bag_sum_matches_embedding_bag_with_weight_gradients():
    torch.manual_seed(1)
    w = torch.randn(200, 6, requires_grad=True)
    w_ref = w.detach().clone().requires_grad_()
    ids = torch.randint(0, 200, (90,))
    offsets = torch.tensor([0, 1, 1, 7, 40, 41, 89])  # an empty bag and bags of 1..33
    p = torch.rand(90, requires_grad=True)
    p_ref = p.detach().clone().requires_grad_()
    out = bag_sum(w, ids, offsets, p)
    ref = nn.functional.embedding_bag(ids, w_ref, offsets, mode="sum", per_sample_weights=p_ref)
    assert "_BagSumBackward" in _grad_fns(out)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(w.grad, w_ref.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-6, rtol=1e-5)


def test_training_tables_use_the_cheaper_backward():
    torch.manual_seed(0)
    x = _batch(16)
    for fused in (False, True):  # per-field tables and fused groups (tags: a pooled bag)
        emb = build_embedding(_plan(), fused=fused)
        names = _grad_fns(emb(x).sum())
        assert ("_BagSumBackward" if fused else "_GatherBackward") in names, names
        assert "EmbeddingBackward0" not in names and "EmbeddingBagBackward0" not in names
    from autodim.searchers._supernet import SupernetEmbedding

    sup = SupernetEmbedding(SCHEMA, 8, (2, 4), weight_sharing=False)
    assert "_GatherBackward" in _grad_fns(sup(x).sum())


def test_field_major_gradient_reaches_the_right_rows():
    """A [B, F, d] gradient laid out field-major (what the supernet's lift hands back) is
    read in its own order: same table gradient as torch's."""
    torch.manual_seed(2)
    ours = Embedding(40, 3)
    ref = nn.Embedding(40, 3, _weight=ours.weight.detach().clone())
    ids = torch.randint(0, 40, (6, 4))
    c = torch.randn(4, 6, 3)  # field-major weights: the gradient is c.transpose(0, 1)
    for emb in (ours, ref):
        (emb(ids).transpose(0, 1) * c).sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
