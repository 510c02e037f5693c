"""The Pareto figure of a study: validation AUC against embedding bytes.

Every complete trial is a point coloured by method; baselines are diamonds; the feasible
Pareto front is a step line; each budget is a vertical dashed line; hovering a point shows
its plan (dims per field, MEmCom fields). plotly is imported inside the functions so that
``import autodim.viz.pareto`` stays cheap; richer figures can build on
:func:`pareto_frame` and :func:`pareto_figure`.

Example:
    >>> res = autodim.load_study("studies/quick.yaml")   # doctest: +SKIP
    >>> pareto_figure(res).show()                         # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from autodim._io import atomic_write_text

__all__ = ["pareto_frame", "pareto_figure", "write_pareto_html", "plan_hover"]


def plan_hover(attrs: dict[str, Any], max_fields: int = 12) -> str:
    """A short plan summary for a hover box: ``f00:2 f01:4 … | memcom f07(120)``."""
    dims = attrs.get("dims") or {}
    items = list(dims.items())
    text = " ".join(f"{k}:{v}" for k, v in items[:max_fields])
    if len(items) > max_fields:
        text += f" … (+{len(items) - max_fields})"
    mc = ((attrs.get("memcom") or {}).get("fields") or {})
    if mc:
        text += "<br>memcom " + " ".join(f"{k}({v})" for k, v in mc.items())
    return text


def pareto_frame(result):
    """The complete trials as a DataFrame with the columns the figure uses (plus
    ``hover``)."""
    df = result.trials_dataframe()
    if df.empty:
        return df
    df = df[df["state"] == "COMPLETE"].copy()
    attrs = {t.number: t.user_attrs for t in result.study.get_trials(deepcopy=False)}
    df["hover"] = [plan_hover(attrs.get(n, {})) for n in df["trial"]]
    df["is_baseline"] = df["kind"] == "baseline"
    return df


def pareto_figure(result, *, title: str | None = None, chosen: int | None = None):
    """The study's Pareto figure (AUC vs bytes, log x axis): :func:`study_pareto_figure`,
    the one code path that ``autodim pareto``, ``StudyResult.figure()`` and the report
    share."""
    return study_pareto_figure(result, chosen=chosen, title=title)


def write_pareto_html(result, path: str | os.PathLike) -> Path:
    """Write the figure as one self-contained HTML file (works offline), atomically."""
    path = Path(path)
    html = pareto_figure(result).to_html(include_plotlyjs=True, full_html=True)
    atomic_write_text(path, html)
    return path


# -- from plain data (added for the report; the figures above are unchanged) ----------------
def pareto_figure_from_frame(df, *, budgets: dict[str, int] | None = None,
                             full_bytes: int | None = None, bayes_auc: float | None = None,
                             chosen: int | None = None, metric: str = "val_auc",
                             title: str | None = None):
    """The Pareto figure from a trials DataFrame alone (no study object needed).

    Search methods are coloured circles, baselines diamonds, the full model (the
    ``baseline:full`` trial) a grey star as the reference point (without one, a dotted
    line at ``full_bytes``); infeasible trials are faded; the feasible front is a step
    line; ``chosen`` is ringed.

    Args:
        df: One row per trial with columns ``trial``, ``method``, ``bytes`` and ``metric``;
            optional ``state`` (only ``COMPLETE`` rows are drawn), ``kind``, ``feasible``,
            ``pareto`` (else computed), ``test_auc``, ``compression``, ``budget`` and
            ``hover`` (plan summary; else built from a ``dims`` column) - the columns of
            :func:`pareto_frame` / ``StudyResult.trials_dataframe()``.
        budgets: Budget label -> bytes, drawn as dashed lines.
        full_bytes: Bytes of the full model.
        bayes_auc: The data's Bayes-optimal AUC (planted data), drawn as a dotted line.
        chosen: A trial number to highlight (e.g. the best feasible under the budget).
        metric: The y column (``val_auc`` or ``test_auc``).
        title: Figure title.

    Returns:
        A figure with one marker trace per method (one point per complete trial), plus the
        front line and, where given, the chosen ring.
    """
    import math

    import plotly.graph_objects as go

    from autodim._pareto import nondominated_ranks

    df = df.copy()
    if "state" in df:
        df = df[df["state"] == "COMPLETE"]
    df = df[df[metric].notna() & df["bytes"].notna()]
    if "feasible" not in df:
        df["feasible"] = True
    df["feasible"] = df["feasible"].fillna(False).astype(bool)
    if "kind" not in df:
        df["kind"] = ["baseline" if str(m).startswith("baseline:") else "search"
                      for m in df["method"]]
    if "hover" not in df:
        df["hover"] = [plan_hover({"dims": d}) if isinstance(d, dict) else ""
                       for d in (df["dims"] if "dims" in df else [None] * len(df))]
    df = _merge_identical(df, metric)
    if "pareto" not in df:
        ok = df[df["feasible"]]
        ranks = nondominated_ranks([[float(a), float(b)] for a, b in
                                    zip(ok[metric], ok["bytes"])], ["maximize", "minimize"])
        front = {int(t) for t, r in zip(ok["trial"], ranks) if r == 0}
        df["pareto"] = [int(t) in front for t in df["trial"]]

    def col(name: str, fill: Any = None) -> list[Any]:
        return list(df[name]) if name in df else [fill] * len(df)

    def fmt(v: Any, spec: str) -> str:
        try:
            v = float(v)
        except (TypeError, ValueError):
            return "-"
        return "-" if math.isnan(v) else format(v, spec)

    df["_hover"] = [
        f"<b>trial {int(t)}</b> {m}" + (f" (budget {b})" if isinstance(b, str) else "")
        + f"<br>{_metric_label(metric)} {fmt(y, '.4f')}, test AUC {fmt(ta, '.4f')}"
        + f"<br>{int(nb):,} B, {fmt(c, '.1f')}x" + ("" if f else ", OVER BUDGET")
        + (f"<br>{h}" if h else "")
        for t, m, b, y, ta, nb, c, f, h in zip(
            df["trial"], df["method"], col("budget"), df[metric], col("test_auc"), df["bytes"],
            col("compression"), df["feasible"], df["hover"])]
    fig = go.Figure()
    is_full = df["method"] == "baseline:full"
    methods = sorted(df.loc[~is_full, "method"].unique(),
                     key=lambda m: (str(m).startswith("baseline:"), str(m)))
    for i, method in enumerate(methods):
        grp = df[df["method"] == method]
        base = str(method).startswith("baseline:") or (grp["kind"] == "baseline").all()
        fig.add_trace(go.Scatter(
            x=grp["bytes"], y=grp[metric], mode="markers", name=str(method),
            text=grp["_hover"], hovertemplate="%{text}<extra></extra>",
            customdata=grp["trial"],
            marker={"size": 12 if base else 9, "symbol": "diamond" if base else "circle",
                    "color": _PALETTE[i % len(_PALETTE)],
                    "line": {"width": 1.5 if base else 0.5, "color": "black"},
                    "opacity": [1.0 if f else 0.45 for f in grp["feasible"]]}))
    full = df[is_full]
    if not full.empty:
        fig.add_trace(go.Scatter(
            x=full["bytes"], y=full[metric], mode="markers", name="full model",
            text=full["_hover"], hovertemplate="%{text}<extra></extra>",
            customdata=full["trial"],
            marker={"size": 16, "symbol": "star", "color": "#7f7f7f",
                    "line": {"width": 1, "color": "black"}}))
    elif full_bytes:
        _log_vline(fig, full_bytes, "full model", dash="dot", color="gray", top=False)
    front = df[df["pareto"].astype(bool)].sort_values("bytes")
    if not front.empty:
        fig.add_trace(go.Scatter(x=front["bytes"], y=front[metric], mode="lines",
                                 line={"shape": "hv", "color": "black", "width": 1.5},
                                 name="Pareto front (feasible)", hoverinfo="skip"))
    if chosen is not None and (df["trial"] == chosen).any():
        row = df[df["trial"] == chosen].iloc[0]
        fig.add_trace(go.Scatter(
            x=[row["bytes"]], y=[row[metric]], mode="markers", name=f"chosen: trial {chosen}",
            marker={"size": 24, "symbol": "circle-open", "color": "crimson",
                    "line": {"width": 3}},
            text=[row["_hover"]], hovertemplate="%{text}<extra>chosen</extra>"))
    for label, nbytes in (budgets or {}).items():
        _log_vline(fig, nbytes, f"budget {label}", dash="dash", color="crimson", top=True)
    if bayes_auc and metric.endswith("auc"):
        fig.add_hline(y=bayes_auc, line_dash="dot", line_color="green",
                      annotation_text="Bayes AUC", annotation_position="bottom left")
    fig.update_layout(title=title or f"{_metric_label(metric)} vs embedding bytes",
                      xaxis={"title": {"text": "embedding bytes (log scale)"}, "type": "log"},
                      yaxis={"title": {"text": _metric_label(metric)}},
                      template="plotly_white", legend={"title": "method"},
                      hovermode="closest")
    return fig


def study_pareto_figure(result, *, chosen: int | None = None, metric: str = "val_auc",
                        title: str | None = None):
    """:func:`pareto_figure_from_frame` for a study: its trials, budgets, full-model
    bytes and Bayes AUC, the chosen trial ringed (see ``StudyResult.best_under``)."""
    return pareto_figure_from_frame(
        pareto_frame(result), budgets=result.budgets, full_bytes=result.full_bytes,
        bayes_auc=result.bayes_auc, chosen=chosen, metric=metric,
        title=title or f"Study {result.name}: {_metric_label(metric)} vs embedding bytes")


def _merge_identical(df, metric: str):
    """One point per distinct plan: trials with the same plan and the same result (a
    re-run of the same parameters, a baseline recorded twice) are drawn once, the point's
    hover naming the others."""
    if df.empty or "hover" not in df or not df["hover"].astype(bool).any():
        return df
    keys = [(m, int(b), round(float(v), 9), h) for m, b, v, h in
            zip(df["method"], df["bytes"], df[metric], df["hover"])]
    first: dict[Any, int] = {}
    also: dict[int, list[int]] = {}
    keep = []
    for pos, (key, trial) in enumerate(zip(keys, df["trial"])):
        if key[3] and key in first:
            also.setdefault(first[key], []).append(int(trial))
            continue
        first[key] = pos
        keep.append(pos)
    if not also:
        return df
    df = df.copy()
    hover = list(df["hover"])
    for pos, others in also.items():
        hover[pos] += "<br>same plan as trial(s) " + ", ".join(str(t) for t in others)
    df["hover"] = hover
    return df.iloc[keep]


def _metric_label(metric: str) -> str:
    return {"val_auc": "validation AUC", "test_auc": "test AUC",
            "val_logloss": "validation log loss",
            "test_logloss": "test log loss"}.get(metric, metric)


def _log_vline(fig, x: float, text: str, *, dash: str, color: str, top: bool) -> None:
    """A labelled vertical line on the log-scale bytes axis. The label is placed by hand:
    plotly positions ``add_vline``'s own annotation in linear units on a log axis, which
    puts it off the chart."""
    import math

    fig.add_vline(x=x, line_dash=dash, line_color=color)
    fig.add_annotation(x=math.log10(x), xref="x", y=1.0 if top else 0.0, yref="paper",
                       yanchor="bottom" if top else "top", text=text, showarrow=False,
                       font={"color": color, "size": 11})


_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#bcbd22", "#17becf", "#aec7e8"]

__all__ += ["pareto_figure_from_frame", "study_pareto_figure"]
