"""Training throughput, measured side by side in one run.

Four ways to train the same full D=16 model on the same batches (same ids, same order):

- ``plain``: an independent FM / DeepFM written with plain PyTorch (one ``nn.Embedding``
  over all fields with per-field offsets, mean-pooled sequence fields, ``torch.optim.Adam``);
  none of autodim's modules;
- ``hand``: autodim's model (``plan.build()`` + backbone) in a hand-written loop with
  autodim's optimisers (:func:`autodim.task.make_optimizers`);
- ``ctrtask``: the same model through Lightning (``CTRTask.training_step``);
- ``train_plan``: :func:`autodim.task.train_plan` end to end (its own builder, optimisers,
  callbacks; ``samples_per_s`` as it reports it).

Whole runs (part ``runs``, the first dataset): ``--run-epochs`` epochs, each followed by a
validation pass, of the plain loop (its AUC by the rank formula in numpy) and of
``train_plan`` (validation, best-epoch restore, no early stop) with its default
``batches_per_call`` (8 batches a Lightning step) and with 1: the time a user waits for.

Each repeat runs every kind once, in a rotating order, so drift on a shared machine hits all
of them alike; the table gives each kind's ratio to ``plain`` of the same repeat as
min / median / max over the repeats.

The vocabulary sweep trains the planted preset with its vocabularies scaled x1, x10, x100
(24k, 240k, 2.4M ids) at a fixed number of rows, interleaved the same way, and reports
samples/s relative to 24k ids (aim: >= 0.7 at 2.4M). Peak RSS of ``train_plan`` at each
size is measured in a fresh subprocess (``ru_maxrss`` only grows), against the embedding
bytes (aim: peak - RSS before training <= 2 x embedding bytes + a fixed overhead).

    python benchmarks/throughput.py            # ML-100K (if found) + planted, sweep, RSS
    python benchmarks/throughput.py --quick    # tiny, for the test suite
    python benchmarks/throughput.py --device cuda --skip runs,sweep,rss   # models, on a GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import default_ml100k, parser, quiet, results_stem, write_table

KINDS = ("plain", "hand", "ctrtask", "train_plan")


def peak_rss_mib() -> float:
    """Peak RSS since the last :func:`reset_peak_rss` (``VmHWM``), else of the process."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


# -- the independent baseline -------------------------------------------------------------
def plain_model(schema, D: int, backbone: str):
    """FM or DeepFM in plain PyTorch: ``ids[B, T] -> logits[B]``. Same maths as autodim's
    (first-order term read off the embeddings, Rendle's pairwise term, MLP 64-32 for DeepFM)
    but written independently: one table for all fields, offsets, a mask mean for sequences."""
    import torch
    from torch import nn

    widths = [f.width for f in schema.fields]
    is_seq = [f.kind == "sequence" for f in schema.fields]
    sizes = [f.vocab_size for f in schema.fields]
    F = len(sizes)

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            starts = torch.tensor([0] + sizes[:-1]).cumsum(0)
            self.register_buffer("offsets", starts.repeat_interleave(torch.tensor(widths)))
            col = torch.tensor([0] + widths[:-1]).cumsum(0)
            # one-column fields are read straight off the gather; the others are averaged
            self.register_buffer("single", col[torch.tensor(widths) == 1])
            self.multi = [(int(c), w, s) for c, w, s in zip(col, widths, is_seq) if w > 1]
            self.emb = nn.Embedding(sum(sizes), D)
            nn.init.normal_(self.emb.weight, std=0.01)
            self.linear = nn.Linear(F * D, 1)
            self.mlp = (nn.Sequential(nn.Linear(F * D, 64), nn.ReLU(), nn.Linear(64, 32),
                                      nn.ReLU(), nn.Linear(32, 1))
                        if backbone == "deepfm" else None)

        def forward(self, ids):
            v = self.emb(ids + self.offsets)
            if self.multi:  # fields in a different order than the schema's: same model
                parts = [v.index_select(1, self.single)]
                for c, w, s in self.multi:  # sequences average their non-padding ids
                    m = ((ids[:, c:c + w] != 0) if s else torch.ones_like(ids[:, c:c + w],
                                                                          dtype=torch.bool))
                    m = m.unsqueeze(-1).float()
                    parts.append(((v[:, c:c + w] * m).sum(1) / m.sum(1).clamp_min(1.0))[:, None])
                v = torch.cat(parts, 1)
            flat = v.flatten(1)
            sq = v.sum(1).pow(2) - v.pow(2).sum(1)
            out = self.linear(flat).squeeze(-1) + 0.5 * sq.sum(-1)
            if self.mlp is not None:
                out = out + self.mlp(flat).squeeze(-1)
            return out

    return Plain()


# ``--device``: where the models part trains (``cpu``, or ``cuda`` on a GPU machine: the
# loops copy each batch there, as Lightning does, and synchronise before reading the clock).
DEVICE = "cpu"


def _accelerator() -> str:
    """Lightning's accelerator for :data:`DEVICE` (``cuda:1`` -> ``cuda``)."""
    return DEVICE.split(":")[0]


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def run_loop(model, opts, batches, steps: int, warm: int = 0) -> float:
    """zero_grad, forward, BCE, backward, step for ``warm`` untimed then ``steps`` timed
    batches on :data:`DEVICE`; seconds (optimiser construction is the caller's)."""
    import torch

    model.train()
    t0 = time.perf_counter()
    for n, (x, y) in enumerate(batches):
        if n == warm:
            _sync()
            t0 = time.perf_counter()
        if DEVICE != "cpu":
            x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
        for o in opts:
            o.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        for o in opts:
            o.step()
        if n + 1 >= warm + steps:
            break
    _sync()
    return time.perf_counter() - t0


def lightning_loop(task, dm, steps: int, warm: int = 0) -> float:
    """``warm + steps`` steps of ``Trainer.fit`` (CTRTask.training_step), timed from the
    start of step ``warm`` to the end of the last step; the optimisers are released after."""
    from lightning.pytorch.callbacks import Callback

    from autodim.task import TrainConfig, make_trainer, release_optimizers

    class Window(Callback):
        t0 = t1 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warm:
                _sync()
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync()
            self.t1 = time.perf_counter()

    window = Window()
    trainer = make_trainer(TrainConfig(max_epochs=1, max_steps=warm + steps,
                                       accelerator=_accelerator()), [window],
                           limit_val_batches=0)
    trainer.fit(task, train_dataloaders=dm.train_dataloader())
    release_optimizers(trainer)
    return window.t1 - window.t0


def measure(kind: str, data, backbone: str, batch_size: int, steps: int, D: int = 16,
            **train_kwargs) -> float:
    """Samples/s of one ``kind`` on ``data`` for ``steps`` steps from a fresh model."""
    import torch

    from autodim.data.datamodule import CTRDataModule, TensorBatches
    from autodim.models import create_backbone
    from autodim.plan import DimensionPlan
    from autodim.task import CTRTask, TrainConfig, make_optimizers, seed_everything, train_plan

    seed_everything(0)
    plan = DimensionPlan.full(data.schema, D)
    train_kwargs.setdefault("accelerator", _accelerator())
    if kind == "train_plan":
        dm = CTRDataModule(data, batch_size=batch_size, seed=0)
        cfg = TrainConfig(max_epochs=1, max_steps=steps, batch_size=batch_size,
                          **train_kwargs)
        return train_plan(plan, dm, backbone=backbone, config=cfg,
                          test=False).metrics["samples_per_s"]
    batches = TensorBatches(data.train, batch_size, shuffle=True, seed=0)
    if kind == "plain":
        model = plain_model(data.schema, D, backbone).to(DEVICE)
        secs = run_loop(model, [torch.optim.Adam(model.parameters(), lr=1e-3)], batches, steps)
    else:
        # the layer train_plan trains (fused where the plan allows it)
        task = CTRTask(plan.build(fused=True), create_backbone(backbone, data.schema.num_fields, D))
        task.to(DEVICE)
        if kind == "hand":
            secs = run_loop(task, make_optimizers(task, 1e-3), batches, steps)
        else:
            secs = lightning_loop(task, CTRDataModule(data, batch_size=batch_size, seed=0),
                                  steps)
    return steps * batch_size / secs


def plain_run(data, backbone: str, batch_size: int, epochs: int, D: int = 16) -> float:
    """Samples/s of a whole plain-PyTorch training run: ``epochs`` epochs of the plain model
    (Adam, shuffled batches), each followed by the validation split's AUC (rank formula,
    numpy), as an early-stopping loop must; no autodim module."""
    import numpy as np
    import torch

    from autodim.data.datamodule import TensorBatches

    torch.manual_seed(0)
    model = plain_model(data.schema, D, backbone)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = TensorBatches(data.train, batch_size, shuffle=True, seed=0)
    val = TensorBatches(data.val, 4 * batch_size)
    label = np.asarray(data.val.labels) > 0.5
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in train:
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            score = torch.cat([model(x) for x, _ in val]).numpy()
        ranks = score.argsort().argsort() + 1.0
        auc = (ranks[label].sum() - label.sum() * (label.sum() + 1) / 2) / max(
            1, label.sum() * (~label).sum())
        assert 0.0 <= auc <= 1.0
    return epochs * len(train) * batch_size / (time.perf_counter() - t0)


def train_plan_run(data, backbone: str, batch_size: int, epochs: int, batches_per_call: int,
                   D: int = 16) -> float:
    """Samples/s of ``train_plan`` for ``epochs`` epochs (validation each epoch, best-epoch
    restore, no early stop), as it reports it."""
    from autodim.data.datamodule import CTRDataModule
    from autodim.plan import DimensionPlan
    from autodim.task import TrainConfig, seed_everything, train_plan

    seed_everything(0)
    cfg = TrainConfig(max_epochs=epochs, patience=epochs, batch_size=batch_size,
                      batches_per_call=batches_per_call)
    dm = CTRDataModule(data, batch_size=batch_size)
    return train_plan(DimensionPlan.full(data.schema, D), dm, backbone=backbone, config=cfg,
                      test=False).metrics["samples_per_s"]


def interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Run every ``fns[k]()`` once per repeat, rotating the order; values per kind."""
    keys = list(fns)
    out: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            out[k].append(fns[k]())
            gc.collect()
    return out


def spread(values: list[float]) -> str:
    return (f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"
            if len(values) > 1 else f"{values[0]:.2f}")


# -- peak RSS in a fresh process ----------------------------------------------------------
def rss_child(scale: int, rows: int, batch_size: int, epochs: int) -> dict:
    """Generate the planted data at ``scale``, train the full model with ``train_plan``
    (restore-best on, validation each epoch), return RSS before/peak and embedding bytes."""
    import torch

    torch.set_num_threads(1)
    from autodim.data.datamodule import CTRDataModule
    from autodim.data.synthetic import PRESETS, make_planted
    from autodim.plan import DimensionPlan
    from autodim.task import TrainConfig, train_plan

    cards = [c * scale for c in PRESETS["planted"].cardinalities]
    data = make_planted("planted", rows=rows, seed=0, cardinalities=cards)
    dm = CTRDataModule(data, batch_size=batch_size, seed=0)
    plan = DimensionPlan.full(data.schema, 16)
    # A warm-up run on a tiny copy loads torch/Lightning code paths, so "before" includes
    # the interpreter's fixed overhead and the difference is what training itself holds.
    tiny = make_planted("planted", rows=2_000, seed=0)
    train_plan(DimensionPlan.full(tiny.schema, 16), CTRDataModule(tiny, batch_size=256),
               config=TrainConfig(max_epochs=1), test=False)
    gc.collect()
    before = rss_mib()
    reset_peak_rss()  # the data generation's own peak is not training's
    train_plan(plan, dm, config=TrainConfig(max_epochs=epochs, batch_size=batch_size),
               test=False)
    return {"before_mib": before, "peak_mib": peak_rss_mib(),
            "embedding_mib": plan.num_bytes() / 2**20}


def run_rss(scale: int, rows: int, batch_size: int, epochs: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", str(scale),
           "--rows", str(rows), "--batch-size", str(batch_size), "--epochs", str(epochs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = parser(__doc__, quick="tiny run for the test suite",
                ml100k="MovieLens-100K folder (default: cache)",
                threads="torch threads (0: default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
    ap.add_argument("--batch-sizes", default="1024,4096")
    ap.add_argument("--rows", type=int, default=400_000, help="rows of the vocabulary sweep")
    ap.add_argument("--scales", default="1,10,100", help="vocabulary multipliers of the sweep")
    ap.add_argument("--sweep-steps", type=int, default=0,
                    help="steps per sweep measurement (0: one epoch)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: models,runs,sweep,rss")
    ap.add_argument("--run-epochs", type=int, default=5,
                    help="epochs of the whole-run comparison (part runs)")
    ap.add_argument("--model-rows", type=int, default=200_000,
                    help="rows of the planted data of the models and runs parts (an epoch "
                         "must hold --steps batches: a GPU needs more steps to time)")
    ap.add_argument("--device", default="cpu",
                    help="where the models part trains: cpu, or cuda on a GPU machine "
                         "(the other parts stay on the CPU)")
    ap.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=1024, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, args.rows, args.batch_size, args.epochs)))
        return

    quiet(args.threads)
    global DEVICE
    DEVICE = args.device
    from autodim.data.synthetic import PRESETS, make_planted

    skip = set(filter(None, args.skip.split(",")))
    repeats = 1 if args.quick else args.repeats
    steps = 5 if args.quick else args.steps
    batch_sizes = [256] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    rows: list[dict] = []

    datasets = []
    if not {"models", "runs"} <= skip:  # MovieLens-100K (if found) first, then planted
        datasets = [("planted", make_planted("planted", rows=20_000 if args.quick else
                                             args.model_rows, seed=0))]
        folder = None if args.quick else (args.ml100k or default_ml100k())
        if folder:
            from autodim.data import load_data

            datasets.insert(0, ("ml100k", load_data(folder)))

    if "models" not in skip:
        for name, data in datasets:
            for backbone in ("fm", "deepfm"):
                for bs in batch_sizes:
                    n = min(steps, max(1, len(data.train) // bs - 1))  # within one epoch
                    res = interleaved({k: (lambda k=k, d=data, b=backbone, bs=bs, n=n:
                                           measure(k, d, b, bs, n)) for k in KINDS}, repeats)
                    row = {"part": "model", "data": name, "backbone": backbone, "batch": bs,
                           "steps": n, "plain samples/s": round(statistics.median(res["plain"]))}
                    for k in KINDS[1:]:
                        row[f"{k} samples/s"] = round(statistics.median(res[k]))
                        row[f"{k} / plain (min/med/max)"] = spread(
                            [a / b for a, b in zip(res[k], res["plain"])])
                    rows.append(row)
                    print(row, flush=True)

    if "runs" not in skip:
        # Whole training runs (what a user waits for) on the first dataset: epochs with a
        # validation pass each, plain loop vs train_plan with and without batches_per_call.
        epochs = 1 if args.quick else args.run_epochs
        name, data = datasets[0]
        for backbone in ("fm", "deepfm"):
            for bs in batch_sizes:
                fns = {"plain": lambda b=backbone, bs=bs: plain_run(data, b, bs, epochs),
                       "train_plan": lambda b=backbone, bs=bs: train_plan_run(
                           data, b, bs, epochs, 8),
                       "train_plan, 1 batch a call": lambda b=backbone, bs=bs: train_plan_run(
                           data, b, bs, epochs, 1)}
                res = interleaved(fns, repeats)
                row = {"part": "runs", "data": name, "backbone": backbone, "batch": bs,
                       "epochs": epochs, "plain samples/s": round(statistics.median(res["plain"]))}
                for k in list(fns)[1:]:
                    row[f"{k} samples/s"] = round(statistics.median(res[k]))
                    row[f"{k} / plain (min/med/max)"] = spread(
                        [a / b for a, b in zip(res[k], res["plain"])])
                rows.append(row)
                print(row, flush=True)

    if "sweep" not in skip:
        scales = [1, 10] if args.quick else [int(s) for s in args.scales.split(",")]
        sweep_rows = 20_000 if args.quick else args.rows
        bs = batch_sizes[0]
        datas = {s: make_planted("planted", rows=sweep_rows, seed=0, cardinalities=[
            c * s for c in PRESETS["planted"].cardinalities]) for s in scales}
        # One epoch of train_plan per size (what a user waits for; the first steps of a big
        # table also pay its first-touch page faults); the plain loop (dense Adam over the
        # whole table every step) only at the smallest size, as the reference.
        epoch = len(next(iter(datas.values())).train) // bs
        sweep_steps = min(epoch, args.sweep_steps) if args.sweep_steps else epoch
        fns = {("plain", scales[0]): lambda d=datas[scales[0]]: measure("plain", d, "fm", bs,
                                                                        sweep_steps)}
        for s, data in datas.items():
            fns[("train_plan", s)] = lambda d=data: measure("train_plan", d, "fm", bs,
                                                            sweep_steps)
        res = interleaved(fns, repeats)
        base = scales[0]
        for s in scales:
            row = {"part": "vocab sweep", "data": f"planted x{s}",
                   "ids": datas[s].schema.total_rows, "rows": sweep_rows, "backbone": "fm",
                   "batch": bs, "steps": sweep_steps,
                   "train_plan samples/s": round(statistics.median(res[("train_plan", s)])),
                   f"train_plan / same at {datas[base].schema.total_rows:,} ids (min/med/max)":
                   spread([a / b for a, b in zip(res[("train_plan", s)],
                                                 res[("train_plan", base)])]),
                   f"train_plan / plain at {datas[base].schema.total_rows:,} ids (min/med/max)":
                   spread([a / b for a, b in zip(res[("train_plan", s)],
                                                 res[("plain", base)])])}
            rows.append(row)
            print(row, flush=True)
        del datas

    if "rss" not in skip:
        scales = [10] if args.quick else [int(s) for s in args.scales.split(",")]
        rss_rows = 20_000 if args.quick else args.rows
        for s in scales:
            r = run_rss(s, rss_rows, batch_sizes[0], 1)
            held = r["peak_mib"] - r["before_mib"]
            row = {"part": "peak RSS", "data": f"planted x{s}", "rows": rss_rows,
                   "embedding MiB": round(r["embedding_mib"], 1),
                   "RSS before training MiB": round(r["before_mib"]),
                   "peak RSS MiB": round(r["peak_mib"]),
                   "(peak - before) / embedding": round(held / max(r["embedding_mib"], 1e-9), 2)}
            rows.append(row)
            print(row, flush=True)

    on = "" if DEVICE == "cpu" else f"_{_accelerator()}"
    stem = results_stem("throughput" + on, args.quick)
    titles = {"model": "Training throughput vs an independent plain PyTorch loop"
                       + (f" on {DEVICE}" if on else ""),
              "runs": "Whole training runs (validation each epoch) vs a plain PyTorch run",
              "vocab sweep": "Samples/s as the vocabulary grows (fixed rows)",
              "peak RSS": "Peak RSS of train_plan vs embedding bytes"}
    for part, title in titles.items():
        part_rows = [{k: v for k, v in r.items() if k != "part"} for r in rows
                     if r["part"] == part]
        if part_rows:
            suffix = {"model": "", "runs": "_runs", "vocab sweep": "_sweep",
                      "peak RSS": "_rss"}[part]
            print(write_table(part_rows, stem + suffix, title=title))


if __name__ == "__main__":
    main()
