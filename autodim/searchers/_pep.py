"""PEP: embedding pruning with learnable soft thresholds (Liu et al., ICLR 2021).

Every embedding entry is soft-thresholded by a trainable threshold,

    ê = sign(e) · ReLU(|e| − g(s)),   g = sigmoid,

(PEP's soft-thresholding re-parameterisation of the pruned table, "Learnable Embedding Sizes
for Recommender Systems", Sec. 3) and ``s`` is trained jointly with the weights and the
backbone by the task loss. ``s`` starts strongly negative (``g(−15) ≈ 3e-7``: nothing is
pruned) and, as in the authors' code, carries a penalty that pushes it up: for an entry the
loss does not need, that push is the only gradient ``s`` sees, so its threshold rises; where
the entry matters, the loss gradient holds ``s`` back. The granularity of ``s`` is one of
``global``, ``dimension``, ``field``, ``feature`` (one per row), ``field_dim`` and
``feature_dim`` (one per entry, the default).

Targets are byte budgets: ``task.budget_bytes`` plus optional ``targets`` (ratios such as
``"10x"`` or byte counts, parsed by :func:`autodim.budget.parse_budget`), never raw counts.
The first time the pruned table's bytes (in the plan form, below) fall to a target, its mask
is saved (a snapshot); training stops once every target has one. A controller (our
addition, see ``budget_control``) steers the push on ``s`` so the bytes follow a schedule
towards the smallest target. If training ends first (its epochs run out, or the schedule's
deadline passes), the final table is pruned further to meet the target, and
``history["snapshots"][target]["fallback"]`` says so.

The plan stores every field in one form (``plan_form="dims"``, the default, or ``"sparse"``),
or each in the form that costs fewer bytes (``"auto"``):

* ``sparse``: the pruned table itself, an element mask counted as CSR
  (:class:`~autodim.embeddings.tables.SparseTable`);
* ``dims``: per field, the columns that hold any survivor, stored densely and widened by a
  learned projection (``align="project"``, the default) or kept at their positions
  (``"select"``): a superset of the mask, so no surviving entry is lost; a field with no
  survivor is dropped.

Retraining is lottery-ticket style (PEP Sec. 3, following Frankle & Carbin 2019): the
mask is fixed and the kept weights are rewound to their values at initialisation.
``SearchResult.warm_start`` holds exactly that, as a state dict for ``result.plan.build()``
(the plan's ``SparseTable`` keeps the mask), so

    >>> result = create_searcher("pep").search(task)            # doctest: +SKIP
    >>> retrain(task, result, warm_start=True)                   # doctest: +SKIP

is PEP's retrain; ``retrain(task, result)`` (or ``rewind="fresh"``) starts from a fresh
initialisation instead. :meth:`PEPSearcher.warm_start_for` gives the rewound weights for the
plans of the extra targets too.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from autodim.budget import full_bytes, parse_budget
from autodim.data.schema import Schema
from autodim.embeddings.field import mean_pool
from autodim.embeddings.gather import Embedding, gather
from autodim.embeddings.tables import sparse_table_bytes
from autodim.errors import ConfigError
from autodim.knapsack import solve_mckp
from autodim.plan import DimensionPlan, encode_mask
from autodim.searchers._tables import (
    embedding_state,
    field_removal_test,
    magnitude_masks,
    select_bytes,
    select_columns,
)
from autodim.searchers.base import (
    BUDGET_USE,
    Searcher,
    SearchResult,
    SearchTask,
    Stopwatch,
    check_plan,
)
from autodim.searchers.registry import register_searcher
from autodim.task import CTRTask, adam, make_trainer, seed_everything, split_parameters

__all__ = ["PEPSearcher", "PEPEmbedding", "GRANULARITIES", "PLAN_FORMS"]

# Budget control of the threshold pressure: multiplicative step per training step, ceiling.
_PRESSURE_STEP, _PRESSURE_MAX = 1.03, 1e-4
# Within this factor of the next target, the mask is measured after every step.
_NEAR = 1.25

GRANULARITIES = ("global", "dimension", "field", "feature", "field_dim", "feature_dim")
PLAN_FORMS = ("auto", "sparse", "dims")


class PEPEmbedding(nn.Module):
    """All fields' ``D``-wide tables in one ``[rows, D]`` matrix, soft-thresholded on lookup.

    Args:
        schema: The fields (sequence fields are mean-pooled after thresholding).
        D: Embedding dim.
        granularity: Which entries share a threshold (see :data:`GRANULARITIES`).
        threshold_init: Initial value of every ``s``.
        init_std: Standard deviation of the weights' normal initialisation (that of the
            plain tables a plan builds, so a rewound and a fresh retrain start alike).
        sparse: Sparse gradients for the weights (very large tables). The thresholds stay
            dense: at ``feature``/``feature_dim`` granularity they are as large as the table
            and every one moves each step (the pressure acts on all), so on tables of many
            millions of rows prefer ``field_dim``.
    """

    def __init__(self, schema: Schema, D: int, *, granularity: str = "feature_dim",
                 threshold_init: float = -15.0, init_std: float = 0.01,
                 sparse: bool = False) -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ConfigError(f"pep: granularity must be one of {GRANULARITIES}, got "
                              f"{granularity!r}")
        self.schema, self.out_dim, self.granularity = schema, D, granularity
        rows = [f.vocab_size for f in schema.fields]
        self.bounds = list(zip(np.cumsum([0] + rows[:-1]).tolist(), np.cumsum(rows).tolist()))
        N, F = sum(rows), len(rows)
        self.weight = Embedding(N, D, sparse=sparse)
        nn.init.normal_(self.weight.weight, std=init_std)
        shape = {"global": (1, 1), "dimension": (1, D), "field": (F, 1), "field_dim": (F, D),
                 "feature": (N, 1), "feature_dim": (N, D)}[granularity]
        self.threshold = nn.Parameter(torch.full(shape, float(threshold_init)))
        col_field, col_offset = [], []
        for i, (f, (lo, _)) in enumerate(zip(schema.fields, self.bounds)):
            col_field += [i] * f.width
            col_offset += [lo] * f.width
        self.register_buffer("col_field", torch.tensor(col_field, dtype=torch.long),
                             persistent=False)
        self.register_buffer("col_offset", torch.tensor(col_offset, dtype=torch.long),
                             persistent=False)
        self._pooled = any(f.width > 1 or f.kind == "sequence" for f in schema.fields)
        self._slices = [(s.start, s.stop) for s in schema.column_slices()]

    def _g(self, rows: torch.Tensor) -> torch.Tensor:
        """Thresholds ``g(s)`` for the looked-up ``rows[B, T]``, broadcastable to ``[B, T, D]``."""
        s = self.threshold
        if self.granularity in ("global", "dimension"):
            s = s.view(1, 1, -1)
        elif self.granularity in ("field", "field_dim"):
            s = s[self.col_field].unsqueeze(0)
        else:
            s = gather(s, rows)
        return torch.sigmoid(s)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = ids + self.col_offset
        e = self.weight(rows)
        # PEP's soft threshold: ê = sign(e) · ReLU(|e| − g(s)).
        e_hat = torch.sign(e) * torch.relu(e.abs() - self._g(rows))
        if not self._pooled:
            return e_hat
        return torch.stack([mean_pool(e_hat[:, lo:hi], ids[:, lo:hi], f.kind == "sequence")
                            for f, (lo, hi) in zip(self.schema.fields, self._slices)], dim=1)

    def _field_g(self, i: int) -> torch.Tensor:
        """``g(s)`` of field ``i``'s rows, broadcastable to its ``[rows, D]`` table."""
        s = self.threshold
        if self.granularity in ("field", "field_dim"):
            s = s[i:i + 1]
        elif self.granularity in ("feature", "feature_dim"):
            lo, hi = self.bounds[i]
            s = s[lo:hi]
        return torch.sigmoid(s)

    @torch.no_grad()
    def pruned_tables(self) -> dict[str, torch.Tensor]:
        """Per field, the thresholded table ``ê`` (``[rows, D]``, zeros where pruned)."""
        out = {}
        for i, (f, (lo, hi)) in enumerate(zip(self.schema.fields, self.bounds)):
            w = self.weight.weight[lo:hi]
            out[f.name] = torch.sign(w) * torch.relu(w.abs() - self._field_g(i))
        return out

    @torch.no_grad()
    def masks(self) -> dict[str, torch.Tensor]:
        """Per field, the bool ``[rows, D]`` mask of surviving entries (``|e| > g(s)``)."""
        return {f.name: self.weight.weight[lo:hi].abs() > self._field_g(i)
                for i, (f, (lo, hi)) in enumerate(zip(self.schema.fields, self.bounds))}

    @torch.no_grad()
    def margins(self) -> dict[str, torch.Tensor]:
        """Per field, ``|e| − g(s)`` (``[rows, D]``): positive where an entry survives, and
        how far it is from its learned threshold either way."""
        return {f.name: self.weight.weight[lo:hi].abs() - self._field_g(i)
                for i, (f, (lo, hi)) in enumerate(zip(self.schema.fields, self.bounds))}

    @torch.no_grad()
    def column_counts(self) -> torch.Tensor:
        """``long[F, D]``: surviving entries per (field, column), without building masks."""
        return torch.stack([(self.weight.weight[lo:hi].abs() > self._field_g(i)).sum(0)
                            for i, (lo, hi) in enumerate(self.bounds)])

    @torch.no_grad()
    def initial_tables(self) -> dict[str, torch.Tensor]:
        """Per field, a copy of the current weights (call before training: the rewind point)."""
        return {f.name: self.weight.weight[lo:hi].detach().clone()
                for f, (lo, hi) in zip(self.schema.fields, self.bounds)}

    def num_bytes(self) -> int:
        """CSR bytes of the currently surviving entries (what ``plan_form="sparse"`` stores)."""
        return sum(sparse_table_bytes(m.shape[0], self.out_dim, int(m.sum()))
                   for m in self.masks().values())


def _form_bytes(rows: int, D: int, nnz: int, cols: Sequence[int], align: str = "project"
                ) -> dict[str, int]:
    """Bytes of one field's mask stored sparsely and as its columns with any survivor."""
    return {"sparse": sparse_table_bytes(rows, D, nnz) if nnz else 0,
            "dims": select_bytes(rows, cols, D, align) if len(cols) else 0}


def mask_bytes(counts: torch.Tensor, rows: Sequence[int], D: int, plan_form: str,
               align: str = "project") -> int:
    """Bytes a plan of ``plan_form`` needs for a mask, from its per-(field, column) counts.

    Equals the ``num_bytes()`` of the plan :class:`PEPSearcher` builds from that mask (the
    ``dims`` form keeps each field's columns with any survivor: with ``align="select"`` a
    non-prefix column set stores its int64 index, with ``"project"`` its ``d x D`` map).
    """
    total = 0
    for n_rows, c in zip(rows, counts.tolist()):
        nnz = sum(c)
        cols = [j for j, v in enumerate(c) if v]
        total += _pick(_form_bytes(n_rows, D, nnz, cols, align), plan_form)[1]
    return total


def _pick(forms: dict[str, int], plan_form: str) -> tuple[str, int]:
    if plan_form == "auto":
        kind = min(forms, key=lambda k: (forms[k], k != "dims"))
        return kind, forms[kind]
    return plan_form, forms[plan_form]


class _PEPTask(CTRTask):
    """The PEP model: thresholds get their own learning rate and a pressure (see
    :class:`PEPSearcher`)."""

    def __init__(self, embedding: PEPEmbedding, backbone: nn.Module, *, lr: float,
                 weight_decay: float, threshold_lr: float, threshold_pressure: float) -> None:
        super().__init__(embedding, backbone, lr=lr, weight_decay=weight_decay)
        self.threshold_lr = threshold_lr
        self.pressure = float(threshold_pressure)
        # dL/ds gets a constant −pressure on every threshold (the gradient of the penalty
        # −pressure·Σs): where the loss does not defend an entry, s rises at Adam's full
        # step (the threshold learning rate); where it does, s settles.
        embedding.threshold.register_hook(lambda g: g - self.pressure)

    def configure_optimizers(self):
        dense, sparse = split_parameters(self)
        thr = self.embedding.threshold
        groups = [{"params": [p for p in dense if p is not thr], "lr": self.lr,
                   "weight_decay": self.weight_decay},
                  {"params": [thr], "lr": self.threshold_lr, "weight_decay": 0.0}]
        opts: list[torch.optim.Optimizer] = [adam(groups)]
        if sparse:
            opts.append(torch.optim.SparseAdam(sparse, lr=self.lr))
        return opts


class _TargetMonitor(Callback):
    """After each step: measure the mask's bytes, snapshot targets, log sparsity, stop."""

    def __init__(self, embedding: PEPEmbedding, targets: Sequence[int], plan_form: str, *,
                 check_every: int, record_every: int, align: str = "project",
                 schedule: tuple[int, int, int, int, int] | None = None,
                 base_pressure: float = 0.0) -> None:
        self.embedding, self.plan_form, self.align = embedding, plan_form, align
        self.rows = [f.vocab_size for f in embedding.schema.fields]
        self.pending = sorted(set(targets), reverse=True)
        self.check_every, self.record_every = check_every, record_every
        self.schedule, self.base_pressure = schedule, base_pressure
        self.step = self.last_check = self.last_record = 0
        self.next_check = 1
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.steps: list[int] = []
        self.sparsity: dict[str, list[float]] = {f.name: [] for f in embedding.schema.fields}
        self.bytes: list[int] = []
        self.pressure: list[float] = []
        self._pressure = 0.0

    def planned_bytes(self) -> float | None:
        """Bytes the schedule wants now: geometric from full at step a to the smallest
        target at step b (``None`` before a or without a schedule)."""
        if self.schedule is None:
            return None
        a, b, full, low, _ = self.schedule
        if self.step < a:
            return None
        frac = min(1.0, (self.step - a) / max(1, b - a))
        return math.exp(math.log(full) + frac * (math.log(low) - math.log(full)))

    def steer(self, pl_module: _PEPTask, nbytes: int, elapsed: int) -> None:
        # Budget control (our addition, not in PEP): raise the pressure while the mask is
        # behind the byte schedule, let it fall back towards the base pressure while ahead.
        # The loss still decides *which* entries go; the controller only sets how hard all
        # thresholds are pushed.
        want = self.planned_bytes()
        if want is None:
            return
        rate = _PRESSURE_STEP ** elapsed
        p = pl_module.pressure * (rate if nbytes > want else 1.0 / rate)
        pl_module.pressure = min(_PRESSURE_MAX, max(self.base_pressure, p))

    def measure(self) -> tuple[torch.Tensor, int]:
        """(surviving entries per (field, column), bytes of the mask in the plan form)."""
        emb = self.embedding
        counts = emb.column_counts()
        return counts, mask_bytes(counts, self.rows, emb.out_dim, self.plan_form, self.align)

    def record(self, counts: torch.Tensor, nbytes: int) -> None:
        self.steps.append(self.step)
        self.bytes.append(nbytes)
        self.pressure.append(self._pressure)
        D = self.embedding.out_dim
        for f, c in zip(self.embedding.schema.fields, counts.sum(1).tolist()):
            self.sparsity[f.name].append(1.0 - c / (f.vocab_size * D))
        self.last_record = self.step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step += 1
        self._pressure = pl_module.pressure
        if self.step < self.next_check:
            return
        counts, nbytes = self.measure()
        self.steer(pl_module, nbytes, self.step - self.last_check)
        self.last_check = self.step
        # Measure every step near the next target (a snapshot lands on the first step at or
        # below it); far above it, every `check_every` steps (the mask changes slowly).
        near = bool(self.pending) and nbytes <= _NEAR * self.pending[0]
        self.next_check = self.step + (1 if near else self.check_every)
        snap = bool(self.pending) and nbytes <= self.pending[0]
        if snap or self.step - self.last_record >= self.record_every:
            self.record(counts, nbytes)
        if snap:
            masks = self.embedding.masks()
            while self.pending and nbytes <= self.pending[0]:
                self.snapshots[self.pending.pop(0)] = {
                    "step": self.step, "bytes": nbytes, "nnz": int(counts.sum()),
                    "masks": masks, "margins": self.embedding.margins()}
        if not self.pending and self.snapshots:
            trainer.should_stop = True
        elif self.schedule is not None and self.step >= self.schedule[4]:
            # Past the schedule's deadline: the remaining targets are met by pruning the
            # final table further (the fallback), more training would only push harder.
            trainer.should_stop = True


class _FieldTests(Callback):
    """The validation field test (:func:`~autodim.searchers._tables.field_removal_test`)
    after every epoch; :meth:`verdict` is the one of the epoch with the lowest validation
    log loss.

    Our addition (PEP has no validation step): PEP trains its thresholds for a fixed number
    of epochs, and by the last one the model overfits (decoupled preset, 30 epochs: its
    validation log loss is above the label rate's, so a test on the final model can say
    nothing). Testing at the best epoch reads the fields where the model generalises.
    """

    def __init__(self, embedding: PEPEmbedding, backbone: nn.Module, batches: Any,
                 names: Sequence[str]) -> None:
        self.embedding, self.backbone, self.batches = embedding, backbone, batches
        self.names = list(names)
        self.tests: list[dict[str, Any]] = []

    def _run(self, trainer) -> None:
        idle, loss = field_removal_test(self.embedding, self.backbone, self.batches,
                                        self.names)
        self.tests.append({"epoch": trainer.current_epoch + 1, "step": trainer.global_step,
                           "val_logloss": loss, "idle": idle})

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._run(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # Training that stopped inside an epoch (every target reached) gets its last test.
        if not self.tests or self.tests[-1]["step"] != trainer.global_step:
            self._run(trainer)

    def verdict(self) -> dict[str, Any] | None:
        scored = [t for t in self.tests if not math.isnan(t["val_logloss"])]
        return min(scored, key=lambda t: t["val_logloss"]) if scored else None


@register_searcher("pep")
class PEPSearcher(Searcher):
    """PEP: learn per-entry (or coarser) pruning thresholds; snapshot each byte target.

    Args:
        granularity: Which entries share a threshold: ``global``, ``dimension``, ``field``,
            ``feature``, ``field_dim`` or ``feature_dim`` (default).
        threshold_init: Initial ``s`` (``g(s) = sigmoid(s)``; the paper's code uses values
            down to −150, −15 already means "prune nothing" for weights of ~1e-2).
        threshold_lr: Adam learning rate of ``s``, or ``"auto"``: ``|threshold_init|``
            divided by ``ramp`` × the planned steps, so a threshold nothing defends reaches
            ``g(0) = 0.5`` (prunes everything) at that point, whatever the data size.
            (Deviation: the authors share one learning rate with the weights and train for
            many epochs; here the search has a fixed step budget, so the rate follows from it.)
        threshold_pressure: A constant push ``dL/ds −= pressure`` on every threshold (the
            gradient of the penalty ``−pressure·Σ s``); entries whose loss gradient outweighs
            it keep their threshold low. With Adam, a threshold whose row is not in the batch
            rises at the full threshold learning rate whatever the pressure; the pressure
            sets how strongly rows in the batch must be defended by the loss (1e-6 let the
            loss tell noise fields from signal fields on planted data; 1e-4 pruned all
            fields alike). (Deviation: the authors' code applies Adam's L2 weight decay,
            1e-5, to ``s``; that push fades as ``s → 0`` and, with Adam's long second-moment
            memory, halved the climb of ``s`` in our runs, so no target was reached within a
            normal training budget.)
        ramp: Share of the planned steps after which an undefended threshold reaches
            ``g = 0.5`` when ``threshold_lr="auto"``, and by which the byte schedule of
            ``budget_control`` reaches the smallest target.
        budget_control: Steer the pressure (multiplicatively, between ``threshold_pressure``
            and 1e-4) so the mask's bytes follow a geometric schedule from the full table
            (once undefended thresholds reach a tenth of the initial weight scale) to the
            smallest target at ``ramp`` of the planned steps; training stops halfway between
            that point and the planned end if a target is still missing (it then falls back).
            Our addition: PEP itself has no notion of a target, it only snapshots the
            sparsity it passes through; with a fixed pressure the thresholds either stall
            above the targets (weak) or all rise in lock-step, i.e. plain magnitude pruning
            (strong). The ceiling keeps the controller out of that lock-step regime: on
            planted data, pushing until the noise fields were empty (20x) also stripped the
            signal fields, and the fallback's plan retrained far better.
        targets: Extra byte targets besides ``task.budget_bytes``: ``"10x"``, ``"2MB"``, or
            byte counts. Their plans land in ``history["snapshots"][target]["plan"]``.
        plan_form: ``"dims"`` (default), ``"sparse"`` or ``"auto"`` (per field, the
            cheaper of the two; see the module docstring). Our deviation: PEP retrains the
            element mask itself (``"sparse"``), but in FM two rows interact only over the
            columns both kept, and scattered masks share few: the same search retrained
            scored 0.06 test AUC lower sparse than as columns (decoupled preset, 4x, seed 0:
            0.6916 against 0.7503; MovieLens-100K, 10x: 0.7472 against 0.7709).
        align: How a ``dims`` field's kept columns are stored: ``"project"`` (default:
            densely, widened by a learned ``d x D`` map) or ``"select"`` (at their
            positions, so two fields interact over their shared columns only). Measured on
            the decoupled preset (4x, 3 seeds, same dims retrained fresh) a projection
            beats padding by 0.02 test AUC; the kept columns are recorded in
            ``plan.searcher["columns"]`` for the lottery-ticket warm start.
        rewind: ``"init"`` (lottery ticket: warm start = initial weights under the mask) or
            ``"fresh"`` (no warm start).
        epochs: Training epochs at most (``None``: ``task.train.max_epochs``); training
            stops earlier once every target has a snapshot.
        init_std: Standard deviation of the weights' initialisation.
        check_every: Steps between measurements of the mask while its bytes are more than
            1.25x the next target (``None``: 10, or 100 for tables over 4M entries); closer
            to a target it is measured after every step.
        refill: When a snapshot's plan leaves more than 5 % of its target unused (one step
            can prune many entries at once), re-select under the target from the learned
            margins ``|e| − g(s)`` (our addition; ``False``: the snapshot as PEP takes it).
        drop_uninformative: After training, drop the fields whose removal does not raise
            the validation log loss of the pruned model by two standard errors
            (:func:`~autodim.searchers._tables.field_removal_test`, run after every epoch;
            the verdict of the epoch with the lowest validation log loss counts), and
            re-select the other fields' entries under the target (our addition; see
            ``search``).

    Attributes (after :meth:`search`):
        initial_tables_: Per field, the weights at initialisation (the rewind point).
    """

    history_keys: ClassVar[tuple[str, ...]] = ("sparsity", "steps", "snapshots",
                                               "search_seconds")
    quick_settings: ClassVar[Mapping[str, Any]] = {"epochs": 2}
    inflatable: ClassVar[bool] = False  # sparse fields stay as they are when compressed

    def __init__(self, *, granularity: str = "feature_dim", threshold_init: float = -15.0,
                 threshold_lr: float | str = "auto", threshold_pressure: float = 1e-6,
                 ramp: float = 0.8, budget_control: bool = True,
                 targets: Sequence[str | int] = (), plan_form: str = "dims",
                 rewind: str = "init", epochs: int | None = None, init_std: float = 0.01,
                 check_every: int | None = None, refill: bool = True,
                 drop_uninformative: bool = True, align: str = "project") -> None:
        self.granularity = granularity
        self.threshold_init = threshold_init
        self.threshold_lr = threshold_lr
        self.threshold_pressure = threshold_pressure
        self.ramp = ramp
        self.budget_control = budget_control
        self.targets = targets
        self.plan_form = plan_form
        self.rewind = rewind
        self.epochs = epochs
        self.init_std = init_std
        self.check_every = check_every
        self.refill = refill
        self.drop_uninformative = drop_uninformative
        self.align = align

    # -- search -----------------------------------------------------------------------------
    def search(self, task: SearchTask) -> SearchResult:
        self._check_settings()
        schema, D = task.schema, task.D
        full = full_bytes(schema, D)
        extra = [parse_budget(t, full) for t in self.targets]
        targets = sorted({t for t in [task.budget_bytes, *extra] if t is not None},
                         reverse=True)
        with Stopwatch() as sw:
            seed_everything(task.seed)
            config = replace(task.train, seed=task.seed)
            epochs = self.epochs if self.epochs is not None else config.max_epochs
            embedding = PEPEmbedding(schema, D, granularity=self.granularity,
                                     threshold_init=self.threshold_init,
                                     init_std=self.init_std,
                                     sparse=schema.total_rows > config.sparse_threshold)
            self.initial_tables_ = embedding.initial_tables()
            planned = self._planned_steps(task, epochs)
            thr_lr = (abs(self.threshold_init) / (self.ramp * planned)
                      if self.threshold_lr == "auto"
                      else float(self.threshold_lr))
            model = _PEPTask(embedding, task.make_backbone(), lr=config.lr,
                             weight_decay=config.weight_decay, threshold_lr=thr_lr,
                             threshold_pressure=self.threshold_pressure)
            entries = schema.total_rows * D
            check = self.check_every or (10 if entries <= 4_000_000 else 100)
            schedule = None
            if self.budget_control and targets:
                # Pruning can start once an undefended threshold reaches a tenth of the
                # weights' initial scale; the smallest target is due at `ramp` of the steps.
                g0 = 0.1 * self.init_std
                start = max(0, int((math.log(g0 / (1 - g0)) - self.threshold_init) / thr_lr))
                end = max(start + 1, int(self.ramp * planned))
                deadline = end + max(1, (planned - end) // 2)
                schedule = (start, end, full, min(targets), deadline)
            tests = _FieldTests(embedding, model.backbone, task.data.val_dataloader(),
                                task.schema.names) if self.drop_uninformative else None
            monitor = _TargetMonitor(embedding, targets, self.plan_form, align=self.align,
                                     check_every=check,
                                     record_every=max(1, planned // 200),
                                     schedule=schedule,
                                     base_pressure=self.threshold_pressure)
            task.data.reseed(task.seed)  # same seed, same batches, whatever ran before
            trainer = make_trainer(replace(config, max_epochs=epochs),
                                   [monitor] + ([tests] if tests else []),
                                   limit_val_batches=0)
            with warnings.catch_warnings():
                # Validation is off on purpose (the thresholds need no early stopping).
                warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")
                trainer.fit(model, train_dataloaders=task.data.train_dataloader())
            final_counts, final_bytes = monitor.measure()
            if not monitor.steps or monitor.steps[-1] != monitor.step:
                monitor.record(final_counts, final_bytes)
            final_masks = embedding.masks()
            final_tables = embedding.pruned_tables()
            final_margins = embedding.margins()
            # PEP's thresholds learn from the training loss, and a field without signal
            # fits training noise as well as a signal field fits signal, so its entries
            # survive (decoupled preset: noise fields kept more entries per row than the
            # signal fields). The validation loss tells them apart: such fields are
            # dropped and their bytes re-selected for the others from the margins.
            idle, field_test = self._field_test(tests, task)

            plans: dict[int | None, DimensionPlan] = {}
            snapshots: dict[str, dict[str, Any]] = {}
            for target in targets or [None]:
                snap = monitor.snapshots.get(target) if target is not None else None
                masks = snap["masks"] if snap else final_masks
                margins = snap["margins"] if snap else final_margins
                plan, info = self._derive_plan(task, masks, final_tables, target,
                                               reached=snap is not None, margins=margins,
                                               idle=idle)
                plans[target] = plan
                entry = {"step": snap["step"] if snap else None,
                         "nnz": snap["nnz"] if snap else int(final_counts.sum()),
                         "mask_bytes": snap["bytes"] if snap else final_bytes,
                         "plan_bytes": plan.num_bytes(), **info}
                if target != task.budget_bytes:
                    entry["plan"] = plan.to_dict()
                snapshots[str(target)] = entry
            plan = plans[task.budget_bytes if task.budget_bytes is not None else None]
            warm = self.warm_start_for(plan) if self.rewind == "init" else None
        history = {
            "steps": monitor.steps,
            "sparsity": monitor.sparsity,
            "mask_bytes": monitor.bytes,
            "snapshots": snapshots,
            "fields": list(schema.names),
            "pressure": monitor.pressure,
            "threshold_lr": thr_lr,
            "total_steps": monitor.step,
            "planned_steps": planned,
            "search_seconds": sw.seconds,
            "dropped_uninformative": idle,
            "field_test": field_test,
        }
        check_plan(self, task, plan, history, why_less=(
            f"fields {idle} were dropped: removing each does not raise the validation log "
            "loss by two standard errors; the others kept what the margins select" if idle
            else None))
        return SearchResult(plan=plan, history=history, warm_start=warm)

    def warm_start_for(self, plan: DimensionPlan) -> dict[str, torch.Tensor]:
        """Lottery-ticket weights for a plan from this search: the initial weights of the
        kept entries (``sparse`` fields) or kept columns (``select`` fields)."""
        if not hasattr(self, "initial_tables_"):
            raise ConfigError("pep: warm_start_for needs a finished search")
        tables = {}
        for fp in plan.fields:
            w0 = self.initial_tables_[fp.name]
            if fp.dim == 0:
                continue
            cols = fp.columns or (plan.searcher.get("columns") or {}).get(fp.name)
            tables[fp.name] = w0 if fp.sparse is not None else w0[:, cols or
                                                                  list(range(fp.dim))]
        return embedding_state(plan, tables)

    # -- helpers ----------------------------------------------------------------------------
    def _check_settings(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"pep: granularity must be one of {GRANULARITIES}, got "
                              f"{self.granularity!r}")
        if self.plan_form not in PLAN_FORMS:
            raise ConfigError(f"pep: plan_form must be one of {PLAN_FORMS}, got "
                              f"{self.plan_form!r}")
        if self.align not in ("project", "select"):
            raise ConfigError(f"pep: align must be 'project' or 'select', got {self.align!r}")
        if self.rewind not in ("init", "fresh"):
            raise ConfigError(f"pep: rewind must be 'init' or 'fresh', got {self.rewind!r}")
        if not 0 < self.ramp <= 1:
            raise ConfigError(f"pep: ramp must lie in (0, 1], got {self.ramp!r}")
        if self.threshold_lr != "auto" and not (isinstance(self.threshold_lr, (int, float))
                                                and self.threshold_lr > 0):
            raise ConfigError(f"pep: threshold_lr must be 'auto' or a positive number, got "
                              f"{self.threshold_lr!r}")

    @staticmethod
    def _planned_steps(task: SearchTask, epochs: int) -> int:
        per_epoch = len(task.data.train_dataloader())
        limit = task.train.limit_train_batches
        if isinstance(limit, float):
            per_epoch = max(1, int(per_epoch * limit))
        else:
            per_epoch = min(per_epoch, int(limit))
        steps = max(1, epochs * per_epoch)
        if task.train.max_steps and task.train.max_steps > 0:
            steps = min(steps, task.train.max_steps)
        return steps

    @staticmethod
    def _field_test(tests: _FieldTests | None, task: SearchTask
                    ) -> tuple[list[str], dict[str, Any] | str]:
        """(fields to drop, what the validation tests of the fields said)."""
        if tests is None:
            return [], "off"
        best = tests.verdict()
        record = {"epoch": best["epoch"] if best else None,
                  "val_logloss": [t["val_logloss"] for t in tests.tests]}
        if best is None or best["idle"] is None:
            record["result"] = ("skipped: at no epoch was the model's validation log loss "
                                "below the label rate's, so it cannot tell the fields apart")
            return [], record
        if len(best["idle"]) == task.schema.num_fields:
            record["result"] = "skipped: no field passed the test"
            return [], record
        record["result"] = "done"
        return list(best["idle"]), record

    def _derive_plan(self, task: SearchTask, masks: Mapping[str, torch.Tensor],
                     tables: Mapping[str, torch.Tensor], target: int | None, *, reached: bool,
                     margins: Mapping[str, torch.Tensor] | None = None,
                     idle: Sequence[str] = ()) -> tuple[DimensionPlan, dict[str, Any]]:
        """The plan of one target from its snapshot mask (or, if the target was never
        reached, from the final table pruned further to fit; or, if the snapshot's plan
        leaves more than 5 % of the target unused, re-selected under the target from the
        learned margins ``|e| − g(s)``)."""
        D = task.D
        rows = {f.name: f.vocab_size for f in task.schema.fields}
        np_masks = {n: (np.zeros(m.shape, dtype=bool) if n in idle else m.cpu().numpy())
                    for n, m in masks.items()}
        cols = {n: np.flatnonzero(m.any(0)).tolist() for n, m in np_masks.items()}
        forms = {}
        for n, m in np_masks.items():
            forms[n] = _pick(_form_bytes(rows[n], D, int(m.sum()), cols[n], self.align),
                             self.plan_form)
        info: dict[str, Any] = {"reached": reached}
        used = sum(b for _, b in forms.values())
        if target is None or BUDGET_USE * target <= used <= target or (
                used <= target and (margins is None or not self.refill)):
            kinds = {n: k for n, (k, _) in forms.items()}
            plan = self._build(task, kinds, np_masks, cols)
            info["form"] = _summarise(kinds, np_masks)
            return plan, info
        if used < target:
            # The snapshot lands on the first step at or below the target, and one step can
            # prune many entries at once (at a 40x target it landed at 53x). What the search
            # learned is each entry's margin to its threshold: keep the entries (sparse form)
            # or columns (dims form, a knapsack over per-field column counts) with the
            # largest margins that fit the target. The snapshot's survivors have the largest
            # margins, so the re-selection is a superset of the snapshot's mask.
            plan, kind, kept_share = self._refill(task, margins, np_masks, target, idle)
            info.update(form=kind, refill={"reason": "the snapshot's plan used "
                                           f"{used / target:.1%} of the target",
                                           "snapshot_bytes": int(used),
                                           "plan_bytes": plan.num_bytes()})
            return plan, info
        # Fallback: training ended above the target. Prune the smallest surviving |ê|
        # further (sparse form) or drop the columns with the least surviving |ê| mass per
        # byte (dims form); "auto" keeps whichever retains more of the surviving mass.
        mags = {n: tables[n].abs().cpu().numpy().astype(np.float64) * np_masks[n]
                for n in rows}
        candidates = {}
        if self.plan_form in ("auto", "sparse"):
            sp = magnitude_masks(mags, D, target)
            kinds = {n: "sparse" for n in rows}
            plan = self._build(task, kinds, sp, {n: [] for n in rows})
            if plan.num_bytes() <= target:
                candidates["sparse"] = (sum(float(mags[n][sp[n]].sum()) for n in rows), plan)
        if self.plan_form in ("auto", "dims"):
            mass = {n: mags[n].sum(0) for n in rows}
            kept = select_columns(rows, D, mass, target,
                                  keep={n: mass[n] > 0 for n in rows}, min_columns=0,
                                  allow_drop_fields=True, per_byte=True, align=self.align)
            plan = self._build(task, {n: "dims" for n in rows}, np_masks, kept)
            candidates["dims"] = (sum(float(mass[n][kept[n]].sum()) for n in rows), plan)
        kind = _better_form(candidates)
        plan = candidates[kind][1]
        total = sum(float(m.sum()) for m in mags.values())
        info.update(form=kind, fallback={
            "reason": "training ended before the target was reached",
            "mask_bytes_at_end": int(sum(b for _, b in forms.values())),
            "kept_mass_share": candidates[kind][0] / total if total else 0.0})
        return plan, info

    def _refill(self, task: SearchTask, margins: Mapping[str, torch.Tensor],
                np_masks: Mapping[str, np.ndarray], target: int, idle: Sequence[str] = ()
                ) -> tuple[DimensionPlan, str, float]:
        """The plan under ``target`` keeping the entries/columns with the largest learned
        margins (see :meth:`_derive_plan`); ``(plan, form, kept score share)``."""
        D = task.D
        rows = {f.name: f.vocab_size for f in task.schema.fields}
        m = {n: margins[n].cpu().numpy().astype(np.float64) for n in rows}
        low = min(float(v.min()) for v in m.values())
        # Shifted so every score is positive: ranking by score is ranking by margin.
        score = {n: v - low + 1e-12 for n, v in m.items()}
        for n in idle:  # a dropped field keeps nothing (zeros are never kept)
            score[n] = np.zeros_like(score[n])
        candidates = {}
        if self.plan_form in ("auto", "sparse"):
            sp = magnitude_masks(score, D, target)
            plan = self._build(task, {n: "sparse" for n in rows}, sp, {n: [] for n in rows})
            if plan.num_bytes() <= target:
                candidates["sparse"] = (sum(float(score[n][sp[n]].sum()) for n in rows), plan)
        if self.plan_form in ("auto", "dims"):
            names = list(rows)
            col = {n: score[n].sum(0) for n in names}
            order = {n: sorted(range(D), key=lambda j, n=n: (-col[n][j], j)) for n in names}
            values = [np.concatenate([[0.0], np.cumsum(col[n][order[n]])]).tolist()
                      for n in names]
            costs = [[select_bytes(rows[n], order[n][:d], D, self.align) if d else 0
                      for d in range(D + 1)]
                     for n in names]
            chosen = solve_mckp(values, costs, target, names=names)
            kept = {n: sorted(order[n][:d]) for n, d in zip(names, chosen)}
            plan = self._build(task, {n: "dims" for n in names}, np_masks, kept)
            candidates["dims"] = (sum(values[i][d] for i, d in enumerate(chosen)), plan)
        kind = _better_form(candidates)
        total = sum(float(v.sum()) for v in score.values())
        return candidates[kind][1], kind, candidates[kind][0] / total

    def _build(self, task: SearchTask, kinds: Mapping[str, str],
               masks: Mapping[str, np.ndarray], cols: Mapping[str, Sequence[int]]
               ) -> DimensionPlan:
        D = task.D
        dims = {}
        for n, kind in kinds.items():
            if kind == "sparse":
                dims[n] = D if masks[n].any() else 0
            else:
                dims[n] = len(cols[n])
        plan = self.make_plan(task, dims, align=self.align)
        for fp in plan.fields:
            if fp.dim == 0:
                continue
            if kinds[fp.name] == "sparse":
                fp.align, fp.columns = "pad", None
                fp.sparse = {"nnz": int(masks[fp.name].sum()),
                             "bits": encode_mask(masks[fp.name])}
            elif self.align == "select":
                fp.columns = sorted(int(c) for c in cols[fp.name])
            elif fp.dim < D:  # projected: which columns of the search it stores, for the
                # lottery-ticket warm start (their initial weights)
                plan.searcher.setdefault("columns", {})[fp.name] = sorted(
                    int(c) for c in cols[fp.name])
        plan.validate()
        return plan


def _better_form(candidates: Mapping[str, tuple[float, DimensionPlan]]) -> str:
    """The form that keeps more score; on a tie (to 1e-9 relative, since the two forms sum
    the same entries in a different order) the one with fewer bytes, then ``dims``. A
    sparse table that keeps every entry of its field costs more than the dense columns."""
    top = max(v for v, _ in candidates.values())
    tied = [k for k, (v, _) in candidates.items() if v >= top - 1e-9 * max(abs(top), 1.0)]
    return min(tied, key=lambda k: (candidates[k][1].num_bytes(), k != "dims"))


def _summarise(kinds: Mapping[str, str], masks: Mapping[str, np.ndarray]) -> str:
    used = {k for n, k in kinds.items() if masks[n].any()}
    return used.pop() if len(used) == 1 else ("mixed" if used else "empty")

