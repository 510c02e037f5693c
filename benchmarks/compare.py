"""Every searcher and every baseline at equal bytes: test AUC, logloss, bytes, search cost.

For each dataset (the planted synthetic presets ``planted``, signal in the small fields, and
``decoupled``, signal in the large fields, so vocabulary size gives no hint of the rank; and
MovieLens-100K), backbone (FM, DeepFM), budget
(4x, 10x, 20x, 40x fewer embedding bytes than the full D=16 table) and seed it runs:

- the baselines: ``full`` (the reference, listed at 1x), ``uniform``, ``mde``, ``hash``,
  ``qr`` and ``memcom`` (plans made from the schema and the budget, then trained),
  ``uniform-alpha`` (the bytes-only plan: darts/autodim's budget projection
  :func:`autodim.budget.fit_dims_to_budget` fed a uniform α, i.e. the same preference for
  every candidate, so only bytes decide), ``oracle`` on planted data (the rank-informed plan
  :func:`autodim.data.synthetic.rank_informed_dims`: the dims that keep the most planted
  signal under the budget; it reads the hidden ranks, so it is a ceiling, not a method) and
  ``magprune`` (one-shot magnitude pruning of the trained full model; its plan is not
  retrained, by design: its AUC is the pruned model's);
- every registered searcher (``list_searchers()``): search under the budget, then retrain
  the plan from a fresh initialisation with the shared training settings
  (``retrain(task, result)``; ``--warm-start searcher`` starts from the searcher's warm
  start where it gives one, as a study trial does).

``spearman`` (planted data) is the Spearman rank correlation between a plan's per-field dims
and the planted ranks (empty when every field has the same dim).

``search/full`` is a method's search wall time over the wall time of one full D=16
training (same data, backbone and seed) measured in the same process. ``sseds`` and
``magprune`` score / prune that very reference model (the model their own training would
produce: same seed, same settings), so their search time is that training plus their own
pass. The baselines' search time is the time to make their plan.

A method that cannot reach a budget (:class:`~autodim.errors.BudgetError`: uniform and MDE
stop near 16x at D=16, a sparse table pays its row pointers) is listed as infeasible; one
that raises anything else is listed with its error. Rows are appended to the CSV as they
finish and a rerun skips the (dataset, backbone, ratio, method, seed) combos already there,
so a long run can be continued or extended (more seeds, more methods) into the same files.

Outputs (``--quick``: ``compare_quick.*``, git-ignored):

- ``benchmarks/results/compare.csv``: one row per run;
- ``benchmarks/results/compare.md``: data, splits, seeds and settings, then per dataset and
  backbone a table of mean ± std (over seeds) test AUC, logloss, bytes, compression and
  search time;
- ``benchmarks/results/compare.html``: the Pareto chart (test AUC vs bytes, one point per
  method and budget, the mean over seeds) per dataset and backbone; plotly.js from its CDN.

Usage::

    python benchmarks/compare.py --quick          # tiny data, FM, 1 seed, 2 budgets (< 90 s)
    python benchmarks/compare.py --datasets planted,ml100k --backbones fm --seeds 0,1,2
    python benchmarks/compare.py --methods darts,pep --seeds 0,1    # add rows to the same CSV
    python benchmarks/compare.py --set optembed.generations=10      # a searcher setting (JSON)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import math
import sys
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import RESULTS, default_ml100k, dims_text, load_datasets, read_rows

D = 16
PLAN_BASELINES = ("full", "uniform", "mde", "hash", "qr", "memcom", "uniform-alpha", "oracle")
PLANTED_ONLY = ("oracle",)  # needs the hidden ranks
FULL_EPOCHS = "<epochs of the full reference run>"

# Full-mode searcher settings, chosen so that one search costs about one or two full
# trainings (defaults otherwise). Quick mode uses each searcher's ``quick_settings``.
FULL_SETTINGS: dict[str, dict[str, Any]] = {
    # 10 supernet epochs of bilevel steps (~3x a plain step) would be ~6 full trainings.
    "darts": {"epochs": 3, "warmup_epochs": 1.0},
    "autodim": {"epochs": 3, "warmup_epochs": 1.0},
    # As many epochs as the full model trained for (it stops once the target is reached).
    "pep": {"epochs": FULL_EPOCHS},
    # Below one column per field (20x, 40x on planted data) the budget must drop fields.
    "sseds": {"allow_drop_fields": True},
    "optembed": {"supernet_epochs": 4, "generations": 15},
    "blackbox": {"n_candidates": 8, "epochs": 1},
}

COLUMNS = ["dataset", "backbone", "ratio", "method", "seed", "kind", "status", "test_auc",
           "test_logloss", "val_auc", "bytes", "budget_bytes", "compression", "spearman",
           "search_s", "full_train_s", "search/full", "search_cpu_s", "full_train_cpu_s",
           "search/full cpu", "train_s", "epochs", "retrained", "warm_start", "candidates",
           "dims", "settings", "note", "finished"]


# -- bookkeeping ----------------------------------------------------------------------------
def ratio_key(r: float) -> str:
    return f"{r:g}"


def row_key(row: dict[str, Any]) -> tuple[str, str, str, str, str]:
    return (str(row["dataset"]), str(row["backbone"]), str(row["ratio"]), str(row["method"]),
            str(row["seed"]))


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row (header first if the file is new); flushed at once, so a killed run
    keeps every finished row."""
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header != COLUMNS:  # written by an older version: rewrite under today's columns
            old = read_rows(path)
            with open(path, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
                w.writeheader()
                w.writerows(old)
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({c: _csv_value(row.get(c)) for c in COLUMNS})


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else v


def spearman_to_ranks(plan, ranks: dict[str, int] | None) -> float:
    """Spearman correlation of the plan's per-field dims with the planted ranks (NaN without
    ranks or when either side is constant)."""
    if not ranks:
        return math.nan
    import numpy as np
    from scipy.stats import spearmanr

    dims = np.array([plan.dims[n] for n in ranks], dtype=float)
    r = np.array(list(ranks.values()), dtype=float)
    if dims.std() == 0 or r.std() == 0:
        return math.nan
    return float(spearmanr(dims, r).statistic)


def uniform_alpha_dims(schema, D: int, cands, budget: int) -> dict[str, int]:
    """The plan darts/autodim's projection makes when α says nothing: every candidate equally
    likely, so the argmax start is the first candidate and growth follows
    ``P(level >= k+1)`` per byte (the supernet's tail scores), i.e. bytes alone decide."""
    import numpy as np

    from autodim.budget import fit_dims_to_budget

    K = len(cands)
    tails = (K - np.arange(K)) / K  # P(level >= k) under a uniform alpha
    score = np.cumsum(np.concatenate([[0.0], tails[1:]]))
    return fit_dims_to_budget(schema, D, list(cands), {n: list(score) for n in schema.names},
                              budget)


# -- one (dataset, backbone, seed) group ------------------------------------------------------
class Group:
    """Runs the methods of one dataset, backbone and seed, around one full reference run."""

    def __init__(self, dname: str, data, backbone: str, seed: int, cfg, cands, quick: bool,
                 overrides: dict[str, dict[str, Any]], warm_start: str = "none"):
        self.dname, self.data, self.backbone, self.seed = dname, data, backbone, seed
        self.warm_start = warm_start
        self.cfg = replace(cfg, seed=seed)
        self.cands, self.quick, self.overrides = cands, quick, overrides
        self.full = self.data.schema.total_rows * D * 4
        self._ref = None
        self.t_full = self.cpu_full = math.nan

    def dm(self):
        # A fresh datamodule per run: its loaders count epochs, which seed the shuffles.
        from autodim.data.datamodule import CTRDataModule

        return CTRDataModule(self.data, batch_size=self.cfg.batch_size, seed=self.seed)

    def reference(self):
        """The full D=16 model of this seed, trained (and timed) once per process."""
        if self._ref is None:
            from autodim.plan import DimensionPlan
            from autodim.task import train_plan

            t0, c0 = time.perf_counter(), time.process_time()
            self._ref = train_plan(DimensionPlan.full(self.data.schema, D), self.dm(),
                                   backbone=self.backbone, config=self.cfg)
            self.t_full = time.perf_counter() - t0
            self.cpu_full = time.process_time() - c0
        return self._ref

    def base(self, method: str, ratio: float, kind: str) -> dict[str, Any]:
        return {"dataset": self.dname, "backbone": self.backbone, "ratio": ratio_key(ratio),
                "method": method, "seed": self.seed, "kind": kind,
                "budget_bytes": None if ratio == 1 else int(self.full / ratio)}

    def full_row(self) -> dict[str, Any]:
        from autodim.plan import DimensionPlan

        ref = self.reference()
        m = ref.metrics
        row = self.base("full", 1, "reference")
        plan = DimensionPlan.full(self.data.schema, D)
        row.update(status="ok", test_auc=m["test_auc"], test_logloss=m["test_logloss"],
                   val_auc=m["val_auc"], bytes=plan.num_bytes(), compression=1.0,
                   full_train_s=self.t_full, full_train_cpu_s=self.cpu_full,
                   train_s=self.t_full, epochs=m["epochs"],
                   retrained=True, warm_start=False, dims=dims_text(plan, detail=True))
        return row

    def candidates(self, budget: int) -> tuple[int, ...]:
        """The candidate dims; ``auto``: the library's default, 0 (drop the field), 1, 2, 4,
        8 and 16, as every single run and study gets them."""
        if self.cands != "auto":
            return self.cands
        from autodim.study.space import DEFAULT_CANDIDATE_DIMS

        return tuple(DEFAULT_CANDIDATE_DIMS)

    def settings(self, method: str) -> dict[str, Any]:
        from autodim.searchers import get_searcher

        cls = get_searcher(method)
        s = dict(cls.quick_settings) if self.quick else dict(FULL_SETTINGS.get(method, {}))
        s.update(self.overrides.get(method, {}))
        for k, v in s.items():
            if v == FULL_EPOCHS:
                s[k] = max(1, int(self.reference().metrics["epochs"]))
        return s

    def run(self, method: str, ratio: float) -> dict[str, Any]:
        """One method at one budget; the row records its result, infeasibility or error."""
        from autodim.errors import BudgetError

        is_plan = method in PLAN_BASELINES
        kind = "baseline" if is_plan else self._searcher_kind(method)
        row = self.base(method, ratio, kind)
        try:
            row.update(self._plan_run(method, row["budget_bytes"]) if is_plan
                       else self._search_run(method, row["budget_bytes"]))
            row["status"] = "ok"
            if row.get("bytes") and row["budget_bytes"] and row["bytes"] > row["budget_bytes"]:
                row["note"] = (f"over budget by {row['bytes'] - row['budget_bytes']} B; "
                               + (row.get("note") or ""))
        except BudgetError as exc:
            row.update(status="infeasible", note=str(exc).splitlines()[0])
        except Exception as exc:  # noqa: BLE001 - a failing method is a result, not a crash
            traceback.print_exc()
            row.update(status="error", note=f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                       if str(exc) else type(exc).__name__)
        return row

    @staticmethod
    def _searcher_kind(method: str) -> str:
        from autodim.searchers import get_searcher

        return "searcher" if get_searcher(method).retrain else "baseline"

    def _baseline(self, method: str, budget: int):
        from autodim.baselines import baseline_plan
        from autodim.plan import DimensionPlan

        schema = self.data.schema
        if method == "uniform-alpha":
            dims = uniform_alpha_dims(schema, D, self.candidates(budget), budget)
        elif method == "oracle":
            from autodim.data.synthetic import rank_informed_dims

            dims = rank_informed_dims(schema, self.data.meta["planted_ranks"], D, budget)
        else:
            return baseline_plan(method, schema, D, budget)
        return DimensionPlan.from_dims(schema, D, dims, searcher={"name": method,
                                       "settings": {}}, budget_bytes=budget)

    def _plan_run(self, method: str, budget: int) -> dict[str, Any]:
        from autodim.task import train_plan

        t0, c0 = time.perf_counter(), time.process_time()
        plan = self._baseline(method, budget)
        plan_s, plan_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        m = train_plan(plan, self.dm(), backbone=self.backbone, config=self.cfg).metrics
        return {"test_auc": m["test_auc"], "test_logloss": m["test_logloss"],
                "val_auc": m["val_auc"], "bytes": plan.num_bytes(),
                "compression": plan.compression(), "search_s": plan_s,
                "spearman": spearman_to_ranks(plan, self.data.meta.get("planted_ranks")),
                "search_cpu_s": plan_cpu,
                "train_s": time.perf_counter() - t0, "epochs": m["epochs"], "retrained": True,
                "warm_start": False, "dims": dims_text(plan, detail=True),
                "settings": plan.searcher.get("settings", {})}

    def _search_run(self, method: str, budget: int) -> dict[str, Any]:
        from autodim.searchers import SearchTask, create_searcher, get_searcher, retrain

        settings = self.settings(method)
        cands = self.candidates(budget)
        task = SearchTask(data=self.dm(), D=D, budget_bytes=budget, candidate_dims=cands,
                          backbone=self.backbone, train=self.cfg, seed=self.seed)
        searcher = create_searcher(method, **settings)
        pretrained = searcher.accepts_pretrained
        ref = self.reference() if pretrained else None
        t0, c0 = time.perf_counter(), time.process_time()
        result = searcher.run(task, ref)
        search_s, search_cpu = time.perf_counter() - t0, time.process_time() - c0
        if pretrained:
            search_s, search_cpu = search_s + self.t_full, search_cpu + self.cpu_full
        plan = result.plan
        out = {"bytes": plan.num_bytes(), "compression": plan.compression(),
               "spearman": spearman_to_ranks(plan, self.data.meta.get("planted_ranks")),
               "search_s": search_s, "search_cpu_s": search_cpu,
               "dims": dims_text(plan, detail=True),
               "settings": settings, "candidates": " ".join(map(str, cands)),
               "note": "search = the full reference training + its own pass" if pretrained
               else ""}
        if get_searcher(method).retrain:
            warm = self.warm_start == "searcher" and result.warm_start is not None
            t0 = time.perf_counter()
            task = replace(task, data=self.dm())
            m = retrain(task, result, warm_start=warm).metrics
            out.update(test_auc=m["test_auc"], test_logloss=m["test_logloss"],
                       val_auc=m["val_auc"], train_s=time.perf_counter() - t0,
                       epochs=m["epochs"], retrained=True, warm_start=warm)
        else:
            ev = result.history["eval"]
            out.update(test_auc=ev["test_auc"], test_logloss=ev["test_logloss"],
                       val_auc=ev["val_auc"], retrained=False, warm_start=False,
                       note=(out["note"] + "; not retrained").lstrip("; "))
        return out


# -- the report -----------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def summarize(rows: list[dict[str, Any]], method_order: list[str]) -> list[dict[str, Any]]:
    """One line per (dataset, backbone, ratio, method): mean ± std over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["backbone"], r["ratio"], r["method"]), []).append(r)
    order = {m: i for i, m in enumerate(method_order)}
    first = {}  # datasets and backbones in the order the CSV first has them
    for r in rows:
        first.setdefault((r["dataset"], r["backbone"]), len(first))

    def sort_key(k):
        return (first[(k[0], k[1])], float(k[2]), order.get(k[3], len(order)), k[3])

    out = []
    for key in sorted(groups, key=sort_key):
        runs = groups[key]
        ok = [r for r in runs if r["status"] == "ok"]
        line: dict[str, Any] = {"dataset": key[0], "backbone": key[1], "ratio": key[2],
                                "method": key[3], "kind": runs[0].get("kind", ""),
                                "seeds": len(ok), "runs": len(runs)}
        notes = sorted({r["note"] for r in runs if r["status"] != "ok" and r.get("note")})
        if ok:
            for col in ("test_auc", "test_logloss", "bytes", "compression", "spearman",
                        "search/full",
                        "search/full cpu", "full_train_s"):
                vals = [_f(r.get(col)) for r in ok if not math.isnan(_f(r.get(col)))]
                line[col] = _mean_std(vals) if vals else (math.nan, math.nan)
            line["budget_bytes"] = _f(runs[0].get("budget_bytes"))
            line["dims"] = ok[0].get("dims", "")
            line["retrained"] = str(ok[0].get("retrained")) == "True"
        bad = [r["status"] for r in runs if r["status"] != "ok"]
        line["status"] = ("ok" if not bad else bad[0] if not ok else
                          f"ok ({len(bad)} {bad[0]})")
        line["notes"] = notes
        out.append(line)
    return out


def _fmt(v: float, spec: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown_tables(summary: list[dict[str, Any]], bayes: dict[str, float]) -> str:
    cols = ["ratio", "method", "seeds", "test AUC (mean ± std)", "test logloss", "bytes",
            "compression", "Spearman(dims, ranks)", "search / full train (wall, CPU)", "note"]
    parts = []
    for (dname, backbone) in dict.fromkeys((s["dataset"], s["backbone"]) for s in summary):
        lines = [f"### {dname}, {backbone.upper() if backbone == 'fm' else backbone}", ""]
        if dname in bayes:
            lines += [f"Bayes-optimal test AUC (the teacher's own probabilities): "
                      f"{bayes[dname]:.4f}", ""]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for s in summary:
            if (s["dataset"], s["backbone"]) != (dname, backbone):
                continue
            ratio = f"{s['ratio']}x"
            if s["status"] in ("infeasible", "error"):
                note = s["status"] + (": " + "; ".join(s["notes"]) if s["notes"] else "")
                lines.append(f"| {ratio} | {s['method']} | 0 | {s['status']} |  |  |  |  |  | "
                             f"{_md_escape(note)} |")
                continue
            auc, sd = s["test_auc"]
            ll = s["test_logloss"][0]
            nbytes = s["bytes"][0]
            comp = s["compression"][0]
            srat = s["search/full"][0]
            crat = s["search/full cpu"][0]
            note = []
            if not s.get("retrained", True):
                note.append("not retrained")
            if s["status"] != "ok":
                note.append(s["status"] + ": " + "; ".join(s["notes"]))
            if s["budget_bytes"] and not math.isnan(s["budget_bytes"]) \
                    and nbytes > s["budget_bytes"]:
                note.append("OVER BUDGET")
            auc_txt = f"{auc:.4f}" + (f" ± {sd:.4f}" if not math.isnan(sd) else "")
            lines.append(f"| {ratio} | {s['method']} | {s['seeds']} | {auc_txt} | "
                         f"{_fmt(ll, '.4f')} | {nbytes:,.0f} | {_fmt(comp, '.1f')}x | "
                         f"{_fmt(s['spearman'][0], '.2f')} | "
                         f"{_fmt(srat, '.2f')}" + (f", {crat:.2f}" if not math.isnan(crat) else "")
                         + f" | {_md_escape('; '.join(note))} |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def pareto_html(summary: list[dict[str, Any]], bayes: dict[str, float],
                full_bytes: dict[str, int], path: Path) -> Path:
    """One Pareto chart (mean test AUC vs bytes per method and budget) per dataset and
    backbone, in one HTML file."""
    import pandas as pd

    figs = []
    for (dname, backbone) in dict.fromkeys((s["dataset"], s["backbone"]) for s in summary):
        recs = []
        for i, s in enumerate(summary):
            if (s["dataset"], s["backbone"]) != (dname, backbone) or "test_auc" not in s:
                continue
            base = s["kind"] in ("baseline", "reference")
            nbytes = s["bytes"][0]
            budget = s["budget_bytes"]
            recs.append({"trial": i, "method": ("baseline:" if base else "") + s["method"],
                         "kind": "baseline" if base else "search", "bytes": nbytes,
                         "test_auc": s["test_auc"][0], "compression": s["compression"][0],
                         "budget": f"{s['ratio']}x",
                         "feasible": bool(math.isnan(budget) or nbytes <= budget),
                         "hover": f"{s['seeds']} seed(s), ± {_fmt(s['test_auc'][1], '.4f')}; "
                                  f"dims {s.get('dims', '')}"})
        if not recs:
            continue
        df = pd.DataFrame(recs)
        ratios = sorted({float(s["ratio"]) for s in summary if s["dataset"] == dname} - {1.0})
        budgets = {f"{r:g}x": int(full_bytes[dname] / r) for r in ratios}
        title = f"{dname}, {backbone}: test AUC (mean over seeds) vs embedding bytes"
        figs.append(_figure(df, budgets, full_bytes[dname], bayes.get(dname), title))
    html = ["<html><head><meta charset='utf-8'><title>autodim compare</title></head><body>"]
    for k, fig in enumerate(figs):
        html.append(fig.to_html(full_html=False, include_plotlyjs="cdn" if k == 0 else False))
    html.append("</body></html>")
    path.write_text("\n".join(html))
    return path


def _figure(df, budgets, full_bytes, bayes_auc, title):
    try:
        from autodim.viz import pareto_figure_from_frame
    except (ImportError, AttributeError):
        pareto_figure_from_frame = None
    if pareto_figure_from_frame is not None:
        return pareto_figure_from_frame(df, budgets=budgets, full_bytes=full_bytes,
                                        bayes_auc=bayes_auc, metric="test_auc", title=title)
    import plotly.express as px  # fallback: a plain scatter

    fig = px.scatter(df, x="bytes", y="test_auc", color="method", symbol="kind", log_x=True,
                     hover_data=["budget", "hover"], title=title)
    return fig


def describe(args, data_info: dict[str, str], cfg, ratios: list[str],
             seeds_by_kind: dict[str, list[int]], settings: dict[str, dict[str, Any]]
             ) -> str:
    lines = [
        "Every method trains the same backbone with the same settings "
        f"(Adam / SparseAdam, lr {cfg.lr}, batch {cfg.batch_size}, at most {cfg.max_epochs} "
        f"epochs, early stopping on validation AUC with patience {cfg.patience}, best epoch "
        f"restored); D={D}; budgets are {', '.join(r + 'x' for r in ratios)} "
        "fewer embedding bytes (float32 tables, projections and indices counted) than the "
        "full D=16 model. Test AUC/logloss are on the held-out test split; ± is the standard "
        "deviation over seeds (n−1). A seed sets initialisation, shuffling and the search; the "
        "data and its split are fixed. Searched plans are retrained "
        + ("from a fresh initialisation" if args.warm_start == "none" else
           "from the searcher's warm start where it gives one")
        + "; magprune is reported without retraining. "
        "`search / full train` is the search's wall time (and process CPU time, which load "
        "from other jobs on a shared machine disturbs less) over that of one full D=16 "
        "training of the same seed in the same process (sseds and magprune score that "
        "reference model, so theirs is that training plus their own pass). Candidate dims "
        + ("0 (the field is dropped), 1, 2, 4, 8 and 16, the library's default."
           if args.cands == "auto" else f"{list(args.cands)}."),
        "",
    ]
    for name, info in data_info.items():
        lines.append(f"- **{name}**: {info}")
    for kind, seeds in seeds_by_kind.items():
        if seeds:
            lines.append(f"- seeds of the {kind}: {', '.join(map(str, seeds))}")
    if settings:
        def text(by_data: dict[str, Any]) -> str:
            values = {json.dumps(v, sort_keys=True) for v in by_data.values()}
            if len(values) == 1:
                return values.pop() if values != {"{}"} else "defaults"
            return ", ".join(f"{json.dumps(v, sort_keys=True)} on {d}"
                             for d, v in by_data.items())
        lines.append("- searcher settings (others at their defaults): " + "; ".join(
            f"{m}: {text(by_data)}" for m, by_data in settings.items()))
    lines.append(f"- machine: {_machine()}")
    return "\n".join(lines) + "\n"


def _machine() -> str:
    import os

    import torch

    return (f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s)")


def data_description(name: str, data) -> str:
    s = data.schema
    n = (len(data.train), len(data.val), len(data.test))
    base = (f"{s.num_fields} fields, {s.total_rows:,} ids (full D=16 table "
            f"{s.total_rows * D * 4:,} B); train/val/test {n[0]:,}/{n[1]:,}/{n[2]:,} rows")
    src = data.meta.get("source", "")
    if str(src).startswith("synthetic"):
        ranks = data.meta.get("planted_ranks", {})
        return (f"built-in planted data (`make_planted`, preset {src.split(':')[-1]}, seed 0: "
                f"Zipf ids, labels from a hidden teacher; planted ranks "
                f"{list(ranks.values())}, rank 0 = noise field); {base}; contiguous 8:1:1 "
                f"split of i.i.d. rows; Bayes-optimal test AUC "
                f"{data.meta.get('bayes_auc', math.nan):.4f}")
    meta = data.meta
    return (f"MovieLens-100K, RecBole atomic files (label = {meta.get('label', 'rating >= 4')}, "
            f"user and item features); random {meta.get('split', [0.8, 0.1, 0.1])} split of "
            f"the interactions with seed {meta.get('seed', 0)}; {base}")


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny planted data, FM, seed 0, 4x/10x, quick settings, 1 epoch")
    ap.add_argument("--datasets", default=None,
                    help="comma list: planted, decoupled, ml100k, tiny (default: the first three)")
    ap.add_argument("--ml100k", default=None, help="MovieLens-100K folder (RecBole files)")
    ap.add_argument("--backbones", default=None, help="comma list (default fm,deepfm)")
    ap.add_argument("--ratios", default=None, help="comma list (default 4,10,20,40)")
    ap.add_argument("--methods", default="all",
                    help="comma list of baselines and searchers (default: all)")
    ap.add_argument("--seeds", default=None, help="comma list (default 0,1,2)")
    ap.add_argument("--epochs", type=int, default=None, help="max training epochs (10)")
    ap.add_argument("--patience", type=int, default=2,
                    help="early-stopping patience in epochs of no validation-AUC gain (2)")
    ap.add_argument("--candidate-dims", default="auto",
                    help="comma list, or auto: the default 0,1,2,4,8,16 (0 drops a field)")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=JSON",
                    help="a searcher setting, e.g. --set optembed.generations=10")
    ap.add_argument("--warm-start", choices=("none", "searcher"), default="none",
                    help="retrain searched plans fresh (default) or from the searcher's "
                         "warm start")
    ap.add_argument("--lr", type=float, default=3e-3, help="learning rate (3e-3)")
    ap.add_argument("--rows", type=int, default=None,
                    help="rows of the planted datasets (default 200000; quick 20000)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stem", default=None, help="output file stem (default compare[_quick])")
    ap.add_argument("--fresh", action="store_true", help="discard the CSV's rows first")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild the Markdown/HTML from the CSV without running anything")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    from autodim.baselines import BASELINES
    from autodim.searchers import list_searchers
    from autodim.task import TrainConfig

    q = args.quick
    args.datasets = args.datasets or ("tiny" if q else "planted,decoupled,ml100k")
    args.backbones = args.backbones or ("fm" if q else "fm,deepfm")
    args.ratios = args.ratios or ("4,10" if q else "4,10,20,40")
    args.seeds = args.seeds or ("0" if q else "0,1,2")
    args.cands = (args.candidate_dims if args.candidate_dims == "auto" else
                  tuple(int(c) for c in args.candidate_dims.split(",")))
    searchers = list_searchers()
    all_methods = list(PLAN_BASELINES) + [m for m in searchers if m not in BASELINES]
    methods = all_methods if args.methods == "all" else [m.strip() for m in
                                                         args.methods.split(",")]
    unknown = [m for m in methods if m not in all_methods]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; known: {all_methods}")
    overrides: dict[str, dict[str, Any]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        overrides.setdefault(method, {})[name] = json.loads(value)
    cfg = TrainConfig(max_epochs=args.epochs or (1 if q else 10),
                      batch_size=256 if q else 1024, lr=args.lr, patience=args.patience)
    ratios = [float(r) for r in args.ratios.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    backbones = [b.strip() for b in args.backbones.split(",")]
    stem = args.stem or ("compare_quick" if q else "compare")
    RESULTS.mkdir(parents=True, exist_ok=True)
    csv_path = RESULTS / f"{stem}.csv"
    if args.fresh and csv_path.exists():
        csv_path.unlink()
    done = {row_key(r) for r in read_rows(csv_path)}
    t_start = time.perf_counter()

    data_info: dict[str, str] = {}
    bayes: dict[str, float] = {}
    full_bytes: dict[str, int] = {}
    names = [d.strip() for d in args.datasets.split(",")]
    ml100k = args.ml100k or default_ml100k()
    for dname, data in load_datasets(names, quick=q, ml100k=ml100k, rows=args.rows):
        data_info[dname] = data_description(dname, data)
        full_bytes[dname] = data.schema.total_rows * D * 4
        if "bayes_auc" in data.meta:
            bayes[dname] = float(data.meta["bayes_auc"])
        if args.report_only:
            continue
        for backbone in backbones:
            for seed in seeds:
                todo = [("full", 1.0)] if "full" in methods else []
                todo += [(m, r) for r in ratios for m in methods if m != "full" and (
                    m not in PLANTED_ONLY or "planted_ranks" in data.meta)]
                todo = [(m, r) for m, r in todo
                        if (dname, backbone, ratio_key(r), m, str(seed)) not in done]
                if not todo:
                    continue
                group = Group(dname, data, backbone, seed, cfg, args.cands, q, overrides,
                              args.warm_start)
                if any(m == "full" or m not in PLAN_BASELINES for m, _ in todo):
                    group.reference()  # the unit of search time, trained before the searches
                for method, ratio in todo:
                    t0 = time.perf_counter()
                    row = group.full_row() if method == "full" else group.run(method, ratio)
                    if method != "full":
                        row["full_train_s"] = group.t_full if not math.isnan(group.t_full) \
                            else None
                        row["full_train_cpu_s"] = group.cpu_full
                        if row.get("search_s") is not None and group.t_full == group.t_full:
                            row["search/full"] = row["search_s"] / group.t_full
                            row["search/full cpu"] = row["search_cpu_s"] / group.cpu_full
                    row["finished"] = dt.datetime.now().isoformat(timespec="seconds")
                    append_row(csv_path, row)
                    print(f"[{time.perf_counter() - t_start:6.0f}s] {dname} {backbone} "
                          f"{ratio:g}x {method} seed {seed}: {row['status']} "
                          f"AUC {_fmt(_f(row.get('test_auc')), '.4f')} "
                          f"bytes {row.get('bytes')} ({time.perf_counter() - t0:.1f}s) "
                          f"{row.get('note') or ''}", flush=True)

    rows = read_rows(csv_path)
    if not rows:
        print("no rows")
        return 1
    summary = summarize(rows, all_methods)
    seeds_by_kind = {
        "baselines": sorted({int(r["seed"]) for r in rows if r["kind"] != "searcher"}),
        "searchers": sorted({int(r["seed"]) for r in rows if r["kind"] == "searcher"})}
    used: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["kind"] == "searcher" or r["method"] == "magprune":
            used.setdefault(r["method"], {}).setdefault(
                f"{r['dataset']} {r['backbone']}",
                json.loads(r["settings"]) if r["settings"] else {})
    # The report covers every dataset and budget in the CSV, not only this invocation's.
    missing = [d for d in dict.fromkeys(r["dataset"] for r in rows) if d not in data_info]
    for dname, data in load_datasets(missing, quick=q, ml100k=ml100k, rows=args.rows):
        data_info[dname] = data_description(dname, data)
        full_bytes[dname] = data.schema.total_rows * D * 4
        if "bayes_auc" in data.meta:
            bayes[dname] = float(data.meta["bayes_auc"])
    data_info = {d: data_info[d] for d in dict.fromkeys(r["dataset"] for r in rows)
                 if d in data_info}
    ratios_seen = sorted({float(r["ratio"]) for r in rows} - {1.0})
    text = (f"# Searchers and baselines at equal bytes{' (quick)' if q else ''}\n\n"
            + describe(args, data_info, cfg, [ratio_key(r) for r in ratios_seen],
                       seeds_by_kind, used)
            + "\n" + markdown_tables(summary, bayes))
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)
    try:
        print(f"wrote {pareto_html(summary, bayes, full_bytes, RESULTS / f'{stem}.html')}")
    except ImportError as exc:  # plotly / pandas missing: the table still stands
        print(f"no Pareto chart: {exc}", file=sys.stderr)
    print(f"total {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
