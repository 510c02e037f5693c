"""Scale: planted data with Criteo Kaggle's 26 cardinalities (33.7M ids) on this machine.

Measures, in one run:
- generation time and peak RSS for ``--rows`` rows (default 10M);
- the machine's gather bound: random row gathers per second from a 33.7M x 16 float table,
  expressed as samples/s (26 gathers per sample);
- training samples/s of the full D=16 model with sparse gradients + SparseAdam, for
  CTRTask (Lightning) vs a hand-written PyTorch loop with the same optimisers, side by side;
- the ``memcom`` and ``sseds`` pipelines end to end (plan -> train -> test AUC), with the
  search's wall time relative to one training epoch.

    python benchmarks/scale.py                 # full: 10M rows (about 10-20 minutes)
    python benchmarks/scale.py --quick         # 1/1000 of the vocabularies, 50k rows
"""

from __future__ import annotations

import argparse
import resource
import time

from _common import write_table


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def gather_bound(total_rows: int, dim: int, batch: int, fields: int, reps: int) -> float:
    """Samples/s if training did nothing but gather its rows (forward only)."""
    import torch

    table = torch.empty(total_rows, dim).normal_()
    g = torch.Generator().manual_seed(0)
    idx = [torch.randint(0, total_rows, (batch * fields,), generator=g) for _ in range(reps)]
    table.index_select(0, idx[0])  # warm up
    t0 = time.perf_counter()
    for i in idx:
        table.index_select(0, i)
    secs = time.perf_counter() - t0
    del table
    return reps * batch / secs


def timed_steps(task, batches, steps: int, lightning: bool, dm=None) -> float:
    import torch

    from autodim.task import TrainConfig, make_optimizers, make_trainer

    if lightning:
        trainer = make_trainer(TrainConfig(max_epochs=1, max_steps=steps), limit_val_batches=0)
        t0 = time.perf_counter()
        trainer.fit(task, train_dataloaders=dm.train_dataloader())
        return time.perf_counter() - t0
    opts = make_optimizers(task, 1e-3)
    t0 = time.perf_counter()
    for n, (x, y) in enumerate(batches, 1):
        for o in opts:
            o.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(task(x), y).backward()
        for o in opts:
            o.step()
        if n >= steps:
            break
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=200, help="steps for the throughput ratio")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--skip-sseds", action="store_true")
    args = ap.parse_args()

    from autodim.baselines import memcom_plan
    from autodim.budget import full_bytes
    from autodim.data.datamodule import CTRDataModule, TensorBatches
    from autodim.data.synthetic import CRITEO_KAGGLE_CARDINALITIES, make_planted
    from autodim.models import create_backbone
    from autodim.plan import DimensionPlan
    from autodim.task import CTRTask, TrainConfig, seed_everything, train_plan

    div = 1000 if args.quick else 1
    rows_n = 50_000 if args.quick else args.rows
    steps = 10 if args.quick else args.steps
    cards = [max(2, c // div) for c in CRITEO_KAGGLE_CARDINALITIES]
    out: list[dict] = []

    def record(what: str, value, unit: str = "", note: str = "") -> None:
        out.append({"measure": what, "value": value, "unit": unit, "note": note})
        print(out[-1], flush=True)

    t0 = time.perf_counter()
    data = make_planted("criteo_kaggle", rows=rows_n, seed=0, cardinalities=cards)
    record("generate", round(time.perf_counter() - t0, 1), "s",
           f"{rows_n:,} rows, {sum(cards):,} ids")
    record("peak RSS after generation", round(peak_rss_gb(), 2), "GiB")
    schema = data.schema
    D = 16
    bound = gather_bound(schema.total_rows, D, args.batch_size, schema.num_fields,
                         reps=5 if args.quick else 50)
    record("gather bound", round(bound), "samples/s", "index_select of 26 random rows/sample")

    # Throughput: hand loop vs CTRTask, full D=16, sparse gradients (threshold 1M rows).
    thr = 1_000_000 // div
    full = DimensionPlan.full(schema, D)
    secs = {}
    for kind in ("hand", "lightning"):
        seed_everything(0)
        backbone = create_backbone("fm", schema.num_fields, D)
        task = CTRTask(full.build(sparse_threshold=thr), backbone)
        dm = CTRDataModule(data, batch_size=args.batch_size)
        batches = TensorBatches(data.train, args.batch_size, shuffle=True, seed=0)
        secs[kind] = timed_steps(task, batches, steps, kind == "lightning", dm)
        del task
    sps = {k: steps * args.batch_size / v for k, v in secs.items()}
    record("hand loop (SparseAdam+Adam)", round(sps["hand"]), "samples/s")
    record("CTRTask (Lightning)", round(sps["lightning"]), "samples/s",
           f"ratio {sps['lightning'] / sps['hand']:.3f} of hand loop, "
           f"{sps['lightning'] / bound:.3f} of gather bound")
    record("peak RSS after throughput", round(peak_rss_gb(), 2), "GiB")

    cfg = TrainConfig(max_epochs=args.epochs, batch_size=args.batch_size, lr=1e-3,
                      restore_best=False, sparse_threshold=thr, patience=1)
    dm = CTRDataModule(data, batch_size=args.batch_size)
    res = train_plan(full, dm, config=cfg)
    epoch_s = res.metrics["train_seconds"] / max(1, args.epochs)
    record("full D=16: test AUC", round(res.metrics["test_auc"], 4), "",
           f"{full.num_bytes() / 1e9:.2f} GB embeddings, "
           f"{res.metrics['samples_per_s']:.0f} samples/s")
    record("one training epoch (full)", round(epoch_s, 1), "s")
    record("bayes AUC", round(data.meta["bayes_auc"], 4))
    del res

    budget = full_bytes(schema, D) // 10
    t0 = time.perf_counter()
    plan = memcom_plan(schema, D, budget)
    plan_s = time.perf_counter() - t0
    res = train_plan(plan, dm, config=cfg)
    record("memcom 10x: test AUC", round(res.metrics["test_auc"], 4), "",
           f"{plan.num_bytes() / 1e6:.1f} MB, plan in {plan_s:.2f}s, "
           f"{res.metrics['samples_per_s']:.0f} samples/s")
    del res

    if not args.skip_sseds:
        from autodim.searchers import SearchTask, create_searcher, retrain

        task = SearchTask(data=dm, D=D, budget_bytes=budget, candidate_dims=(1, 2, 4, 8, 16),
                          train=cfg, seed=0)
        t0 = time.perf_counter()
        result = create_searcher("sseds").search(task)
        search_s = time.perf_counter() - t0
        res = retrain(task, result, config=cfg)
        record("sseds 10x: test AUC", round(res.metrics["test_auc"], 4), "",
               f"{result.plan.num_bytes() / 1e6:.1f} MB; search {search_s:.0f}s = "
               f"{search_s / epoch_s:.2f} epochs")
    record("peak RSS (end)", round(peak_rss_gb(), 2), "GiB")
    print(write_table(out, "scale_quick" if args.quick else "scale",
                      title=f"Scale: Criteo-size planted data, {rows_n:,} rows"))


if __name__ == "__main__":
    main()
