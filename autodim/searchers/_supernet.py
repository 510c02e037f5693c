"""Supernet pieces shared by the soft-selection searchers (``darts``, ``autodim``).

A *supernet* holds, for every field, all candidate dims ``d_1 < ... < d_K`` at once and mixes
them with architecture weights α. The pieces, from the ids up:

- :class:`FusedFieldTable` - every field's rows in ONE ``nn.Embedding`` (per-field row
  offsets), so a batch costs one lookup whatever the number of fields; sequence fields are
  mean-pooled exactly like :func:`autodim.embeddings.field.mean_pool`. With
  ``width = D`` it is the weight-sharing table of AutoDim / OptEmbed: field ``f``'s rows are
  ``field_weight(f)`` and a dim-``d`` candidate reads their first ``d`` columns. OptEmbed's
  row norms and prefix masks can be computed on it directly.
- :class:`CandidateLift` - candidate ``k`` of field ``f`` reads columns
  ``[start_k, start_k + d_k)`` of the field's row and is lifted to ``D`` by its own linear map
  and a BatchNorm (AutoDim, Zhao et al. WWW 2021, §2.2 eq. 2-3; AutoEmb, Zhao et al. ICDM
  2021): BN puts candidates of different widths on the same scale, so α compares what they
  say rather than their magnitudes. The BatchNorm statistics come from the rows' mean and
  covariance and fold into the maps together with the mixture weights, so the whole lift is
  about one batched matmul per batch, independent of ``F`` and ``K`` in op count (the design
  caps a searchable step at 2x a plain one).
- :class:`SupernetEmbedding` - table + lift + architecture logits per *slot* (a field, or a
  frequency group of a field: a contiguous id range, ids being in descending frequency
  order). ``forward`` mixes the lifted candidates with softmax(α) (DARTS, Liu et al. ICLR
  2019, eq. 2) or a Gumbel-softmax sample (AutoDim eq. 5). ``expected_bytes`` is the
  differentiable size of the plan the search will emit.
- :class:`BilevelSearch` - the Lightning module of the search: manual optimisation that
  alternates an α step on a validation batch (first order, or DARTS' finite-difference
  second-order term, eq. 7-8) with a weight step on a training batch, and a Lagrange
  multiplier on the expected-bytes constraint.
- :func:`knapsack_slots` / :func:`slot_plan_fields` - from what the supernet learned to
  per-field (per-group) dims that fit the byte budget.

Budget enforcement (the choice, measured in ``benchmarks/search_darts.py``): neither DARTS
nor AutoDim can aim at a size, so

1. the α objective gets the Lagrangian term ``λ · σ · (E[bytes] − B) / B`` with
   ``E[bytes] = Σ_s Σ_k α_sk · bytes_s(d_k)`` (bytes counted as the final plan counts them:
   rows·d float32 plus the ``d×D`` projection), σ a running RMS of the validation gradient
   on α (so λ is measured against the accuracy signal and one step size fits any data), and
   λ ≥ 0 updated by dual ascent after every α step, ``λ ← max(0, λ + η_λ (E[bytes] − B)/B)``:
   it rises while the expected plan is over budget and decays toward 0 when under. Large
   fields feel it most, since their bytes grow fastest with d;
2. the plan is then chosen by the exact multiple-choice knapsack over the plan's bytes
   (:func:`knapsack_slots`, :func:`autodim.budget.knapsack_dims`), maximising either the
   measured validation-loss gain of every (slot, candidate) on the trained supernet
   (:func:`candidate_gains`) or ``Σ log α`` (:func:`alpha_values`). The old rule - argmax α
   projected by :func:`autodim.budget.fit_dims_to_budget` with :func:`tail_scores`, greedy
   per byte - stays as the ``"projection"`` fallback; since α differs little between
   candidates while bytes per field differ by orders of magnitude, that rule mostly
   follows bytes (:func:`uniform_alpha_dims` is what it gives for a uniform α).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from autodim.budget import (
    dims_bytes,
    field_dim_bytes,
    fit_dims_to_budget,
    knapsack_dims,
    min_feasible_bytes,
)
from autodim.data.schema import Field, Schema
from autodim.embeddings.gather import Embedding
from autodim.searchers._tables import paired_lower_bound
from autodim.task import TrainingDiverged, adam, split_parameters

__all__ = ["FusedFieldTable", "CandidateLift", "SupernetEmbedding", "BilevelSettings",
           "BilevelSearch", "frequency_group_rows", "project_to_budget", "tail_scores",
           "tau_schedule", "preserve_batchnorm_stats"]


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------
class FusedFieldTable(nn.Module):
    """All fields' rows in one table: ``ids[B, T] -> Tensor[B, F, width]``.

    Field ``f`` owns rows ``[offset_f, offset_f + vocab_f)``. Categorical fields read their
    row; sequence fields average their non-padding rows (id 0 is padding), the semantics of
    :func:`autodim.embeddings.field.mean_pool`.

    Args:
        schema: The fields, in batch column order.
        width: Columns of every row (``D`` for a weight-sharing table).
        sparse_threshold: Above this many rows in total the table emits sparse gradients
            (step it with a row-wise optimiser, see :func:`autodim.task.make_optimizers`).
        init_std: Std of the normal initialisation (as
            :class:`~autodim.embeddings.tables.DenseTable`).
    """

    def __init__(self, schema: Schema, width: int, *, sparse_threshold: int = 1_000_000,
                 init_std: float = 0.01):
        super().__init__()
        sizes = [f.vocab_size for f in schema.fields]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        col_field = np.concatenate([[i] * f.width for i, f in enumerate(schema.fields)])
        col_is_seq = np.concatenate([[f.kind == "sequence"] * f.width for f in schema.fields])
        self.num_fields, self.width = schema.num_fields, int(width)
        self.vocab_sizes = sizes
        self.total_rows = int(sum(sizes))
        self.register_buffer("field_offsets", torch.as_tensor(offsets), persistent=False)
        self.register_buffer("col_offsets", torch.as_tensor(offsets[col_field]), persistent=False)
        self.register_buffer("col_field", torch.as_tensor(col_field, dtype=torch.long),
                             persistent=False)
        self.register_buffer("col_is_seq", torch.as_tensor(col_is_seq, dtype=torch.bool),
                             persistent=False)
        # One column per field: the lookup result already is [B, F, width].
        self.one_column_per_field = len(col_field) == schema.num_fields
        self.embedding = Embedding(self.total_rows, self.width,
                                   sparse=self.total_rows > sparse_threshold)
        nn.init.normal_(self.embedding.weight, std=init_std)

    def global_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Field-local ids ``[B, T]`` -> row indices into the fused table."""
        return ids + self.col_offsets

    def pool(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Per-column values ``[B, T, ...]`` -> per-field values ``[B, F, ...]``.

        Categorical columns pass through; a sequence field's columns are averaged over its
        non-padding ids (a row of padding only gives zeros, as ``mean_pool`` does).
        """
        if self.one_column_per_field:
            return x
        m = torch.where(self.col_is_seq, ids != 0, torch.ones_like(ids, dtype=torch.bool))
        m = m.to(x.dtype)
        shape = (x.shape[0], self.num_fields) + tuple(x.shape[2:])
        mx = m.view(*m.shape, *([1] * (x.dim() - 2)))
        num = x.new_zeros(shape).index_add(1, self.col_field, x * mx)
        den = m.new_zeros(x.shape[0], self.num_fields).index_add(1, self.col_field, m)
        return num / den.clamp_min(1.0).view(*den.shape, *([1] * (x.dim() - 2)))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.pool(self.embedding(self.global_ids(ids)), ids)

    def field_weight(self, f: int) -> torch.Tensor:
        """Field ``f``'s rows (a view of the fused weight)."""
        lo = int(self.field_offsets[f])
        return self.embedding.weight[lo:lo + self.vocab_sizes[f]]


class _Moments(torch.autograd.Function):
    """``rows[B, F, I] -> (mean[F, I], cov[F, I, I], c[F, B, I])`` over the batch: the mean,
    the biased covariance and the centred rows ``c = rows − mean`` (field-major, the layout
    ``bmm`` reads), with a backward of one matmul per block.

    ``cov = cᵀc / B``; its gradient w.r.t. the rows is ``c (G + Gᵀ) / B`` exactly (the path
    through the mean adds ``−(G + Gᵀ) Σ_b c_b / B²``, which is zero since the centred rows
    sum to zero). A gradient ``d_c`` of the centred rows reaches the rows as
    ``d_c − mean_b(d_c)``. Autograd through an einsum took two matmuls, a negation, a sum
    and an extra ``[B, F, I]`` accumulation for the covariance alone (darts on the planted
    preset: about 1 ms of a 9 ms supernet step). ``blocks``: column ranges ``(lo, hi)``; only
    ``cov[:, lo:hi, lo:hi]`` is computed, the rest is zero (the callers read no other entry).
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, blocks: tuple[tuple[int, int], ...]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, F, n = rows.shape
        mean = rows.mean(0)
        c = rows.new_empty(F, B, n)  # centred rows, written once in the layout bmm reads
        torch.sub(rows.transpose(0, 1), mean.unsqueeze(1), out=c)
        ctx.save_for_backward(c)
        ctx.blocks = blocks
        ctx.set_materialize_grads(False)
        if blocks == ((0, n),):
            return mean, torch.bmm(c.transpose(1, 2), c) / B, c
        cov = rows.new_zeros(F, n, n)
        for lo, hi in blocks:
            part = c[:, :, lo:hi]
            cov[:, lo:hi, lo:hi] = torch.bmm(part.transpose(1, 2), part) / B
        return mean, cov, c

    @staticmethod
    def backward(ctx, d_mean, d_cov, d_c):
        # Gradients of outputs the loss does not read arrive as None.
        (c,) = ctx.saved_tensors
        F, B, n = c.shape
        if d_c is not None:
            grad = d_c - d_c.mean(1, keepdim=True)
        else:
            grad = c.new_zeros(F, B, n)
        if d_cov is not None:
            if ctx.blocks == ((0, n),):
                grad.baddbmm_(c, d_cov + d_cov.transpose(1, 2), alpha=1.0 / B)
            else:
                for lo, hi in ctx.blocks:
                    g = d_cov[:, lo:hi, lo:hi]
                    grad[:, :, lo:hi] += torch.bmm(c[:, :, lo:hi], g + g.transpose(1, 2)) / B
        if d_mean is not None:
            grad.add_((d_mean / B).unsqueeze(1))
        return grad.transpose(0, 1), None


def _mixed(V: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Maps ``[F, I, K, D]`` mixed by one weight per field and candidate ``[F, K]``:
    ``[F, I, D]``."""
    return (V * w.view(w.shape[0], 1, w.shape[1], 1)).sum(2)


def _moment_blocks(starts: Sequence[int], dims: Sequence[int], width: int
                   ) -> tuple[tuple[int, int], ...]:
    """Column ranges whose covariance the batch statistics need: each candidate's own
    columns. The widest candidate's block alone and the span of the others on each side of
    it when no candidate's columns overlap the widest's (separate tables); else every
    column (weight sharing: the candidates are nested prefixes)."""
    spans = [(int(s), int(s) + int(d)) for s, d in zip(starts, dims) if d > 0]
    if not spans:
        return ((0, width),)
    lo, hi = max(spans, key=lambda r: r[1] - r[0])
    others = [r for r in spans if r != (lo, hi)]
    if any(a < hi and b > lo for a, b in others):
        return ((0, width),)
    left = [r for r in others if r[1] <= lo]
    right = [r for r in others if r[0] >= hi]
    blocks = [(lo, hi)]
    if left:
        blocks.append((min(a for a, _ in left), max(b for _, b in left)))
    if right:
        blocks.append((min(a for a, _ in right), max(b for _, b in right)))
    return tuple(sorted(blocks))


class CandidateLift(nn.Module):
    """Lift every candidate of every field to ``D``, normalise, and mix:
    ``rows[B, F, width], weights[B|1, F, K] -> [B, F, D]``.

    Candidate ``k`` reads input columns ``[start_k, start_k + d_k)`` and has its own
    ``d_k × D`` map per field followed by BatchNorm without scale/shift (AutoDim eq. 2-3);
    the outputs are mixed with the weights (AutoDim eq. 4, DARTS eq. 2):

        out_b = g ⊙ Σ_k w_bk · (z_bk − μ_k) / sqrt(σ²_k + eps),    z_bk = rows_b[cols_k] · W_k

    with ``g`` a learnable per-field output scale shared by the candidates (see ``gain``).

    This is computed without materialising the ``[B, F, K, D]`` candidates: BatchNorm is an
    affine map per channel, so its batch statistics come from the rows' mean and covariance
    (``μ_k = mean(rows) W_k``, ``σ²_k = diag(W_kᵀ Cov(rows) W_k)``) and fold into the maps.
    With weights shared by the batch the lift is then ONE ``[B, width] × [width, D]`` matmul
    per field; with per-sample weights and disjoint candidate columns (separate tables) the
    rows are scaled by their candidate's weight first. Outputs and gradients equal those of
    ``Linear`` + ``BatchNorm1d(affine=False)`` per candidate (tests check it); the fold is
    what keeps a searchable step near a plain one (the design's 2x rule).

    Why no BN scale/shift: a learnable γ_k could undo α_k (γ_k ∝ 1/α_k gives the same
    function) and α would stop meaning anything (DARTS §3.1.1 also drops them). The linear
    bias of AutoDim eq. 2 is left out: BN subtracts it again. A candidate of dim 0 (field
    dropped) contributes exact zeros.
    """

    def __init__(self, num_fields: int, width: int, starts: Sequence[int],
                 dims: Sequence[int], out_dim: int, *, momentum: float = 0.1,
                 eps: float = 1e-5, gain_init: float = 0.1):
        super().__init__()
        K, D = len(dims), out_dim
        self.num_fields, self.num_candidates, self.out_dim = num_fields, K, D
        self.width, self.momentum, self.eps = width, momentum, eps
        self.starts, self.dims = [int(s) for s in starts], [int(d) for d in dims]
        mask = torch.zeros(width, K * D)
        weight = torch.zeros(num_fields, width, K * D)
        col_cand = torch.zeros(width, dtype=torch.long)
        for k, (s, d) in enumerate(zip(self.starts, self.dims)):
            if d == 0:
                continue
            mask[s:s + d, k * D:(k + 1) * D] = 1.0
            col_cand[s:s + d] = k
            bound = 1.0 / math.sqrt(d)  # nn.Linear's default init for fan-in d
            weight[:, s:s + d, k * D:(k + 1) * D].uniform_(-bound, bound)
        # Separate tables give every input column to exactly one candidate.
        self.disjoint = bool((mask.view(width, K, D)[:, :, 0].sum(1) <= 1).all())
        self.blocks = _moment_blocks(self.starts, self.dims, width)
        self.weight = nn.Parameter(weight)
        # One learnable output scale per field and channel, shared by the field's candidates.
        # BatchNorm without affine fixes every candidate at unit variance, and an FM has no
        # weights on its dot products, so without it the interaction logits start with std
        # ~sqrt(F²·D/2) (tens; training losses of 3-7 were measured) and cannot shrink. A
        # per-candidate γ_k could undo α_k, a per-field one cannot: it scales all candidates
        # of the field alike, so α still compares what they say. It folds into the plan's
        # projection like the BN scale.
        self.gain = nn.Parameter(torch.full((num_fields, out_dim), float(gain_init)))
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("col_cand", col_cand, persistent=False)
        # BatchNorm's running mean is kept in *row* space: a channel's batch mean is
        # mean(rows)·W_k exactly, so tracking mean(rows) and mapping it with the current W_k
        # gives the same shift at convergence, and the shift −m·W_k/σ lies in the span of the
        # candidate's map. That is what lets the chosen path fold exactly into a plan's
        # bias-free ``d×D`` projection (rows − m_k, see :meth:`fold`).
        self.register_buffer("running_row_mean", torch.zeros(num_fields, width))
        self.register_buffer("running_var", torch.ones(num_fields, K * D))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def batch_stats(self, rows: torch.Tensor, W: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ²) of every candidate channel, ``[F, K*D]``: the batch's in training mode
        (biased variance, as BatchNorm normalises with; running stats updated), else the
        running ones."""
        if not self.training:
            return torch.einsum("fi,fio->fo", self.running_row_mean, W), self.running_var
        mean, var, _ = self._train_stats(rows, W)
        return torch.einsum("fi,fio->fo", mean, W), var

    def _train_stats(self, rows: torch.Tensor, W: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training mode: the batch's row mean ``[F, I]``, channel variance ``[F, K*D]`` and
        centred rows ``[F, B, I]``; the running stats are updated."""
        B = rows.shape[0]
        mean, cov, c = _Moments.apply(rows, self.blocks)  # [F, I], [F, I, I], [F, B, I]
        var = (torch.bmm(cov, W) * W).sum(1).clamp_min(0.0)
        with torch.no_grad():
            m = self.momentum
            self.running_row_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * B / max(B - 1, 1))
            self.num_batches_tracked.add_(1)
        return mean, var, c

    def _maps(self, W: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BN's scale times the field's output gain, ``[F, K*D]``, and the maps with it
        folded in, ``[F, I, K, D]``."""
        F, n_in, K = W.shape[0], W.shape[1], self.num_candidates
        scale = torch.rsqrt(var + self.eps) * self.gain.repeat(1, K)
        return scale, (W * scale.unsqueeze(1)).view(F, n_in, K, self.out_dim)

    def forward(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        B, F, n_in = rows.shape
        K, D = self.num_candidates, self.out_dim
        W = self.masked_weight()
        if self.training and weights.shape[0] == 1:
            # One mixture for the whole batch, batch statistics: with the mixture folded
            # into the maps as well, the output is the centred rows times one map per field,
            # (rows − mean) Σ_k w_k V_k, since BN's shift μ_k·scale_k = mean·V_k. The centred
            # rows come out of the moments in the layout bmm reads, so the lift is one bmm
            # with no copy of the rows, and the rows' gradient is summed inside _Moments.
            _, var, c = self._train_stats(rows, W)
            _, V = self._maps(W, var)
            return torch.bmm(c, _mixed(V, weights[0])).transpose(0, 1)
        mu, var = self.batch_stats(rows, W)
        scale, V = self._maps(W, var)
        shift = (mu * scale).view(F, K, D)
        if weights.shape[0] == 1:  # one mixture for the whole batch: fold it in too
            w = weights[0]
            return (torch.einsum("bfi,fid->bfd", rows, _mixed(V, w))
                    - (shift * w.unsqueeze(-1)).sum(1))
        shift_b = torch.einsum("bfk,fkd->bfd", weights, shift)
        if self.disjoint:
            # Column i belongs to one candidate only: weight the rows, then one matmul.
            return torch.einsum("bfi,fid->bfd", rows * weights[..., self.col_cand],
                                V.sum(2)) - shift_b
        z = torch.einsum("bfi,fio->bfo", rows, V.reshape(F, n_in, K * D)).view(B, F, K, D)
        return (z * weights.unsqueeze(-1)).sum(2) - shift_b

    def lifted(self, rows: torch.Tensor) -> torch.Tensor:
        """Every candidate lifted and normalised, ``[B, F, K, D]`` (for plots and checks;
        the forward never builds it)."""
        B, F = rows.shape[:2]
        W = self.masked_weight()
        mu, var = self.batch_stats(rows, W)
        z = torch.einsum("bfi,fio->bfo", rows, W)
        z = ((z - mu) * torch.rsqrt(var + self.eps)).view(B, F, self.num_candidates,
                                                         self.out_dim)
        return z * self.gain.view(1, F, 1, self.out_dim)

    def block(self, f: int, k: int) -> torch.Tensor:
        """Field ``f``'s map of candidate ``k`` as ``[d_k, D]``."""
        s, d, D = self.starts[k], self.dims[k], self.out_dim
        return self.weight[f, s:s + d, k * D:(k + 1) * D]

    def fold(self, f: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate ``k`` of field ``f`` in evaluation mode as ``(m, V)``: its output for
        rows ``x`` (the candidate's ``d`` columns) is exactly ``(x − m) V``, ``m`` the running
        row mean ``[d]`` and ``V = W_k / sqrt(σ²_k + eps)`` ``[d, D]`` (BN's shift and scale
        folded into a shift of the rows and a bias-free map)."""
        s, d, D = self.starts[k], self.dims[k], self.out_dim
        scale = torch.rsqrt(self.running_var[f, k * D:(k + 1) * D] + self.eps) * self.gain[f]
        return (self.running_row_mean[f, s:s + d].clone(),
                self.block(f, k) * scale.unsqueeze(0))


# --------------------------------------------------------------------------------------
# Frequency groups
# --------------------------------------------------------------------------------------
def frequency_group_rows(field: Field, groups: int) -> list[int]:
    """Split a field's rows into ``groups`` contiguous id ranges of ~equal training mass.

    Ids are assigned in descending training frequency, so the first range holds the head
    (few, frequent ids) and the last the long tail (AutoEmb's popularity groups). Equal mass
    gives each group's α the same amount of evidence. Without frequencies the ranges have
    equal row counts. Returns the row count of each (non-empty) range.
    """
    n = field.vocab_size
    groups = max(1, min(int(groups), n))
    if groups == 1:
        return [n]
    if field.freqs is not None and field.freqs.sum() > 0:
        cum = np.cumsum(field.freqs.astype(np.float64))
        cuts = np.searchsorted(cum, cum[-1] * np.arange(1, groups) / groups, side="right")
    else:
        cuts = np.round(np.arange(1, groups) * n / groups)
    bounds = sorted(set(int(c) for c in np.clip(cuts, 1, n - 1)))
    edges = [0] + bounds + [n]
    return [b - a for a, b in zip(edges[:-1], edges[1:]) if b > a]


# --------------------------------------------------------------------------------------
# The supernet embedding
# --------------------------------------------------------------------------------------
class SupernetEmbedding(nn.Module):
    """Every candidate dim of every field at once, mixed by architecture weights α.

    Args:
        schema: The fields.
        D: Common output dim.
        candidate_dims: Candidate dims (ascending).
        weight_sharing: One ``max(d)``-wide table per field, candidate ``k`` = its first
            ``d_k`` columns (AutoDim §2.2.1). Otherwise every candidate has its own
            columns (separate tables, stored side by side in one tensor for speed).
        group_rows: Per field, the row counts of its frequency groups (``None``: one group
            per field). Each group is a *slot* with its own α.
        sparse_threshold: See :class:`FusedFieldTable`.

    Attributes:
        logits: ``[S, K]`` architecture parameters; α = softmax(logits) per slot.
        slot_bytes: ``[S, K]`` bytes slot ``s`` costs in the final plan at candidate ``k``.
    """

    def __init__(self, schema: Schema, D: int, candidate_dims: Sequence[int], *,
                 weight_sharing: bool = True, group_rows: Sequence[Sequence[int]] | None = None,
                 sparse_threshold: int = 1_000_000):
        super().__init__()
        dims = [int(d) for d in candidate_dims]
        self.schema, self.D, self.candidate_dims = schema, int(D), dims
        self.weight_sharing = weight_sharing
        if weight_sharing:
            starts, width = [0] * len(dims), max(dims)
        else:
            starts = [int(s) for s in np.concatenate([[0], np.cumsum(dims)[:-1]])]
            width = int(sum(dims))
        self.table = FusedFieldTable(schema, max(width, 1), sparse_threshold=sparse_threshold)
        self.lift = CandidateLift(schema.num_fields, max(width, 1), starts, dims, D)

        if group_rows is None:
            group_rows = [[f.vocab_size] for f in schema.fields]
        self.group_rows = [list(map(int, g)) for g in group_rows]
        for f, g in zip(schema.fields, self.group_rows):
            if sum(g) != f.vocab_size or min(g) < 1:
                raise ValueError(f"field {f.name!r}: groups {g} do not cover {f.vocab_size} rows")
        self.slot_names = [f.name if len(g) == 1 else f"{f.name}/g{j}"
                           for f, g in zip(schema.fields, self.group_rows) for j in range(len(g))]
        self.grouped = any(len(g) > 1 for g in self.group_rows)
        # Slot boundaries in fused-table row space, for one bucketize per batch.
        starts_global = []
        offsets = self.table.field_offsets.tolist()
        for off, g in zip(offsets, self.group_rows):
            starts_global += [off + int(s) for s in np.concatenate([[0], np.cumsum(g)[:-1]])]
        self.register_buffer("slot_starts", torch.tensor(starts_global[1:], dtype=torch.long),
                             persistent=False)
        slot_rows = [r for g in self.group_rows for r in g]
        cost = [[field_dim_bytes(r, d, self.D) for d in dims] for r in slot_rows]
        self.register_buffer("slot_bytes", torch.tensor(cost, dtype=torch.float64),
                             persistent=False)
        self.logits = nn.Parameter(torch.zeros(len(slot_rows), len(dims)))

    # -- parameters -------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n != "logits"]

    # -- α ------------------------------------------------------------------------------
    def probs(self) -> torch.Tensor:
        """α = softmax(logits) per slot, ``[S, K]``."""
        return torch.softmax(self.logits, dim=-1)

    def expected_bytes(self) -> torch.Tensor:
        """``E[bytes] = Σ_s Σ_k α_sk · bytes_s(d_k)``: differentiable in the logits."""
        return (self.probs().double() * self.slot_bytes).sum()

    def sample_gumbel(self) -> torch.Tensor:
        """Gumbel(0, 1) noise ``[S, K]``, one draw per slot and candidate, from torch's RNG.

        One draw per batch, as AutoDim eq. 5 reads (no sample index): it also lets the lift
        fold the mixture into its maps (one matmul instead of K).
        """
        u = torch.rand(self.logits.shape, device=self.logits.device)
        return -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))

    def slot_weights(self, logits: torch.Tensor | None = None, tau: float | None = None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """Candidate weights per slot, ``[S, K]``: softmax(logits) (DARTS eq. 2), or with a
        temperature the Gumbel-softmax of AutoDim eq. 5, ``softmax((logits + g) / tau)``;
        without noise ``g`` (evaluation) it is the deterministic ``softmax(logits / tau)``."""
        z = self.logits if logits is None else logits
        if tau is not None:
            z = (z + noise) / tau if noise is not None else z / tau
        return torch.softmax(z, dim=-1)

    def expand_weights(self, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Per-slot weights ``[S, K]`` -> per-field weights: ``[1, F, K]``, or ``[B, F, K]``
        with frequency groups (each id uses its group's weights; a sequence field averages
        its ids' weights, exact for categorical fields)."""
        if not self.grouped:
            return w.unsqueeze(0)
        slot = torch.bucketize(self.table.global_ids(ids), self.slot_starts, right=True)
        return self.table.pool(w[slot], ids)

    def mixing_weights(self, ids: torch.Tensor, logits: torch.Tensor, tau: float | None = None,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
        """Candidate weights per field (:meth:`slot_weights`, :meth:`expand_weights`)."""
        return self.expand_weights(ids, self.slot_weights(logits, tau, noise))

    def candidates(self, ids: torch.Tensor) -> torch.Tensor:
        """Every candidate of every field lifted to ``D`` and normalised: ``[B, F, K, D]``."""
        return self.lift.lifted(self.table(ids))

    def forward(self, ids: torch.Tensor, *, tau: float | None = None,
                noise: torch.Tensor | None = None, detach_arch: bool = False) -> torch.Tensor:
        """``ids[B, T] -> [B, F, D]``: Σ_k w_k · lifted candidate k (AutoDim eq. 4).

        Args:
            tau: Gumbel-softmax temperature (``None``: plain softmax). Noise is only drawn in
                training mode; evaluation uses the noise-free ``softmax(logits / tau)``.
            noise: Gumbel noise to reuse (second-order steps need the same sample twice).
            detach_arch: Stop gradients into α (weight steps).
        """
        logits = self.logits.detach() if detach_arch else self.logits
        if tau is not None and self.training:
            noise = self.sample_gumbel() if noise is None else noise
        else:
            noise = None  # no Gumbel noise at evaluation
        return self.lift(self.table(ids), self.mixing_weights(ids, logits, tau, noise))

    def forward_weights(self, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The supernet with given per-slot candidate weights ``w[S, K]``."""
        return self.lift(self.table(ids), self.expand_weights(ids, w))

    # -- read-out -----------------------------------------------------------------------
    def argmax_dims(self) -> list[int]:
        """Per slot, the candidate dim with the largest α."""
        k = self.logits.detach().argmax(-1).tolist()
        return [self.candidate_dims[i] for i in k]

    def path_weights(self, slot_dims: Sequence[int], tau: float | None = None) -> torch.Tensor:
        """``[S, K]``: per slot only the chosen candidate, at its evaluation-mode weight (the
        supernet's "argmax path" when ``slot_dims`` is the argmax)."""
        w = self.slot_weights(self.logits.detach(), tau)
        k_of = {d: k for k, d in enumerate(self.candidate_dims)}
        keep = torch.zeros_like(w)
        keep[torch.arange(len(w)), torch.tensor([k_of[int(d)] for d in slot_dims])] = 1.0
        return w * keep

    def warm_start(self, slot_dims: Sequence[int], *, tau: float | None = None,
                   scale: str = "exact") -> dict[str, torch.Tensor]:
        """State dict for ``plan.build()`` of the plan made from ``slot_dims`` (see
        :func:`slot_plan_fields`) whose embedding output equals the supernet's path through
        the chosen candidates (:meth:`path_weights`) in evaluation mode.

        Per field (group) at candidate ``k`` with fold ``(m, V)`` (:meth:`CandidateLift.fold`)
        and weight ``w`` of its slot: a projected plan (``d < D``) gets rows ``w·(x − m)`` and
        projection ``V``; a field at ``D`` (no projection) gets rows ``w·(x − m)V``. Weights
        go into the rows, so merged groups with different α still share one projection.
        Exact for categorical fields and for sequences with at least one non-padding id.

        Args:
            slot_dims: Dim per slot.
            tau: The temperature the search ended at (AutoDim), ``None`` for softmax.
            scale: ``"exact"``: as above. ``"initial"``: rows rescaled so that each field's
                output has the std of a freshly initialised compact field (table std 0.01,
                ``nn.Linear`` default projection), the direction kept.
        """
        if scale not in ("exact", "initial"):
            raise ValueError(f"warm start scale must be 'exact' or 'initial', got {scale!r}")
        out: dict[str, torch.Tensor] = {}
        k_of = {d: k for k, d in enumerate(self.candidate_dims)}
        w_slot = self.slot_weights(self.logits.detach(), tau)
        s = 0
        with torch.no_grad():
            for f, groups in enumerate(self.group_rows):
                dims = [int(d) for d in slot_dims[s:s + len(groups)]]
                row_w = torch.cat([w_slot[s + j, k_of[d]].expand(r)
                                   for j, (r, d) in enumerate(zip(groups, dims))])
                s += len(groups)
                merged = _merge_groups(groups, dims)
                W = self.table.field_weight(f)
                lo = 0
                for j, (rows, d) in enumerate(merged):
                    if d > 0:
                        k = k_of[d]
                        prefix = (f"fields.{f}." if len(merged) == 1
                                  else f"fields.{f}.groups.{j}.")
                        start = self.lift.starts[k]
                        m, V = self.lift.fold(f, k)
                        x = (W[lo:lo + rows, start:start + d] - m) * row_w[lo:lo + rows, None]
                        if d < self.D:
                            table, proj = x, V.t().contiguous()
                            target = 0.01 / math.sqrt(3.0)  # N(0, 0.01²) rows × U(±1/√d) map
                        else:
                            table, proj, target = x @ V, None, 0.01
                        if scale == "initial":
                            std = float((table if proj is None else table @ proj.t()).std())
                            table = table * (target / max(std, 1e-12))
                        out[prefix + "table.embedding.weight"] = table.detach().clone()
                        if proj is not None:
                            out[prefix + "align.linear.weight"] = proj
                    lo += rows
        return out


def _merge_groups(rows: Sequence[int], dims: Sequence[int]) -> list[tuple[int, int]]:
    """Adjacent groups with the same dim merge: a merged range stores one projection."""
    out: list[tuple[int, int]] = []
    for r, d in zip(rows, dims):
        if out and out[-1][1] == d:
            out[-1] = (out[-1][0] + r, d)
        else:
            out.append((r, d))
    return out


# --------------------------------------------------------------------------------------
# From α to a plan within the budget
# --------------------------------------------------------------------------------------
def tail_scores(probs: np.ndarray) -> np.ndarray:
    """Per-candidate scores for :func:`~autodim.budget.fit_dims_to_budget` from α ``[S, K]``.

    ``score_k = Σ_{j≤k} P(level ≥ j)`` (= E[min(level, k)] with level ~ α): stepping a slot
    from candidate ``k`` to ``k+1`` gains ``P(level ≥ k+1)``, the α mass above what it has,
    and stepping down loses the mass at and above ``k``. The scores increase with ``k`` and
    have diminishing steps, so the greedy projection shrinks the slots whose α sits lowest
    per byte saved and spends spare budget where α asks for more per byte. Raw α would stop
    every slot at its argmax and leave spare budget unused.
    """
    tails = np.cumsum(probs[:, ::-1], axis=1)[:, ::-1]  # P(level >= k)
    return np.cumsum(np.concatenate([np.zeros((len(probs), 1)), tails[:, 1:]], axis=1), axis=1)


def project_to_budget(schema: Schema, D: int, candidate_dims: Sequence[int],
                      group_rows: Sequence[Sequence[int]], probs: np.ndarray,
                      budget_bytes: int | None) -> list[int]:
    """Per-slot dims: argmax α, projected onto ``budget_bytes`` (if any).

    Slots (fields or frequency groups) are treated as pseudo-fields of their own row count,
    whose bytes (rows·d + projection) are what the plan stores for a group. If the budget
    cannot hold one projection per group, groups are given up: every slot of a field gets
    the field's choice from its row-weighted α.
    """
    cands = [int(c) for c in candidate_dims]
    start = [cands[k] for k in probs.argmax(1)]
    if budget_bytes is None:
        return start
    scores = tail_scores(probs)
    slot_fields = [Field(f"s{i}", vocab_size=r) for i, r in enumerate(
        r for g in group_rows for r in g)]
    slot_schema = Schema(slot_fields)
    if min_feasible_bytes(slot_schema, D, cands) <= budget_bytes:
        names = slot_schema.names
        dims = fit_dims_to_budget(slot_schema, D, cands, dict(zip(names, scores)), budget_bytes,
                                  start=dict(zip(names, start)))
        return [dims[n] for n in names]
    # Per-field fallback: α averaged over a field's groups, weighted by their rows.
    field_probs, s = [], 0
    for g in group_rows:
        w = np.asarray(g, dtype=np.float64) / sum(g)
        field_probs.append((probs[s:s + len(g)] * w[:, None]).sum(0))
        s += len(g)
    fp = np.stack(field_probs)
    dims = fit_dims_to_budget(schema, D, cands, dict(zip(schema.names, tail_scores(fp))),
                              budget_bytes,
                              start={n: cands[k] for n, k in zip(schema.names, fp.argmax(1))})
    return [dims[schema.names[i]] for i, g in enumerate(group_rows) for _ in g]


PLAN_RULES = ("alpha", "gain", "projection")


def _slot_schema(group_rows: Sequence[Sequence[int]]) -> Schema:
    """Slots (fields or frequency groups) as pseudo-fields of their own row count."""
    return Schema([Field(f"s{i}", vocab_size=r)
                   for i, r in enumerate(r for g in group_rows for r in g)])


def knapsack_slots(schema: Schema, D: int, candidate_dims: Sequence[int],
                   group_rows: Sequence[Sequence[int]], values: np.ndarray,
                   budget_bytes: int | None, *, fill: np.ndarray | None = None,
                   informative: Sequence[bool] | None = None) -> list[int]:
    """Per-slot dims maximising ``Σ_s values[s, k_s]`` with the plan's bytes <= the budget:
    the exact multiple-choice knapsack (:func:`autodim.budget.knapsack_dims`).

    A slot costs what the plan stores for it (rows·d + the ``d×D`` projection), so merging
    adjacent groups of equal dim (one projection) can only save bytes. If the budget cannot
    hold one projection per group, groups are given up: every slot of a field gets the
    field's choice, made on the sum of its slots' values. With ``fill`` (values of the same
    shape), bytes left over are spent on the steps up that ``fill`` values (:func:`_fill`),
    on the slots flagged ``informative`` only (all slots without it).
    """
    cands = [int(c) for c in candidate_dims]
    values = np.asarray(values, dtype=np.float64)
    if budget_bytes is None:
        return [cands[k] for k in values.argmax(1)]
    slots = _slot_schema(group_rows)
    if min_feasible_bytes(slots, D, cands) <= budget_bytes:
        dims = knapsack_dims(slots, D, cands, dict(zip(slots.names, values)), budget_bytes)
        out = [dims[n] for n in slots.names]
        return (_fill(slots, D, cands, fill, out, budget_bytes, informative)
                if fill is not None else out)
    field_values, s = {}, 0
    for f, g in zip(schema.fields, group_rows):
        field_values[f.name] = values[s:s + len(g)].sum(0)
        s += len(g)
    dims = knapsack_dims(schema, D, cands, field_values, budget_bytes)
    out = [dims[f.name] for f in schema.fields]
    if fill is not None:
        fill_fields, field_informative, s = [], [], 0
        for g in group_rows:
            fill_fields.append(np.asarray(fill)[s:s + len(g)].sum(0))
            field_informative.append(informative is None or any(informative[s:s + len(g)]))
            s += len(g)
        out = _fill(schema, D, cands, np.stack(fill_fields), out, budget_bytes,
                    field_informative)
    return [d for d, g in zip(out, group_rows) for _ in g]


def _fill(schema: Schema, D: int, cands: list[int], values: np.ndarray, dims: list[int],
          budget_bytes: int, informative: Sequence[bool] | None = None) -> list[int]:
    """Spend what the knapsack left on steps up that lose no value: first those with a
    positive value (largest value per byte first; bytes the confidence bound would not buy
    go where the mean gain still says the wider candidate helps), then value-neutral ones,
    the cheapest step first. The plan is retrained from scratch, where a wider table can
    learn what a narrower one can, so unused bytes are waste. A value-neutral step carries
    no measurement, and a table wider than its field's signal overfits like a narrower one
    underfits (decoupled preset, 30 epochs: signal fields at 4,4,4,4 reach 0.778 test AUC,
    at 16,16,16,16 0.735), so the cheapest-first order spreads those bytes evenly over the
    fields (a step up from dim d costs rows·Δd) instead of piling them onto one.

    With ``informative`` (one flag per slot), only the flagged slots are stepped up: a slot
    where no candidate was measured to beat its smallest one keeps the knapsack's choice.
    In FM every field's vector enters a product with every other field's, so width given to
    a field without signal is not neutral after retraining: it adds noise to every pair
    (on the decoupled preset, noise fields filled to dims 1-2 cost 0.07 test AUC against
    the same plan with them dropped). Bytes left over stay unspent; the history says so."""
    rows = [f.vocab_size for f in schema.fields]
    level = [cands.index(d) for d in dims]
    total = sum(field_dim_bytes(r, cands[k], D) for r, k in zip(rows, level))
    while True:
        best, key = None, None
        for i, k in enumerate(level):
            if k + 1 >= len(cands) or (informative is not None and not informative[i]):
                continue
            gain = values[i, k + 1] - values[i, k]
            extra = field_dim_bytes(rows[i], cands[k + 1], D) - field_dim_bytes(
                rows[i], cands[k], D)
            if gain < 0 or total + extra > budget_bytes:
                continue
            kk = (gain > 0, gain / max(extra, 1), -extra)
            if key is None or kk > key:
                best, key = i, kk
        if best is None:
            return [cands[k] for k in level]
        k = level[best]
        total += field_dim_bytes(rows[best], cands[k + 1], D) - field_dim_bytes(
            rows[best], cands[k], D)
        level[best] += 1


def alpha_values(probs: np.ndarray) -> np.ndarray:
    """``log α`` per slot and candidate: the knapsack then maximises ``Σ_s log α_s,k_s``, the
    log-probability of the plan under α (independent slots)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None))


@torch.no_grad()
def candidate_gains(embedding: "SupernetEmbedding", backbone: nn.Module, batches: Any, *,
                    tau: float | None = None, max_rows: int = 50_000,
                    with_mean: bool = False, with_pairs: bool = False, z: float = 2.0) -> Any:
    """Validation-loss gain of every (slot, candidate) on the trained supernet, ``[S, K]``.

    ``gain[s, k] = L(mixture) − L(slot s answered by candidate k alone)``: the mean log loss
    over up to ``max_rows`` validation rows, in evaluation mode (running statistics, no
    noise). The lone candidate is rescaled to the RMS of the mixture it replaces: the
    backbone was trained on mixtures, and an unscaled one-hot vector (a lone candidate has
    unit variance per channel, a mixture of decorrelated candidates less) would be judged
    mostly on its magnitude, which favours whatever α already prefers. Summed over slots it
    is a first-order estimate of the change in validation loss of a plan, which the knapsack
    maximises. A frequency-group slot replaces the rows whose id is in the group (a sequence
    field: whose first id is). Costs ``S·K`` backbone passes per batch.

    The first return value is a lower confidence bound: the gain of the slot's smallest
    candidate, plus, for every wider candidate, its *paired* gain over the smallest one
    (row by row, on the same rows) minus ``z`` standard errors of that row-wise difference.
    The knapsack only compares candidates within a slot, so what has to be significant is
    the step over the smallest candidate: a noise field's wider candidates differ from
    dropping it by batch-to-batch noise (~1e-4 here), far below two standard errors, and
    are worth nothing, while a signal field's steps (1e-2) stand out. Pairing removes the
    variance that all candidates share (how hard the rows are), which an unpaired bound per
    candidate would keep.

    With ``with_pairs`` the last return value is ``beats[S, K, K]``: whether candidate ``k``
    lowers the loss below candidate ``j``'s by ``z`` standard errors of their row-wise
    difference (the same paired test between any two candidates of a slot).
    """
    was_training = embedding.training, backbone.training
    embedding.eval()
    backbone.eval()
    base_w = embedding.slot_weights(embedding.logits.detach(), tau)
    S, K = base_w.shape
    slot_field = [f for f, g in enumerate(embedding.group_rows) for _ in g]
    first_col = [sl.start for sl in embedding.schema.column_slices()]
    loss_fn = nn.functional.binary_cross_entropy_with_logits
    gain_sum = torch.zeros(S, K, dtype=torch.float64)  # Σ_rows L(mix) − L(k)
    step_sum = torch.zeros(S, K, dtype=torch.float64)  # Σ_rows L(k=0) − L(k)
    step_sq = torch.zeros(S, K, dtype=torch.float64)
    pair_sum = torch.zeros(S, K, K, dtype=torch.float64) if with_pairs else None
    pair_sq = torch.zeros(S, K, K, dtype=torch.float64) if with_pairs else None
    seen = 0
    try:
        for ids, labels in batches:
            ids, labels = ids.to(base_w.device), labels.to(base_w.device)
            z_ = embedding.lift.lifted(embedding.table(ids))  # [B, F, K, D]
            mix = (z_ * embedding.expand_weights(ids, base_w).unsqueeze(-1)).sum(2)
            base = loss_fn(backbone(mix), labels, reduction="none").double()
            slot_of = (torch.bucketize(embedding.table.global_ids(ids), embedding.slot_starts,
                                       right=True) if embedding.grouped else None)
            for s_, f in enumerate(slot_field):
                rows = (slice(None) if slot_of is None
                        else (slot_of[:, first_col[f]] == s_).nonzero(as_tuple=True)[0])
                ref = mix[rows, f]
                if ref.numel() == 0:
                    continue
                ref_rms = ref.pow(2).mean().sqrt()
                losses = []
                for k in range(K):
                    zk = z_[rows, f, k]
                    out = mix.clone()
                    out[rows, f] = zk * (ref_rms / zk.pow(2).mean().sqrt().clamp_min(1e-12))
                    losses.append(loss_fn(backbone(out), labels, reduction="none").double())
                L = torch.stack(losses)  # [K, B]; rows outside the slot equal the base
                gain_sum[s_] += (base - L).sum(1)
                step = L[0] - L
                step_sum[s_] += step.sum(1)
                step_sq[s_] += step.pow(2).sum(1)
                if with_pairs:  # [k, j]: L(j) − L(k), positive where k is better
                    diff = L.unsqueeze(0) - L.unsqueeze(1)
                    pair_sum[s_] += diff.sum(-1)
                    pair_sq[s_] += diff.pow(2).sum(-1)
            seen += len(labels)
            if seen >= max_rows:
                break
    finally:
        embedding.train(was_training[0])
        backbone.train(was_training[1])
    if seen == 0:
        raise RuntimeError("the validation split is empty: candidate gains need batches")
    mean = gain_sum / seen
    lcb = mean[:, :1] + paired_lower_bound(step_sum, step_sq, seen, z)
    lcb[:, 0] = mean[:, 0]
    out = [lcb.numpy()] + ([mean.numpy()] if with_mean else [])
    if with_pairs:
        out.append((paired_lower_bound(pair_sum, pair_sq, seen, z) > 0).numpy())
    return tuple(out) if len(out) > 1 else out[0]


def significant_values(values: np.ndarray, beats: np.ndarray) -> np.ndarray:
    """Per slot, the value of each candidate as the value of the widest narrower-or-equal
    candidate reached by significant steps only: walking up the candidates, the running
    choice moves to ``k`` only when ``k`` beats it (``beats[s, k, j]``, the paired test of
    :func:`candidate_gains`), and every candidate is worth the running choice's value.

    Our addition: the supernet's gains of two wide candidates of a signal field differ by
    noise (decoupled preset: 4e-4 between dims 2 and 16 of a rank-2 field, inside two
    standard errors), and a knapsack with spare bytes buys the noisier winner, up to 16.
    With ties the knapsack and the value-neutral fill (cheapest step first) spread width
    evenly over the fields that carry signal instead."""
    values = np.asarray(values, dtype=np.float64)
    out = values.copy()
    for s_ in range(values.shape[0]):
        best = 0
        for k in range(1, values.shape[1]):
            if beats[s_, k, best] and values[s_, k] > values[s_, best]:
                best = k
            out[s_, k] = values[s_, best]
    return out


def uniform_alpha_dims(schema: Schema, D: int, candidate_dims: Sequence[int],
                       group_rows: Sequence[Sequence[int]], budget_bytes: int | None
                       ) -> list[int]:
    """The plan the old projection makes when α is uniform (every slot equally unsure):
    what bytes alone decide. A searched plan equal to it learned nothing usable."""
    S = sum(len(g) for g in group_rows)
    K = len(candidate_dims)
    return project_to_budget(schema, D, candidate_dims, group_rows,
                             np.full((S, K), 1.0 / K), budget_bytes)


def slot_plan_fields(schema: Schema, group_rows: Sequence[Sequence[int]],
                     slot_dims: Sequence[int]
                     ) -> tuple[dict[str, int], dict[str, list[dict[str, int]]]]:
    """(per-field dim, per-field frequency groups) of a per-slot allocation; adjacent groups
    of equal dim merge, and a field whose groups all merge is a plain field."""
    dims: dict[str, int] = {}
    groups: dict[str, list[dict[str, int]]] = {}
    s = 0
    for f, g in zip(schema.fields, group_rows):
        merged = _merge_groups(g, slot_dims[s:s + len(g)])
        s += len(g)
        dims[f.name] = max(d for _, d in merged)
        if len(merged) > 1:
            groups[f.name] = [{"rows": r, "dim": d} for r, d in merged]
    return dims, groups


def slot_bytes_of(schema: Schema, D: int, group_rows: Sequence[Sequence[int]],
                  slot_dims: Sequence[int]) -> int:
    """Bytes of the plan :func:`slot_plan_fields` makes (groups merged)."""
    dims, groups = slot_plan_fields(schema, group_rows, slot_dims)
    plain = {n: (0 if n in groups else d) for n, d in dims.items()}
    return dims_bytes(schema, D, plain) + sum(
        field_dim_bytes(g["rows"], g["dim"], D) for gs in groups.values() for g in gs)


# --------------------------------------------------------------------------------------
# The bilevel search loop
# --------------------------------------------------------------------------------------
def tau_schedule(step: int, decay: float = 5e-5, minimum: float = 0.01) -> float:
    """AutoDim's temperature ``τ = max(minimum, 1 − decay · t)`` (Zhao et al. 2021, §2.2.2)."""
    return max(minimum, 1.0 - decay * step)


_RUNNING = ("running_mean", "running_row_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def frozen(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """``requires_grad`` off for ``params`` inside the block (restored after)."""
    was = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)


@contextlib.contextmanager
def preserve_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Run forwards in training mode (batch statistics) without moving running statistics
    (BatchNorm's and :class:`CandidateLift`'s): α steps and DARTS' virtual steps must not
    change the network's state."""
    saved = [(buf, buf.clone()) for name, buf in module.named_buffers()
             if name.rsplit(".", 1)[-1] in _RUNNING]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


@dataclass
class BilevelSettings:
    """Settings of :class:`BilevelSearch` (see the searchers' docstrings)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    arch_lr: float = 3e-3
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 0.0
    arch_every: int = 1
    warmup_steps: int = 0
    gumbel: bool = False
    tau_decay: float | None = None  # None: anneal to tau_min over planned_steps
    tau_min: float = 0.01
    planned_steps: int = 0
    second_order: bool = False
    xi: float | None = None
    budget_bytes: int | None = None
    penalty: bool = True
    multiplier_lr: float = 0.01
    log_every: int = 10
    max_steps: int = -1


class BilevelSearch(pl.LightningModule):
    """Bilevel optimisation of a supernet (DARTS Algorithm 1), manual optimisation.

    Each training step: (1) if it is an α step, draw the next validation batch (cycling the
    validation loader) and step α on ``L_val + λ (E[bytes] − B) / B`` with the weights fixed;
    (2) step the weights on the training batch with α fixed (gradients do not reach α). With
    ``second_order``, step (1) uses DARTS' approximation of ``∇_α L_val(w − ξ∇_w L_train)``
    (Liu et al. 2019, eq. 7) with the finite-difference Hessian-vector product of eq. 8.

    Args:
        embedding: The supernet embedding.
        backbone: ``[B, F, D] -> logits[B]``.
        val_batches: Re-iterable validation batches for the α steps.
        settings: :class:`BilevelSettings`.
    """

    def __init__(self, embedding: SupernetEmbedding, backbone: nn.Module,
                 val_batches: Any, settings: BilevelSettings):
        super().__init__()
        self.embedding, self.backbone = embedding, backbone
        self.settings = settings
        self.automatic_optimization = False
        self.val_batches = val_batches
        self._val_iter: Iterator | None = None
        self.step_count = 0
        self.multiplier = 0.0
        self.grad_scale: float | None = None
        self.history: dict[str, Any] = {"steps": [], "alpha": {n: [] for n in embedding.slot_names},
                                        "expected_bytes": [], "multiplier": [], "tau": [],
                                        "val_loss": [], "train_loss": []}
        self._last_val_loss = math.nan
        self._last_train_loss = math.nan

    # -- model ----------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, *, noise: torch.Tensor | None = None,
                detach_arch: bool = False) -> torch.Tensor:
        tau = self.tau() if self.settings.gumbel else None
        return self.backbone(self.embedding(ids, tau=tau, noise=noise, detach_arch=detach_arch))

    def tau(self) -> float:
        """The Gumbel-softmax temperature at the current step.

        With ``tau_decay=None`` (the default) the paper's linear schedule is stretched over
        the planned search, ``decay = (1 − tau_min) / planned_steps``, so τ reaches
        ``tau_min`` at the last step. Deviation from AutoDim's fixed 5e-5 per step, because
        that rate needs ~20k steps to anneal: over the few hundred steps of a search here τ
        would stay near 0.98, the sample would never sharpen toward one candidate, and the
        search would end on a mixture the plan (one candidate) does not resemble.
        """
        s = self.settings
        decay = s.tau_decay
        if decay is None:
            decay = (1.0 - s.tau_min) / max(1, s.planned_steps)
        return tau_schedule(self.step_count, decay, s.tau_min)

    def loss(self, ids: torch.Tensor, labels: torch.Tensor, **kw: Any) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(self(ids, **kw), labels)

    def weight_parameters(self) -> list[nn.Parameter]:
        return self.embedding.weight_parameters() + list(self.backbone.parameters())

    def configure_optimizers(self):
        holder = nn.ModuleList([self.backbone, self.embedding.table, self.embedding.lift])
        dense, sparse = split_parameters(holder)
        s = self.settings
        opts: list[torch.optim.Optimizer] = [
            adam(dense, lr=s.lr, weight_decay=s.weight_decay)]
        if sparse:
            opts.append(torch.optim.SparseAdam(sparse, lr=s.lr))
        # DARTS §3.1.2 steps α with Adam, betas (0.5, 0.999).
        opts.append(adam(self.embedding.arch_parameters(), lr=s.arch_lr,
                         betas=s.arch_betas, weight_decay=s.arch_weight_decay))
        return opts

    # -- training --------------------------------------------------------------------------
    def _next_val_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(2):
            if self._val_iter is None:
                self._val_iter = iter(self.val_batches)
            try:
                x, y = next(self._val_iter)
                return x.to(self.device), y.to(self.device)
            except StopIteration:
                self._val_iter = None
        raise RuntimeError("the validation split is empty: α steps need validation batches")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if 0 <= self.settings.max_steps <= self.step_count:
            self.trainer.should_stop = True
            return -1  # ends the epoch; should_stop ends the fit
        return None

    def training_step(self, batch, batch_idx):
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        weight_opts, arch_opt = opts[:-1], opts[-1]
        s = self.settings
        if (s.arch_every > 0 and self.step_count >= s.warmup_steps
                and self.step_count % s.arch_every == 0):
            self.arch_step(batch, self._next_val_batch(), arch_opt)
        loss = self.weight_step(batch, weight_opts)
        self.step_count += 1
        if self.step_count % max(1, s.log_every) == 0:
            self.record()
        return loss

    def weight_step(self, batch, weight_opts: Sequence[Any]) -> torch.Tensor:
        """One weight step on a training batch, α held fixed (no gradient reaches it)
        (DARTS Algorithm 1, step 2: ``w ← w − ξ ∇_w L_train(w, α)``)."""
        ids, labels = batch
        for o in weight_opts:
            o.zero_grad()
        loss = self.loss(ids, labels, detach_arch=True)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"supernet training loss became {loss.item()} at step "
                                   f"{self.step_count}")
        if getattr(self, "_trainer", None) is not None:
            self.manual_backward(loss)
        else:  # driven by hand (tests, step timings)
            loss.backward()
        for o in weight_opts:
            o.step()
        self._last_train_loss = float(loss.detach())
        return loss.detach()

    def arch_step(self, train_batch, val_batch, arch_opt) -> None:
        """One α step on a validation batch (DARTS Algorithm 1, step 1)."""
        s = self.settings
        logits = self.embedding.logits
        with preserve_batchnorm_stats(self):
            if s.second_order:
                grad, val_loss = self._second_order_grad(train_batch, val_batch)
            else:
                # Only α's gradient is wanted: with the weights frozen for this forward,
                # autograd records nothing for the tables, maps and backbone weights
                # (their backward is most of the step's cost; about 2 ms of 4 on planted).
                with frozen(self.weight_parameters()):
                    val_loss = self.loss(*val_batch)
                    (grad,) = torch.autograd.grad(val_loss, [logits])
        budgeted = s.penalty and s.budget_bytes is not None
        if budgeted:
            # Lagrangian term λ·σ·(E[bytes] − B)/B. Dividing by B makes it unit-free; σ, a
            # running RMS of the validation gradient on α, puts it on the scale of the
            # accuracy signal, so λ ≈ 1 means "budget pressure as strong as accuracy" on any
            # data and loss scale, and one multiplier_lr default works across datasets.
            rms = float(grad.pow(2).mean().sqrt())
            self.grad_scale = rms if self.grad_scale is None else (
                0.9 * self.grad_scale + 0.1 * rms)
            weight = self.multiplier * self.grad_scale / s.budget_bytes
            (pgrad,) = torch.autograd.grad(self.embedding.expected_bytes() * weight, [logits])
            grad = grad + pgrad.to(grad.dtype)
        arch_opt.zero_grad()
        logits.grad = grad
        arch_opt.step()
        if budgeted:
            # Dual ascent on λ >= 0: up while over budget, down toward 0 while under.
            expected = float(self.embedding.expected_bytes().detach())
            violation = (expected - s.budget_bytes) / s.budget_bytes
            self.multiplier = max(0.0, self.multiplier + s.multiplier_lr * violation)
        self._last_val_loss = float(val_loss.detach())

    def _second_order_grad(self, train_batch, val_batch) -> tuple[torch.Tensor, torch.Tensor]:
        """DARTS eq. 7-8: ``∇_α L_val(w', α) − ξ [∇_α L_train(w⁺) − ∇_α L_train(w⁻)] / 2ε``,
        ``w' = w − ξ ∇_w L_train(w, α)`` (eq. 6), ``w± = w ± ε ∇_w' L_val(w', α)``,
        ``ε = 0.01 / ‖∇_w' L_val(w', α)‖``. The virtual step is plain SGD with ξ = the weight
        learning rate (DARTS sets ξ to it), whatever optimiser the real weight step uses."""
        s = self.settings
        xi = s.lr if s.xi is None else s.xi
        logits = self.embedding.logits
        W = [p for p in self.weight_parameters() if p.requires_grad]
        backup = [p.detach().clone() for p in W]
        ids_t, y_t = train_batch
        noise_t, noise_v = self._noise(), self._noise()
        g_train = _dense(torch.autograd.grad(self.loss(ids_t, y_t, noise=noise_t), W,
                                             allow_unused=True), W)
        with torch.no_grad():
            for p, g in zip(W, g_train):
                p.sub_(xi * g)  # eq. 6, virtual step
        val_loss = self.loss(*val_batch, noise=noise_v)
        grads = _dense(torch.autograd.grad(val_loss, [logits] + W, allow_unused=True),
                       [logits] + W)
        d_alpha, d_w = grads[0], grads[1:]
        norm = torch.sqrt(sum((g * g).sum() for g in d_w))
        eps = 0.01 / max(float(norm), 1e-12)
        hv = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, b, g in zip(W, backup, d_w):
                    p.copy_(b + sign * eps * g)
            (g_a,) = torch.autograd.grad(self.loss(ids_t, y_t, noise=noise_t), [logits])
            hv.append(g_a)
        with torch.no_grad():
            for p, b in zip(W, backup):
                p.copy_(b)
        return d_alpha - xi * (hv[0] - hv[1]) / (2 * eps), val_loss

    def _noise(self) -> torch.Tensor | None:
        return self.embedding.sample_gumbel() if self.settings.gumbel else None

    # -- history --------------------------------------------------------------------------
    def record(self) -> None:
        """Append one point to every trace (α per slot, E[bytes], λ, τ, losses)."""
        if self.history["steps"] and self.history["steps"][-1] == self.step_count:
            return
        h = self.history
        h["steps"].append(self.step_count)
        probs = self.embedding.probs().detach().cpu().numpy()
        for name, p in zip(self.embedding.slot_names, probs):
            h["alpha"][name].append([round(float(v), 5) for v in p])
        h["expected_bytes"].append(float(self.embedding.expected_bytes().detach()))
        h["multiplier"].append(round(self.multiplier, 6))
        h["tau"].append(round(self.tau(), 6))
        h["val_loss"].append(round(self._last_val_loss, 6))
        h["train_loss"].append(round(self._last_train_loss, 6))

    def on_train_end(self) -> None:
        self.record()


def _dense(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]
           ) -> list[torch.Tensor]:
    # Sparse-table gradients become dense here: second-order steps touch every row anyway.
    return [torch.zeros_like(p) if g is None else (g.to_dense() if g.is_sparse else g)
            for g, p in zip(grads, like)]


__all__ += ["slot_plan_fields", "slot_bytes_of", "PLAN_RULES", "knapsack_slots", "alpha_values",
            "candidate_gains", "significant_values", "uniform_alpha_dims"]
