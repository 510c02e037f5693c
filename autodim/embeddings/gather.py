"""Row gathers for training with a cheaper backward on the CPU.

torch's dense CPU backward of ``embedding`` (``embedding_dense_backward``) and of
``embedding_bag`` costs 3-5x a plain ``index_add_`` of the output gradient into a zeroed
table: measured on one thread, 24,020 x 16 table, 10,240 ids: 568 us against 129 us;
24,020 x 31: 665 against 186; 40,960 ids: 2,363 against 707; two threads 413 against 81;
an ``embedding_bag`` of 1,024 samples (eight single ids and one bag of six) 1,392 us against
513 for forward + backward. The gradient is the same sum of the same rows (float rounding
only: the order of additions within a row may differ).

:class:`Embedding` is ``nn.Embedding`` with that backward for dense CPU tables (its state,
options and sparse mode are ``nn.Embedding``'s); :func:`bag_sum` is ``embedding_bag``
(mode ``sum``, per-sample weights) with it. Sparse tables, CUDA tensors (``index_add_`` there
is an atomic add, not deterministic), ``padding_idx`` / ``max_norm`` and calls without a
gradient to compute keep torch's own ops.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Embedding", "gather", "bag_sum"]


def _fast(weight: torch.Tensor) -> bool:
    return weight.requires_grad and torch.is_grad_enabled() and weight.device.type == "cpu"


class _Gather(torch.autograd.Function):
    """``weight[ids]`` whose backward is one ``index_add_`` into zeros."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.rows = weight.shape[0]
        return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        if grad.dim() == 3 and not grad.is_contiguous() and grad.transpose(0, 1).is_contiguous():
            # A field-major gradient (the supernet's lift hands back [F, B, d] memory):
            # read it in its own order instead of copying it to [B, F, d].
            flat, grad = ids.t().reshape(-1), grad.transpose(0, 1)
        else:
            flat = ids.reshape(-1)
        g = grad.reshape(flat.shape[0], -1)
        return g.new_zeros(ctx.rows, g.shape[1]).index_add_(0, flat, g), None


class _BagSum(torch.autograd.Function):
    """``embedding_bag(mode="sum", per_sample_weights=w)`` with an ``index_add_`` backward.

    Forward is torch's kernel (fast); backward scatters ``grad[bag(i)] * w_i`` into row
    ``ids_i``, and gives the weights their gradient ``<grad[bag(i)], weight[ids_i]>`` when
    they need one."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor,
                per_sample_weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight, ids, offsets, per_sample_weights)
        return nn.functional.embedding_bag(ids, weight, offsets, mode="sum",
                                           per_sample_weights=per_sample_weights)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, ids, offsets, w = ctx.saved_tensors
        sizes = torch.diff(offsets, append=offsets.new_tensor([ids.shape[0]]))
        bag = torch.repeat_interleave(torch.arange(offsets.shape[0], device=ids.device), sizes)
        g = grad.index_select(0, bag)  # [N, dim]: each id's bag gradient (our own buffer)
        d_weight = d_w = None
        if ctx.needs_input_grad[3]:
            d_w = (g * weight.index_select(0, ids)).sum(1)
        if ctx.needs_input_grad[0]:
            # scaled in place: a second [N, dim] buffer per step cost more than the multiply
            d_weight = grad.new_zeros(weight.shape).index_add_(0, ids, g.mul_(w.unsqueeze(1)))
        return d_weight, None, None, d_w


def gather(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``weight[ids]`` (``ids[...] -> [..., dim]``) with the cheaper backward where it
    applies, else ``nn.functional.embedding``."""
    if _fast(weight):
        return _Gather.apply(weight, ids)
    return nn.functional.embedding(ids, weight)


def bag_sum(weight: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor,
            per_sample_weights: torch.Tensor, *, sparse: bool = False) -> torch.Tensor:
    """Weighted sum of ``weight``'s rows per bag (``embedding_bag``, mode ``sum``): ``ids``
    flat, ``offsets`` the first position of each bag."""
    if not sparse and _fast(weight):
        return _BagSum.apply(weight, ids, offsets, per_sample_weights)
    return nn.functional.embedding_bag(ids, weight, offsets, mode="sum", sparse=sparse,
                                       per_sample_weights=per_sample_weights)


class Embedding(nn.Embedding):
    """``nn.Embedding`` whose dense CPU backward is :func:`gather`'s (same parameters, state
    dict, options and sparse mode)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.sparse or self.padding_idx is not None or self.max_norm is not None:
            return super().forward(input)
        return gather(self.weight, input)
