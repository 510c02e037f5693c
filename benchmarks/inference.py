"""Inference latency and on-disk bytes of exported compact models vs the full model.

Each plan at ``--ratio`` (default 10x) fewer embedding bytes than the full D=16 table is
exported with :mod:`autodim.export` (``save_weights`` + ``export_plan``), loaded back with
``load_model`` (what a serving process does) and timed:

- ``full`` (the reference), ``uniform``, ``mde``, ``hash``, ``qr``, ``memcom`` (the
  baselines' plans), and three masked forms: ``sparse`` (global magnitude pruning of the
  table's entries: CSR storage, as ``magprune`` / ``pep`` emit), ``row-pruned`` (the most
  frequent rows of each field kept, the others read the shared OOV row, as ``optembed``
  emits) and ``select`` (SSEDS-style kept columns, a non-prefix column set per field);
- latency of ``model(ids)`` per batch of 1, 256 and 4096 rows, the models interleaved
  round by round (each round times every model once on the same batch) so machine load
  hits them alike, under ``torch.inference_mode`` with ``--threads`` threads; per model
  the median milliseconds, and the ratio of its median to the full model's over the same
  rounds as ``min/median/max`` over 5 repeats (blocks of rounds) (aim: median <= 1.2x);
- the bytes of ``weights.safetensors``: its JSON header, the backbone's tensors, and the
  embedding's tensors, against ``plan.num_bytes()`` (which counts what a serving system
  must store: kept values and indices of masked tables, not dense training copies).
  ``extra tensors in file`` names any dense copy or mask buffer that should not be there;
- the resident bytes of the loaded embedding (every distinct tensor storage it holds,
  :func:`autodim.embeddings.fused.resident_bytes`) against ``plan.num_bytes()``: the
  difference is the stated constant, split into the rank directories of kept-rows tables
  (``ceil(b/32)*4 + b`` bytes for a bitmap of ``b`` bytes, plus a 4 KiB bit table, and a
  fused group's kept positions for small lookups, 4 bytes a kept row; derived at load, not
  stored) and per-column metadata (offsets, moduli, projection maps of the
  small-batch path), which does not grow with the vocabulary.

``load_model`` serves masked tables in their stored form: element-pruned tables as CSR
(a lookup gathers the stored entries), row-pruned ones as the kept rows plus the keep
bitmap (an id reads its rank among the kept ids; a field that keeps a prefix of its ids,
the most frequent, reads the id itself). ``row-pruned`` keeps the most frequent rows,
``row-scattered`` the same number of rows at random (the rank path).

The data is planted with Criteo Kaggle's 26 cardinalities divided by ``--div`` (default 10:
3.4M ids, a 216 MB full table, so gathers leave the CPU caches as in serving); weights are
the initial ones (latency and bytes do not depend on training).

    python benchmarks/inference.py [--quick] [--ratio 10] [--div 10] [--backbone fm]

Writes ``benchmarks/results/inference.{csv,md}`` (``--quick``: ``inference_quick.*``).
"""

from __future__ import annotations

import json
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

from _common import apply_allocator, parser, quiet, results_stem, write_table

D = 16


def masked_plans(schema, budget: int, seed: int = 0) -> dict:
    """The masked forms at ``budget`` bytes: sparse, row-pruned, row-scattered and select
    plans."""
    import numpy as np

    from autodim.embeddings.tables import row_pruned_bytes
    from autodim.plan import DimensionPlan, FieldPlan, encode_mask
    from autodim.searchers._tables import magnitude_masks, select_columns

    fp = schema.fingerprint()
    rng = np.random.default_rng(seed)
    out = {}

    # sparse: keep the largest |w| of N(0, 0.01) weights (what magnitude pruning keeps).
    tables = {f.name: rng.standard_normal((f.vocab_size, D), dtype=np.float32)
              for f in schema.fields}
    masks = magnitude_masks(tables, D, budget)
    del tables
    fields = []
    for f in schema.fields:
        m = masks[f.name]
        fields.append(FieldPlan(name=f.name, vocab_size=f.vocab_size,
                                dim=D if m.any() else 0, align="pad",
                                sparse={"nnz": int(m.sum()), "bits": encode_mask(m)}
                                if m.any() else None))
    out["sparse"] = DimensionPlan(fields=fields, D=D, schema_fingerprint=fp,
                                  budget_bytes=budget)
    del masks

    # row-pruned: every field keeps the same share q of its rows (the most frequent: ids
    # are numbered by descending frequency), q bisected to fit the budget.
    def kept(q: float, n: int) -> int:
        return max(1, min(n, int(round(q * n))))

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        total = sum(row_pruned_bytes(f.vocab_size, D, kept(mid, f.vocab_size))
                    for f in schema.fields)
        lo, hi = (mid, hi) if total <= budget else (lo, mid)
    fields = []
    for f in schema.fields:
        keep = np.zeros(f.vocab_size, dtype=bool)
        keep[:kept(lo, f.vocab_size)] = True
        fields.append(FieldPlan(name=f.name, vocab_size=f.vocab_size, dim=D,
                                row_mask={"kept": int(keep.sum()), "bits": encode_mask(keep)}))
    out["row-pruned"] = DimensionPlan(fields=fields, D=D, schema_fingerprint=fp,
                                      budget_bytes=budget)
    # row-scattered: the same number of kept rows per field, chosen at random (row 0, the
    # shared OOV row, always kept), as magnitude-based row pruning keeps them
    fields = []
    for f in schema.fields:
        k = kept(lo, f.vocab_size)
        keep = np.zeros(f.vocab_size, dtype=bool)
        keep[0] = True
        keep[1 + rng.choice(f.vocab_size - 1, k - 1, replace=False)] = True
        fields.append(FieldPlan(name=f.name, vocab_size=f.vocab_size, dim=D,
                                row_mask={"kept": int(keep.sum()), "bits": encode_mask(keep)}))
    out["row-scattered"] = DimensionPlan(fields=fields, D=D, schema_fingerprint=fp,
                                         budget_bytes=budget)

    # select: SSEDS' projection of (here random) column scores onto the budget, which
    # keeps arbitrary, non-prefix column sets.
    rows = {f.name: f.vocab_size for f in schema.fields}
    scores = {f.name: rng.random(D) for f in schema.fields}
    cols = select_columns(rows, D, scores, budget, allow_drop_fields=True)
    fields = [FieldPlan(name=f.name, vocab_size=f.vocab_size, dim=len(cols[f.name]),
                        align="select", columns=cols[f.name]) for f in schema.fields]
    out["select"] = DimensionPlan(fields=fields, D=D, schema_fingerprint=fp,
                                  budget_bytes=budget)
    for plan in out.values():
        plan.validate()
    return out


def safetensors_layout(path: Path) -> dict:
    """Header bytes and per-tensor bytes of a safetensors file (read from its header)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    tensors = {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
               if k != "__metadata__"}
    return {"header": 8 + n, "tensors": tensors}


def export_and_load(plan, backbone: str, folder: Path):
    """Export the plan's model as a user would and load it back for serving."""
    from autodim.export import build_model, export_plan, load_model, save_weights

    model = build_model(plan, backbone)
    tmp = folder / "trained.safetensors"
    save_weights(model, tmp, plan=plan, backbone=backbone)
    paths = export_plan(plan, folder / "export", weights=tmp, backbone=backbone)
    tmp.unlink()
    del model
    loaded = load_model(paths["plan"], paths["weights"])
    return loaded.eval(), Path(paths["weights"])


def time_models(models: dict, batches: dict[int, list], repeats: dict[int, int],
                blocks: int = 5) -> dict[str, dict[int, dict]]:
    """Per model and batch size: the median seconds per call, and its ratio to the first
    model's as ``min``, ``median``, ``max`` over ``blocks`` repeats. Each repeat is a block
    of rounds; a round times every model once on the same batch (interleaved, so machine
    load hits them alike), and a repeat's ratio is the model's median over its rounds
    divided by the first model's."""
    import torch

    ref = next(iter(models))
    out: dict[str, dict[int, dict]] = {name: {} for name in models}
    with torch.inference_mode():
        for bs, xs in batches.items():
            for m in models.values():  # warm up (allocator, caches)
                for x in xs[:3]:
                    m(x)
            samples: dict[str, list[list[float]]] = {name: [[] for _ in range(blocks)]
                                                     for name in models}
            for r in range(repeats[bs]):
                x = xs[r % len(xs)]
                for name, m in models.items():
                    t0 = time.perf_counter()
                    m(x)
                    samples[name][r % blocks].append(time.perf_counter() - t0)
            for name in models:
                ratios = [statistics.median(a) / statistics.median(b)
                          for a, b in zip(samples[name], samples[ref])]
                out[name][bs] = {"median": statistics.median(sum(samples[name], [])),
                                 "ratio": (min(ratios), statistics.median(ratios),
                                           max(ratios))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.split("\n\n")[0], quick="1/1000 of the vocabularies, few repeats",
                threads="torch threads", allocator=True)
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--div", type=int, default=None,
                    help="divide Criteo's cardinalities by this (default 10; quick 1000)")
    ap.add_argument("--backbone", default="fm")
    ap.add_argument("--batch-sizes", default="1,256,4096")
    args = ap.parse_args(argv)

    import torch

    quiet(args.threads)
    suffix = apply_allocator(args.allocator)

    from autodim.baselines import baseline_plan
    from autodim.budget import full_bytes
    from autodim.data.synthetic import CRITEO_KAGGLE_CARDINALITIES, make_planted

    q = args.quick
    div = args.div or (1000 if q else 10)
    cards = [max(2, c // div) for c in CRITEO_KAGGLE_CARDINALITIES]
    data = make_planted("criteo_kaggle", rows=20_000 if q else 200_000, seed=0,
                        cardinalities=cards)
    schema = data.schema
    budget = int(full_bytes(schema, D) / args.ratio)
    plans = {name: baseline_plan(name, schema, D, None if name == "full" else budget)
             for name in ("full", "uniform", "mde", "hash", "qr", "memcom")}
    plans.update(masked_plans(schema, budget))

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    test_ids = torch.from_numpy(data.test.ids).long()
    g = torch.Generator().manual_seed(0)
    batches = {bs: [test_ids[torch.randint(0, len(test_ids), (bs,), generator=g)]
                    for _ in range(8)] for bs in sizes}
    repeats = {bs: (30 if q else max(30, min(1000, 400_000 // (bs * 10) + 30)))
               for bs in sizes}

    from autodim.embeddings.fused import rank_bytes, resident_bytes

    rows, models, layouts = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in plans.items():
            model, wpath = export_and_load(plan, args.backbone, Path(tmp) / name)
            models[name] = model
            layouts[name] = (wpath.stat().st_size, safetensors_layout(wpath),
                             resident_bytes(model.embedding), rank_bytes(model.embedding))
        times = time_models(models, batches, repeats)

    for name, plan in plans.items():
        size, lay, resident, rank = layouts[name]
        emb = sum(v for k, v in lay["tensors"].items() if k.startswith("embedding."))
        other = sum(v for k, v in lay["tensors"].items() if not k.startswith("embedding."))
        nb = plan.num_bytes()
        row = {"model": name, "plan bytes": nb, "compression": round(plan.compression(), 2),
               "file bytes": size, "header": lay["header"], "backbone": other,
               "embedding in file": emb, "file emb / plan": round(emb / nb, 3) if nb else None,
               "bytes match": emb == nb, "resident emb bytes": resident,
               "resident / plan": round(resident / nb, 4) if nb else None,
               "resident - plan": resident - nb, "of which rank dirs": rank,
               "of which metadata": resident - nb - rank}
        for bs in sizes:
            t = times[name][bs]
            lo, med, hi = t["ratio"]
            row[f"ms @{bs}"] = round(t["median"] * 1e3, 4)
            row[f"x full @{bs} (min/med/max)"] = f"{lo:.2f}/{med:.2f}/{hi:.2f}"
        worst = max(times[name][bs]["ratio"][1] for bs in sizes)
        row["worst median x full"] = round(worst, 3)
        row["latency aim <= 1.2x"] = "met" if worst <= 1.2 else "NOT met"
        row["extra tensors in file"] = "" if emb == nb else _extras(plan, lay["tensors"])
        rows.append(row)
        print(row, flush=True)

    title = (f"Exported compact models at {args.ratio:g}x vs the full D={D} model: planted data "
             f"with Criteo Kaggle's cardinalities / {div} ({schema.total_rows:,} ids), "
             f"{args.backbone}, {torch.get_num_threads()} thread(s), {args.allocator} "
             "allocator, "
             + ", ".join(f"{repeats[bs]} @{bs}" for bs in sizes) + " interleaved rounds "
             "(ratios: min/median/max over 5 repeats of the model's median time / the full "
             "model's over the same rounds); resident - plan = rank dirs + metadata, the "
             "stated constant")
    print(write_table(rows, results_stem("inference" + suffix, q), title=title))
    return 0


def _extras(plan, tensors: dict[str, int]) -> str:
    """What the file stores beyond the plan's count, per kind of tensor (bytes)."""
    kinds: dict[str, int] = {}
    for k, v in tensors.items():
        if not k.startswith("embedding."):
            continue
        leaf = k.rsplit(".", 1)[-1]
        if leaf in ("mask", "keep", "columns"):
            kinds[f"{leaf} buffers"] = kinds.get(f"{leaf} buffers", 0) + v
    dense_masked = sum(tensors.get(f"embedding.fields.{i}.table.embedding.weight", 0)
                       for i, f in enumerate(plan.fields) if f.sparse or f.row_mask)
    if dense_masked:
        kinds["dense weights of masked tables"] = dense_masked
    return "; ".join(f"{k} {v:,}" for k, v in kinds.items()) if kinds else ""


if __name__ == "__main__":
    sys.exit(main())
