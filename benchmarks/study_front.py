"""Pareto front of a study with every registered method and every baseline.

Runs one study on planted synthetic data (and on MovieLens-100K with ``--ml100k DIR``) at
10x and 40x budgets, prints the front, and reports the best feasible compact model's test
AUC relative to the full D=16 model (aim: within 1% at 10x, 2% at 40x) and, on planted
data, its gap to the Bayes-optimal AUC. Writes ``benchmarks/results/study_front.csv`` and
``.md`` (``study_front_quick.*`` in quick mode).

    python benchmarks/study_front.py --quick          # < 2 minutes on 2 CPU cores
    python benchmarks/study_front.py                  # fuller (about 10 minutes)
    python benchmarks/study_front.py --ml100k ~/.cache/autodim/ml-100k
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS, parser, quiet, results_stem, write_csv

from autodim.searchers import get_searcher, list_searchers
from autodim.study.config import StudyConfig
from autodim.study.runner import run_study

REPO = Path(__file__).resolve().parents[1]
AIMS = {"10x": 0.01, "40x": 0.02}


def study_config(name: str, source: str, data_options: dict, *, quick: bool,
                 out: Path, compress: bool = False) -> StudyConfig:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    space_file = out / f"{name}-space.yaml"
    space_file.write_text(yaml.safe_dump(_space(quick, compress)))
    methods = [m for m in list_searchers() if get_searcher(m).retrain]
    raw = {
        "name": name, "dataset": {"source": source, **data_options}, "backbone": "fm", "D": 16,
        "methods": methods, "budgets": ["10x", "40x"], "objectives": ["val_auc", "bytes"],
        "n_trials": 8 if quick else 24,
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 6 if quick else 12},
        "seed": 0, "output": str(out), "search_space": str(space_file),
        "baselines": ["full", "uniform", "mde", "hash", "qr", "memcom", "magprune"],
        "train": {"epochs": 6 if quick else 12, "batch_size": 1024, "lr": 0.003,
                  "patience": 2},
        "search_train": {"epochs": 1 if quick else 2, "batch_size": 1024, "lr": 0.003,
                         "patience": 1},
        "pruning": {"after_epochs": 2, "margin": 0.01},
    }
    return StudyConfig.from_dict(raw, source=f"benchmark {name}")


def _space(quick: bool, compress: bool = False) -> dict:
    """The default search space with cheaper searcher settings in quick mode; ``compress``:
    the dims x bits x MEmCom compressor on (its sampled knobs as the default file lists)."""
    import yaml

    space = yaml.safe_load((REPO / "search_spaces" / "default.yaml").read_text())
    if compress:
        space["compress"]["enabled"] = True
    if quick:
        bb = space["methods"]["blackbox"]["params"]
        bb["n_candidates"] = 4
        bb["max_batches"] = 20
        space["methods"].setdefault("optembed", {"params": {}})["params"]["generations"] = 4
    return space


def summarise(res, dataset: str) -> list[dict]:
    df = res.trials_dataframe()
    done = df[df["state"] == "COMPLETE"]
    full = done[done["method"] == "baseline:full"]
    full_auc = float(full.iloc[0]["test_auc"]) if not full.empty else float("nan")
    bayes = res.bayes_auc
    rows = []
    for label, nbytes in res.budgets.items():
        feasible = done[done["bytes"] <= nbytes]
        for scope, part in (("best overall", feasible),
                            ("best searched", feasible[feasible["kind"] == "search"]),
                            ("best baseline", feasible[feasible["kind"] == "baseline"])):
            if part.empty:
                continue
            # Chosen by validation AUC, reported on test: no test-set selection.
            best = part.sort_values(["val_auc", "bytes"], ascending=[False, True]).iloc[0]
            rel = float(best["test_auc"]) / full_auc - 1
            rows.append({
                "dataset": dataset, "budget": label, "budget_bytes": nbytes, "scope": scope,
                "trial": int(best["trial"]), "method": best["method"],
                "val_auc": round(float(best["val_auc"]), 4),
                "test_auc": round(float(best["test_auc"]), 4),
                "bytes": int(best["bytes"]), "compression": round(float(best["compression"]), 1),
                "full_test_auc": round(full_auc, 4),
                "rel_to_full_pct": round(100 * rel, 2),
                "aim_met": ("yes" if rel >= -AIMS.get(label, 0.01) else "no")
                if scope == "best overall" else "",
                "bayes_auc": round(bayes, 4) if bayes else None,
                "gap_to_bayes": round(bayes - float(best["test_auc"]), 4) if bayes else None,
            })
    return rows


def pruned_for_budget(res) -> int:
    """Trials pruned because the compaction step could not bring the searched plan (searched
    under ``inflate x budget``) back under the budget."""
    return sum(1 for t in res.study.trials
               if (t.user_attrs.get("prune_reason") or {}).get("budget"))


def run(name: str, source: str, data_options: dict, quick: bool, out: Path,
        compress: bool = False) -> list[dict]:
    cfg = study_config(name, source, data_options, quick=quick, out=out, compress=compress)
    t0 = time.perf_counter()
    res = run_study(cfg, echo=print, warn=lambda m: print(f"warning: {m}"))
    seconds = time.perf_counter() - t0
    print(f"\nPareto front ({name}, {seconds:.0f} s):")
    print(res.front_table())
    rows = summarise(res, name)
    over = pruned_for_budget(res)
    print(f"trials pruned because their plan could not be brought under the budget: {over} "
          "(target 0)")
    for r in rows:
        r["study_seconds"] = round(seconds)
        r["pruned_for_budget"] = over
    return rows


def write(rows: list[dict], results: Path, quick: bool, stem: str = "study_front") -> None:
    from autodim._io import atomic_write_text
    from autodim._table import format_table

    write_csv(results / f"{stem}.csv", rows)
    cols = ["dataset", "budget", "scope", "method", "trial", "test_auc", "bytes",
            "compression", "full_test_auc", "rel_to_full_pct", "aim_met", "gap_to_bayes",
            "pruned_for_budget"]
    shown = [{**r, "compression": f"{r['compression']:.1f}x",
              "rel_to_full_pct": f"{r['rel_to_full_pct']:+.2f}%",
              "gap_to_bayes": "-" if r["gap_to_bayes"] is None else f"{r['gap_to_bayes']:.4f}"}
             for r in rows]
    md = ["# Study front: best feasible compact model vs the full D=16 model", "",
          f"Mode: {'quick' if quick else 'full'}; torch threads: {torch.get_num_threads()}; "
          "selection by validation AUC, test AUC reported. Aim: within 1% (10x) / 2% (40x) "
          "of the full model's test AUC. `best overall` may be a baseline; a plan found under the "
          "40x budget also counts under 10x.", "", "```", format_table(shown, cols), "```", ""]
    atomic_write_text(results / f"{stem}.md", "\n".join(md))


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], quick="small data, few trials (< 2 min)",
               ml100k="MovieLens-100K folder")
    p.add_argument("--rows", type=int, default=None, help="synthetic rows")
    p.add_argument("--keep", type=Path, default=None, help="keep the study folders here")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--compress", action="store_true",
                   help="enable the dims x bits x MEmCom compressor (study_front_compress.*)")
    p.add_argument("--no-synthetic", action="store_true", help="only MovieLens-100K")
    args = p.parse_args(argv)
    quiet(1)
    out = args.keep or Path(tempfile.mkdtemp(prefix="autodim-study-front-"))
    rows = [] if args.no_synthetic else run(
        "synthetic", "synthetic", {"rows": args.rows or (80_000 if args.quick else 150_000)},
        args.quick, out, args.compress)
    if args.ml100k is not None:
        rows += run("ml100k", str(Path(args.ml100k).expanduser()), {}, args.quick, out,
                    args.compress)
    if not rows:
        print("error: nothing to run (--no-synthetic without --ml100k)", file=sys.stderr)
        return 2
    # Quick runs into the default folder must not overwrite the committed full results.
    base = "study_front_compress" if args.compress else "study_front"
    stem = results_stem(base, args.quick and args.results == RESULTS)
    write(rows, args.results, args.quick, stem)
    from autodim._table import format_table

    print()
    print(format_table(rows, ["dataset", "budget", "scope", "method", "test_auc", "bytes",
                              "rel_to_full_pct", "aim_met", "gap_to_bayes"]))
    print(f"\nwritten: {args.results / (stem + '.csv')}, {args.results / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
