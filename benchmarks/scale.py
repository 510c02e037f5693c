"""Scale: planted data with Criteo Kaggle's 26 cardinalities (33.7M ids) on this machine.

Measures, in one run:
- generation time and peak RSS for ``--rows`` rows (default 10M);
- the machine's gather bound: row gathers per second from a 33.7M x 16 float table,
  expressed as samples/s (26 gathers per sample), for the training batches' own ids and for
  uniformly random ids;
- training samples/s of the full D=16 model with sparse gradients + row-wise Adam, for
  CTRTask (Lightning) vs a hand-written PyTorch loop with the same optimisers, side by side
  (steady state: the first steps are not timed; hand, Lightning, hand again, so drift
  cancels; the loops are ``throughput.py``'s), at the default sparse threshold and
  at ``--sparse-threshold`` (default 100k), which the pipelines below use;
- the ``memcom`` and ``sseds`` pipelines end to end (plan -> train -> test AUC), with the
  search's wall time relative to one training epoch of the full model.

    python benchmarks/scale.py                 # full: 10M rows (about 12 minutes, 9 GiB)
    python benchmarks/scale.py --quick         # 1/1000 of the vocabularies, 50k rows
"""

from __future__ import annotations

import gc
import resource
import time

from _common import dims_text, parser, quiet, results_stem, write_table
from throughput import lightning_loop, run_loop


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**30


def gather_bound(schema, dim: int, batches, reps: int) -> dict[str, float]:
    """Samples/s if training did nothing but gather its rows (forward only), from one
    ``total_rows x dim`` table: with the training batches' ids (offset per field) and with
    uniformly random rows."""
    import torch

    total = schema.total_rows
    table = torch.empty(total, dim).normal_()
    offsets = torch.tensor([0] + [f.vocab_size for f in schema.fields[:-1]]).cumsum(0)
    real = [(x + offsets).reshape(-1) for x, _ in batches[:reps]]
    g = torch.Generator().manual_seed(0)
    rand = [torch.randint(0, total, (len(i),), generator=g) for i in real]
    out = {}
    for name, idx in (("training ids", real), ("uniform random ids", rand)):
        table.index_select(0, idx[0])  # warm up
        t0 = time.perf_counter()
        for i in idx:
            table.index_select(0, i)
        secs = time.perf_counter() - t0
        out[name] = sum(len(i) for i in idx) / schema.num_fields / secs
    del table
    return out


def throughput(data, D: int, batch_size: int, threshold: int, warm: int, steps: int
               ) -> dict[str, float]:
    """Samples/s of the hand loop and of CTRTask on one full model (hand, Lightning, hand)."""
    from autodim.data.datamodule import CTRDataModule, TensorBatches
    from autodim.models import create_backbone
    from autodim.plan import DimensionPlan
    from autodim.task import CTRTask, make_optimizers, seed_everything

    seed_everything(0)
    schema = data.schema
    task = CTRTask(DimensionPlan.full(schema, D).build(sparse_threshold=threshold, fused=True),
                   create_backbone("fm", schema.num_fields, D))
    secs = {"hand": [], "lightning": []}
    for kind in ("hand", "lightning", "hand"):
        if kind == "hand":
            batches = TensorBatches(data.train, batch_size, shuffle=True, seed=0)
            secs[kind].append(run_loop(task, make_optimizers(task, 1e-3), batches, steps, warm))
        else:
            dm = CTRDataModule(data, batch_size=batch_size, seed=0)
            secs[kind].append(lightning_loop(task, dm, steps, warm))
        gc.collect()
    del task
    gc.collect()
    return {k: steps * batch_size * len(v) / sum(v) for k, v in secs.items()}


def main() -> None:
    ap = parser(__doc__, threads="torch threads (0: torch's default; 1 keeps a shared 2-core "
                                  "machine from oversubscribing)")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=120, help="timed steps per throughput run")
    ap.add_argument("--warm", type=int, default=10, help="untimed steps before them")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--sparse-threshold", type=int, default=100_000,
                    help="tables above this many rows get sparse gradients + row-wise Adam in "
                         "the pipelines (TrainConfig's default is 30k; divided by 1000 in "
                         "quick mode)")
    ap.add_argument("--skip-sseds", action="store_true")
    ap.add_argument("--sseds-pretrained", action="store_true",
                    help="let sseds score the full model trained above instead of training "
                         "its own (its search time is then that training + its pass)")
    args = ap.parse_args()

    import torch

    quiet(args.threads)

    from autodim.api import retrain
    from autodim.baselines import memcom_plan
    from autodim.budget import full_bytes
    from autodim.data.datamodule import CTRDataModule, TensorBatches
    from autodim.data.synthetic import CRITEO_KAGGLE_CARDINALITIES, make_planted
    from autodim.plan import DimensionPlan
    from autodim.task import TrainConfig

    t_all = time.perf_counter()
    div = 1000 if args.quick else 1
    rows_n = 50_000 if args.quick else args.rows
    steps = 10 if args.quick else args.steps
    warm = 2 if args.quick else args.warm
    cards = [max(2, c // div) for c in CRITEO_KAGGLE_CARDINALITIES]
    out: list[dict] = []

    def record(what: str, value, unit: str = "", note: str = "") -> None:
        out.append({"measure": what, "value": value, "unit": unit, "note": note})
        print(out[-1], flush=True)

    t0 = time.perf_counter()
    data = make_planted("criteo_kaggle", rows=rows_n, seed=0, cardinalities=cards)
    record("generate", round(time.perf_counter() - t0, 1), "s",
           f"{rows_n:,} rows, {sum(cards):,} ids, train/val/test "
           f"{len(data.train):,}/{len(data.val):,}/{len(data.test):,}")
    record("peak RSS after generation", round(peak_rss_gb(), 2), "GiB")
    schema = data.schema
    D = 16
    batches = list(zip(range(5 if args.quick else 50),
                       TensorBatches(data.train, args.batch_size, shuffle=True, seed=0)))
    bound = gather_bound(schema, D, [b for _, b in batches], reps=len(batches))
    del batches
    for name, sps in bound.items():
        record(f"gather bound ({name})", round(sps), "samples/s",
               f"index_select of 26 rows/sample from one {schema.total_rows:,} x {D} table")

    # Throughput: hand loop vs CTRTask, full D=16, sparse gradients above a threshold.
    default_thr = TrainConfig().sparse_threshold // div
    thr = args.sparse_threshold // div
    for t in dict.fromkeys((default_thr, thr)):
        sps = throughput(data, D, args.batch_size, t, warm, steps)
        dense_rows = sum(f.vocab_size for f in schema.fields if f.vocab_size <= t)
        record(f"hand loop, sparse threshold {t:,}", round(sps["hand"]), "samples/s",
               f"{dense_rows:,} rows in dense-Adam tables; {steps} steps x 2 (before and "
               f"after CTRTask), batch {args.batch_size}, after {warm} untimed steps")
        record(f"CTRTask (Lightning), sparse threshold {t:,}", round(sps["lightning"]),
               "samples/s", f"ratio {sps['lightning'] / sps['hand']:.3f} of hand loop "
               f"(aim >= 0.8), {sps['lightning'] / bound['training ids']:.3f} of gather bound")
    record("peak RSS after throughput", round(peak_rss_gb(), 2), "GiB")

    cfg = TrainConfig(max_epochs=args.epochs, batch_size=args.batch_size, lr=1e-3,
                      restore_best=False, sparse_threshold=thr, patience=1)
    dm = CTRDataModule(data, batch_size=args.batch_size)
    full = DimensionPlan.full(schema, D)
    t0 = time.perf_counter()
    res = retrain(full, dm, cfg)
    full_s = time.perf_counter() - t0
    epoch_s = res.metrics["train_seconds"] / max(1, res.metrics["epochs"])
    record("full D=16: test AUC", round(res.metrics["test_auc"], 4), "",
           f"{full.num_bytes() / 1e9:.2f} GB embeddings, "
           f"{res.metrics['samples_per_s']:.0f} samples/s (validation pass included)")
    record("one training epoch (full)", round(epoch_s, 1), "s",
           f"{len(data.train):,} rows + validation; train_plan in all {full_s:.0f} s with "
           "the final validation and test passes")
    record("bayes AUC", round(data.meta["bayes_auc"], 4))
    record("peak RSS after full training", round(peak_rss_gb(), 2), "GiB",
           f"now {rss_gb():.2f} GiB while its TrainResult is alive")
    reference = res if args.sseds_pretrained else None
    del res
    gc.collect()

    budget = full_bytes(schema, D) // 10
    t0 = time.perf_counter()
    plan = memcom_plan(schema, D, budget)
    plan_s = time.perf_counter() - t0
    res = retrain(plan, dm, cfg)
    record("memcom 10x: test AUC", round(res.metrics["test_auc"], 4), "",
           f"{plan.num_bytes() / 1e6:.1f} MB, plan in {plan_s:.2f}s, "
           f"{res.metrics['samples_per_s']:.0f} samples/s")
    del res
    gc.collect()

    if not args.skip_sseds:
        from autodim.searchers import SearchTask, create_searcher

        task = SearchTask(data=dm, D=D, budget_bytes=budget, candidate_dims=(1, 2, 4, 8, 16),
                          train=cfg, seed=0)
        t0 = time.perf_counter()
        if reference is None:
            result = create_searcher("sseds").search(task)
            search_s = time.perf_counter() - t0
            how = "its own full training + saliency pass"
        else:
            result = create_searcher("sseds").search(task, pretrained=reference)
            own_s = time.perf_counter() - t0
            search_s = full_s + own_s
            how = f"the full training above ({full_s:.0f} s) + saliency pass ({own_s:.0f} s)"
            del reference
        gc.collect()
        record("peak RSS after sseds search", round(peak_rss_gb(), 2), "GiB")
        res = retrain(result.plan, dm, cfg)
        record("sseds 10x: test AUC", round(res.metrics["test_auc"], 4), "",
               f"{result.plan.num_bytes() / 1e6:.1f} MB, dims "
               f"{dims_text(result.plan)}, "
               f"{res.metrics['samples_per_s']:.0f} samples/s")
        record("sseds search time", round(search_s, 1), "s",
               f"{search_s / epoch_s:.2f} training epochs ({how})")
        del res
    record("peak RSS (end)", round(peak_rss_gb(), 2), "GiB")
    record("benchmark wall time", round(time.perf_counter() - t_all), "s",
           f"{torch.get_num_threads()} torch thread(s)")
    print(write_table(out, results_stem("scale", args.quick),
                      title=f"Scale: Criteo-size planted data, {rows_n:,} rows"))


if __name__ == "__main__":
    main()
