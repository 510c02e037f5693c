"""OptEmbed (Lyu et al., "OptEmbed: Learning Optimal Embedding Table for Click-through Rate
Prediction", CIKM 2022, arXiv:2208.04482), made budget-aware.

Three stages, as in the paper (§3, Fig. 2):

1. **Supernet** (§3.2). One ``D``-wide table. Each looked-up row ``e_x`` of field ``f`` is kept
   iff its L1 norm passes a learnable threshold, ``m_x = S(||e_x||_1 - t_f)`` with ``S`` the
   unit step (§3.2.1, "learnable embedding pruning"). ``S`` has no useful gradient, so its
   backward is the long-tailed straight-through estimator the paper takes from Dynamic Sparse
   Training (Liu et al., ICLR 2020). A regulariser ``alpha * sum_f exp(-t_f)`` pushes every
   threshold up; the training loss is ``L_CE + alpha * L_s``. In training every sample and
   field sees a random prefix of the embedding (the first ``d`` of ``D`` columns, ``d`` drawn
   uniformly: "uniform embedding dimension sampling", §3.2.2), so every sub-net shares one
   set of weights; evaluation uses all ``D`` columns.
2. **Evolutionary search** (§3.3, Algorithm 1) over per-field dims, each candidate scored by
   validation AUC with the supernet's weights (no retraining). Unlike the paper, candidates
   whose bytes exceed ``task.budget_bytes`` are infeasible: they never rank above a feasible
   one and never win, so the result fits the budget. A candidate's bytes are exactly what the
   final plan's ``num_bytes()`` says (kept rows at the field's dim + the bitmap + the
   ``d x D`` projection of ``align="project"``, nothing for ``pad``).
3. **Retraining** (§3.4) of the compact model the plan describes (row mask and dims fixed),
   done by :func:`autodim.searchers.retrain`; ``SearchResult.warm_start`` holds the
   supernet's initial weights (lottery-ticket rewind) or its trained weights.

Section numbers refer to arXiv:2208.04482. Each formula is written out next to the line that
computes it, with the upstream function that does the same, so either can be checked.

The upstream code (github.com/fuyuanlyu/OptEmbed, ``evolution.py``) has three quirks fixed
here: its crossover point is drawn over embedding dims instead of fields, its mutation edits
the parent in place (so the recorded best can change after it was recorded), and its
mutation can never draw the smallest dim. See the comments at each function.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from autodim.data.schema import Schema
from autodim.embeddings.tables import FLOAT_BYTES, row_pruned_bytes
from autodim.errors import BudgetError, ConfigError
from autodim.plan import DimensionPlan, encode_mask
from autodim.searchers._supernet import FusedFieldTable
from autodim.searchers._tables import paired_lower_bound
from autodim.searchers.base import Searcher, SearchResult, SearchTask, Stopwatch, check_plan
from autodim.searchers.registry import register_searcher
from autodim.task import (
    CTRTask,
    RestoreBest,
    adam,
    make_optimizers,
    make_trainer,
    seed_everything,
)

__all__ = [
    "EvolutionResult",
    "candidate_bytes",
    "OptEmbedEmbedding",
    "OptEmbedSearcher",
    "OptEmbedSupernet",
    "binary_step",
    "crossover",
    "evolve",
    "mutate",
    "rank_candidates",
    "shrink_until_feasible",
]


# -- stage 1: the supernet ----------------------------------------------------------------

class _LongTailStep(torch.autograd.Function):
    """Unit step ``S(x) = 1[x > 0]`` with the long-tailed straight-through estimator.

    Backward (OptEmbed §3.2.1, which takes it from Dynamic Sparse Training, Liu et al.,
    ICLR 2020; upstream ``models/layer.py::BinaryStep``):
    ``dS/dx ~ 2 - 4|x|`` for ``|x| <= 0.4``, ``0.4`` for ``0.4 < |x| <= 1``, else ``0``.
    The long tail lets rows that are already pruned (or well kept) still move.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        a = x.abs()
        slope = torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1.0, 0.4, 0.0))
        return grad * slope.to(grad.dtype)


def binary_step(x: torch.Tensor) -> torch.Tensor:
    """``1[x > 0]`` forward, long-tailed straight-through gradient backward."""
    return _LongTailStep.apply(x)


class OptEmbedEmbedding(nn.Module):
    """The supernet's embedding layer: ``ids[B, T] -> [B, F, D]``.

    Rows of all fields live in one ``D``-wide weight-sharing table (the shared
    :class:`~autodim.searchers._supernet.FusedFieldTable`; a dim-``d`` sub-net reads the
    first ``d`` columns). Row 0 of a field is its shared OOV row and is never pruned.

    Args:
        schema: The fields.
        D: Width of the table (the full model's dim).
        levels: The dims a sub-net may give a field (the search space); in training each
            sample and field draws one uniformly and sees only that prefix of its vector.
        threshold_level: ``"field"`` (one ``t_f`` per field, the paper's default) or
            ``"feature"`` (one threshold per row).
        threshold_init: Initial threshold value (upstream: 0, every row kept at first).
        oov: What a pruned row reads: ``"zero"`` (the paper's default) or ``"oov"`` (the
            field's shared OOV row 0, which is what the compact model does).
        sparse_threshold: Above this many rows the table emits sparse gradients.
        init_std: Std of the normal initialisation (as
            :class:`autodim.embeddings.tables.DenseTable`).
    """

    def __init__(self, schema: Schema, D: int, levels: Sequence[int], *,
                 threshold_level: str = "field", threshold_init: float = 0.0,
                 oov: str = "oov", sparse_threshold: int = 1_000_000, init_std: float = 0.01):
        super().__init__()
        self.schema, self.D, self.oov = schema, int(D), oov
        self.threshold_level = threshold_level
        self.table = FusedFieldTable(schema, self.D, sparse_threshold=sparse_threshold,
                                     init_std=init_std)
        sizes = [f.vocab_size for f in schema.fields]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        rows = sum(sizes) if threshold_level == "feature" else schema.num_fields
        # Upstream initialises t to -t_init (models/modules.py::init_threshold); we take the
        # value itself.
        self.threshold = nn.Parameter(torch.full((rows,), float(threshold_init)))
        self.register_buffer("levels", torch.as_tensor(list(levels), dtype=torch.long),
                             persistent=False)

    # -- forward --------------------------------------------------------------------------
    def lookup(self, ids: torch.Tensor, *, prune: bool = True) -> torch.Tensor:
        """``[B, F, D]`` at full width, pruned rows replaced (``prune``) or not."""
        table = self.table
        rows = table.global_ids(ids)
        e = table.embedding(rows)  # [B, T, D]
        if prune:
            if self.threshold_level == "feature":
                t = self.threshold[rows]
            else:
                t = self.threshold[table.col_field]
            # m_x = S(||e_x||_1 - t_f): OptEmbed §3.2.1 (L1 norm, upstream `norm=1`).
            m = binary_step(e.abs().sum(-1) - t)
            m = m.masked_fill(ids == 0, 1.0).unsqueeze(-1)  # the OOV / padding row stays
            if self.oov == "oov":
                # Upstream's "oov" mode uses torch.where, which cuts the gradient to t; the
                # blend below has the same forward value and keeps the STE path.
                e = m * e + (1 - m) * table.embedding(table.col_offsets)
            else:
                e = m * e
        return table.pool(e, ids)

    def prefix_mask(self, batch: int) -> torch.Tensor:
        """``[batch, F, D]`` masks keeping a uniformly drawn prefix per sample and field
        (§3.2.2; upstream draws per sample and field too, ``get_random_field_mask``)."""
        k = torch.randint(len(self.levels), (batch, self.schema.num_fields),
                          device=self.levels.device)
        d = self.levels[k]
        cols = torch.arange(self.D, device=d.device)
        return (cols < d.unsqueeze(-1)).to(self.table.embedding.weight.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.lookup(ids)
        if self.training:
            e = e * self.prefix_mask(e.shape[0])
        return e

    # -- queries --------------------------------------------------------------------------
    def regulariser(self) -> torch.Tensor:
        """``L_s = sum exp(-t)`` (§3.2.1): pushes thresholds up, i.e. prunes more rows."""
        return torch.exp(-self.threshold).sum()

    @torch.no_grad()
    def keep_masks(self) -> list[np.ndarray]:
        """Per field, a bool array over its rows: kept by the learned threshold (row 0 always)."""
        norms = self.table.embedding.weight.abs().sum(1)
        out = []
        for k, f in enumerate(self.schema.fields):
            lo = int(self.offsets[k])
            t = (self.threshold[lo:lo + f.vocab_size] if self.threshold_level == "feature"
                 else self.threshold[k])
            keep = (norms[lo:lo + f.vocab_size] - t > 0).cpu().numpy()
            keep[0] = True
            out.append(keep)
        return out

    @torch.no_grad()
    def field_thresholds(self) -> dict[str, float]:
        """Threshold per field (the mean over the field's rows at feature level)."""
        t = self.threshold.detach().cpu()
        if self.threshold_level != "feature":
            return {f.name: float(t[k]) for k, f in enumerate(self.schema.fields)}
        return {f.name: float(t[int(o):int(o) + f.vocab_size].mean())
                for f, o in zip(self.schema.fields, self.offsets)}


class OptEmbedSupernet(CTRTask):
    """The supernet as a LightningModule: :class:`CTRTask` (BCE, manual optimisation,
    ``val_auc`` at full ``D``) plus the threshold regulariser and a threshold optimiser.

    Args:
        embedding: An :class:`OptEmbedEmbedding`.
        backbone: The model on top (``[B, F, D] -> logits``).
        lr, weight_decay: Adam (SparseAdam for sparse tables) for table and backbone.
        threshold_lr: Adam learning rate of the thresholds (their own optimiser, as the
            paper's separate ``lr^t``).
        alpha: Weight of ``sum exp(-t)`` in the loss.
    """

    def __init__(self, embedding: OptEmbedEmbedding, backbone: nn.Module, *, lr: float = 1e-3,
                 weight_decay: float = 0.0, threshold_lr: float = 1e-3, alpha: float = 1e-3):
        super().__init__(embedding, backbone, lr=lr, weight_decay=weight_decay)
        self.threshold_lr, self.alpha = threshold_lr, alpha

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        network = nn.ModuleList([self.embedding.table, self.backbone])  # all but thresholds
        # The paper gives the thresholds their own learning rate lr^t; here also their own
        # Adam, without weight decay (decay would pull t towards 0, against L_s).
        return (make_optimizers(network, self.lr, self.weight_decay)
                + [adam([self.embedding.threshold], lr=self.threshold_lr)])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # L = L_CE + alpha * L_s (§3.2.1; upstream supernet.py::__update).
        return super().loss(logits, labels) + self.alpha * self.embedding.regulariser()


class _SupernetTrace(Callback):
    """Per validation epoch: val AUC, share of pruned rows, thresholds (for the plots)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: OptEmbedSupernet) -> None:
        emb = pl_module.embedding
        keep = emb.keep_masks()
        total = sum(len(k) for k in keep)
        auc = trainer.callback_metrics.get("val_auc")
        self.epochs.append({
            "epoch": int(trainer.current_epoch),
            "val_auc": None if auc is None else float(auc),
            "pruned_share": float(sum(int((~k).sum()) for k in keep) / max(1, total)),
            "thresholds": emb.field_thresholds(),
        })


# -- stage 2: evolutionary search -----------------------------------------------------------

Candidate = tuple[int, ...]  # one level (index into the dim space) per field


def candidate_bytes(cand: Sequence[int], costs: np.ndarray) -> int:
    """Bytes of a candidate: ``sum_f costs[f, cand[f]]``."""
    return int(sum(int(costs[f, k]) for f, k in enumerate(cand)))


def shrink_until_feasible(cand: Sequence[int], costs: np.ndarray, budget: float,
                          rng: np.random.Generator) -> Candidate:
    """Step random fields one level down until the candidate fits ``budget``.

    A field is drawn with probability proportional to the bytes its step down saves, so the
    fields that hold the bytes shrink first (a uniform draw would flatten the small fields
    to their minimum before a large one gives way). Returns a new tuple; ``cand`` is left
    as is. Stops at the all-minimum candidate if even that does not fit.
    """
    out = list(cand)
    total = candidate_bytes(out, costs)
    while total > budget:
        saved = np.array([costs[f, k] - costs[f, k - 1] if k > 0 else 0
                          for f, k in enumerate(out)], dtype=np.float64)
        saved = np.maximum(saved, 0.0)
        steppable = np.array([k > 0 for k in out])
        if not steppable.any():
            break
        p = np.where(steppable, saved + 1e-9, 0.0)
        f = int(rng.choice(len(out), p=p / p.sum()))
        total -= int(costs[f, out[f]] - costs[f, out[f] - 1])
        out[f] -= 1
    return tuple(out)


def mutate(parent: Sequence[int], num_levels: int, prob: float,
           rng: np.random.Generator) -> Candidate:
    """A mutated copy: each field, with probability ``prob``, takes a new random level.

    Fixes two upstream quirks (``evolution.py::get_mutation``): upstream edits the parent
    tensor in place (so the parent, and a best candidate that aliases it, change too), and
    draws from ``[1, D)``, so the smallest dim is never reached by mutation. Here the parent
    is untouched and the new level is uniform over the other levels.
    """
    child = list(parent)
    for f in range(len(child)):
        if num_levels > 1 and rng.random() < prob:
            new = int(rng.integers(num_levels - 1))
            child[f] = new if new < child[f] else new + 1
    return tuple(child)


def crossover(a: Sequence[int], b: Sequence[int], rng: np.random.Generator) -> Candidate:
    """One-point crossover: ``a[:p] + b[p:]`` with the point ``p`` drawn over fields.

    Upstream (``evolution.py::get_crossover``) draws ``p`` in ``[1, latent_dim]``: with more
    dims than fields most draws copy ``a`` whole. Here ``p`` is uniform in ``[1, F-1]`` so
    every crossover mixes both parents. Parents are untouched (a new tuple is returned).
    """
    F = len(a)
    if F < 2:
        return tuple(a)
    p = int(rng.integers(1, F))
    return tuple(a[:p]) + tuple(b[p:])


@dataclass
class EvolutionResult:
    """What :func:`evolve` found.

    Attributes:
        best: The best feasible candidate ever evaluated (``None`` if none was feasible).
        best_fitness, best_bytes: Its fitness and bytes.
        generations: Per generation ``{gen, best_auc, mean_auc, best_bytes, feasible,
            best_ever_auc}``; ``best_auc``/``best_bytes`` are the generation's best feasible
            candidate, ``feasible`` the number of feasible candidates in its population.
        fitness: Every evaluated candidate's fitness (the cache).
        evaluations: Fitness calls made (unique candidates).
        requests: Fitness lookups, cache hits included.
    """

    best: Candidate | None
    best_fitness: float
    best_bytes: int
    generations: list[dict[str, Any]] = field(default_factory=list)
    fitness: dict[Candidate, float] = field(default_factory=dict)
    evaluations: int = 0
    requests: int = 0


def rank_candidates(scored: Sequence[tuple[Candidate, float, int]], budget: float
                    ) -> list[tuple[Candidate, float, int]]:
    """Sort ``(candidate, fitness, bytes)`` feasible-first (Deb's constraint-domination rule):
    feasible ones by fitness (ties: fewer bytes), then infeasible ones by how far they exceed
    ``budget``. An infeasible candidate never ranks above a feasible one, whatever its
    fitness. Ties keep the input order (deterministic)."""

    def key(i: int) -> tuple:
        _, fit, nb = scored[i]
        if nb <= budget:
            return (0, -fit, nb, i)
        return (1, nb - budget, -fit, i)

    return [scored[i] for i in sorted(range(len(scored)), key=key)]


def evolve(fitness: Callable[[Candidate], float], costs: np.ndarray, budget: float | None,
           rng: np.random.Generator, *, generations: int = 30, mutation_num: int = 10,
           crossover_num: int = 10, keep_num: int = 0, topk: int = 15,
           mutation_prob: float = 0.1, repair: bool = True) -> EvolutionResult:
    """Budget-constrained evolutionary search (OptEmbed §3.3, Algorithm 1).

    Each generation the population is evaluated (fitness cached per candidate) and ranked
    feasible-first: feasible candidates by fitness (ties: fewer bytes), then infeasible ones
    by how far they exceed the budget (Deb's constraint-domination rule), so an infeasible
    candidate never ranks above a feasible one and never becomes the best. The next
    population is ``keep_num`` elites + ``mutation_num`` mutants of the top candidates in
    rank order + ``crossover_num`` crossovers of random distinct pairs of the top ``topk``.
    The best feasible candidate ever seen is kept (upstream keeps a reference that later
    mutations overwrite).

    Args:
        fitness: Candidate -> score to maximise (validation AUC of the sub-net).
        costs: ``costs[f, k]`` bytes of field ``f`` at level ``k`` (non-decreasing in ``k``).
        budget: Byte budget (``None``: unconstrained).
        rng: The only source of randomness.
        generations, mutation_num, crossover_num, keep_num, topk, mutation_prob: As in the
            paper / upstream (30, 10, 10, 0, 15, 0.1).
        repair: Shrink infeasible children until they fit (like the initial population),
            which keeps the search on the budget's boundary; without it infeasible children
            are evaluated and ranked last.

    Returns:
        :class:`EvolutionResult`.
    """
    F, L = costs.shape
    limit = math.inf if budget is None else float(budget)
    size = keep_num + mutation_num + crossover_num
    if size < 1:
        raise ConfigError("optembed: the population is empty (keep_num + mutation_num + "
                          "crossover_num must be >= 1)")
    result = EvolutionResult(best=None, best_fitness=-math.inf, best_bytes=0)

    def score(c: Candidate) -> float:
        result.requests += 1
        if c not in result.fitness:
            result.fitness[c] = float(fitness(c))
            result.evaluations += 1
        return result.fitness[c]

    # Initial population: uniform levels, then shrunk until feasible (always, repair or not).
    population = [shrink_until_feasible(tuple(int(x) for x in rng.integers(L, size=F)),
                                        costs, limit, rng) for _ in range(size)]
    for gen in range(generations):
        scored = [(c, score(c), candidate_bytes(c, costs)) for c in population]
        ranked = rank_candidates(scored, limit)
        feasible = [s for s in ranked if s[2] <= limit]
        if feasible:
            c, fit, nb = feasible[0]
            if fit > result.best_fitness or (fit == result.best_fitness and nb < result.best_bytes):
                result.best, result.best_fitness, result.best_bytes = c, fit, nb
        result.generations.append({
            "gen": gen,
            "best_auc": feasible[0][1] if feasible else None,
            "mean_auc": float(np.mean([s[1] for s in scored])),
            "best_bytes": feasible[0][2] if feasible else None,
            "feasible": len(feasible),
            "best_ever_auc": None if result.best is None else result.best_fitness,
        })
        if gen == generations - 1:
            break
        parents = [s[0] for s in ranked[:max(1, topk)]]
        # Mutation: the i-th best parent gives the i-th mutant (upstream order).
        children = [mutate(parents[i % len(parents)], L, mutation_prob, rng)
                    for i in range(mutation_num)]
        pairs = [(x, y) for x in range(len(parents)) for y in range(len(parents)) if x != y]
        if pairs:
            picks = rng.choice(len(pairs), size=crossover_num,
                               replace=crossover_num > len(pairs))
            children += [crossover(parents[pairs[p][0]], parents[pairs[p][1]], rng)
                         for p in picks]
        else:
            children += [mutate(parents[0], L, mutation_prob, rng) for _ in range(crossover_num)]
        if repair:
            children = [shrink_until_feasible(c, costs, limit, rng) for c in children]
        population = [s[0] for s in ranked[:keep_num]] + children
    return result


def fill_budget(fitness: Callable[[Candidate], float], costs: np.ndarray, budget: float,
                best: Candidate, best_fitness: float, *, share: float = 0.95,
                frozen: Sequence[int] = ()
                ) -> tuple[Candidate, float, list[dict[str, Any]], str | None]:
    """Grow ``best`` towards the budget by the upgrades the fitness prefers (our addition).

    The evolution keeps the fittest feasible candidate it met, which may leave much of the
    budget unused. While the candidate uses less than ``share`` of the budget, every
    single-field move to a larger level that still fits is scored and the fittest is taken
    if it does not lower the fitness. Stops with a reason (the measured fitness of the best
    upgrade against the current one) when every upgrade that fits lowers it. Fields in
    ``frozen`` (dropped as uninformative, :func:`drop_uninformative`) are not grown.

    Returns:
        ``(candidate, fitness, steps, note)``; ``note`` is ``None`` when the share was met or
        no upgrade fits.
    """
    F, L = costs.shape
    cand, fit = tuple(best), float(best_fitness)
    steps: list[dict[str, Any]] = []
    while candidate_bytes(cand, costs) < share * budget:
        nb = candidate_bytes(cand, costs)
        moves = [cand[:f] + (k,) + cand[f + 1:] for f in range(F) if f not in frozen
                 for k in range(cand[f] + 1, L)
                 if nb - costs[f, cand[f]] + costs[f, k] <= budget]
        if not moves:
            return cand, fit, steps, None
        scored = [(float(fitness(m)), -candidate_bytes(m, costs), m) for m in moves]
        top, _, move = max(scored)
        if top < fit:
            return cand, fit, steps, (
                f"budget fill stopped at {nb / budget:.1%} of the budget: every upgrade that "
                f"fits lowers the search's validation AUC (best {top:.4f} < {fit:.4f})")
        steps.append({"from": list(cand), "to": list(move), "auc": top,
                      "bytes": int(candidate_bytes(move, costs))})
        cand, fit = move, top
    return cand, fit, steps, None


def drop_uninformative(scorer: "_SubnetScorer", cand: Candidate, levels: Sequence[int], *,
                       z: float = 2.0) -> tuple[Candidate, list[int]]:
    """Drop (level 0 = dim 0) every field whose removal (its vectors replaced by their mean)
    does not raise the validation log loss by ``z`` standard errors (paired, row by row on
    the scorer's rows). Our addition
    to OptEmbed: its fitness, the sub-net's validation AUC, hardly moves with a field that
    carries no signal, so the evolution leaves such fields at whatever dim it drew, and in
    FM each of them adds noise to every pair it enters once retrained (decoupled preset:
    noise fields at dims 1-4 cost 0.05 test AUC against the same plan without them). Only
    when 0 is among the levels; returns the new candidate and the dropped fields."""
    if not levels or levels[0] != 0:
        return tuple(cand), []
    base = scorer.row_losses(cand)
    n = base.numel()
    dropped = []
    for f, k in enumerate(cand):
        if k == 0:
            continue
        # Mean ablation, not dim 0: see field_removal_test (FM routes a first-order term
        # of the other fields through a field's mean vector).
        diff = scorer.row_losses(cand, mean_field=f) - base
        if float(paired_lower_bound(diff.sum(), diff.pow(2).sum(), n, z)) <= 0.0:
            dropped.append(f)
    out = tuple(0 if f in dropped else k for f, k in enumerate(cand))
    return out, dropped


def drop_and_fill(scorer: "_SubnetScorer", costs: np.ndarray, budget: float | None,
                  cand: Candidate, fitness: float, levels: Sequence[int]
                  ) -> tuple[Candidate, float, list[int], list[dict[str, Any]], str | None]:
    """:func:`drop_uninformative`, then :func:`fill_budget` with the dropped fields frozen;
    ``(candidate, fitness, dropped fields, fill steps, fill note)``.

    The fill may grow a field the evolution had at 0 by an AUC gain inside the noise
    (decoupled preset: noise fields back at dims 2-4), so the filled candidate is tested
    again; newly dropped fields are frozen at 0 and the fill reruns from the tested
    candidate, until the test drops nothing new (at most once per field).
    """
    best, dropped = drop_uninformative(scorer, cand, levels)
    best_fit = scorer(best) if dropped else float(fitness)
    steps: list[dict[str, Any]] = []
    if budget is None:
        return best, best_fit, dropped, steps, None
    while True:
        filled, filled_fit, more, note = fill_budget(scorer, costs, budget, best, best_fit,
                                                     frozen=dropped)
        steps += more
        # Only a grown candidate can hold a field the test has not passed yet.
        best, new = drop_uninformative(scorer, filled, levels) if more else (filled, [])
        if not new:
            return filled, filled_fit, dropped, steps, note
        dropped = sorted(set(dropped) | set(new))
        best_fit = scorer(best)


class _SubnetScorer:
    """Validation AUC of sub-nets of a trained supernet, on a fixed set of rows.

    The full-width embeddings of those rows are looked up once (with and without row
    pruning); a candidate then only masks columns (its per-field prefix) and picks, per
    field, the pruned or unpruned rows (whichever its plan stores) before the backbone runs.
    Prefix masking commutes with sequence mean-pooling, so the cache is exact.
    """

    def __init__(self, supernet: OptEmbedSupernet,
                 batches: Sequence[tuple[torch.Tensor, torch.Tensor]], levels: Sequence[int],
                 use_mask: np.ndarray):
        supernet.eval()
        self.backbone = supernet.backbone
        emb = supernet.embedding
        with torch.no_grad():
            ids = torch.cat([x for x, _ in batches])
            self.labels = torch.cat([y for _, y in batches]).long()
            self.pruned = emb.lookup(ids, prune=True)
            self.plain = emb.lookup(ids, prune=False)
        D = emb.D
        self.prefix = (torch.arange(D)[None, :] < torch.as_tensor(list(levels))[:, None]).float()
        self.use_mask = torch.as_tensor(use_mask, dtype=torch.bool)  # [F, L]

    @torch.no_grad()
    def logits(self, cand: Candidate, mean_field: int | None = None) -> torch.Tensor:
        """The sub-net's logits; ``mean_field``: that field's vectors replaced by their mean
        over the rows (the ablation of :func:`drop_uninformative`)."""
        k = torch.as_tensor(cand)
        use = self.use_mask[torch.arange(len(cand)), k].view(1, -1, 1)
        emb = torch.where(use, self.pruned, self.plain) * self.prefix[k].unsqueeze(0)
        if mean_field is not None:
            emb = emb.clone()
            emb[:, mean_field] = emb[:, mean_field].mean(0)
        return self.backbone(emb).float()

    @torch.no_grad()
    def __call__(self, cand: Candidate) -> float:
        return float(binary_auroc(torch.sigmoid(self.logits(cand)), self.labels))

    @torch.no_grad()
    def row_losses(self, cand: Candidate, mean_field: int | None = None) -> torch.Tensor:
        """Per-row validation log loss of a sub-net (float64); ``mean_field`` as in
        :meth:`logits`."""
        return nn.functional.binary_cross_entropy_with_logits(
            self.logits(cand, mean_field), self.labels.float(), reduction="none").double()


# -- the searcher ---------------------------------------------------------------------------

@register_searcher("optembed")
class OptEmbedSearcher(Searcher):
    """OptEmbed: row pruning by learnable thresholds + evolutionary dim search, under a budget.

    Returns a plan with per-field prefix dims and, where it saves bytes, a ``row_mask``
    (pruned rows share the field's OOV row 0). See the module docstring.

    Args:
        supernet_epochs: Epochs of supernet training (``None``: ``task.train.max_epochs``;
            early stopping on the supernet's full-width validation AUC with
            ``task.train.patience``, best epoch restored).
        lr, weight_decay: Supernet optimiser settings (``None``: ``task.train``'s).
        alpha: Threshold regulariser weight; larger prunes more rows. Upstream tunes it in
            1e-6..1e-4 over 30 Criteo epochs with ``D=64`` and Xavier init; with our short runs,
            ``D=16`` and N(0, 0.01) rows (L1 norms start near 0.13) 1e-3 prunes a few percent
            of the rows of the planted data in 10 epochs (see benchmarks/search_optembed.py).
        threshold_lr: Learning rate of the thresholds' own Adam (upstream ``lr^t``).
        threshold_init: Initial thresholds.
        threshold_level: ``"field"`` or ``"feature"``.
        oov: Pruned rows in the supernet read ``"oov"`` (the field's row 0, as the compact
            model does) or ``"zero"`` (the paper's default).
        dim_space: ``"candidates"`` (``task.candidate_dims``, 0 excluded unless listed) or
            ``"all"`` (every dim ``1..D``, as the paper). The supernet samples prefixes
            from the same space the evolution searches.
        generations, mutation_num, crossover_num, keep_num, topk, mutation_prob: Evolution
            settings (paper / upstream: 30, 10, 10, 0, 15, 0.1).
        repair: Shrink infeasible children until they fit the budget.
        eval_batches: Validation batches (of ``task.data``'s eval batch size) that score each
            candidate; ``None``: all of them.
        warm_start: ``"init"`` (the supernet's initial weights, sliced to the plan: the
            lottery-ticket rewind), ``"trained"`` (its trained weights) or ``"none"``.
        align: How the retrained model widens a field's ``d`` columns to ``D``:
            ``"project"`` (default: a learned ``d x D`` map, counted in the bytes) or
            ``"pad"`` (zeros after the prefix, the supernet's own form and the paper's).
            Our deviation: in FM a padded field interacts with another only over their
            shared prefix, and the same dims retrained fresh score 0.02 test AUC lower
            padded than projected (decoupled preset, 4x, dims 4,8,4,4: 0.7554 against
            0.7752, 3 seeds); the evolution and the fill count the map's bytes.

    Example:
        >>> from autodim.searchers import create_searcher
        >>> searcher = create_searcher("optembed", generations=10)  # doctest: +SKIP
        >>> result = searcher.search(task)  # doctest: +SKIP
        >>> result.plan.num_bytes() <= task.budget_bytes  # doctest: +SKIP
        True
    """

    history_keys: ClassVar[tuple[str, ...]] = (
        "generations", "pruned_rows", "kept_rows", "thresholds", "supernet", "best",
        "search_seconds")
    quick_settings: ClassVar[Mapping[str, Any]] = {
        "supernet_epochs": 2, "generations": 4, "mutation_num": 5, "crossover_num": 5,
        "topk": 6, "eval_batches": 2}
    inflatable: ClassVar[bool] = False  # row-masked fields stay as they are when compressed

    def __init__(self, *, supernet_epochs: int | None = None, lr: float | None = None,
                 weight_decay: float | None = None, alpha: float = 1e-3,
                 threshold_lr: float = 1e-3, threshold_init: float = 0.0,
                 threshold_level: str = "field", oov: str = "oov",
                 dim_space: str = "candidates", generations: int = 30, mutation_num: int = 10,
                 crossover_num: int = 10, keep_num: int = 0, topk: int = 15,
                 mutation_prob: float = 0.1, repair: bool = True,
                 eval_batches: int | None = 4, warm_start: str = "init",
                 align: str = "project"):
        self.supernet_epochs = supernet_epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.alpha = alpha
        self.threshold_lr = threshold_lr
        self.threshold_init = threshold_init
        self.threshold_level = threshold_level
        self.oov = oov
        self.dim_space = dim_space
        self.generations = generations
        self.mutation_num = mutation_num
        self.crossover_num = crossover_num
        self.keep_num = keep_num
        self.topk = topk
        self.mutation_prob = mutation_prob
        self.repair = repair
        self.eval_batches = eval_batches
        self.warm_start = warm_start
        self.align = align

    # -- helpers ----------------------------------------------------------------------------
    def _check_settings(self) -> None:
        choices = {"threshold_level": ("field", "feature"), "oov": ("oov", "zero"),
                   "dim_space": ("candidates", "all"), "warm_start": ("init", "trained", "none"),
                   "align": ("project", "pad")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"optembed: {name} must be one of {allowed}, "
                                  f"got {getattr(self, name)!r}")
        if self.generations < 1:
            raise ConfigError(f"optembed: generations must be >= 1, got {self.generations}")
        if min(self.mutation_num, self.crossover_num, self.keep_num) < 0:
            raise ConfigError("optembed: mutation_num, crossover_num and keep_num must be >= 0")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ConfigError(f"optembed: mutation_prob must lie in [0, 1], "
                              f"got {self.mutation_prob}")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ConfigError(f"optembed: eval_batches must be >= 1 or None, "
                              f"got {self.eval_batches}")

    def levels(self, task: SearchTask) -> list[int]:
        """The dims a field may take, ascending."""
        if self.dim_space == "all":
            return list(range(1, task.D + 1))
        return [int(d) for d in task.candidate_dims]

    @staticmethod
    def field_costs(schema: Schema, levels: Sequence[int], kept: Sequence[int], D: int,
                    align: str = "project") -> tuple[np.ndarray, np.ndarray]:
        """``(costs[F, L], use_mask[F, L])``: bytes of field ``f`` at level ``k`` and whether
        its plan stores a row mask there (only where the bitmap costs less than the rows it
        drops; otherwise every row is kept). ``pad`` alignment stores nothing, ``project``
        its ``d x D`` map below ``D``."""
        F, L = schema.num_fields, len(levels)
        costs = np.zeros((F, L), dtype=np.int64)
        use = np.zeros((F, L), dtype=bool)
        for f, (fld, n_kept) in enumerate(zip(schema.fields, kept)):
            n = fld.vocab_size
            for k, d in enumerate(levels):
                if d == 0:
                    continue
                plain = n * d * FLOAT_BYTES
                pruned = row_pruned_bytes(n, d, int(n_kept))
                use[f, k] = n_kept < n and pruned < plain
                lift = d * D * FLOAT_BYTES if align == "project" and d < D else 0
                costs[f, k] = (pruned if use[f, k] else plain) + lift
        return costs, use

    # -- the search -------------------------------------------------------------------------
    def search(self, task: SearchTask) -> SearchResult:
        """Train the supernet, evolve per-field dims under the budget, return the plan."""
        self._check_settings()
        levels = self.levels(task)
        schema = task.schema
        if task.budget_bytes is not None:
            # Even with every non-OOV row pruned a field keeps row 0 and its bitmap.
            floor = sum(row_pruned_bytes(f.vocab_size, min(levels), 1) if min(levels) else 0
                        for f in schema.fields)
            if task.budget_bytes < floor:
                raise BudgetError(f"optembed: budget {task.budget_bytes} B is below {floor} B, "
                                  f"the bytes with every field at dim {min(levels)} and every "
                                  "row but the OOV row pruned")
        t_start = time.perf_counter()

        # Stage 1: supernet.
        with Stopwatch() as sw_super:
            supernet, trace, init_table = self._train_supernet(task, levels)
        emb: OptEmbedEmbedding = supernet.embedding
        keep = emb.keep_masks()
        kept = [int(k.sum()) for k in keep]
        costs, use_mask = self.field_costs(schema, levels, kept, task.D, self.align)
        floor = int(costs[:, 0].sum())
        if task.budget_bytes is not None and task.budget_bytes < floor:
            raise BudgetError(f"optembed: budget {task.budget_bytes} B is below {floor} B, the "
                              f"smallest plan with the learned row masks (every field at dim "
                              f"{levels[0]}); raise alpha to prune more rows")

        # Stage 2: evolution on a fixed subset of validation batches.
        with Stopwatch() as sw_evo:
            batches = []
            for b, batch in enumerate(task.data.val_dataloader()):
                if self.eval_batches is not None and b >= self.eval_batches:
                    break
                batches.append(batch)
            scorer = _SubnetScorer(supernet, batches, levels, use_mask)
            rng = np.random.default_rng([task.seed, 0x0E7E])
            evo = evolve(scorer, costs, task.budget_bytes, rng, generations=self.generations,
                         mutation_num=self.mutation_num, crossover_num=self.crossover_num,
                         keep_num=self.keep_num, topk=self.topk,
                         mutation_prob=self.mutation_prob, repair=self.repair)
        if evo.best is None:  # cannot happen: the initial population is shrunk to fit
            raise BudgetError("optembed: no candidate fits the budget")

        # Fields without measured signal are dropped, then the budget fill grows the others
        # by the upgrades the supernet's fitness prefers.
        best, best_fit, dropped, fill_steps, fill_note = drop_and_fill(
            scorer, costs, task.budget_bytes, evo.best, evo.best_fitness, levels)
        if task.budget_bytes is not None and dropped and fill_note is None and (
                candidate_bytes(best, costs) < 0.95 * task.budget_bytes):
            fill_note = (f"fields {[schema.names[f] for f in dropped]} were dropped: "
                         "removing each does not raise the validation log loss by two "
                         "standard errors, and no upgrade of the others fits")
        evo.best_bytes = candidate_bytes(best, costs)

        # Stage 3 is the caller's retrain(); here the plan and the warm start.
        dims = {f.name: levels[k] for f, k in zip(schema.fields, best)}
        plan = self.make_plan(task, dims, align=self.align, metrics={
            "search_val_auc": best_fit,
            "supernet_val_auc": max((e["val_auc"] or 0.0) for e in trace.epochs)
            if trace.epochs else math.nan})
        for f, (fp, k) in enumerate(zip(plan.fields, best)):
            if fp.dim > 0 and use_mask[f, k]:
                fp.row_mask = {"kept": kept[f], "bits": encode_mask(keep[f])}
        plan.validate()
        if plan.num_bytes() != evo.best_bytes:  # the evolution's accounting must be exact
            raise AssertionError(f"optembed: plan bytes {plan.num_bytes()} != candidate bytes "
                                 f"{evo.best_bytes}")
        warm = self._warm_start(plan, emb, init_table)

        pruned = {f.name: int(f.vocab_size - n) for f, n in zip(schema.fields, kept)}
        history: dict[str, Any] = {
            "generations": evo.generations,
            "pruned_rows": pruned,
            "kept_rows": dict(zip(schema.names, kept)),
            "thresholds": emb.field_thresholds(),
            "supernet": {"epochs": trace.epochs, "seconds": sw_super.seconds},
            "fill": fill_steps,
            "dropped_uninformative": [schema.names[f] for f in dropped],
            "best": {"dims": dims, "auc": best_fit, "bytes": evo.best_bytes,
                     "row_masked": {f.name: bool(fp.row_mask) for f, fp in
                                    zip(schema.fields, plan.fields)}},
            "evaluations": evo.evaluations,
            "fitness_requests": evo.requests,
            "eval_rows": int(scorer.labels.numel()),
            "evolution_seconds": sw_evo.seconds,
            "levels": list(levels),
            "search_seconds": time.perf_counter() - t_start,
        }
        check_plan(self, task, plan, history, why_less=fill_note)
        return SearchResult(plan=plan, history=history, warm_start=warm)

    def _train_supernet(self, task: SearchTask, levels: Sequence[int]
                        ) -> tuple[OptEmbedSupernet, _SupernetTrace, torch.Tensor]:
        cfg = task.train
        if self.supernet_epochs is not None:
            cfg = replace(cfg, max_epochs=int(self.supernet_epochs))
        seed_everything(task.seed)
        task.data.seed = task.seed
        emb = OptEmbedEmbedding(task.schema, task.D, levels,
                                threshold_level=self.threshold_level,
                                threshold_init=self.threshold_init, oov=self.oov,
                                sparse_threshold=cfg.sparse_threshold)
        init_table = emb.table.embedding.weight.detach().clone()
        supernet = OptEmbedSupernet(
            emb, task.make_backbone(), lr=cfg.lr if self.lr is None else self.lr,
            weight_decay=cfg.weight_decay if self.weight_decay is None else self.weight_decay,
            threshold_lr=self.threshold_lr, alpha=self.alpha)
        trace = _SupernetTrace()
        callbacks: list[Callback] = [trace, EarlyStopping("val_auc", mode="max",
                                                          patience=cfg.patience)]
        if cfg.restore_best:
            callbacks.append(RestoreBest())
        make_trainer(cfg, callbacks).fit(supernet, datamodule=task.data)
        supernet.eval()
        return supernet, trace, init_table

    def _warm_start(self, plan: DimensionPlan, emb: OptEmbedEmbedding,
                    init_table: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """State dict for ``plan.build()``: each field's table is its prefix columns."""
        if self.warm_start == "none":
            return None
        state = {}
        for k, fp in enumerate(plan.fields):
            if fp.dim == 0 or fp.frequency_groups or fp.hashing:
                continue
            lo = int(emb.offsets[k])
            src = (init_table if self.warm_start == "init"
                   else emb.table.embedding.weight.detach())
            state[f"fields.{k}.table.embedding.weight"] = (
                src[lo:lo + fp.vocab_size, :fp.dim].clone())
        return state

