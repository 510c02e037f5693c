"""A finished (or running) study, read back: trials, Pareto front, plans, models.

Example:
    >>> import autodim
    >>> res = autodim.load_study("studies/quick.yaml")      # doctest: +SKIP
    >>> res.front[["trial", "method", "val_auc", "bytes"]]   # doctest: +SKIP
    >>> n = res.best_under("10x")                           # doctest: +SKIP
    >>> model = res.model(n)                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from autodim._io import atomic_write_json, atomic_write_text
from autodim._pareto import nondominated_ranks
from autodim.errors import ConfigError

__all__ = ["StudyResult", "load_study", "nondominated_ranks", "FRONT_COLUMNS"]

#: Columns of the printed front and of ``pareto.csv``.
FRONT_COLUMNS = ["trial", "kind", "method", "budget", "val_auc", "test_auc", "test_logloss",
                 "bytes", "compression", "feasible", "rank"]


class StudyResult:
    """The trials of a study and what can be done with them.

    Args:
        study: The ``optuna.Study``.
        folder: The study's folder (per-trial plans and weights, ``pareto.*``).

    Example:
        >>> res = autodim.search("studies/quick.yaml")   # doctest: +SKIP
        >>> res.trials_dataframe().groupby("method").val_auc.max()  # doctest: +SKIP
    """

    def __init__(self, study, folder: str | os.PathLike) -> None:
        self.study = study
        self.folder = Path(folder)

    # -- basic facts ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def manifest(self) -> dict[str, Any]:
        path = self.folder / "study.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    @property
    def budgets(self) -> dict[str, int]:
        """Budget label -> bytes."""
        snap = self.study.user_attrs.get("autodim_space") or {}
        return dict(snap.get("budgets") or self.manifest.get("budgets") or {})

    @property
    def objectives(self) -> list[str]:
        snap = self.study.user_attrs.get("autodim_space") or {}
        return list(snap.get("objectives") or ["val_auc", "bytes"])

    @property
    def full_bytes(self) -> int | None:
        return self.study.user_attrs.get("full_bytes")

    @property
    def bayes_auc(self) -> float | None:
        return self.study.user_attrs.get("bayes_auc")

    def __repr__(self) -> str:
        return (f"StudyResult({self.name!r}, {len(self.study.trials)} trials, "
                f"folder={str(self.folder)!r})")

    # -- tables ---------------------------------------------------------------------------
    def trials_dataframe(self):
        """One row per trial: state, kind, method, budget, metrics, bytes, feasibility,
        Pareto rank (complete feasible trials; 0 = on the front) and the sampled params."""
        import pandas as pd
        from optuna.trial import TrialState

        rows = []
        for t in self.study.get_trials(deepcopy=False):
            a = t.user_attrs
            rows.append({
                "trial": t.number, "state": t.state.name, "kind": a.get("kind", "search"),
                "method": a.get("method"), "budget": a.get("budget"),
                "budget_bytes": a.get("budget_bytes"),
                "val_auc": a.get("val_auc"), "val_logloss": a.get("val_logloss"),
                "test_auc": a.get("test_auc"), "test_logloss": a.get("test_logloss"),
                "bytes": a.get("bytes"), "compression": a.get("compression"),
                "feasible": a.get("feasible"), "rank": None, "pareto": False,
                "epochs": a.get("epochs"), "wall_seconds": a.get("wall_seconds"),
                "memcom_fields": len((a.get("memcom") or {}).get("fields") or {}),
                "params": dict(t.params), "values": list(t.values) if t.values else None,
                "reason": a.get("fail_reason") or (json.dumps(a["prune_reason"])
                                                   if a.get("prune_reason") else None),
                "_complete": t.state == TrialState.COMPLETE,
            })
        df = pd.DataFrame(rows, columns=list(rows[0]) if rows else
                          ["trial", "state", "kind", "method", "budget", "val_auc", "bytes",
                           "feasible", "rank", "pareto", "params", "values", "_complete"])
        if rows:
            ok = [i for i, r in enumerate(rows) if r["_complete"] and r["feasible"]
                  and r["values"] is not None]
            ranks = nondominated_ranks([rows[i]["values"] for i in ok],
                                       [d.name.lower() for d in self.study.directions])
            df["rank"] = df["rank"].astype("object")
            for i, r in zip(ok, ranks):
                df.at[i, "rank"] = r
                df.at[i, "pareto"] = r == 0
        return df.drop(columns=["_complete"])

    @property
    def front(self):
        """The Pareto-optimal feasible trials, sorted by bytes."""
        df = self.trials_dataframe()
        if df.empty:
            return df
        return df[df["pareto"]].sort_values(["bytes", "trial"]).reset_index(drop=True)

    def pareto_records(self) -> list[dict[str, Any]]:
        """Complete trials with params, values, feasibility and rank (front first)."""
        df = self.trials_dataframe()
        if df.empty:
            return []
        df = df[df["state"] == "COMPLETE"].copy()
        df["_r"] = df["rank"].apply(lambda r: math.inf if r is None or r != r else r)
        df = df.sort_values(["_r", "bytes", "trial"])
        out = []
        for _, r in df.iterrows():
            rec = {c: _plain(r[c]) for c in FRONT_COLUMNS}
            rec["values"] = dict(zip(self.objectives, r["values"] or []))
            rec["params"] = {k: _plain(v) for k, v in r["params"].items()}
            rec["budget_bytes"] = _plain(r["budget_bytes"])
            rec["val_logloss"] = _plain(r["val_logloss"])
            out.append(rec)
        return out

    def write_pareto(self, folder: str | os.PathLike | None = None) -> list[Path]:
        """Write ``pareto.csv`` and ``pareto.json`` (atomically) and return their paths."""
        import csv
        import io

        folder = Path(folder) if folder is not None else self.folder
        recs = self.pareto_records()
        buf = io.StringIO()
        cols = FRONT_COLUMNS + ["budget_bytes", "val_logloss", "params"]
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in recs:
            writer.writerow({**r, "params": json.dumps(r["params"], sort_keys=True)})
        csv_path, json_path = folder / "pareto.csv", folder / "pareto.json"
        atomic_write_text(csv_path, buf.getvalue())
        atomic_write_json(json_path, {"study": self.name, "objectives": self.objectives,
                                      "budgets": self.budgets, "trials": recs})
        return [csv_path, json_path]

    def front_table(self, *, all_trials: bool = False) -> str:
        """The front (or every complete trial) as a plain-text table."""
        from autodim._table import format_table

        df = self.trials_dataframe()
        if not df.empty:
            df = df[df["state"] == "COMPLETE"] if all_trials else df[df["pareto"]]
            df = df.sort_values(["bytes", "trial"])
            if not all_trials:  # the same plan with the same result is one row of the front
                same = [(r.method, r.bytes, r.val_auc, json.dumps(r.params, sort_keys=True,
                                                                  default=str))
                        for r in df.itertuples()]
                df = df[[k not in same[:i] for i, k in enumerate(same)]]
        rows = [{"trial": int(r.trial), "method": r.method, "budget": r.budget,
                 "val AUC": _plain(r.val_auc), "test AUC": _plain(r.test_auc),
                 "bytes": _plain(r.bytes),
                 "compression": f"{r.compression:.1f}x" if r.compression else "-",
                 "feasible": "yes" if r.feasible else "no"} for r in df.itertuples()]
        return format_table(rows) if rows else "(no complete trial yet)"

    # -- single trials ----------------------------------------------------------------------
    def trial(self, number: int):
        """The ``FrozenTrial`` with this number (a clear error if there is none)."""
        trials = self.study.get_trials(deepcopy=False)
        for t in trials:
            if t.number == number:
                return t
        raise ConfigError(f"study {self.name!r} has no trial {number} (trials 0.."
                          f"{len(trials) - 1})")

    def _complete(self, number: int):
        from optuna.trial import TrialState

        t = self.trial(number)
        if t.state != TrialState.COMPLETE:
            reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason")
            why = f" ({reason})" if reason else ""
            raise ConfigError(f"trial {number} of study {self.name!r} is {t.state.name}"
                              f"{why}: only complete trials have a model to use or export")
        return t

    def plan(self, number: int):
        """The trial's :class:`~autodim.plan.DimensionPlan` (with its metrics)."""
        from autodim.plan import DimensionPlan

        t = self.trial(number)
        if t.user_attrs.get("plan"):
            return DimensionPlan.from_dict(t.user_attrs["plan"],
                                           source=f"trial {number} of {self.name!r}")
        rel = t.user_attrs.get("plan_file")
        if rel and (self.folder / rel).is_file():
            return DimensionPlan.load(self.folder / rel)
        raise ConfigError(f"trial {number} of study {self.name!r} ({t.state.name}) has no plan"
                          + (f": {t.user_attrs['fail_reason']}"
                             if t.user_attrs.get("fail_reason") else ""))

    def weights_path(self, number: int) -> Path:
        """The trial's retrained weights (safetensors)."""
        t = self._complete(number)
        rel = t.user_attrs.get("weights_file")
        path = self.folder / rel if rel else None
        if path is None or not path.is_file():
            raise ConfigError(f"trial {number} of study {self.name!r} has no weights file"
                              + (f" ({path} is missing)" if path else "") + "; weights are "
                              "kept beside the storage: run exports where the trial ran")
        return path

    def model(self, number: int):
        """The trial's compact model (a :class:`~autodim.task.CTRTask`) with its weights."""
        from autodim.export import load_model

        return load_model(self.plan(number), self.weights_path(number))

    def best_under(self, max_bytes: int | str, *, metric: str = "val_auc") -> int:
        """Number of the complete trial with the best ``metric`` within ``max_bytes``.

        ``max_bytes`` is a byte count or anything :func:`autodim.budget.parse_budget`
        reads (``"10x"`` relative to the full model, ``"2MB"``). Validation AUC picks by
        default: choosing by test AUC would leak the test split into the choice.
        """
        from autodim.budget import parse_budget

        limit = parse_budget(max_bytes, self.full_bytes or 0)
        df = self.trials_dataframe()
        if df.empty:
            raise ConfigError(f"study {self.name!r} has no trials")
        ok = df[(df["state"] == "COMPLETE") & (df["bytes"] <= limit)]
        if metric not in ok:
            raise ConfigError(f"unknown metric {metric!r}; use val_auc, test_auc, val_logloss")
        ok = ok[ok[metric].notna()]
        if ok.empty:
            raise ConfigError(f"no complete trial of study {self.name!r} fits {limit:,} B")
        best = ok.sort_values([metric, "bytes"], ascending=[metric.endswith("logloss"), True])
        return int(best.iloc[0]["trial"])

    def resolve_budget(self, budget: str | int | None = None
                       ) -> tuple[str | None, int | None]:
        """``(label, bytes)`` of ``budget``: one of the study's budget labels, ``"10x"``,
        ``"2MB"`` or bytes; ``None``: the study's first budget (``(None, None)`` when the
        study has none)."""
        from autodim.budget import parse_budget

        budgets = self.budgets
        if budget is None:
            if not budgets:
                return None, None
            label = next(iter(budgets))
            return label, int(budgets[label])
        if str(budget) in budgets:
            return str(budget), int(budgets[str(budget)])
        return str(budget), parse_budget(budget, self.full_bytes or 0)

    def choose(self, budget: str | int | None = None) -> int | None:
        """The trial a user ships under ``budget`` (see :meth:`resolve_budget`; default the study's
        first): :meth:`best_under` it by validation AUC, or ``None`` when the study has no
        budget or no complete trial fits."""
        _, nbytes = self.resolve_budget(budget)
        if nbytes is None:
            return None
        try:
            return self.best_under(nbytes)
        except ConfigError:
            return None

    def summary_lines(self) -> list[str]:
        """What ``autodim search`` / ``autodim pareto`` print under the front: trial counts by
        state, and per budget the best trial under it (picked by :meth:`best_under`) with its
        test AUC against the full model's."""
        from autodim.metrics import format_auc

        df = self.trials_dataframe()
        if df.empty:
            return []
        counts = df.groupby("state").size().to_dict()
        lines = ["trials: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))]
        full = df[(df["method"] == "baseline:full") & (df["state"] == "COMPLETE")]
        if full.empty or not self.budgets:
            return lines
        fa = float(full.iloc[0]["test_auc"])
        for label, nbytes in self.budgets.items():
            try:
                n = self.best_under(nbytes)
            except ConfigError:
                continue
            best = df[df["trial"] == n].iloc[0]
            ta = float(best["test_auc"])
            rel = f"{100 * (ta / fa - 1):+.2f}%" if fa == fa and ta == ta and fa else "n/a"
            lines.append(f"best under {label}: trial {n} ({best['method']}), test AUC "
                         f"{format_auc(ta)} vs full model {format_auc(fa)} ({rel})")
        return lines

    # -- outputs --------------------------------------------------------------------------
    def figure(self):
        """The interactive Pareto figure (plotly)."""
        from autodim.viz.pareto import pareto_figure

        return pareto_figure(self)

    def write_html(self, path: str | os.PathLike | None = None) -> Path:
        """Write the Pareto figure as a self-contained HTML file (default
        ``<folder>/pareto.html``)."""
        from autodim.viz.pareto import write_pareto_html

        return write_pareto_html(self, Path(path) if path else self.folder / "pareto.html")

    def export(self, number: int, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Export one trial (plan, weights, TorchRec and FuxiCTR configs); see
        :func:`autodim.export.export_trial`."""
        from autodim.export import export_trial

        return export_trial(self, number, Path(out_dir))


def _plain(v: Any) -> Any:
    """numpy/pandas scalars -> Python; NaN -> None."""
    if v is None:
        return None
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def load_study(path: str | os.PathLike, *, storage: str | None = None) -> StudyResult:
    """Open a study from its YAML file or its folder (``<output>/<name>/``).

    Args:
        path: The study file or the study's folder (which holds ``study.json``).
        storage: The Optuna storage URL, when the study is not in the folder's journal file
            (``study.json`` records the URL without its password).

    Example:
        >>> res = load_study("studies/_results/quick")   # doctest: +SKIP
        >>> res.front                                    # doctest: +SKIP
    """
    import optuna

    from autodim.study.config import StudyConfig
    from autodim.study.storage import JOURNAL_NAME, open_storage

    p = Path(path).expanduser()
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        cfg = StudyConfig.load(p)
        folder, name = cfg.output_dir, cfg.name
        storage = storage or cfg.storage
        if not (folder / "study.json").is_file() and storage is None:
            raise ConfigError(f"{p}: the study has not been run yet (no {folder}/study.json); "
                              f"run: autodim search {p}")
    elif p.is_dir():
        folder = p
        if not (folder / "study.json").is_file():
            raise ConfigError(f"{p}: not a study folder (no study.json); pass the study YAML "
                              "or the folder `autodim search` wrote")
        name = None
    elif not p.exists():
        raise ConfigError(f"{p}: no such study file or folder")
    else:
        raise ConfigError(f"{p}: expected a study .yaml file or a study folder")
    manifest = {}
    if (folder / "study.json").is_file():
        try:
            manifest = json.loads((folder / "study.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{folder / 'study.json'}: not valid JSON ({exc})") from None
    name = name or manifest.get("name")
    url = storage or manifest.get("storage")
    if url and "***" in url:
        raise ConfigError(f"study {name!r} lives in {url}: pass the full URL with --storage")
    if url is None and not (folder / JOURNAL_NAME).is_file():
        raise ConfigError(f"{folder}: no {JOURNAL_NAME} in the study folder")
    store = open_storage(url, folder)
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=name, storage=store)
    except KeyError:
        raise ConfigError(f"no study named {name!r} in {url or folder / JOURNAL_NAME}") from None
    finally:
        optuna.logging.set_verbosity(old)
    return StudyResult(study, folder)
