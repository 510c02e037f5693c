"""OptEmbed under a byte budget: retrained test AUC vs baselines at equal bytes, what the row
masks prune, and the search's wall time as a multiple of one full training run.

On planted synthetic data (D=16) at 4x and 10x fewer bytes than the full D=16 table:

- retrained test AUC of the OptEmbed plan (fresh init, and rewound to the supernet's init)
  against ``uniform`` and ``mde`` plans retrained with the same settings, and ``magprune``
  (one-shot magnitude pruning of the trained full table; not retrained, by its design) when
  it is registered;
- per field: rows pruned by the learned thresholds and the mean training frequency of the
  pruned and of the kept rows (rare rows should go first);
- search wall time (supernet training with its validation epochs + evolution with its
  validation batches) divided by the wall time of one full-D training run in this process
  (the mean of one run before and one after the searches), and the same ratio in process
  CPU time, which a machine shared with other jobs disturbs less.

    python benchmarks/search_optembed.py [--quick] [--ml100k DIR] [--seed 0]

Full mode writes ``benchmarks/results/search_optembed.{csv,md}`` (``--quick``:
``search_optembed_quick.*``); the per-field pruning table goes to ``*_pruning.csv`` and is
appended to the ``.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

from _common import (
    RESULTS,
    dims_text,
    load_datasets,
    markdown_table,
    parser,
    quiet,
    results_stem,
    write_csv,
    write_table,
)

D = 16


def pruning_rows(dname: str, data, results: dict[str, object]) -> list[dict]:
    """Per field: rows, pruned rows and the mean train frequency of pruned vs kept rows."""
    import numpy as np

    from autodim.plan import decode_mask

    ranks = data.schema.meta.get("planted_ranks", {})
    any_result = next(iter(results.values()))
    hist = any_result.history
    rows = []
    for k, f in enumerate(data.schema.fields):
        kept = hist["kept_rows"][f.name]
        row = {"data": dname, "field": f.name, "rows": f.vocab_size,
               "planted rank": ranks.get(f.name), "threshold": hist["thresholds"][f.name],
               "pruned": f.vocab_size - kept,
               "pruned %": 100.0 * (f.vocab_size - kept) / f.vocab_size}
        # The mask comes from the supernet, the same at every budget; read it from any plan
        # that stores it for this field.
        keep = None
        for res in results.values():
            fp = res.plan.fields[k]
            if fp.row_mask:
                keep = decode_mask(fp.row_mask["bits"], (f.vocab_size,))
                break
        freqs = f.freqs
        if keep is not None and freqs is not None:
            pr, kp = freqs[~keep], freqs[keep][1:]  # row 0 (OOV) is kept by construction
            row["mean freq pruned"] = float(pr.mean()) if len(pr) else None
            row["mean freq kept"] = float(kp.mean()) if len(kp) else None
            row["train hits on pruned %"] = 100.0 * float(pr.sum()) / max(1, int(freqs.sum()))
        else:
            row["mean freq pruned"] = None
            row["mean freq kept"] = float(np.mean(freqs[1:])) if freqs is not None else None
            row["train hits on pruned %"] = 0.0
        for ratio, res in results.items():
            row[f"dim @{ratio}"] = res.plan.fields[k].dim
        rows.append(row)
    return rows


class Bench:
    """One dataset's runs: every plan retrained under each seed, one table row per plan."""

    def __init__(self, dname: str, data, *, cfg, seeds: list[int], backbone: str) -> None:
        self.dname, self.data, self.cfg = dname, data, cfg
        self.seeds, self.backbone = seeds, backbone
        self.rows: list[dict] = []

    def task(self, budget: int, seed: int):
        """A fresh datamodule per run (its loaders count epochs, which seed the shuffles)."""
        from autodim.data.datamodule import CTRDataModule
        from autodim.searchers import SearchTask

        return SearchTask(data=CTRDataModule(self.data, batch_size=self.cfg.batch_size,
                                             seed=seed),
                          D=D, budget_bytes=budget, backbone=self.backbone,
                          train=replace(self.cfg, seed=seed), seed=seed)

    def train(self, plan, budget: int, seed: int, *, test: bool = True, warm_start=None):
        from autodim.api import retrain

        return retrain(plan, self.task(budget, seed).data, replace(self.cfg, seed=seed),
                       backbone=self.backbone, warm_start=warm_start, test=test)

    def add(self, method: str, tag: str, plan, metrics: list[dict],
            search_s: float | None = None, search_cpu: float | None = None) -> None:
        import numpy as np

        aucs = [m["test_auc"] for m in metrics]
        self.rows.append({
            "data": self.dname, "budget": tag, "method": method, "bytes": plan.num_bytes(),
            "compression": plan.compression(), "test AUC": float(np.mean(aucs)),
            "± std": float(np.std(aucs)) if len(aucs) > 1 else None,
            "val AUC": float(np.mean([m["val_auc"] for m in metrics])),
            "dims": dims_text(plan, ","),
            "search s": search_s, "search / full train": None, "CPU ratio": None,
            "_cpu": search_cpu})


def run_dataset(bench: Bench, ratios: list[float], settings: dict, search_seed: int
                ) -> tuple[list[dict], list[str]]:
    """All budgets on one dataset; returns (pruning rows, notes) and fills ``bench.rows``."""
    import numpy as np

    from autodim.baselines import mde_plan, uniform_plan
    from autodim.budget import full_bytes
    from autodim.errors import BudgetError
    from autodim.plan import DimensionPlan
    from autodim.searchers import create_searcher, list_searchers

    schema, seeds = bench.data.schema, bench.seeds
    full = full_bytes(schema, D)
    full_plan = DimensionPlan.full(schema, D)
    cpu0 = time.process_time()
    full_runs = [bench.train(full_plan, full, seeds[0])]
    cpu_full = [time.process_time() - cpu0]
    full_runs += [bench.train(full_plan, full, seed) for seed in seeds[1:]]
    bench.add("full D=16", "1x", full_plan, [r.metrics for r in full_runs])
    t_full = [full_runs[0].metrics["train_seconds"]]
    notes: list[str] = []
    results = {}
    for ratio in ratios:
        budget = int(full / ratio)
        tag = f"{ratio:g}x"
        for name, make in (("uniform", uniform_plan), ("mde", mde_plan)):
            try:
                plan = make(schema, D, budget)
            except BudgetError as exc:
                notes.append(f"- {bench.dname} {tag} {name}: infeasible ({exc})")
                continue
            bench.add(name, tag, plan, [bench.train(plan, budget, s).metrics for s in seeds])
        if "magprune" in list_searchers():
            # One-shot pruning of each seed's trained full model; not retrained (its design).
            mp = [create_searcher("magprune").search(bench.task(budget, s), pretrained=run)
                  for run, s in zip(full_runs, seeds)]
            bench.add("magprune (no retrain)", tag, mp[0].plan, [m.history["eval"] for m in mp],
                      mp[0].history["search_seconds"])
        cpu0 = time.process_time()
        res = create_searcher("optembed", **settings).search(bench.task(budget, search_seed))
        cpu_search = time.process_time() - cpu0
        results[tag] = res
        h = res.history
        for method, warm in (("optembed", False), ("optembed (rewind)", True)):
            bench.add(method, tag, res.plan,
                      [bench.train(res.plan, budget, s,
                                   warm_start=res.warm_start if warm else None).metrics
                       for s in seeds], h["search_seconds"], cpu_search)
        g0, gl = h["generations"][0], h["generations"][-1]
        notes.append(
            f"- {bench.dname} {tag}: optembed search {h['search_seconds']:.1f} s = supernet "
            f"{h['supernet']['seconds']:.1f} s ({len(h['supernet']['epochs'])} epochs) + "
            f"evolution {h['evolution_seconds']:.1f} s ({h['evaluations']} sub-nets on "
            f"{h['eval_rows']:,} validation rows); best sub-net AUC gen 0 "
            f"{g0['best_auc']:.4f} -> gen {gl['gen']} {gl['best_ever_auc']:.4f}; "
            f"plan {res.plan.num_bytes():,} B of {budget:,} B")
    # The machine may be shared: the reference is the mean of one full training before and
    # one after the searches.
    cpu0 = time.process_time()
    t_full.append(bench.train(full_plan, full, seeds[0], test=False).metrics["train_seconds"])
    cpu_full.append(time.process_time() - cpu0)
    ref, ref_cpu = float(np.mean(t_full)), float(np.mean(cpu_full))
    for row in bench.rows:
        if row["search s"] is not None:
            row["search / full train"] = row["search s"] / ref
        cpu = row.pop("_cpu")
        if cpu is not None:
            row["CPU ratio"] = cpu / ref_cpu
    bayes = bench.data.meta.get("bayes_auc")
    notes.insert(0, f"- {bench.dname}: {len(bench.data.train):,} train rows, "
                    f"{schema.num_fields} fields, {schema.total_rows:,} ids; one full D=16 "
                    f"training: {' / '.join(f'{t:.1f}' for t in t_full)} s wall, "
                    f"{' / '.join(f'{t:.1f}' for t in cpu_full)} s CPU (before / after "
                    f"the searches; {full_runs[0].metrics['epochs']} epochs, validation "
                    f"included); retrain seeds {seeds}"
                    + (f"; Bayes-optimal test AUC {bayes:.4f}" if bayes else ""))
    return (pruning_rows(bench.dname, bench.data, results) if results else []), notes


def main() -> None:
    ap = parser(__doc__.split("\n\n")[0], quick="small data and settings (< 1 min)",
                ml100k="RecBole folder with ml-100k.inter/.user/.item")
    ap.add_argument("--ratios", default="4,10", help="budgets as compression ratios vs full D")
    ap.add_argument("--seed", type=int, default=0, help="seed of the searches")
    ap.add_argument("--seeds", type=int, default=None,
                    help="retrain seeds per plan (default: 2, quick: 1)")
    ap.add_argument("--backbone", default="fm")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an optembed setting (VALUE read as JSON), e.g. --set alpha=1e-3")
    args = ap.parse_args()

    quiet(1)

    from autodim.task import TrainConfig

    quick = args.quick
    cfg = TrainConfig(max_epochs=3 if quick else 10, batch_size=1024, lr=3e-3, patience=2,
                      seed=args.seed)
    # Quick: a few hundred steps only, so the thresholds need a faster optimiser to move.
    settings: dict = ({"supernet_epochs": 3, "generations": 10, "eval_batches": 2,
                       "threshold_lr": 1e-2} if quick else {})
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = json.loads(value)
    seeds = [args.seed + i for i in range(args.seeds or (1 if quick else 2))]
    ratios = [float(r) for r in args.ratios.split(",")]
    stem = results_stem("search_optembed", quick)
    rows: list[dict] = []
    prune_rows: list[dict] = []
    notes: list[str] = []
    t_bench = time.perf_counter()
    for dname, data in load_datasets(["planted", "ml100k"], quick=quick, ml100k=args.ml100k):
        bench = Bench(dname, data, cfg=cfg, seeds=seeds, backbone=args.backbone)
        p, n = run_dataset(bench, ratios, settings, args.seed)
        rows += bench.rows
        prune_rows += p
        notes += n

    md = write_table(rows, stem, title=f"Retrained test AUC at equal bytes ({args.backbone} "
                                       f"backbone, D={D})")
    md_prune = ""
    if prune_rows:
        write_csv(RESULTS / f"{stem}_pruning.csv", prune_rows)  # its Markdown: in <stem>.md
        md_prune = markdown_table(prune_rows, title="Rows pruned by the learned thresholds vs "
                                                    "their training frequency")
    notes.append(f"- optembed settings: {settings or 'defaults'}; training: {cfg.to_dict()}")
    text = (md + "\n" + md_prune + "\n### Notes\n\n" + "\n".join(notes)
            + f"\n- benchmark wall time {time.perf_counter() - t_bench:.0f} s\n")
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
