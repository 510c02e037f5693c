"""Precision as the third axis: the dims x bits x hashing compressor against each axis alone.

For each split seed of MovieLens-100K (FM or DeepFM, D=16; ``--data`` picks a planted
preset instead: one split, the seeds set training) it trains the full D=16 model once (the
reference; also the model the compressor measures its losses on, by default on training
rows, ``--estimate-on``, and the distillation teacher and warm start of the plans measured
on it), then at each budget (``--ratios``, e.g. 10x, 40x fewer embedding bytes than the
full table) trains the plans below. When the field test flags fields, the reference is
trained again without them (``ModelLoss``'s refit; rows ``refit -k``: the reference without
``k`` fields) and the axes that drop fields measure their options on it; the others keep
the full model.

- ``hybrid``: :func:`autodim.compress.compress_plan` over dims (1..16) x bits (32/16/8/4/2/1,
  row or field scales) x MEmCom (bucket ratios 0.02..0.5, int8 per-id scalars), QAT;
- ``hybrid-ptq``: the same plan trained in float32 and quantized after training (range
  search), i.e. the post-training path;
- ``hybrid+distill``: the hybrid plan, trained towards the full model's probabilities too
  (``--distill`` weight, temperature 2);
- ``hybrid+warm`` (``+distill``): the hybrid plan started from the full model
  (:func:`autodim.compress.warm_start_embedding`: SVD-narrowed tables and projections,
  MEmCom from the bucket heads; the FM weights copied), then trained (QAT) as above;
- ``dims+bits``: the hybrid without hashing; ``hybrid-nodrop``: the hybrid without its
  field test (no field dropped); ``hybrid-norefit``: the hybrid measured on the full model
  even when the field test flags fields (all three on request);
- the single axes through the same compressor and estimator: ``dims only`` (float32, no
  hashing; it may drop the fields the full model is better without, as the hybrid does),
  ``bits only`` (full dims, no hashing, no field dropped), ``hashing only`` (full dims,
  float32, MEmCom, no field dropped);
- the baselines ``quant`` (full dims, uniform bits), ``mixed-precision`` (bits by rule) and
  ``memcom`` (hashing at full dims, float32);
- on request (``--only "dims only+warm,bits only+distill,..."``) any of the above
  warm-started or distilled like the hybrid.

Every plan is held to the budget exactly (``plan.num_bytes() <= budget``); an axis that
cannot reach a budget is listed as infeasible. The latency part times the packed inference
model (float16, int8, int4, int2 with row or field scales, all fields at D=16, and the
seed-0 hybrid plans of ``<stem>_runs.csv``) against the float32 model in one process at
batch 1, 256 and 4096, call by call alternating with the float32 model: median of the
per-round ratios, min-max beside it. Every model is saved and loaded back with
``load_model``, so each is timed in the layout a serving process runs (the float32 model
fused into one table per width, packed fields grouped by dim and precision).

Usage::

    python benchmarks/quant.py --quick                 # tiny synthetic data, 1 seed (~1 min)
    python benchmarks/quant.py --seeds 0,1,2 --ratios 10,40
    python benchmarks/quant.py --latency-only
    python benchmarks/quant.py --data criteo_kaggle --rows 1000000 --batch 4096 --ratios 10,40,100
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    apply_allocator,
    default_ml100k,
    load_datasets,
    parser,
    quiet,
    read_rows,
    results_stem,
    write_table,
)

HASH_RATIOS = (0.02, 0.05, 0.1, 0.2, 0.5)
ALL_BITS = (32, 16, 8, 4, 2, 1)


def _train(plan, data, cfg, seed, *, backbone="fm", teacher=None, weight=0.0, warm=False):
    from lightning.pytorch.callbacks import Callback

    from autodim.compress import warm_start_embedding
    from autodim.data.datamodule import CTRDataModule
    from autodim.task import Distill, train_plan

    class CopyBackbone(Callback):
        def on_fit_start(self, trainer, pl_module):
            pl_module.backbone.load_state_dict(teacher.backbone.state_dict())

    dm = CTRDataModule(data, batch_size=cfg.batch_size, seed=seed)
    callbacks = [Distill(teacher, weight=weight, temperature=2.0)] if teacher and weight else []
    emb = None
    if warm:
        emb = warm_start_embedding(plan, teacher, data.schema)
        callbacks.append(CopyBackbone())
    return train_plan(plan, dm, backbone=backbone, config=cfg, callbacks=callbacks,
                      embedding=emb)


def _with_train(plan, mode: str):
    for f in plan.fields:
        if f.precision and f.precision.get("bits", 32) < 32:
            f.precision["train"] = mode
    plan.validate()
    return plan


def run_seed(data, seed: int, ratios, cfg, distill: float, only=None, *,
             backbone: str = "fm", estimate_on: str = "train") -> list[dict[str, Any]]:
    import copy

    from autodim.baselines import baseline_plan
    from autodim.compress import ModelLoss, compress_plan
    from autodim.data.datamodule import CTRDataModule
    from autodim.errors import BudgetError
    from autodim.plan import DimensionPlan

    rows = []
    full = DimensionPlan.full(data.schema, 16)
    t0 = time.perf_counter()
    ref = _train(full, data, cfg, seed, backbone=backbone)
    rows.append({"seed": seed, "ratio": 1, "method": "full", "test_auc": ref.metrics["test_auc"],
                 "val_auc": ref.metrics["val_auc"], "bytes": full.num_bytes(),
                 "train_s": time.perf_counter() - t0})
    print(f"seed {seed} full: test AUC {ref.metrics['test_auc']:.4f}", flush=True)
    teacher = ref.task.eval()
    dm = CTRDataModule(data, batch_size=4096, seed=seed)
    # est0 reads the full model (the axes that keep every field); est the reference
    # trained again without the flagged fields (ModelLoss's refit) for those that drop them.
    est0 = est = ModelLoss.from_datamodule(teacher, dm, data.schema, 16, on=estimate_on)
    if est0.idle:

        def refit(drop):
            plan = DimensionPlan.full(data.schema, 16, drop=drop)
            t0 = time.perf_counter()
            res = _train(plan, data, cfg, seed, backbone=backbone)
            rows.append({"seed": seed, "ratio": 1, "method": f"refit -{len(drop)}",
                         "test_auc": res.metrics["test_auc"], "val_auc": res.metrics["val_auc"],
                         "bytes": plan.num_bytes(), "train_s": time.perf_counter() - t0,
                         "plan": _describe(plan)})
            return res.task.eval()

        est = ModelLoss.from_datamodule(teacher, dm, data.schema, 16, on=estimate_on,
                                        refit=refit)
        print(f"seed {seed}: fields flagged by the field test (dropped): {sorted(est.idle)} "
              f"(first test: {sorted(est0.idle)}; {len(est.refits)} refit(s))")
    # Dropping a field is the dims axis (dim 0): bits or hashing alone keep every field.
    # Hashing alone may hash every field (MEmCom's float32 scalars cost 4 B an id, so small
    # fields must share buckets too for it to reach 10x).
    axes = {
        "hybrid": dict(bits=ALL_BITS, ratios=HASH_RATIOS),
        "dims+bits": dict(bits=ALL_BITS, ratios=()),
        "hybrid-nodrop": dict(bits=ALL_BITS, ratios=HASH_RATIOS, drop_idle=False),
        "hybrid-norefit": dict(bits=ALL_BITS, ratios=HASH_RATIOS, estimator=est0),
        "dims only": dict(bits=(32,), ratios=()),
        "bits only": dict(bits=ALL_BITS, dims=(16,), ratios=(), drop_idle=False),
        "hashing only": dict(bits=(32,), dims=(16,), ratios=(0.01,) + HASH_RATIOS,
                             drop_idle=False, min_rows=2),
    }
    for kw in axes.values():  # the axes that drop fields read the refit reference
        kw.setdefault("estimator", est if kw.get("drop_idle", True) else est0)
    measured_on = {name: kw["estimator"].model for name, kw in axes.items()}
    on_request = ("dims+bits", "hybrid-nodrop", "hybrid-norefit")
    for ratio in ratios:
        budget = int(full.num_bytes() // ratio)
        plans: dict[str, Any] = {}
        for name, kw in axes.items():
            if name in on_request and not (only and any(m.startswith(name) for m in only)):
                continue
            try:
                plans[name] = compress_plan(full, data.schema, budget, scale=("row", "field"),
                                            scalars="int8", **{"min_rows": 100, **kw})[0]
            except BudgetError as exc:
                plans[name] = exc
        if not isinstance(plans["hybrid"], Exception):
            plans["hybrid-ptq"] = _with_train(copy.deepcopy(plans["hybrid"]), "ptq")
            if distill > 0:
                plans["hybrid+distill"] = plans["hybrid"]
            plans["hybrid+warm"] = plans["hybrid"]
            if distill > 0:
                plans["hybrid+warm+distill"] = plans["hybrid"]
        for name in ("quant", "mixed-precision", "memcom", "mde", "uniform", "qr"):
            try:
                plans[name] = baseline_plan(name, data.schema, 16, budget)
            except BudgetError as exc:
                plans[name] = exc
        # Warm-started single axes (and baselines) on request, for a like-for-like check.
        for name in list(plans):
            for suffix in ("+warm", "+distill"):
                if only and f"{name}{suffix}" in only and not name.startswith("hybrid"):
                    plans[f"{name}{suffix}"] = plans[name]
        for name, plan in plans.items():
            if only and name not in only:
                continue
            row = {"seed": seed, "ratio": ratio, "method": name, "budget": budget}
            if isinstance(plan, Exception):
                row["note"] = f"infeasible: {str(plan).splitlines()[0][:120]}"
                rows.append(row)
                continue
            assert plan.num_bytes() <= budget, (name, plan.num_bytes(), budget)
            t0 = time.perf_counter()
            # Distillation and the warm start read the model the plan's options were
            # measured on (the refit reference for the axes that drop fields), as a study.
            base = name.split("+")[0].removesuffix("-ptq")
            res = _train(plan, data, cfg, seed, backbone=backbone,
                         teacher=measured_on.get(base, teacher),
                         weight=distill if name.endswith("distill") else 0.0,
                         warm="+warm" in name)
            row.update(test_auc=res.metrics["test_auc"], val_auc=res.metrics["val_auc"],
                       bytes=plan.num_bytes(), train_s=time.perf_counter() - t0,
                       plan=_describe(plan))
            rows.append(row)
            print(f"seed {seed} {ratio:g}x {name}: test AUC {row['test_auc']:.4f} "
                  f"({plan.num_bytes():,} B) {row['plan']}", flush=True)
    return rows


def _describe(plan) -> str:
    parts = []
    for f in plan.fields:
        s = f"{f.name}:{f.dim}"
        if f.bits < 32:
            s += f"@{f.bits}" + ("f" if (f.precision or {}).get("scale") == "field" else "")
        if f.hashing:
            s += f"#{f.hashing['buckets']}"
        parts.append(s)
    return " ".join(parts)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    full = [r["test_auc"] for r in rows if r["method"] == "full"]
    ref = statistics.mean(full)
    out = [{"ratio": "1x", "method": "full", "seeds": len(full),
            "test AUC (mean ± std)": _ms(full), "vs full": "", "bytes": rows[0]["bytes"],
            "plan (seed 0)": "", "note": ""}]
    keys = []
    for r in rows:
        if r["method"] != "full" and (r["ratio"], r["method"]) not in keys:
            keys.append((r["ratio"], r["method"]))
    for ratio, method in keys:
        rs = [r for r in rows if r["ratio"] == ratio and r["method"] == method]
        aucs = [r["test_auc"] for r in rs if r.get("test_auc") is not None]
        note = next((r["note"] for r in rs if r.get("note")), "")
        out.append({"ratio": f"{ratio:g}x", "method": method, "seeds": len(aucs),
                    "test AUC (mean ± std)": _ms(aucs) if aucs else "infeasible",
                    "vs full": (f"{100 * (statistics.mean(aucs) / ref - 1):+.2f} %"
                                if aucs else ""),
                    "bytes": max((r.get("bytes") or 0) for r in rs) or "",
                    "plan (seed 0)": rs[0].get("plan", ""), "note": note})
    return out


def _ms(values) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


# -- latency ---------------------------------------------------------------------------------
def parse_plan(text: str, full):
    """The plan ``_describe`` wrote (``field:dim@bits[f][#buckets]``; MEmCom scalars int8)."""
    from autodim.compress import field_option

    fields = {f.name: f for f in full.fields}
    for part in text.split():
        name, rest = part.split(":")
        rest, _, buckets = rest.partition("#")
        dim, _, bits = rest.partition("@")
        fields[name] = field_option(fields[name], int(dim), int(bits.rstrip("f") or 32),
                                    int(buckets) if buckets else None,
                                    scale="field" if bits.endswith("f") else "row",
                                    scalars="int8")
    plan = full.replace(fields=list(fields.values()))
    plan.validate()
    return plan


def latency(data, *, reps: int, batches=(1, 256, 4096), plans=None) -> list[dict[str, Any]]:
    """Packed inference time of each variant against the float32 model (all fields D=16),
    per batch size; ``plans``: extra ``{name: DimensionPlan}`` (e.g. the hybrid plans)."""
    import copy

    import numpy as np
    import torch

    from autodim.export import build_model, load_model, save_weights
    from autodim.plan import DimensionPlan

    torch.manual_seed(0)
    base = DimensionPlan.full(data.schema, 16)
    variants = {"float32": None, "float16": {"bits": 16}, "int8": {"bits": 8},
                "int4": {"bits": 4}, "int4 field": {"bits": 4, "scale": "field"},
                "int2": {"bits": 2}, "int2 field": {"bits": 2, "scale": "field"},
                "int1": {"bits": 1}, "int1 field": {"bits": 1, "scale": "field"}}
    todo = {}
    for name, prec in variants.items():
        plan = copy.deepcopy(base)
        for f in plan.fields:
            f.precision = copy.deepcopy(prec)
        todo[name] = plan
    todo.update(plans or {})
    # Every model as a serving process gets it: saved, then loaded back with load_model
    # (packed tables, fused groups), the float32 reference included.
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in todo.items():
            model = build_model(plan, "fm")
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_(0, 0.1)
            path = save_weights(model.eval(), Path(tmp) / "w.safetensors", plan=plan,
                                backbone="fm")
            models[name] = load_model(plan, path).eval()
    test = torch.as_tensor(np.asarray(data.test.ids))
    rows = []
    with torch.inference_mode():
        for bs in batches:
            idx = torch.randint(0, test.shape[0], (bs,))
            x = test[idx].long().contiguous()
            for m in models.values():  # warm-up (allocator, caches)
                m(x)
            # Calls per timing: enough for the float32 model to run >= 20 ms, so one sample
            # is not a fraction of a scheduler tick. Each timing is paired call by call: the
            # model and the float32 model alternate (each call timed on its own), so both
            # see the same moment of a shared machine; the round's ratio is the model's
            # time over the float32 calls interleaved with it. The order of the models
            # rotates from round to round.
            t0 = time.perf_counter()
            for _ in range(5):
                models["float32"](x)
            one = max((time.perf_counter() - t0) / 5, 1e-6)
            n_inner = max(2, min(2000, int(0.02 / one)))
            names = list(models)
            f32 = models["float32"]
            times: dict[str, list[float]] = {k: [] for k in models}
            ratios: dict[str, list[float]] = {k: [] for k in models}
            clock = time.perf_counter
            for rep in range(reps):
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    m, own, ref = models[name], 0.0, 0.0
                    for _ in range(n_inner):
                        t0 = clock()
                        m(x)
                        t1 = clock()
                        f32(x)
                        t2 = clock()
                        own, ref = own + t1 - t0, ref + t2 - t1
                    times[name].append(own / n_inner)
                    ratios[name].append(own / ref)
            for name in names:
                row = {"batch": bs, "model": name,
                       "ms": round(statistics.median(times[name]) * 1e3, 4),
                       "x float32": round(statistics.median(ratios[name]), 3),
                       "min-max": f"{min(ratios[name]):.2f}-{max(ratios[name]):.2f}",
                       "bytes": todo[name].num_bytes(), "calls per timing": n_inner}
                rows.append(row)
                print(row, flush=True)
    return rows


def main(argv=None) -> int:
    ap = parser(__doc__.splitlines()[0], quick="tiny synthetic data, one seed",
                ml100k="MovieLens-100K folder", allocator=True)
    ap.add_argument("--seeds", default="0", help="split (and training) seeds, e.g. 0,1,2")
    ap.add_argument("--backbone", default="fm", help="fm or deepfm (the latency part: fm)")
    ap.add_argument("--ratios", default="10,40", help="budgets as compression ratios")
    ap.add_argument("--distill", type=float, default=0.5, help="distillation weight (0: off)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--data", default="ml100k",
                    help="ml100k (split seeds), or a planted preset: planted, decoupled, "
                         "criteo_kaggle (data seed 0, one split; the seeds set training)")
    ap.add_argument("--rows", type=int, default=None,
                    help="rows of a planted preset (default 200000)")
    ap.add_argument("--batch", type=int, default=1024, help="training batch size")
    ap.add_argument("--estimate-on", default="train", choices=("val", "train"),
                    help="the rows ModelLoss measures the options' losses on")
    ap.add_argument("--latency-only", action="store_true")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--reps", type=int, default=15, help="latency rounds")
    ap.add_argument("--only", default="", help="comma-separated methods to run (full always)")
    ap.add_argument("--stem", default=None, help="results file stem")
    args = ap.parse_args(argv)

    from autodim.task import TrainConfig

    quiet(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    if args.quick:
        from autodim.data.synthetic import make_planted

        def load(seed):
            return make_planted("tiny", rows=3000, seed=seed)
        seeds, ratios = seeds[:1], ratios[:1]
        cfg = TrainConfig(max_epochs=2, batch_size=256, lr=3e-3, patience=2)
    elif args.data == "ml100k":
        folder = args.ml100k or default_ml100k()
        if not folder:
            print("MovieLens-100K not found: pass --ml100k DIR", file=sys.stderr)
            return 2
        from autodim.data import load_data

        def load(seed):
            return load_data(folder, seed=seed)
    else:
        from autodim.data.synthetic import PRESETS

        if args.data not in PRESETS:
            print(f"error: --data {args.data!r}: use ml100k or one of {sorted(PRESETS)}",
                  file=sys.stderr)
            return 2
        _, planted = next(load_datasets([args.data], quick=False, rows=args.rows))

        def load(seed):  # one split for every seed, as compare.py does
            return planted
    if not args.quick:
        cfg = TrainConfig(max_epochs=args.epochs, batch_size=args.batch, lr=3e-3, patience=2)
    stem = args.stem or results_stem("quant", args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.latency_only:
        rows = []
        for seed in seeds:
            rows += run_seed(load(seed), seed, ratios, replace_seed(cfg, seed), args.distill,
                             [m for m in args.only.split(",") if m], backbone=args.backbone,
                             estimate_on=args.estimate_on)
        write_table(rows, f"{stem}_runs")
        print(write_table(summarize(rows), stem,
                          title=f"{'tiny' if args.quick else args.data}, {args.backbone}, D=16, "
                                f"seeds {seeds}"))
    if not args.no_latency:
        data = load(seeds[0])
        from autodim.plan import DimensionPlan

        full = DimensionPlan.full(data.schema, 16)
        # the seed-0 hybrid plans of the accuracy run, as compact models
        plans = {f"hybrid {float(r['ratio']):g}x": parse_plan(r["plan"], full)
                 for r in read_rows(RESULTS / f"{stem}_runs.csv")
                 if r["method"] == "hybrid" and r["seed"] == "0" and r.get("plan")}
        suffix = apply_allocator(args.allocator)
        lat = latency(data, reps=3 if args.quick else args.reps, plans=plans)
        print(write_table(lat, f"{stem}_latency{suffix}",
                          title=f"packed inference latency vs float32, each model as "
                                f"load_model serves it (FM, D=16, 1 thread, {args.allocator} "
                                "allocator, median of the per-round ratios, each call "
                                "alternating with a float32 call)"))
    return 0


def replace_seed(cfg, seed: int):
    from dataclasses import replace

    return replace(cfg, seed=seed)


if __name__ == "__main__":
    raise SystemExit(main())
