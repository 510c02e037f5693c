"""Training throughput: CTRTask under Lightning vs a hand-written PyTorch loop.

Both train the same model (same embedding plan, backbone, batch size, data order) for the
same number of steps, measured side by side in one run, alternating, best of ``--repeats``.
Target: the framework keeps >= 0.8x the hand-written loop's samples/s.

    python benchmarks/throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import time

from _common import write_table


def hand_loop(task, batches, steps: int) -> float:
    """Plain PyTorch: zero_grad, forward, BCE, backward, step. Returns seconds."""
    import torch

    from autodim.task import make_optimizers

    opts = make_optimizers(task, 1e-3)
    task.train()
    t0 = time.perf_counter()
    n = 0
    for x, y in batches:
        for o in opts:
            o.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(task(x), y)
        loss.backward()
        for o in opts:
            o.step()
        n += 1
        if n >= steps:
            break
    return time.perf_counter() - t0


def lightning_loop(task, dm, steps: int) -> float:
    from autodim.task import TrainConfig, make_trainer

    trainer = make_trainer(TrainConfig(max_epochs=1, max_steps=steps), limit_val_batches=0)
    t0 = time.perf_counter()
    trainer.fit(task, train_dataloaders=dm.train_dataloader())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny run for the test suite")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from autodim.data.datamodule import CTRDataModule, TensorBatches
    from autodim.data.synthetic import make_planted
    from autodim.models import create_backbone
    from autodim.plan import DimensionPlan
    from autodim.task import CTRTask, seed_everything

    data = make_planted("planted", rows=20_000 if args.quick else 200_000, seed=0)
    steps = 10 if args.quick else 150
    repeats = 1 if args.quick else args.repeats
    rows = []
    for backbone in ("fm", "deepfm"):
        plan = DimensionPlan.full(data.schema, 16)
        best = {"hand": float("inf"), "lightning": float("inf")}
        for _ in range(repeats):
            for kind in ("hand", "lightning"):
                seed_everything(0)
                task = CTRTask(plan.build(), create_backbone(backbone, data.schema.num_fields, 16))
                dm = CTRDataModule(data, batch_size=args.batch_size, seed=0)
                if kind == "hand":
                    batches = TensorBatches(data.train, args.batch_size, shuffle=True, seed=0)
                    secs = hand_loop(task, batches, steps)
                else:
                    secs = lightning_loop(task, dm, steps)
                best[kind] = min(best[kind], secs)
        sps = {k: steps * args.batch_size / v for k, v in best.items()}
        rows.append({"backbone": backbone, "batch_size": args.batch_size, "steps": steps,
                     "hand samples/s": round(sps["hand"]),
                     "CTRTask samples/s": round(sps["lightning"]),
                     "ratio": round(sps["lightning"] / sps["hand"], 3)})
    print(write_table(rows, "throughput_quick" if args.quick else "throughput",
                      title="Training throughput: CTRTask (Lightning) vs hand-written loop"))


if __name__ == "__main__":
    main()
