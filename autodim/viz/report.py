"""One self-contained HTML page about a study: ``autodim report STUDY``.

Sections, in reading order: the chosen plan (the best feasible trial under the budget, by
validation AUC), the Pareto figure and table, the plans compared field by field (planted
ranks overlaid on synthetic data) and where their bytes go, each search method's dynamics
(its best trial's history), Optuna's optimisation history and parameter importances, and
the study's settings.

The page opens offline: plotly's JavaScript is embedded once, with the first figure, and
every later figure reuses it. It is written atomically, so a browser or a CI step never
reads half a report.

Example:
    >>> res = autodim.load_study("studies/quick.yaml")        # doctest: +SKIP
    >>> write_report(res, "report.html")                       # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from autodim._io import atomic_write_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["Section", "choose_trial", "report_sections", "build_report", "write_report"]

#: Plans drawn side by side at most (the chosen one, then each method's best).
MAX_PLANS = 8


@dataclass
class Section:
    """One part of the report: a heading, some HTML (text, tables) and figures."""

    title: str
    body: str = ""
    figures: list["go.Figure"] = field(default_factory=list)
    after: str = ""  # HTML after the figures (e.g. a long table)


# -- choosing -------------------------------------------------------------------------------
def choose_trial(result: Any, budget: str | int | None = None) -> int | None:
    """The best complete trial (validation AUC) that fits the budget, or ``None``: an alias
    of :meth:`StudyResult.choose <autodim.study.result.StudyResult.choose>`, kept for
    callers of this name (the choice is the study's, not the report's)."""
    return result.choose(budget)


# -- small HTML helpers ---------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:,.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _table(rows: Sequence[dict[str, Any]], *, cls: str = "") -> str:
    if not rows:
        return "<p class='muted'>(nothing to show)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, (str, bytes, dict, list)):
        try:
            return v.item()
        except (ValueError, AttributeError):
            return v
    return v


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key != "search_space":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# -- sections -------------------------------------------------------------------------------
def _trial_rows(df: Any) -> list[dict[str, Any]]:
    rows = []
    for r in df.itertuples():
        rows.append({"trial": int(r.trial), "method": r.method, "budget": r.budget,
                     "val AUC": _plain(r.val_auc), "test AUC": _plain(getattr(r, "test_auc", None)),
                     "bytes": None if r.bytes != r.bytes else int(r.bytes),
                     "compression": (f"{r.compression:.1f}x" if isinstance(r.compression, float)
                                     and r.compression == r.compression else "-"),
                     "feasible": bool(r.feasible) if r.feasible is not None else None,
                     "Pareto rank": _plain(r.rank)})
    return rows


def _chosen_section(result: Any, df: Any, chosen: int | None, label: str | None,
                    nbytes: int | None) -> Section:
    from autodim.budget import format_bytes

    sec = Section("Chosen plan")
    if nbytes is None:
        sec.body = "<p>The study has no budget.</p>"
        return sec
    under = f"budget <b>{html.escape(str(label))}</b> = {nbytes:,} B ({format_bytes(nbytes)})"
    if chosen is None:
        sec.body = f"<p>No complete trial fits the {under} yet.</p>"
        return sec
    t = result.trial(chosen)
    a = t.user_attrs
    plan = result.plan(chosen)
    lines = [f"<p>The best trial (validation AUC) within the {under} is <b>trial {chosen}</b>"
             f" ({html.escape(str(a.get('method')))}): validation AUC "
             f"{_fmt(a.get('val_auc'))}, test AUC {_fmt(a.get('test_auc'))}, "
             f"{plan.num_bytes():,} B, {plan.compression():.1f}x smaller than the full "
             f"D={plan.D} model.</p>"]
    full = df[(df["method"] == "baseline:full") & (df["state"] == "COMPLETE")]
    if not full.empty and a.get("test_auc") is not None:
        fa = float(full.iloc[0]["test_auc"])
        lines.append(f"<p>Full model test AUC {fa:.4f}: the chosen plan is "
                     f"{100 * (float(a['test_auc']) / fa - 1):+.2f}% relative.</p>")
    if a.get("settings"):
        lines.append(f"<p>Searcher settings: <code>{html.escape(_fmt(a['settings']))}</code>"
                     "</p>")
    mc = (a.get("memcom") or {}).get("fields") or {}
    if mc:
        lines.append("<p>MEmCom hashed fields (buckets): <code>"
                     + html.escape(", ".join(f"{k} ({v})" for k, v in mc.items()))
                     + "</code></p>")
    lines.append(f"<p>Export it: <code>autodim export {html.escape(str(result.folder))} "
                 f"--trial {chosen}</code></p>")
    rows = [{**r, "share": f"{100 * r['share']:.1f}%"} for r in plan.summary()]
    sec.body = "".join(lines) + _table(rows)
    return sec


def _plan_choices(result: Any, df: Any, chosen: int | None, nbytes: int | None
                  ) -> dict[str, Any]:
    """The chosen plan, then the best plan of every method within the budget."""
    from autodim.errors import AutodimError

    done = df[df["state"] == "COMPLETE"]
    if nbytes is not None:
        done = done[done["bytes"] <= nbytes]
    picks: list[tuple[str, int]] = []
    if chosen is not None:
        picks.append((f"chosen: trial {chosen}", chosen))
    best = done.sort_values(["val_auc", "bytes"], ascending=[False, True])
    for method, grp in best.groupby("method", sort=False):
        n = int(grp.iloc[0]["trial"])
        if n != chosen and method != "baseline:full":
            picks.append((f"{method} (trial {n})", n))
    plans = {}
    for label, n in picks[:MAX_PLANS]:
        try:
            plans[label] = result.plan(n)
        except AutodimError:
            continue  # a trial whose plan file went missing is left out of the picture
    return plans


def _dynamics_section(result: Any, df: Any) -> Section:
    from autodim.viz.history import history_figures, load_trial_history

    sec = Section("Search dynamics")
    done = df[(df["state"] == "COMPLETE") & (df["kind"] == "search")]
    notes = []
    for method, grp in sorted(done.groupby("method"), key=lambda g: str(g[0])):
        best = grp.sort_values(["val_auc", "bytes"], ascending=[False, True])
        for n in best["trial"]:
            history = load_trial_history(result, int(n))
            figs = history_figures(history, method=f"{method}, trial {int(n)}")
            if figs:
                sec.figures += figs
                notes.append(f"{html.escape(str(method))}: trial {int(n)}")
                break
    sec.body = ("<p>Each search method's best trial, as its searcher recorded it"
                + (f" ({'; '.join(notes)})" if notes else "") + ".</p>") if notes else (
        "<p class='muted'>No search trial with a recorded history yet.</p>")
    return sec


def _optuna_section(result: Any, df: Any) -> Section:
    from autodim.viz.trials import optimization_history_figure, param_importances_figure

    sec = Section("Optuna: optimisation history and hyperparameter importances")
    search = df[(df["state"] == "COMPLETE") & (df["kind"] == "search")]
    if search.empty:
        sec.body = "<p class='muted'>No complete search trial yet.</p>"
        return sec
    sec.figures.append(optimization_history_figure(result.study, objective=0))
    for method in [None, *sorted(search["method"].dropna().unique())]:
        try:
            fig = param_importances_figure(result.study, method=method)
        except (ValueError, RuntimeError):
            fig = None  # fANOVA needs enough distinct trials; a small study has none
        if fig is not None:
            sec.figures.append(fig)
    if len(sec.figures) == 1:
        sec.body = ("<p class='muted'>Too few trials per method for hyperparameter "
                    "importances.</p>")
    return sec


def _settings_section(result: Any, df: Any) -> Section:
    from autodim.budget import format_bytes

    sec = Section("Study settings")
    config = result.study.user_attrs.get("autodim_config") or result.manifest.get("config") or {}
    facts = {"name": result.name, "folder": str(result.folder),
             "objectives": ", ".join(result.objectives),
             "directions": ", ".join(d.name.lower() for d in result.study.directions),
             "budgets": ", ".join(f"{k} = {v:,} B ({format_bytes(v)})"
                                  for k, v in result.budgets.items()),
             "full model bytes": result.full_bytes, "Bayes AUC (test)": result.bayes_auc,
             "trials": ", ".join(f"{v} {k.lower()}" for k, v in
                                 sorted(df.groupby("state").size().to_dict().items()))
             if not df.empty else "0", "created": result.manifest.get("created")}
    flat = {k: v for k, v in _flatten(dict(config)).items() if k != "search_space"}
    rows = [{"setting": k, "value": v} for k, v in {**facts, **flat}.items()]
    sec.body = _table(rows, cls="settings")
    space = config.get("search_space")
    if space:
        sec.after = ("<details><summary>Search space</summary><pre>"
                     + html.escape(json.dumps(space, indent=2, sort_keys=True))
                     + "</pre></details>")
    return sec


def report_sections(result: Any, *, budget: str | int | None = None) -> list[Section]:
    """The report's sections with their figures (see the module docstring).

    Args:
        result: A :class:`~autodim.study.result.StudyResult`.
        budget: The budget the plan is chosen under (default: the study's first).
    """
    from autodim.viz.pareto import study_pareto_figure
    from autodim.viz.plans import (
        field_bytes_figure,
        field_bytes_treemap,
        plan_dims_figure,
        planted_ranks,
    )

    df = result.trials_dataframe()
    label, nbytes = result.resolve_budget(budget)
    chosen = result.choose(budget)
    sections = [_chosen_section(result, df, chosen, label, nbytes)]

    front = Section("Pareto front")
    front.figures.append(study_pareto_figure(result, chosen=chosen))
    if not df.empty:
        done = df[df["state"] == "COMPLETE"].sort_values(["bytes", "trial"])
        front.body = ("<p>Every complete trial (validation AUC vs bytes; baselines are "
                      "diamonds, the full model a star, faded points exceed their budget). "
                      "Hover a point for its plan.</p>")
        front.after = ("<h3>Front (feasible, non-dominated)</h3>"
                       + _table(_trial_rows(done[done["pareto"].astype(bool)]))
                       + "<details><summary>All complete trials</summary>"
                       + _table(_trial_rows(done)) + "</details>")
    sections.append(front)

    plans = _plan_choices(result, df, chosen, nbytes)
    sec = Section("Plans field by field")
    if plans:
        ranks = planted_ranks(result)
        sec.body = ("<p>The chosen plan and each method's best plan within the budget."
                    + (" Black dashes: the planted rank of each field (the allocation a good "
                       "search approaches)." if ranks else "") + "</p>")
        sec.figures += [plan_dims_figure(plans, planted=ranks),
                        field_bytes_figure(plans, budget_bytes=nbytes)]
        if chosen is not None:
            sec.figures.append(field_bytes_treemap({next(iter(plans)): plans[next(iter(plans))]}))
    else:
        sec.body = "<p class='muted'>No plan within the budget yet.</p>"
    sections.append(sec)
    sections.append(_dynamics_section(result, df))
    sections.append(_optuna_section(result, df))
    sections.append(_settings_section(result, df))
    return sections


# -- the page -------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:1rem 2rem;color:#222}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.2rem .5rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
table.settings td{text-align:left}.muted{color:#777}
.figure{margin:1rem 0}nav a{margin-right:1rem}code,pre{background:#f6f6f6;padding:0 .2rem}
"""


def build_report(result: Any, *, budget: str | int | None = None,
                 title: str | None = None) -> str:
    """The report as one HTML string (plotly's JavaScript embedded once, inline).

    Args:
        result: A :class:`~autodim.study.result.StudyResult`.
        budget: The budget the plan is chosen under (default: the study's first).
        title: Page title (default: ``autodim report: <study name>``).
    """
    sections = report_sections(result, budget=budget)
    title = title or f"autodim report: {result.name}"
    parts: list[str] = []
    n_figs = 0
    for i, sec in enumerate(sections):
        anchor = f"s{i}"
        parts.append(f"<section id='{anchor}'><h2>{html.escape(sec.title)}</h2>{sec.body}")
        for fig in sec.figures:
            # The first figure carries plotly.js inline; the others reuse it (offline page).
            parts.append("<div class='figure'>" + fig.to_html(
                full_html=False, include_plotlyjs=n_figs == 0, div_id=f"fig{n_figs}",
                config={"displaylogo": False, "responsive": True}) + "</div>")
            n_figs += 1
        parts.append(sec.after + "</section>")
    nav = "".join(f"<a href='#s{i}'>{html.escape(s.title)}</a>" for i, s in enumerate(sections))
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    from autodim import __version__

    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='autodim-figures' content='{n_figs}'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='muted'>autodim {__version__}, written "
            f"{stamp}, {n_figs} figures</p><nav>{nav}</nav>" + "".join(parts)
            + "</body></html>\n")


def write_report(result: Any, path: str | os.PathLike | None = None, *,
                 budget: str | int | None = None) -> Path:
    """Write :func:`build_report` atomically (default ``<study folder>/report.html``) and
    return the path."""
    path = Path(path) if path is not None else Path(result.folder) / "report.html"
    atomic_write_text(path, build_report(result, budget=budget))
    return path
