"""The compressor: turn a searcher's plan into the compact model that fits the budget.

Two entry points:

- :func:`compress_plan` — one decision over **dims x bits x hashing per field**. For every
  field it lists each option (a candidate dim no larger than the searcher's, a precision
  from the allowed bits, no hashing or MEmCom at the given bucket ratios), costs it in exact
  bytes (:meth:`FieldPlan.num_bytes`) and values it by an estimated loss, then solves the
  multiple-choice knapsack (:func:`autodim.knapsack.solve_mckp`). Losses come from a
  :class:`ModelLoss` (the validation-logloss increase when that field alone is narrowed,
  quantized or hashed on a trained model; the three are added) or, without a model, from
  :class:`ProxyLoss` (a stated heuristic, see there).
- :func:`compact_plan` — the earlier greedy MEmCom decision, kept for studies that turn
  the compressor off:

A trial lets its searcher spend ``inflate x budget`` bytes, then brings the plan back under
the real budget by hashing fields with MEmCom (Pansare et al., MLSys 2022):
``e(i) = U[i mod m] * w[i]`` stores ``m*d + n`` floats instead of ``n*d``. Fields are taken
greedily in order of *bytes saved per unit of lost accuracy*, where the loss of hashing a
field into ``m`` buckets is estimated, without training, as

    loss_f = d_f * (share of the field's training occurrences whose id is not the most
                    frequent one in its bucket)

i.e. the traffic that loses its own direction vector (it keeps a scalar), weighted by the
dims the searcher judged the field to deserve. A field the searcher shrank to dim 1 saves
nothing by hashing (``m + n > n``) and is never picked. If hashing every eligible field is
not enough, dims are lowered one candidate step at a time where a step saves the most
bytes per lost log-dim.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from autodim.budget import format_bytes
from autodim.data.schema import Field, Schema
from autodim.embeddings.quant import ALLOWED_BITS
from autodim.errors import BudgetError, PlanError
from autodim.knapsack import solve_mckp
from autodim.plan import DimensionPlan, FieldPlan

__all__ = ["collision_loss", "memcom_candidates", "compact_plan", "compress_plan",
           "ProxyLoss", "ModelLoss", "estimate_batches", "field_option", "warm_start_embedding"]


def collision_loss(field: Field, buckets: int) -> float:
    """Share of training occurrences whose id is not the heaviest id of its MEmCom bucket.

    Without frequencies the ids are taken as equally frequent (``1 - m/n``).
    """
    n = field.vocab_size
    if buckets >= n:
        return 0.0
    if field.freqs is None or field.freqs.sum() <= 0:
        return 1.0 - buckets / n
    freqs = np.asarray(field.freqs, dtype=np.float64)
    top = np.zeros(buckets)
    np.maximum.at(top, np.arange(n) % buckets, freqs)  # the same i mod m as MEmComTable
    return float(1.0 - top.sum() / freqs.sum())


def _plain(fp: FieldPlan) -> bool:
    return (fp.dim > 0 and fp.hashing is None and fp.frequency_groups is None
            and fp.row_mask is None and fp.sparse is None)


def memcom_candidates(plan: DimensionPlan, schema: Schema, ratio: float, min_rows: int
                      ) -> list[dict[str, Any]]:
    """Fields MEmCom could hash, best first (most bytes saved per unit of estimated loss)."""
    out = []
    for fp in plan.fields:
        if not _plain(fp) or fp.vocab_size < min_rows:
            continue
        m = max(1, math.ceil(ratio * fp.vocab_size))
        if m >= fp.vocab_size:
            continue
        hashed = replace(fp, hashing={"method": "memcom", "buckets": m})
        saved = fp.num_bytes(plan.D) - hashed.num_bytes(plan.D)
        if saved <= 0:
            continue
        loss = fp.dim * collision_loss(schema[fp.name], m)
        out.append({"field": fp.name, "buckets": m, "saved_bytes": saved, "loss": loss,
                    "score": saved / (loss + 1e-6)})
    out.sort(key=lambda c: -c["score"])
    return out


def compact_plan(plan: DimensionPlan, schema: Schema, budget_bytes: int | None, *,
                 ratio: float, min_rows: int = 500,
                 candidate_dims: Sequence[int] = (1, 2, 4, 8, 16)
                 ) -> tuple[DimensionPlan, dict[str, Any]]:
    """Fit a searched plan into ``budget_bytes`` with MEmCom (then, if needed, lower dims).

    Args:
        plan: The searcher's plan (may exceed the budget when the searcher was given more).
        schema: The data's schema (its training frequencies estimate the hashing loss).
        budget_bytes: The study's budget (``None``: return the plan unchanged).
        ratio: Buckets of a hashed field as a share of its rows.
        min_rows: Fields with fewer rows are never hashed.
        candidate_dims: Dims the fallback projection may lower fields to.

    Returns:
        ``(plan, info)``; ``info`` lists the hashed fields (``memcom``: field -> buckets),
        the lowered dims (``lowered``: field -> [old, new]) and the bytes before/after. The
        plan is the input object itself when nothing had to change.

    Raises:
        BudgetError: not even hashing and lowering every field fits the budget.

    Example:
        >>> from autodim.data.synthetic import make_planted
        >>> data = make_planted("tiny", rows=2000)
        >>> big = DimensionPlan.full(data.schema, 8)
        >>> small, info = compact_plan(big, data.schema, big.num_bytes() // 4, ratio=0.05)
        >>> small.num_bytes() <= big.num_bytes() // 4, sorted(info["memcom"])[:1]
        (True, ['f03'])
    """
    before = plan.num_bytes()
    info: dict[str, Any] = {"memcom": {}, "lowered": {}, "ratio": ratio,
                            "bytes_before": before, "bytes_after": before}
    if budget_bytes is None or before <= budget_bytes:
        return plan, info
    fields = {fp.name: fp for fp in plan.fields}
    total = before
    for cand in memcom_candidates(plan, schema, ratio, min_rows):
        if total <= budget_bytes:
            break
        name = cand["field"]
        fields[name] = replace(fields[name], hashing={"method": "memcom",
                                                      "buckets": cand["buckets"]})
        total -= cand["saved_bytes"]
        info["memcom"][name] = cand["buckets"]
    if total > budget_bytes:
        lowered = _lower_dims(plan.D, fields, budget_bytes, candidate_dims)
        info["lowered"] = {k: list(v) for k, v in lowered.items()}
    out = replace(plan, fields=[fields[fp.name] for fp in plan.fields])
    out.validate()
    info["bytes_after"] = out.num_bytes()
    if out.num_bytes() > budget_bytes:
        raise BudgetError(f"the searched plan ({format_bytes(before)}) cannot be brought under "
                          f"the budget {format_bytes(budget_bytes)} with MEmCom (ratio "
                          f"{ratio:.3g}) and the smallest candidate dims: "
                          f"{format_bytes(out.num_bytes())} remain")
    return out, info


def _lower_dims(D: int, fields: dict[str, FieldPlan], budget_bytes: int,
                candidate_dims: Sequence[int]) -> dict[str, tuple[int, int]]:
    """Lower dims one candidate step at a time until the plan fits, each step taken where it
    saves the most bytes per lost log-dim. Plain, MEmCom-hashed and frequency-grouped fields
    may move (their bytes are recomputed exactly; a grouped field lowers its widest groups);
    element-masked fields and other hashing keep theirs."""
    # 0 (dropping a field) is a step only when the user made it a candidate.
    cands = sorted({int(c) for c in candidate_dims if c >= 0}) or [1]
    start = {n: fp.dim for n, fp in fields.items()}
    total = sum(fp.num_bytes(D) for fp in fields.values())

    def movable(fp: FieldPlan) -> bool:
        # A row mask is over ids, so it stays valid at a lower dim; an element mask
        # (sparse) fixes its dims.
        hashed_ok = fp.hashing is None or fp.hashing.get("method") == "memcom"
        return fp.dim > cands[0] and hashed_ok and fp.sparse is None

    def lowered(fp: FieldPlan, lower: int) -> FieldPlan:
        if fp.frequency_groups is not None:
            # The widest groups step down; once every group has the same dim the field is
            # a plain field again (a darts/autodim plan with groups was pruned at 40x
            # because no grouped field could move).
            groups = [{**g, "dim": min(int(g["dim"]), lower)} for g in fp.frequency_groups]
            if len({g["dim"] for g in groups}) > 1:
                return replace(fp, dim=lower, frequency_groups=groups)
            return replace(fp, dim=lower, frequency_groups=None)
        cols = fp.columns[:lower] if fp.align == "select" and fp.columns else fp.columns
        return replace(fp, dim=lower, columns=cols)

    while total > budget_bytes:
        best, best_ratio, best_fp = None, -1.0, None
        for name, fp in fields.items():
            if not movable(fp):
                continue
            lower = max([c for c in cands if c < fp.dim] or [cands[0]])
            new = lowered(fp, lower)
            if lower == 0:  # a dropped field stores nothing: no hashing, no row mask
                new = replace(new, hashing=None, row_mask=None)
            saved = fp.num_bytes(D) - new.num_bytes(D)
            if saved <= 0:
                continue
            ratio = saved / (math.log2(1 + fp.dim) - math.log2(1 + lower))
            if ratio > best_ratio:
                best, best_ratio, best_fp = name, ratio, new
        if best is None:
            break
        total -= fields[best].num_bytes(D) - best_fp.num_bytes(D)
        fields[best] = best_fp
    return {n: (start[n], fp.dim) for n, fp in fields.items() if fp.dim != start[n]}


# -- the compressor: dims x bits x hashing per field, one knapsack ------------------------
def _precision(bits: int, scale: str, train: str, scalars: str | None) -> dict[str, Any] | None:
    if bits == 32 and scalars in (None, "float32"):
        return None
    p: dict[str, Any] = {"bits": bits}
    if bits < 32:
        p["train"] = train
    if bits <= 8:
        p["scale"] = scale
    if scalars is not None:
        p["scalars"] = scalars
    return p


def field_option(fp: FieldPlan, dim: int, bits: int, buckets: int | None, *,
                 scale: str = "row", train: str = "qat", scalars: str = "float16"
                 ) -> FieldPlan:
    """``fp`` narrowed to ``dim``, stored at ``bits`` and (if ``buckets``) MEmCom-hashed.

    A plain field (or a MEmCom-hashed one) may move on every axis; a field with frequency
    groups only changes its precision; row- and element-masked fields stay as they are.
    """
    if fp.row_mask is not None or fp.sparse is not None or (
            fp.hashing is not None and fp.hashing.get("method") != "memcom"):
        return fp
    if fp.frequency_groups is not None:
        return replace(fp, precision=_precision(bits, scale, train, None))
    if dim == 0:
        return replace(fp, dim=0, columns=[] if fp.align == "select" else None, hashing=None,
                       precision=None)
    cols = fp.columns[:dim] if fp.align == "select" and fp.columns else fp.columns
    hashing = {"method": "memcom", "buckets": int(buckets)} if buckets else None
    scal = (scalars if bits < 32 else "float32") if hashing else None
    return replace(fp, dim=dim, columns=cols, hashing=hashing,
                   precision=_precision(bits, scale, train, scal if scal != "float32" else None))


def _quant_rel_mse(bits: int, scale: str) -> float:
    """Relative MSE of uniform min/max quantization of ~Gaussian rows (range ~ 4 sigma per
    row; a field-wide range ~ 2x wider), capped at 1 (the signal itself)."""
    if bits >= 32:
        return 0.0
    if bits == 16:
        return 1e-6
    width = 4.0 if scale == "row" else 8.0
    return min(1.0, (width / ((1 << bits) - 1)) ** 2 / 12.0)


class ProxyLoss:
    """Loss estimate without a trained model (stated heuristic, in "share of the field's
    signal lost", weighted by the dims the searcher gave the field, ``d0 / D``):

    - narrowing ``d0 -> d``: the lost share of log-dims, ``log2(1+d0/1+d) / log2(1+D)``;
    - ``b`` bits: the relative MSE of uniform quantization (see ``_quant_rel_mse``);
    - MEmCom with ``m`` buckets: :func:`collision_loss` (traffic that loses its own vector).
    """

    name = "proxy"

    def __init__(self, schema: Schema, D: int):
        self.schema, self.D = schema, D

    def narrow(self, fp: FieldPlan, dim: int) -> float:
        d0 = fp.dim
        return (fp.dim / self.D) * (math.log2(1 + d0) - math.log2(1 + dim)) / math.log2(1 + self.D)

    def quant(self, fp: FieldPlan, bits: int, scale: str) -> float:
        return (fp.dim / self.D) * _quant_rel_mse(bits, scale)

    def hash(self, fp: FieldPlan, buckets: int | None) -> float:
        if not buckets:
            return 0.0
        return (fp.dim / self.D) * collision_loss(self.schema[fp.name], buckets)


class ModelLoss(ProxyLoss):
    """Measured loss: the logloss increase of a trained model on ``batches`` when one field's
    table alone is changed (the three axes are measured separately and added).

    Measure on training rows (:func:`estimate_batches`, ``on="train"``, what a study does):
    on the model's validation rows an option that coarsens an overfit field can *lower* the
    loss (the tail ids' noisy rows replaced by a head id's or a low-rank row), a credit the
    retrained compact model does not get, since it learns its hashed or narrowed table from
    scratch and early-stops on validation anyway. On MovieLens-100K at 10x the
    validation-row estimate put MEmCom on ``item_id`` at zero cost (0.0071 on training rows,
    against 0.0020 for narrowing it to 8), and the plan that hashed lost 0.005 test AUC to
    the same knapsack without hashing (``benchmarks/quant.py --estimate-on``).

    The model's field must be a plain float table (e.g. the full ``D``-wide model a study
    trains once); its effective table ``E = align(W)`` (``n x D``) is replaced by

    - narrowing to ``d``: the best rank-``d`` approximation of ``E`` (truncated SVD; a
      ``d``-dim table with a learned ``d x D`` projection represents exactly the rank-``d``
      tables);
    - ``b`` bits: ``E`` quantized row-wise (or field-wise) with the range search of
      :func:`autodim.embeddings.quant.range_search`;
    - MEmCom with ``m`` buckets: ``s_i * E[b(i)]`` where ``b(i)`` is the heaviest id of id
      ``i``'s bucket and ``s_i`` the least-squares scalar (what ``U[i mod m] * w[i]`` can
      represent when the shared row stays the heaviest id's).

    With ``idle_batches`` (validation rows) each field is first tested by mean ablation
    (:func:`autodim.searchers._tables.field_removal_test`, the test sseds and pep use) and
    ``idle`` holds the fields :func:`compress_plan` then drops (dim 0): with ``drop_test=
    "harmful"`` (default) those whose removal *lowers* the validation loss by two standard
    errors, with ``"idle"`` those whose removal does not raise it by two. That is the one
    question the training rows cannot answer: on them a noise field the model memorised
    looks needed (planted preset, 10x: the training-row estimate alone kept the four noise
    fields at 16 dims, test AUC 0.711; dropping them, 0.805). ``"idle"`` also drops fields
    that are only redundant in the full model (MovieLens-100K: ``age``, ``gender``,
    ``occupation`` beside ``user_id`` on one split), which a compact model with a narrowed
    ``user_id`` needs (10x hybrid 0.7891 with ``"idle"``, 0.7914 without the drop).

    With ``refit`` (a function: the set of flagged fields -> a model of the same plan with
    those fields dropped, trained afresh) the flagged fields are left out of a new
    reference, which is tested again (a field may only show as harmful once a worse one is
    gone), up to ``max_refits`` times, and every option is measured on the last reference
    (``model``; ``refits`` records each). Our addition, the pattern of sseds' refit: where
    the full model overfits through its noise fields it stops at a first-order model, and
    its option losses say nothing about the interactions the compact model can learn
    (decoupled preset: the full model's best validation AUC 0.679; the harmful test flags
    2 of the 5 noise fields, the reference without them the other 3, and the reference
    without all 5 reaches 0.733). The flagged fields have no table in that reference, so
    :func:`compress_plan` must drop them (``drop_idle``); with ``drop_idle=False`` their
    options would fall back to :class:`ProxyLoss`.

    Fields the model does not hold as plain tables fall back to :class:`ProxyLoss`.

    Args:
        model: A trained :class:`~autodim.task.CTRTask` (``model.embedding`` a
            :class:`~autodim.embeddings.compact.FieldwiseEmbedding`).
        batches: Batches ``(ids, labels)`` (a list; evaluated many times).
        idle_batches: Validation batches for the field test (``None``: no test).
        drop_test: ``"harmful"`` or ``"idle"`` (see above).
        refit: Trains the reference without the flagged fields (``None``: no refit).
        max_refits: At most this many references trained again.
    """

    name = "model"

    @classmethod
    def from_datamodule(cls, model, datamodule, schema: Schema, D: int, *,
                        on: str = "train", drop_test: str | None = "harmful",
                        refit: Callable[[frozenset[str]], Any] | None = None,
                        max_refits: int = 2) -> "ModelLoss":
        """Options measured on :func:`estimate_batches` ``(datamodule, on)``; the field test
        ``drop_test`` (``"harmful"``, ``"idle"`` or ``None``: none) on the validation split,
        with ``refit`` (see the class) when given."""
        val = list(datamodule.val_dataloader())
        batches = val if on == "val" else estimate_batches(datamodule, on)
        return cls(model, batches, schema, D, idle_batches=val if drop_test else None,
                   drop_test=drop_test or "harmful", refit=refit, max_refits=max_refits)

    def __init__(self, model, batches: Sequence[tuple[Any, Any]], schema: Schema, D: int, *,
                 idle_batches: Sequence[tuple[Any, Any]] | None = None,
                 drop_test: str = "harmful",
                 refit: Callable[[frozenset[str]], Any] | None = None, max_refits: int = 2):
        super().__init__(schema, D)
        import torch

        from autodim.embeddings.field import FieldEmbedding
        from autodim.embeddings.tables import DenseTable
        from autodim.task import evaluate

        self.idle: set[str] = set()
        self.val_logloss: float | None = None
        self.refits: list[dict[str, Any]] = []
        if idle_batches is not None:
            if drop_test not in ("harmful", "idle"):
                raise ValueError(f"ModelLoss: drop_test={drop_test!r} is not 'harmful' or "
                                 f"'idle'")
            model = self._test_fields(model, idle_batches, drop_test, refit, max_refits)
        self.model, self.batches, self._evaluate = model, list(batches), evaluate
        self.base = evaluate(model, self.batches)["logloss"]
        self._tables: dict[str, Any] = {}
        self._vh: dict[str, Any] = {}
        self._cache: dict[tuple, float] = {}
        # per field: (ids the batches read, id -> row of them, E at those ids)
        self._used: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        slices = [(c.start, c.stop) for c in model.embedding.schema.column_slices()]
        for k, (f, mod) in enumerate(zip(model.embedding.schema.fields, model.embedding.fields)):
            if isinstance(mod, FieldEmbedding) and isinstance(mod.table, DenseTable):
                with torch.no_grad():
                    E = mod.align(mod.table.embedding.weight.detach().float())
                self._tables[f.name] = (k, E, mod.is_sequence)
                # The ids the batches read: every option is built for these rows only (a
                # lookup reads no other), so its cost follows the batches, not the
                # vocabulary (Criteo-size tables: 10M rows a field).
                lo, hi = slices[k]
                used = torch.unique(torch.cat([b[0][:, lo:hi].reshape(-1)
                                               for b in self.batches]).long())
                remap = torch.zeros(E.shape[0], dtype=torch.int64)
                remap[used] = torch.arange(used.numel())
                self._used[f.name] = (used, remap, E[used])

    def _test_fields(self, model, batches, drop_test: str, refit, max_refits: int):
        """The field test (fills ``idle``, ``val_logloss``) and, with ``refit``, the
        reference trained again without the flagged fields, tested again, up to
        ``max_refits`` times; returns the model the options are measured on."""
        import torch

        from autodim.searchers._tables import field_removal_test

        names = [f.name for f in model.embedding.schema.fields]
        for round_ in range(max_refits + 1):
            with torch.no_grad():
                idle, loss = field_removal_test(model.embedding, model.backbone, batches,
                                                names, harmful=drop_test == "harmful")
            if round_ == 0:
                self.val_logloss = loss
            else:
                self.refits[-1]["val_logloss"] = loss
            new = set(idle or ()) - self.idle  # None: no better than the label rate
            self.idle |= new
            if (not new or refit is None or round_ == max_refits
                    or len(self.idle) == len(names)):
                break
            model = refit(frozenset(self.idle))
            self.refits.append({"without": sorted(self.idle)})
        return model

    def _loss_with(self, name: str, table) -> float:
        from torch import nn

        from autodim.embeddings.field import mean_pool

        k, _, is_seq = self._tables[name]
        _, remap, _ = self._used[name]

        class _Fixed(nn.Module):  # ``table``: the replacement rows of the used ids
            def forward(self, ids):
                return mean_pool(nn.functional.embedding(remap[ids], table), ids, is_seq)

        fields = self.model.embedding.fields
        original = fields[k]
        fields[k] = _Fixed()
        try:
            return max(0.0, self._evaluate(self.model, self.batches)["logloss"] - self.base)
        finally:
            fields[k] = original

    def _cached(self, key: tuple, make) -> float:
        if key not in self._cache:
            self._cache[key] = self._loss_with(key[0], make())
        return self._cache[key]

    def narrow(self, fp: FieldPlan, dim: int) -> float:
        if fp.name not in self._tables:
            return super().narrow(fp, dim)
        import torch

        _, E, _ = self._tables[fp.name]
        if dim >= min(E.shape):
            return 0.0
        if fp.name not in self._vh:
            # The right singular vectors of E (eigenvectors of E^T E, D x D): the rank-d
            # approximation U_d S_d Vh_d of a row is the row times Vh_d^T Vh_d.
            Vh = torch.linalg.svd(E, full_matrices=False)[2] if E.shape[0] <= 200_000 else (
                torch.linalg.eigh(E.double().T @ E.double())[1].flip(1).T.float())
            self._vh[fp.name] = Vh
        Vh, rows = self._vh[fp.name], self._used[fp.name][2]
        return self._cached((fp.name, "dim", dim), lambda: (rows @ Vh[:dim].T) @ Vh[:dim])

    def quant(self, fp: FieldPlan, bits: int, scale: str) -> float:
        if fp.name not in self._tables:
            return super().quant(fp, bits, scale)
        if bits >= 32:
            return 0.0
        import torch

        from autodim.embeddings.quant import _minmax_qparams, quantize_tensor, range_search

        _, E, _ = self._tables[fp.name]
        rows = self._used[fp.name][2]

        def make():
            if bits == 16:
                return rows.half().float()
            if scale == "row":
                lo, hi = range_search(rows, bits)
            else:  # one range for the whole table, searched on at most 250k of its rows
                sample = E
                if E.shape[0] > 250_000:
                    gen = torch.Generator().manual_seed(0)
                    sample = E[torch.randperm(E.shape[0], generator=gen)[:250_000]]
                lo, hi = range_search(sample.reshape(1, -1), bits)
            s, o = _minmax_qparams(lo, hi, (1 << bits) - 1)
            if scale != "row":
                s, o = s.expand(rows.shape[0]), o.expand(rows.shape[0])
            q = quantize_tensor(rows, bits, s[:, None], o[:, None]).float()
            return q * s[:, None] + o[:, None]

        with torch.no_grad():
            return self._cached((fp.name, "bits", bits, scale), make)

    def hash(self, fp: FieldPlan, buckets: int | None) -> float:
        if not buckets:
            return 0.0
        if fp.name not in self._tables:
            return super().hash(fp, buckets)
        import torch

        _, E, _ = self._tables[fp.name]
        used, _, rows = self._used[fp.name]

        def make():
            head = _bucket_heads(self.schema[fp.name], buckets)
            U = E[torch.from_numpy(head[used.numpy() % buckets])]
            s = (rows * U).sum(1) / (U * U).sum(1).clamp_min(1e-12)
            return s[:, None] * U

        with torch.no_grad():
            return self._cached((fp.name, "hash", buckets), make)


def estimate_batches(datamodule, on: str = "train") -> list:
    """The batches :class:`ModelLoss` measures on: ``on="val"`` the validation split;
    ``"train"`` the first batches of the (shuffled) training loader, as many rows as the
    validation split holds."""
    if on == "val":
        return list(datamodule.val_dataloader())
    if on != "train":
        raise ValueError(f"estimate_batches: on={on!r} is not 'train' or 'val'")
    need, out = len(datamodule.data.val), []
    for b in datamodule.train_dataloader():
        out.append(b)
        need -= len(b[1])
        if need <= 0:
            break
    return out


def compress_plan(plan: DimensionPlan, schema: Schema, budget_bytes: int | None, *,
                  bits: Sequence[int] = (32, 16, 8, 4), dims: Sequence[int] | None = None,
                  ratios: Sequence[float] = (), scale: str | Sequence[str] = "row",
                  train: str = "qat",
                  scalars: str = "float16", min_rows: int = 500, estimator=None,
                  drop_idle: bool = True, resolution: int = 20000
                  ) -> tuple[DimensionPlan, dict[str, Any]]:
    """Choose per field one (dim, bits, hashing) option, minimising the summed estimated
    loss under ``budget_bytes`` (multiple-choice knapsack, exact bytes).

    Args:
        plan: The searcher's plan; its dims are each field's upper bound (a study lets the
            searcher spend ``inflate x budget``, and the compressor brings it back).
        schema: The data's schema (frequencies for the hashing estimate).
        budget_bytes: The budget (``None``: the plan is returned unchanged).
        bits: Allowed precisions (a subset of 32, 16, 8, 4, 2, 1).
        dims: Candidate dims (default: ``0`` excluded, powers of two up to ``D``, and each
            field's own dim). Only dims ``<=`` the field's are used.
        ratios: MEmCom bucket ratios to consider (``m = ceil(ratio * rows)``); empty: no
            hashing.
        scale, train, scalars: Precision settings of quantized options (see
            :mod:`autodim.embeddings.quant`); ``scale`` may list both granularities.
        min_rows: Fields with fewer rows are never hashed.
        estimator: A :class:`ModelLoss` or :class:`ProxyLoss` (default: proxy).
        drop_idle: Drop (dim 0) the fields the estimator's field test flagged
            (``estimator.idle``; :class:`ModelLoss` with ``idle_batches``).

    Returns:
        ``(plan, info)``; ``info["fields"]`` gives each field's choice and estimated loss,
        ``info["memcom"]`` the hashed fields (field -> buckets), ``info["lowered"]`` the
        narrowed ones (field -> [old, new]), ``info["dropped"]`` the flagged fields dropped.

    Raises:
        BudgetError: not even the cheapest options fit.

    Example:
        >>> from autodim.data.synthetic import make_planted
        >>> data = make_planted("tiny", rows=2000)
        >>> big = DimensionPlan.full(data.schema, 8)
        >>> small, info = compress_plan(big, data.schema, big.num_bytes() // 6, bits=(32, 8, 4))
        >>> small.num_bytes() <= big.num_bytes() // 6, info["fields"]["f00"]["bits"] < 32
        (True, True)
    """
    before = plan.num_bytes()
    info: dict[str, Any] = {"fields": {}, "memcom": {}, "lowered": {}, "dropped": [],
                            "bytes_before": before,
                            "bytes_after": before, "estimator": None}
    if budget_bytes is None:
        return plan, info
    bad = [b for b in bits if b not in ALLOWED_BITS]
    if bad or not bits:
        raise PlanError(f"compressor bits {list(bits)}: each must be one of {ALLOWED_BITS}")
    scales = [scale] if isinstance(scale, str) else list(scale)
    est = estimator or ProxyLoss(schema, plan.D)
    proxy = ProxyLoss(schema, plan.D)
    info["estimator"] = est.name
    D = plan.D
    base_dims = set(dims) if dims is not None else {1 << k for k in range(D.bit_length())
                                                      if 1 << k <= D}
    options: list[list[FieldPlan]] = []
    values: list[list[float]] = []
    costs: list[list[int]] = []
    idle = set(getattr(est, "idle", ())) if drop_idle else set()
    for fp in plan.fields:
        opts, vals = [], []
        seen = set()
        if fp.dim == 0 and fp.frequency_groups is None:
            opts, vals = [fp], [0.0]
        elif fp.name in idle and (drop := field_option(fp, 0, 32, None)).dim == 0:
            opts, vals = [drop], [0.0]  # frequency groups / masked fields stay as they are
        else:
            cand = sorted({d for d in base_dims if d <= fp.dim} | {fp.dim})
            n = fp.vocab_size
            bucket_opts: list[int | None] = [None]
            if n >= min_rows and fp.frequency_groups is None:
                bucket_opts += sorted({max(1, math.ceil(r * n)) for r in ratios
                                       if math.ceil(r * n) < n})
            for d in cand:
                for b, sc, m in ((b, sc, m) for b in bits for sc in scales
                                 for m in bucket_opts):
                    if d == 0 and (b != bits[0] or m is not None):
                        continue
                    opt = field_option(fp, d, b, m, scale=sc, train=train,
                                       scalars=scalars)
                    try:
                        opt.validate(D)
                    except PlanError:
                        continue
                    key = repr(opt.to_dict())
                    if key in seen:
                        continue
                    seen.add(key)
                    loss = (est.narrow(fp, d) + est.quant(fp, b, sc)
                            + est.hash(fp, m))
                    # Ties (measured losses clamp at 0) go to the option that keeps more
                    # of the field by the proxy, not to the cheapest.
                    tie = 1e-6 * (proxy.narrow(fp, d) + proxy.quant(fp, b, sc)
                                  + proxy.hash(fp, m))
                    opts.append(opt)
                    vals.append(-(loss + tie))
        options.append(opts)
        values.append(vals)
        costs.append([o.num_bytes(D) for o in opts])
    chosen = solve_mckp(values, costs, budget_bytes, resolution=resolution,
                        names=[fp.name for fp in plan.fields])
    fields = [options[g][k] for g, k in enumerate(chosen)]
    out = replace(plan, fields=fields)
    out.validate()
    for fp, new, g in zip(plan.fields, fields, range(len(fields))):
        info["fields"][fp.name] = {"dim": new.dim, "bits": new.bits,
                                   "buckets": (new.hashing or {}).get("buckets"),
                                   "loss": -values[g][chosen[g]], "bytes": costs[g][chosen[g]]}
        if new.hashing and new.hashing.get("method") == "memcom" and fp.hashing != new.hashing:
            info["memcom"][fp.name] = new.hashing["buckets"]
        if new.dim != fp.dim:
            info["lowered"][fp.name] = [fp.dim, new.dim]
        if fp.name in idle and new.dim == 0 and fp.dim > 0:
            info["dropped"].append(fp.name)
    info["bytes_after"] = out.num_bytes()
    if out.num_bytes() > budget_bytes:  # pragma: no cover - solve_mckp guarantees the fit
        raise BudgetError(f"compressed plan {format_bytes(out.num_bytes())} exceeds the budget")
    return out, info


# -- starting the compact model from the full one -------------------------------------------
def warm_start_embedding(plan: DimensionPlan, teacher, schema: Schema, *,
                         sparse_threshold: int = 1_000_000):
    """The plan's embedding, initialised from a trained full-``D`` model's tables.

    Each option's initial table is the one :class:`ModelLoss` scored it with: a narrowed
    field with a projection starts from the truncated SVD (table ``U_d S_d``, projection
    ``V_d``), a pad/select field from its kept columns, a MEmCom field from the heaviest id of
    each bucket with least-squares scalars; quantized tables then start their ranges from
    these weights. Fields the teacher does not hold as plain tables, or whose plan has
    frequency groups or masks, keep their fresh initialisation.
    """
    import torch

    from autodim.embeddings.field import FieldEmbedding, Project
    from autodim.embeddings.tables import DenseTable, MEmComTable

    emb = plan.build(sparse_threshold=sparse_threshold)
    tables = {}
    for f, mod in zip(teacher.embedding.schema.fields, teacher.embedding.fields):
        if isinstance(mod, FieldEmbedding) and isinstance(mod.table, DenseTable):
            with torch.no_grad():
                tables[f.name] = mod.align(mod.table.embedding.weight.detach().float())
    with torch.no_grad():
        for fp, mod in zip(plan.fields, emb.fields):
            E = tables.get(fp.name)
            if (E is None or not isinstance(mod, FieldEmbedding) or fp.dim == 0
                    or E.shape[0] != fp.vocab_size):
                continue
            d = fp.dim
            if isinstance(mod.align, Project):
                U, S, Vh = torch.linalg.svd(E, full_matrices=False)
                # A field with fewer rows than d has only ``rows`` singular directions: the
                # rest of the table and projection keep their fresh initialisation (zeros
                # there would be a saddle that neither could leave).
                k = min(d, S.numel())
                low = U[:, :k] * S[:k]
                proj = mod.align.linear.weight.detach().T.clone()  # [d, D]
                proj[:k] = Vh[:k]
                if k < d:
                    low = torch.cat([low, 0.01 * torch.randn(low.shape[0], d - k)], 1)
                mod.align.linear.weight.copy_(proj.T)
            elif d == plan.D:
                low = E
            else:
                cols = fp.columns if fp.align == "select" else list(range(d))
                low = E[:, cols]
            table = mod.table
            if isinstance(table, DenseTable):
                table.embedding.weight.copy_(low)
            elif isinstance(table, MEmComTable):
                m = table.buckets
                head = torch.from_numpy(_bucket_heads(schema[fp.name], m))
                U = low[head]
                bucket = torch.arange(fp.vocab_size) % m
                rows = U[bucket]
                s = (low * rows).sum(1) / (rows * rows).sum(1).clamp_min(1e-12)
                table.shared.weight.copy_(U)
                table.scale.weight.copy_(s[:, None])
    return emb


def _bucket_heads(field: Field, buckets: int) -> np.ndarray:
    """The heaviest id of each ``i mod m`` bucket (id ``b`` when there are no frequencies:
    ids are in descending frequency)."""
    n = field.vocab_size
    bucket = np.arange(n) % buckets
    if field.freqs is None or field.freqs.sum() <= 0:
        return np.arange(buckets)
    order = np.lexsort((-np.asarray(field.freqs, dtype=np.float64), bucket))
    first = np.ones(n, dtype=bool)
    first[1:] = bucket[order][1:] != bucket[order][:-1]
    head = np.empty(buckets, dtype=np.int64)
    head[bucket[order][first]] = order[first]
    return head
