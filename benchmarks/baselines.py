"""Baseline plans at 4x, 10x and 20x fewer embedding bytes than full D=16.

For each dataset: test AUC, logloss and bytes of full, uniform, MDE, hash, QR and MEmCom
plans trained with the same backbone and settings. A baseline that cannot reach a ratio
(uniform and MDE stop near 16x: every field keeps at least one dim) is listed as infeasible.

    python benchmarks/baselines.py [--quick] [--ml100k DIR] [--backbone fm]
"""

from __future__ import annotations

from _common import load_datasets, parser, quiet, results_stem, write_table


def main() -> None:
    ap = parser(__doc__, ml100k="folder with ml-100k.inter/.user/.item")
    ap.add_argument("--backbone", default="fm")
    ap.add_argument("--ratios", default="4,10,20")
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    quiet(threads=None)

    import numpy as np

    from autodim.api import retrain
    from autodim.baselines import BASELINES, baseline_plan
    from autodim.budget import full_bytes
    from autodim.data.datamodule import CTRDataModule
    from autodim.errors import BudgetError
    from autodim.task import TrainConfig

    cfg = TrainConfig(max_epochs=2 if args.quick else 15, lr=3e-3, patience=2)
    ratios = [1] + [float(r) for r in args.ratios.split(",")]
    rows = []
    for dname, data in load_datasets(["planted", "ml100k"], quick=args.quick, ml100k=args.ml100k):
        full = full_bytes(data.schema, 16)
        for ratio in ratios:
            for name in (["full"] if ratio == 1 else sorted(set(BASELINES) - {"full"})):
                budget = int(full / ratio)
                try:
                    plan = baseline_plan(name, data.schema, 16, budget)
                except BudgetError:
                    rows.append({"data": dname, "target": f"{ratio:g}x", "plan": name,
                                 "test AUC": None, "note": "infeasible"})
                    continue
                aucs, losses = [], []
                for seed in range(args.seeds):
                    dm = CTRDataModule(data, batch_size=cfg.batch_size, seed=seed)
                    m = retrain(plan, dm, cfg, backbone=args.backbone, seed=seed).metrics
                    aucs.append(m["test_auc"])
                    losses.append(m["test_logloss"])
                rows.append({"data": dname, "target": f"{ratio:g}x", "plan": name,
                             "test AUC": float(np.mean(aucs)),
                             "AUC std": float(np.std(aucs)) if args.seeds > 1 else None,
                             "test logloss": float(np.mean(losses)),
                             "bytes": plan.num_bytes(), "compression": plan.compression(),
                             "note": ""})
                print(rows[-1], flush=True)
        if "bayes_auc" in data.meta:
            rows.append({"data": dname, "target": "-", "plan": "bayes (teacher)",
                         "test AUC": float(data.meta["bayes_auc"]), "note": "ceiling"})
    print(write_table(rows, results_stem("baselines", args.quick),
                      title=f"Baseline plans, backbone {args.backbone}"))


if __name__ == "__main__":
    main()
