"""Benchmark of the pruning searchers ``pep`` and ``sseds`` and the ``magprune`` baseline.

On planted synthetic data (``make_planted("planted")``, D=16) and optionally MovieLens-100K
(``--ml100k DIR``), at budgets 4x, 10x and 20x fewer bytes than the full D=16 table, it
reports per method and budget:

- ``test_auc``: test AUC of the plan retrained with the same settings for every method
  (``pep``: lottery-ticket retrain, its warm start; ``sseds``, ``uniform``, ``mde``: from
  scratch), except ``magprune``, whose pruned model is evaluated as is (no retrain);
- ``bytes/budget``: how much of the budget the plan uses (every plan must be <= 1);
- ``search_s`` and ``search/full_train``: search wall time over the wall time of one
  full-model (D=16) training run measured in this run. ``sseds`` and ``magprune`` score /
  prune the reference full model (the model their own training would produce: same seed
  and settings), so their time is that training plus their own pass; ``pep`` runs one
  search for all budgets (a snapshot per target), so its time is the same on every row;
- ``spearman``: rank correlation between the per-field allocation (stored floats per row:
  kept columns, or non-zeros / rows for sparse fields) and the planted ranks (planted only).

Prints a Markdown table and writes ``benchmarks/results/search_pruning.csv`` (+ ``.md``;
``search_pruning_quick.*`` with ``--quick``).

Usage::

    python benchmarks/search_pruning.py --quick      # < 1 minute
    python benchmarks/search_pruning.py              # full mode (a few minutes)
    python benchmarks/search_pruning.py --ml100k ~/data/ml-100k
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from typing import Any

import torch
from _common import dims_text, load_datasets, parser, quiet, results_stem, write_table

from autodim.api import retrain
from autodim.budget import full_bytes, parse_budget
from autodim.data.datamodule import CTRDataModule
from autodim.errors import BudgetError
from autodim.metrics import spearman
from autodim.plan import DimensionPlan
from autodim.searchers import SearchTask, create_searcher
from autodim.task import TrainConfig

D = 16
BUDGETS = ("4x", "10x", "20x")


def _fresh(data, batch_size: int, seed: int) -> CTRDataModule:
    # A fresh datamodule per run: its cached loaders carry their shuffling epoch across runs.
    return CTRDataModule(data, batch_size=batch_size, seed=seed)


def allocation(plan: DimensionPlan) -> dict[str, float]:
    """Stored floats per row of each field: kept columns, or non-zeros / rows if sparse."""
    out = {}
    for f in plan.fields:
        if f.sparse is not None:
            out[f.name] = f.sparse["nnz"] / f.vocab_size
        elif f.frequency_groups:
            out[f.name] = sum(g["rows"] * g["dim"] for g in f.frequency_groups) / f.vocab_size
        else:
            out[f.name] = float(f.dim)
    return out


def _spearman(plan: DimensionPlan, ranks: dict[str, int] | None) -> float:
    if not ranks:
        return math.nan
    alloc = allocation(plan)
    return spearman([alloc[n] for n in ranks], [ranks[n] for n in ranks])


def run_dataset(name: str, data, *, seed: int, budgets: tuple[str, ...], train: TrainConfig
                ) -> list[dict[str, Any]]:
    torch.manual_seed(seed)
    schema = data.schema
    full = full_bytes(schema, D)
    ranks = data.meta.get("planted_ranks")
    rows: list[dict[str, Any]] = []
    bs = train.batch_size

    def task_for(budget: int) -> SearchTask:
        return SearchTask(data=_fresh(data, bs, seed), D=D, budget_bytes=budget, train=train,
                          seed=seed)

    def add(budget_name: str, budget: int, method: str, plan: DimensionPlan, test_auc: float,
            search_s: float | None, retrain_s: float | None, note: str = "") -> None:
        rows.append({
            "dataset": name, "seed": seed, "budget": budget_name, "method": method,
            "bytes": plan.num_bytes(), "bytes/budget": plan.num_bytes() / budget,
            "test_auc": test_auc, "search_s": search_s,
            "search/full_train": None if search_s is None else search_s / t_full,
            "retrain_s": retrain_s, "spearman": _spearman(plan, ranks),
            "alloc": dims_text(plan, sparse=True), "note": note})

    # Reference: one full-model training run (its time is the unit of search cost).
    full_plan = DimensionPlan.full(schema, D)
    t0 = time.perf_counter()
    reference = retrain(full_plan, _fresh(data, bs, seed), replace(train, seed=seed))
    t_full = time.perf_counter() - t0
    full_epochs = max(1, int(reference.metrics["epochs"]))
    rows.append({"dataset": name, "seed": seed, "budget": "1x", "method": "full",
                 "bytes": full, "bytes/budget": 1.0, "test_auc": reference.metrics["test_auc"],
                 "search_s": None, "search/full_train": None, "retrain_s": t_full,
                 "spearman": math.nan, "alloc": f"{D} x {schema.num_fields}",
                 "note": f"{full_epochs} epochs, Bayes AUC "
                         f"{data.meta.get('bayes_auc', math.nan):.4f}"})

    # PEP: one search, a snapshot per budget; as many epochs as the full run took.
    values = [parse_budget(b, full) for b in budgets]
    pep = create_searcher("pep", targets=list(budgets[1:]), epochs=full_epochs)
    pep_result = pep.search(task_for(values[0]))
    t_pep = pep_result.history["search_seconds"]

    from autodim.baselines import mde_plan, uniform_plan

    for budget_name, budget in zip(budgets, values):
        for method, make in (("uniform", uniform_plan), ("mde", mde_plan)):
            try:
                plan = make(schema, D, budget)
            except BudgetError as exc:
                rows.append({"dataset": name, "seed": seed, "budget": budget_name,
                             "method": method, "note": f"infeasible: {exc}"})
                continue
            t0 = time.perf_counter()
            m = retrain(plan, _fresh(data, bs, seed), replace(train, seed=seed)).metrics
            add(budget_name, budget, method, plan, m["test_auc"], None,
                time.perf_counter() - t0)

        # 20x is below one column per field at D=16: SSEDS may drop whole fields there.
        # It scores the reference model: the very model its own training would produce
        # (same seed, same settings, fresh data module), so its cost is that training plus
        # the saliency pass, both measured here, without a second noisy timing of the same
        # training run.
        sseds = create_searcher("sseds", allow_drop_fields=True).search(
            task_for(budget), pretrained=reference)
        t0 = time.perf_counter()
        m = retrain(sseds.plan, _fresh(data, bs, seed), replace(train, seed=seed)).metrics
        add(budget_name, budget, "sseds", sseds.plan, m["test_auc"],
            t_full + sseds.history["search_seconds"], time.perf_counter() - t0,
            "search = full training + saliency pass")

        mag = create_searcher("magprune").search(task_for(budget), pretrained=reference)
        add(budget_name, budget, "magprune", mag.plan, mag.history["eval"]["test_auc"],
            t_full + mag.history["search_seconds"], None, "no retrain")

        snap = pep_result.history["snapshots"][str(budget)]
        plan = pep_result.plan if "plan" not in snap else DimensionPlan.from_dict(snap["plan"])
        t0 = time.perf_counter()
        m = retrain(plan, _fresh(data, bs, seed), replace(train, seed=seed),
                    warm_start=pep.warm_start_for(plan)).metrics
        note = f"{snap['form']}, " + (f"snapshot at step {snap['step']}" if snap["reached"]
                                       else "target not reached: pruned after training")
        note += f"; one search for all budgets, {pep_result.history['total_steps']} steps"
        add(budget_name, budget, "pep", plan, m["test_auc"], t_pep,
            time.perf_counter() - t0, note)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.split("\n\n")[0], quick="small data, few epochs (< 1 min)",
                ml100k="MovieLens-100K folder (RecBole atomic)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per dataset (default 1)")
    ap.add_argument("--budgets", default=",".join(BUDGETS),
                    help="comma-separated budgets, largest first (default 4x,10x,20x)")
    args = ap.parse_args(argv)
    quiet(1)
    budgets = tuple(b.strip() for b in args.budgets.split(",") if b.strip())
    train = TrainConfig(max_epochs=3 if args.quick else 10, batch_size=1024, lr=3e-3,
                        patience=2)
    names = ["planted"] + (["ml100k"] if args.ml100k else [])
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name, data in load_datasets(names, quick=args.quick, ml100k=args.ml100k):
        for seed in range(args.seeds):
            rows += run_dataset(name, data, seed=seed, budgets=budgets, train=train)
    stem = results_stem("search_pruning", args.quick)
    title = (f"Pruning searchers (pep, sseds, magprune) vs uniform / mde, D={D}"
             f"{' (quick)' if args.quick else ''}")
    print(write_table(rows, stem, title=title))
    print(_aims(rows))
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


def _aims(rows: list[dict[str, Any]]) -> str:
    """One line per aim: SSEDS <= 1.3x and PEP <= 1.5x a full training, SSEDS rho >= 0.7."""
    out = []
    for method, aim in (("sseds", 1.3), ("pep", 1.5)):
        ratios = [r["search/full_train"] for r in rows
                  if r.get("method") == method and r.get("search/full_train") is not None]
        if ratios:
            worst = max(ratios)
            out.append(f"- {method} search / full training: max {worst:.2f}x "
                       f"(aim <= {aim}x): {'met' if worst <= aim else 'NOT met'}")
    rhos = [r["spearman"] for r in rows if r.get("method") == "sseds"
            and r.get("spearman") is not None and not math.isnan(r["spearman"])]
    if rhos:
        out.append(f"- sseds spearman with planted ranks: min {min(rhos):.2f} (aim >= 0.7): "
                   f"{'met' if min(rhos) >= 0.7 else 'NOT met'}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
