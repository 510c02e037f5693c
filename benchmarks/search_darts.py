"""Benchmark of the soft-selection searchers ``darts`` and ``autodim``.

On planted synthetic data (``make_planted("planted")``, D=16; the planted ranks say which
fields deserve dims) and optionally MovieLens-100K (``--ml100k DIR``), at budgets 4x and 10x
fewer bytes than the full D=16 table, it reports per searcher and budget:

- ``spearman``: rank correlation of the searched dims with the planted ranks (planted only);
- ``test_auc``: test AUC of the retrained plan, next to ``uniform`` and ``mde`` plans of the
  same budget retrained with the same settings;
- ``bytes/budget``: how much of the budget the plan uses;
- ``search/full_train``: search wall time over the wall time of one full-model (D=16)
  training run, both measured in this run;
- ``supernet/plain step`` and ``bilevel/plain step``: a supernet weight step, and a whole
  bilevel step (α step on a validation batch + weight step), over a plain full-model step,
  timed side by side on the same batches.

Prints a Markdown table and writes ``benchmarks/results/search_darts.csv`` (+ ``.md``).

Usage::

    python benchmarks/search_darts.py --quick      # < 1 minute
    python benchmarks/search_darts.py              # full mode
    python benchmarks/search_darts.py --ml100k ~/data/ml-100k
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

from autodim.budget import full_bytes  # noqa: E402
from autodim.data.datamodule import CTRDataModule, TensorBatches  # noqa: E402
from autodim.data.synthetic import make_planted  # noqa: E402
from autodim.metrics import spearman  # noqa: E402
from autodim.plan import DimensionPlan  # noqa: E402
from autodim.searchers import SearchResult, SearchTask, create_searcher, retrain  # noqa: E402
from autodim.searchers._supernet import BilevelSearch, BilevelSettings, SupernetEmbedding  # noqa: E402
from autodim.task import TrainConfig, seed_everything, train_plan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["dataset", "budget", "method", "bytes", "bytes/budget", "spearman", "test_auc",
           "search_s", "search/full_train", "supernet/plain step", "bilevel/plain step", "dims"]


def _fresh(data, batch_size: int, seed: int = 0) -> CTRDataModule:
    # A fresh datamodule per run: its cached loaders carry their shuffling epoch across runs.
    return CTRDataModule(data, batch_size=batch_size, seed=seed)


def step_times(data, D: int, candidate_dims: tuple[int, ...], batch_size: int, lr: float,
               steps: int, searcher_settings: dict[str, Any]) -> dict[str, float]:
    """Seconds per step: plain full-model step, supernet weight step, whole bilevel step.

    The three loops run interleaved in rounds over the same batches, so machine load
    affects them alike.
    """
    from autodim.models import create_backbone
    from autodim.task import CTRTask, make_optimizers

    schema = data.schema
    seed_everything(0)
    plain = CTRTask(DimensionPlan.full(schema, D).build(),
                    create_backbone("fm", schema.num_fields, D))
    plain_opts = make_optimizers(plain, lr)
    emb = SupernetEmbedding(schema, D, candidate_dims,
                            weight_sharing=searcher_settings.get("weight_sharing", False))
    settings = BilevelSettings(lr=lr, gumbel=searcher_settings.get("gumbel", False),
                               budget_bytes=int(full_bytes(schema, D) / 10))
    sup = BilevelSearch(emb, create_backbone("fm", schema.num_fields, D),
                        TensorBatches(data.val, batch_size, shuffle=True, seed=1), settings)
    opts = sup.configure_optimizers()
    w_opts, a_opt = opts[:-1], opts[-1]
    batches = list(TensorBatches(data.train, batch_size, shuffle=True, seed=0))[:steps]
    val = list(TensorBatches(data.val, batch_size, shuffle=True, seed=1))
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits

    def plain_step(x, y):
        for o in plain_opts:
            o.zero_grad()
        loss_fn(plain(x), y).backward()
        for o in plain_opts:
            o.step()

    def weight_step(x, y):
        sup.weight_step((x, y), w_opts)

    def bilevel_step(i, x, y):
        sup.arch_step((x, y), val[i % len(val)], a_opt)
        weight_step(x, y)

    totals = {"plain": 0.0, "supernet": 0.0, "bilevel": 0.0}
    for rnd in range(2):  # round 0 warms up (allocator, caches) and is not counted
        for i, (x, y) in enumerate(batches):
            t0 = time.perf_counter()
            plain_step(x, y)
            t1 = time.perf_counter()
            weight_step(x, y)
            t2 = time.perf_counter()
            bilevel_step(i, x, y)
            t3 = time.perf_counter()
            if rnd:
                totals["plain"] += t1 - t0
                totals["supernet"] += t2 - t1
                totals["bilevel"] += t3 - t2
    return {k: v / len(batches) for k, v in totals.items()}


def run_dataset(name: str, data, args, rows: list[dict[str, Any]]) -> None:
    from autodim.baselines import mde_plan, uniform_plan

    D, cands = 16, (1, 2, 4, 8, 16)
    schema = data.schema
    ranks = data.meta.get("planted_ranks")
    config = TrainConfig(max_epochs=2 if args.quick else 10, batch_size=args.batch_size,
                         lr=args.lr, patience=2, seed=args.seed)
    print(f"\n## {name}: {schema.num_fields} fields, {schema.total_rows} rows, "
          f"{len(data.train)} train samples", flush=True)

    t0 = time.perf_counter()
    full = train_plan(DimensionPlan.full(schema, D), _fresh(data, args.batch_size), config=config)
    full_seconds = time.perf_counter() - t0
    print(f"full D={D}: test AUC {full.metrics['test_auc']:.4f}, {full_seconds:.1f}s "
          f"({full.metrics['epochs']} epochs)", flush=True)
    rows.append({"dataset": name, "budget": "1x", "method": "full",
                 "bytes": full.metrics["num_bytes"], "bytes/budget": 1.0,
                 "test_auc": full.metrics["test_auc"],
                 "spearman": _spearman(DimensionPlan.full(schema, D).dims, ranks, schema)})

    times = {}
    for method in args.methods:
        settings = _settings(method, args)
        times[method] = step_times(data, D, cands, args.batch_size, args.lr,
                                   10 if args.quick else 40,
                                   {"weight_sharing": method == "autodim",
                                    "gumbel": method == "autodim", **settings})
        print(f"{method} step times (ms): " + ", ".join(
            f"{k} {v * 1e3:.2f}" for k, v in times[method].items()), flush=True)

    for ratio in args.budgets:
        budget = int(full_bytes(schema, D) / ratio)
        for method in args.methods:
            dm = _fresh(data, args.batch_size, args.seed)
            task = SearchTask(data=dm, D=D, budget_bytes=budget, candidate_dims=cands,
                              train=config, seed=args.seed)
            result = create_searcher(method, **_settings(method, args)).search(task)
            metrics = retrain(SearchTask(data=_fresh(data, args.batch_size, args.seed), D=D,
                                         budget_bytes=budget, candidate_dims=cands,
                                         train=config, seed=args.seed), result).metrics
            st = times[method]
            rows.append(_row(name, ratio, method, result.plan, budget, metrics, ranks, schema,
                             search_s=result.history["search_seconds"],
                             full_s=full_seconds,
                             sup=st["supernet"] / st["plain"], bil=st["bilevel"] / st["plain"]))
            print(_fmt(rows[-1]), flush=True)
        for method, make in (("uniform", uniform_plan), ("mde", mde_plan)):
            plan = make(schema, D, budget)
            metrics = retrain(SearchTask(data=_fresh(data, args.batch_size, args.seed), D=D,
                                         budget_bytes=budget, train=config, seed=args.seed),
                              SearchResult(plan=plan)).metrics
            rows.append(_row(name, ratio, method, plan, budget, metrics, ranks, schema))
            print(_fmt(rows[-1]), flush=True)


def _settings(method: str, args) -> dict[str, Any]:
    if args.quick:
        return {"epochs": 1}
    return {"epochs": args.search_epochs, "warmup_epochs": args.warmup_epochs}


def _spearman(dims: dict[str, int], ranks: dict[str, int] | None, schema) -> float | None:
    if not ranks:
        return None
    return spearman([dims[n] for n in schema.names], [ranks[n] for n in schema.names])


def _row(dataset, ratio, method, plan, budget, metrics, ranks, schema, *, search_s=None,
         full_s=None, sup=None, bil=None) -> dict[str, Any]:
    return {"dataset": dataset, "budget": f"{ratio:g}x", "method": method,
            "bytes": plan.num_bytes(), "bytes/budget": plan.num_bytes() / budget,
            "spearman": _spearman(plan.dims, ranks, schema), "test_auc": metrics["test_auc"],
            "search_s": search_s,
            "search/full_train": None if search_s is None else search_s / full_s,
            "supernet/plain step": sup, "bilevel/plain step": bil,
            "dims": " ".join(str(plan.dims[n]) for n in schema.names)}


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _fmt(row: dict[str, Any]) -> str:
    return "| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |"


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    return head + "\n".join(_fmt(r) for r in rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny run (< 1 minute)")
    p.add_argument("--ml100k", metavar="DIR", help="also run on MovieLens-100K in DIR")
    p.add_argument("--methods", nargs="+", default=["darts", "autodim"])
    p.add_argument("--budgets", nargs="+", type=float, default=[4.0, 10.0],
                   help="compression ratios vs the full D=16 table")
    p.add_argument("--search-epochs", type=int, default=3)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "search_darts.csv"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    planted = make_planted("planted", rows=30_000 if args.quick else None, seed=args.seed)
    run_dataset("planted", planted, args, rows)
    if args.ml100k:
        from autodim.data import load_data

        run_dataset("ml-100k", load_data(args.ml100k), args, rows)

    table = markdown(rows)
    print("\n" + table)
    print(f"total {time.perf_counter() - t0:.1f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows([{c: r.get(c) for c in COLUMNS} for r in rows])
    out.with_suffix(".md").write_text(
        f"# search_darts ({'quick' if args.quick else 'full'} mode, "
        f"{torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs)\n\n" + table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
