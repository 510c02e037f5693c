"""Compact models and training on an accelerator, checked against the CPU in one run.

For a GPU machine (``--device cuda``); with ``--device cpu`` it checks the script itself.

- ``outputs``: every kind of compact model the inference and quant benchmarks time (the
  baselines' plans, the masked forms, each precision, MEmCom and QR with quantized tables,
  and a hybrid of dims x bits x hashing with sequence fields) is exported and loaded back
  with ``load_model`` as a serving process does, then moved to the device. Its outputs at
  1, 3, 64, 65, 256 and 4096 rows (each small-batch and batched read path) are compared with
  the CPU model's: ``max |device - cpu| / max |cpu|`` (aim: <= 1e-5, float32 arithmetic). The
  same for the training-time model (fake quantization, masks), forward and gradient.
- ``train``: ``train_plan`` with ``accelerator`` set to the device against the same run on
  the CPU (same seed, same batches): test AUC of both, for a full, a QR, a MEmCom, a
  row-pruned and an int4 QAT plan.
- ``latency``: each loaded compact model against the full model on the device, per batch of
  1, 256 and 4096 rows, calls paired and synchronised (``x full``: median of the ratios).

    python benchmarks/device_check.py --device cuda [--quick]

Writes ``benchmarks/results/device_check.{csv,md}`` (``--quick``: ``device_check_quick.*``).
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _common import parser, quiet, results_stem, write_table

D = 16
SIZES = (1, 3, 64, 65, 256, 4096)


def plans_to_check(schema, ratio: float) -> dict:
    """``{name: DimensionPlan}``: baselines, masked forms, precisions, quantized products."""
    from inference import masked_plans

    from autodim.baselines import baseline_plan
    from autodim.budget import full_bytes
    from autodim.plan import DimensionPlan

    budget = int(full_bytes(schema, D) / ratio)
    plans = {name: baseline_plan(name, schema, D, None if name == "full" else budget)
             for name in ("full", "uniform", "mde", "hash", "qr", "memcom")}
    plans.update(masked_plans(schema, budget))
    precisions = {"float16": {"bits": 16}, "bfloat16": {"bits": 16, "dtype": "bfloat16"},
                  "int8": {"bits": 8}, "int4": {"bits": 4},
                  "int4 field": {"bits": 4, "scale": "field"}, "int2": {"bits": 2},
                  "int1": {"bits": 1}}
    for name, prec in precisions.items():
        plan = DimensionPlan.full(schema, D)
        for f in plan.fields:
            f.precision = dict(prec)
        plans[name] = plan
    for base, prec in (("memcom", {"bits": 8, "scalars": "int8"}), ("hash", {"bits": 4}),
                       ("mde", {"bits": 4})):
        plan = copy.deepcopy(plans[base])
        for f in plan.fields:
            if f.dim:
                f.precision = {k: v for k, v in prec.items() if k != "scalars" or (
                    f.hashing or {}).get("method") == "memcom"}
        plans[f"{base} {prec['bits']}-bit"] = plan
    for plan in plans.values():
        plan.validate()
    return plans


def training_plans(schema) -> dict:
    """The plans ``train`` trains at 10x: full, QR, MEmCom, row-pruned and MDE int4 QAT."""
    from inference import masked_plans

    from autodim.baselines import baseline_plan
    from autodim.budget import full_bytes

    budget = int(full_bytes(schema, D) / 10)
    plans = {name: baseline_plan(name, schema, D, None if name == "full" else budget)
             for name in ("full", "qr", "memcom")}
    plans["row-pruned"] = masked_plans(schema, budget)["row-pruned"]
    q = copy.deepcopy(baseline_plan("mde", schema, D, budget * 4))
    for f in q.fields:
        if f.dim:
            f.precision = {"bits": 4, "train": "qat"}
    q.validate()
    plans["mde int4 qat"] = q
    return plans


def hybrid_plan():
    """Dims, bits and hashing per field with sequence fields (pooling groups): the served
    packed groups' every kind of column (identity, pad, project, one-wide, hashed, 16-bit)."""
    from autodim.data.schema import Field, Schema
    from autodim.plan import DimensionPlan

    spec = [("a", 5000, 8, {"bits": 4}), ("b", 3000, 4, {"bits": 2, "scale": "field"}),
            ("s", 400, 8, {"bits": 8}), ("c", 600, 4, {"bits": 2}), ("e", 900, 1, {"bits": 4}),
            ("p", 700, 4, {"bits": 8}), ("h", 800, 8, {"bits": 16}), ("z", 500, 4, None),
            ("t", 330, 4, {"bits": 16}), ("q", 270, 1, {"bits": 2}), ("r", 310, 4, {"bits": 4}),
            ("m", 2000, 16, {"bits": 1})]
    seq = ("s", "t", "q", "r")
    schema = Schema([Field(n, vocab_size=v, **({"kind": "sequence", "width": 3}
                                               if n in seq else {})) for n, v, _, _ in spec])
    plan = DimensionPlan.from_dims(schema, D, {n: d for n, _, d, _ in spec})
    for f, (_, _, _, prec) in zip(plan.fields, spec):
        f.precision = prec
        if f.name in ("p", "r"):
            f.align = "pad"
    plan.fields[1].hashing = {"method": "hash", "buckets": 500}
    plan.validate()
    return schema, plan


def random_ids(schema, n: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, f.vocab_size, (n,), generator=g)
                       for f in schema.fields for _ in range(f.width)], 1)
    if n > 2 and any(f.kind == "sequence" for f in schema.fields):
        ids[:2, -3:] = 0  # padding-only bags
    return ids


def loaded(plan, folder: Path):
    """The plan's model with random weights, saved and loaded back (serving form) on the
    CPU, and the training-time model it came from."""
    import torch

    from autodim.export import build_model, load_model, save_weights

    torch.manual_seed(0)
    model = build_model(plan, "fm")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    path = save_weights(model.eval(), folder / "w.safetensors", plan=plan, backbone="fm")
    return load_model(plan, path).eval(), model


def _err(e: Exception) -> str:
    """An exception as one short line for the table."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def check_outputs(name: str, served, trained, schema, device: str) -> dict:
    """Served and training-time model on ``device`` against the CPU."""
    import torch

    row: dict = {"part": "outputs", "model": name}
    errs = []
    try:
        dev = copy.deepcopy(served).to(device)
        with torch.inference_mode():
            for n in SIZES:
                ids = random_ids(schema, n, n)
                errs.append(rel(dev(ids.to(device)).cpu(), served(ids)))
        row["served max rel err"] = max(errs)
    except Exception as e:  # noqa: BLE001 - a table of what works and what does not
        row["served max rel err"] = None
        row["error"] = f"served: {_err(e)}"
        traceback.print_exc()
    try:
        ids = random_ids(schema, 256, 7)
        y = (torch.arange(256) % 2).float()
        out = {}
        for where, m in (("cpu", trained), (device, copy.deepcopy(trained).to(device))):
            m.train()
            m.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                m(ids.to(where)), y.to(where))
            loss.backward()
            grads = [p.grad.to_dense().cpu() for p in m.parameters() if p.grad is not None]
            out[where] = (loss.detach().cpu(), grads)
        row["train loss rel err"] = rel(out[device][0], out["cpu"][0])
        row["train grad max rel err"] = max(rel(a, b) for a, b in zip(out[device][1],
                                                                      out["cpu"][1]))
    except Exception as e:  # noqa: BLE001
        row["train loss rel err"] = None
        row["error"] = f"{row.get('error', '')} train: {_err(e)}".strip()
        traceback.print_exc()
    # Gradients may differ more than outputs: a fake-quantized value that lands on a rounding
    # boundary rounds either way on the two devices, and LSQ's step gradient sums residuals.
    worst = max([v for k, v in row.items() if k.endswith("err") and v is not None
                 and "grad" not in k] or [1.0])
    row["ok (<= 1e-5, grads 1e-3)"] = ("error" not in row and worst <= 1e-5
                                       and row.get("train grad max rel err", 1.0) <= 1e-3)
    return row


def check_training(data, plans: dict, device: str, epochs: int) -> list[dict]:
    from autodim.data.datamodule import CTRDataModule
    from autodim.task import TrainConfig, train_plan

    rows = []
    for name, plan in plans.items():
        row: dict = {"part": "train", "model": name}
        # Lightning's accelerator of the device ("cuda:1" -> "cuda"); once with --device cpu
        for where, acc in {"cpu": "cpu", device: device.split(":")[0]}.items():
            try:
                t0 = time.perf_counter()
                res = train_plan(plan, CTRDataModule(data, batch_size=1024, seed=0),
                                 backbone="fm",
                                 config=TrainConfig(max_epochs=epochs, accelerator=acc, seed=0))
                row[f"{where} test AUC"] = round(float(res.metrics["test_auc"]), 4)
                row[f"{where} s"] = round(time.perf_counter() - t0, 1)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{where}: {_err(e)}"
                traceback.print_exc()
        if "error" not in row and device != "cpu":
            row["AUC diff"] = round(row[f"{device} test AUC"] - row["cpu test AUC"], 4)
        rows.append(row)
        print(row, flush=True)
    return rows


def latency(models: dict, schema, device: str, reps: int) -> list[dict]:
    """Each model against ``models['full']`` on ``device``: paired, synchronised calls."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []
    full = models["full"]
    with torch.inference_mode():
        for n in (1, 256, 4096):
            x = random_ids(schema, n, 11).to(device)
            for m in models.values():
                for _ in range(3):
                    m(x)
            sync()
            for name, m in models.items():
                ratios, own_t = [], []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    m(x)
                    sync()
                    t1 = time.perf_counter()
                    full(x)
                    sync()
                    t2 = time.perf_counter()
                    ratios.append((t1 - t0) / (t2 - t1))
                    own_t.append(t1 - t0)
                row = {"part": "latency", "model": name, "batch": n,
                       "ms": round(statistics.median(own_t) * 1e3, 4),
                       "x full": round(statistics.median(ratios), 3)}
                if n == 256:
                    row["kernels a call"] = kernels_per_call(m, x)
                rows.append(row)
    return rows


def kernels_per_call(model, x, calls: int = 4) -> float | None:
    """Device kernels one call launches (``torch.profiler``; ``None`` where it counts none):
    at small batches a GPU's latency is mostly launches."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if not x.is_cuda:
        return None
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                model(x)
            torch.cuda.synchronize()
        n = sum(e.count for e in prof.key_averages()
                if str(getattr(e, "device_type", "")).endswith("CUDA"))
        return n / calls if n else None
    except Exception:  # noqa: BLE001 - a count is a hint, never a failure
        return None


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.split("\n\n")[0], quick="small vocabularies, few repeats")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--div", type=int, default=None,
                    help="Criteo's cardinalities divided by this (default 100; quick 1000)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: "
                    "outputs,train,latency")
    args = ap.parse_args(argv)
    quiet(None)

    import torch

    from autodim.data.synthetic import CRITEO_KAGGLE_CARDINALITIES, make_planted

    skip = set(filter(None, args.skip.split(",")))
    dev = args.device
    print(f"torch {torch.__version__}; device {dev}"
          + (f" ({torch.cuda.get_device_name(0)})" if dev.startswith("cuda") else ""),
          flush=True)
    div = args.div or (1000 if args.quick else 100)
    cards = [max(2, c // div) for c in CRITEO_KAGGLE_CARDINALITIES]
    data = make_planted("criteo_kaggle", rows=20_000 if args.quick else 100_000, seed=0,
                        cardinalities=cards)
    plans = plans_to_check(data.schema, 10.0)
    rows: list[dict] = []
    served: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in plans.items():
            (Path(tmp) / name).mkdir()
            served[name], trained = loaded(plan, Path(tmp) / name)
            if "outputs" not in skip:
                rows.append(check_outputs(name, served[name], trained, data.schema, dev))
                print(rows[-1], flush=True)
        hschema, hplan = hybrid_plan()
        (Path(tmp) / "hybrid").mkdir()
        h_served, h_trained = loaded(hplan, Path(tmp) / "hybrid")
        if "outputs" not in skip:
            rows.append(check_outputs("hybrid (sequence fields)", h_served, h_trained,
                                      hschema, dev))
            print(rows[-1], flush=True)

    if "train" not in skip:
        small = make_planted("planted", rows=20_000 if args.quick else 100_000, seed=0)
        rows += check_training(small, training_plans(small.schema), dev,
                               1 if args.quick else 2)

    if "latency" not in skip:
        moved = {}
        for name, m in served.items():
            try:
                moved[name] = copy.deepcopy(m).to(dev)
                with torch.inference_mode():
                    moved[name](random_ids(data.schema, 2, 0).to(dev))
            except Exception:  # noqa: BLE001 - reported by the outputs part
                moved.pop(name, None)
        lat = latency(moved, data.schema, dev, 20 if args.quick else 200)
        by = {}
        for r in lat:
            by.setdefault(r["model"], {})[f"x full @{r['batch']}"] = r["x full"]
            by[r["model"]][f"ms @{r['batch']}"] = r["ms"]
            if "kernels a call" in r:
                by[r["model"]]["kernels a call @256"] = r["kernels a call"]
        for name, cols in by.items():
            rows.append({"part": "latency", "model": name, **cols})

    for r in rows:  # errors in scientific notation (the table's cells show 4 decimals)
        for k, v in r.items():
            if k.endswith("err") and isinstance(v, float):
                r[k] = f"{v:.1e}"
    print(write_table(rows, results_stem("device_check", args.quick),
                      title=f"Compact models and training on {dev} vs the CPU "
                            f"(Criteo cardinalities / {div}, torch {torch.__version__})"))
    bad = [r["model"] for r in rows if r["part"] == "outputs"
           and not r["ok (<= 1e-5, grads 1e-3)"]]
    print("outputs not matching:", ", ".join(bad) if bad else "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
